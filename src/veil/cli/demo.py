"""``veil demo``: the main job on what ships with veil (sample photos, weights, noise, decoder, Triton)."""

from __future__ import annotations

import argparse

from veil import assets


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="obfuscate sample photos, detect through a Triton server started here, show what was sent",
        description="The trust-zone client obfuscates sample photos (public domain, shipped with matplotlib and "
        "scikit-image; or your own with --images) at ALPHA, sends only the activations to a real Triton "
        "server it starts on 127.0.0.1 (free ports), and writes into --out: boxes/NAME.json, NAME.jpg "
        "(clean detection | obfuscated detection | the decoder's reconstruction of what was sent) and "
        "report.md/json; then stops the server. Uses the weights, noise and decoder that ship with veil "
        "unless yours are in the veil cache or given. Needs the serve extra.",
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default: %(default)s)")
    p.add_argument(
        "--alpha",
        type=float,
        default=assets.DEFAULT_ALPHA,
        help=f"obfuscation strength; noise ships for {', '.join(f'{a:g}' for a in assets.SHIPPED_ALPHAS)} "
        "(default: %(default)s)",
    )
    p.add_argument("--images", nargs="+", metavar="IMAGE", help="your photos instead of the samples")
    p.add_argument("--weights", help="FaceBoxes weights (default: $VEIL_WEIGHTS, the cache, then the shipped ones)")
    p.add_argument("--noise", metavar="FILE", help="fitted noise file (default: the cache's, then the shipped one)")
    p.add_argument(
        "--decoder", metavar="FILE", help="decoder (default: $VEIL_DECODER, the cache's, then the shipped one)"
    )
    p.add_argument("--protocol", choices=["http", "grpc"], default="grpc", help="(default: %(default)s)")
    p.add_argument("--fp32", action="store_true", help="send FP32 activations (default: FP16, half the bytes)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from veil.demo import run_demo

    report = run_demo(
        args.out,
        alpha=args.alpha,
        images=args.images,
        weights=args.weights,
        noise=args.noise,
        decoder=args.decoder,
        protocol=args.protocol,
        fp16=not args.fp32,
    )
    print(report.markdown(), end="")
    print(f"wrote {args.out}/report.md, report.json, boxes/ and one picture per photo")
    return 0

"""Train the defenses and their scoring attackers in one go, on CPU or an accelerator (issue 9 §2).

Jobs run as parallel processes (each its own interpreter, seeds and torch threads), in two phases:
the defenses and the attackers of configurations that need no trained defense (clean, noise),
then the attackers of the trained bottlenecks. Every file is written under --out; the measurements
(FDDB mAP, identity on FDDB) are made afterwards with ``benchmarks/defenses.py --decoder FILE``,
on a machine that has dlib, so this script never reads FDDB.

    python benchmarks/defenses_train.py --device cuda --images WIDER DLIB --noise-dir N --out DIR \\
        --tail-steps 6000 --bottleneck-steps 6000 --decoder-steps 3000

Job names: ``tail-A`` (robust tail for noise ALPHA A), ``bn-A`` / ``bn-A-adv`` (bottleneck, without /
with in-loop adversary), ``dec-clean``, ``dec-noise-A``, ``dec-bn-A[-adv]`` (scoring decoders, seed 9001+).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
import traceback
import zlib
from pathlib import Path

import torch


def _job(name: str, args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    from veil.defenses.distill import DistillConfig, training_noise
    from veil.defenses.files import file_sha256
    from veil.models import as_split_model, create
    from veil.obfuscate import load_obfuscator

    t0 = time.monotonic()
    out = Path(args.out)
    split_model = create("faceboxes", args.split, weights=args.weights)  # the head ends at --split
    model, digest = split_model.network, split_model.weights_sha256
    zoom = (2.0 * args.scale / 3.0, 2.0 * args.scale)  # the ×3 recipe's (2, 6), scaled: same face sizes at the net
    dev = args.device
    kind, _, rest = name.partition("-")
    adv = rest.endswith("-adv")
    if kind == "tail":
        from veil.defenses.robust_tail import distill_tail, save_robust_tail

        alpha = float(rest)
        noise = Path(args.noise_dir) / f"alpha-{alpha:g}.safetensors"
        obf, _ = load_obfuscator(alpha, noise=noise, model=as_split_model(model, digest))
        cfg = DistillConfig(steps=args.tail_steps, minutes=args.minutes, batch_size=args.batch, lr=3e-4)
        student, log, data = distill_tail(
            model,
            obf,
            args.images,
            cfg,
            crop=args.crop,
            crops_per_image=args.crops_per_image,
            scale_range=zoom,
            device=dev,
            progress=False,
        )
        save_robust_tail(
            student,
            out / f"{name}.safetensors",
            weights_sha256=digest,
            noise_sha256=file_sha256(noise),
            alpha=alpha,
            cfg=cfg,
            log=log,
            data=data,
            extra={"device": str(dev), "scale": args.scale},
        )
        return {
            "job": name,
            "file": str(out / f"{name}.safetensors"),
            "split": args.split,
            "scale": args.scale,
            "held_out": [log[0].get("held_out_distortion"), log[-1].get("held_out_distortion")],
            "steps": log[-1]["step"],
            "seconds": round(time.monotonic() - t0, 1),
        }
    if kind == "bn":
        from veil.defenses.bottleneck import BottleneckSpec, fit_bottleneck, save_bottleneck

        alpha = float(rest.removesuffix("-adv"))
        spec = BottleneckSpec.from_alpha(alpha)
        cfg = DistillConfig(steps=args.bottleneck_steps, minutes=args.minutes, batch_size=args.batch, lr=1e-3)
        w = args.adversary_weight if adv else 0.0
        fitted, log, data = fit_bottleneck(
            model,
            spec,
            args.images,
            cfg,
            adversary_weight=w,
            crop=args.crop,
            crops_per_image=args.crops_per_image,
            scale_range=zoom,
            device=dev,
            progress=False,
        )
        save_bottleneck(
            fitted, out / f"{name}.safetensors", weights_sha256=digest, cfg=cfg, log=log, data=data, adversary_weight=w
        )
        return {
            "job": name,
            "file": str(out / f"{name}.safetensors"),
            "split": args.split,
            "scale": args.scale,
            "spec": spec.as_dict(),
            "held_out": [log[0].get("held_out_distortion"), log[-1].get("held_out_distortion")],
            "steps": log[-1]["step"],
            "seconds": round(time.monotonic() - t0, 1),
        }
    if kind == "dec":
        from veil.defenses.bottleneck import as_decoder_input, load_bottleneck
        from veil.defenses.measure import train_scoring_decoder
        from veil.privacy.decoders import save_decoder

        seed = 9001 + zlib.crc32(name.encode()) % 1000  # stable per job, never 0 (the defenses' seed)
        head = model.head.to(dev)
        if rest == "clean":

            def observe(a):
                return a
        elif rest.startswith("noise-"):
            alpha = float(rest.removeprefix("noise-"))
            obf, _ = load_obfuscator(
                alpha, noise=Path(args.noise_dir) / f"alpha-{alpha:g}.safetensors", model=as_split_model(model, digest)
            )
            observe = training_noise(obf, dev, seed)  # same μ, σ; a fast torch stream for training only
        else:
            fb, _ = load_bottleneck(out / f"{rest}.safetensors", model, weights_sha256=digest)
            bott = fb.bottleneck.to(dev)

            def observe(a):
                return as_decoder_input(bott(a), bott.in_channels)

        init = None
        if args.init:  # a bottleneck's code is not a head activation, but the upsampling layers still transfer
            from veil.privacy.decoders import read_decoder

            init = read_decoder(args.init)
        dec = train_scoring_decoder(
            head,
            observe,
            args.images,
            minutes=args.minutes,
            seed=seed,
            max_steps=args.decoder_steps,
            scale=args.scale,
            batch=args.decoder_batch,
            progress=False,
            device=dev,
            init=init,
        )
        save_decoder(dec, out / f"{name}.safetensors", dec.meta)
        return {
            "job": name,
            "steps": dec.meta.get("steps"),
            "final_l1_px": dec.meta.get("final_l1_px"),
            "seed": seed,
            "seconds": round(time.monotonic() - t0, 1),
        }
    raise ValueError(f"unknown job {name}")


def _safe(name: str, args: argparse.Namespace) -> dict:
    try:
        r = _job(name, args)
    except Exception as exc:  # noqa: BLE001 - one failed job must not lose the others
        r = {"job": name, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
    print(json.dumps(r), flush=True)
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--split",
        default="rdcl",
        choices=("rdcl", "inception1", "inception2", "inception3"),
        help="where FaceBoxes' head ends: every defense and attacker of this run works on that split's activation "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--scale",
        type=float,
        default=3.0,
        help="input scale the defenses and attackers train for: the photos' zoom range is (2, 6) × scale/3 "
        "(default: %(default)s, FDDB's protocol)",
    )
    p.add_argument("--weights", required=True)
    p.add_argument("--images", nargs="+", required=True, help="non-FDDB photo folders")
    p.add_argument("--noise-dir", required=True, help="folder of alpha-A.safetensors noise files")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--phase1",
        nargs="*",
        default=[
            "tail-0.9",
            "tail-0.95",
            "bn-0.6",
            "bn-0.8",
            "bn-0.9",
            "bn-0.8-adv",
            "bn-0.9-adv",
            "dec-clean",
            "dec-noise-0.9",
            "dec-noise-0.95",
        ],
    )
    p.add_argument(
        "--phase2", nargs="*", default=["dec-bn-0.6", "dec-bn-0.8", "dec-bn-0.9", "dec-bn-0.8-adv", "dec-bn-0.9-adv"]
    )
    p.add_argument("--init", help="warm-start the clean/noise scoring decoders from this (naive) decoder")
    p.add_argument("--tail-steps", type=int, default=6000)
    p.add_argument("--bottleneck-steps", type=int, default=6000)
    p.add_argument("--decoder-steps", type=int, default=3000)
    p.add_argument("--decoder-batch", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--crops-per-image", type=int, default=4)
    p.add_argument(
        "--crop",
        type=int,
        default=640,
        help="crop side for the defenses: large enough that ×3-sized faces (≈ 200–700 px) and the "
        "tail's deepest anchors (256, 512 px) are in it (default: %(default)s)",
    )
    p.add_argument("--adversary-weight", type=float, default=0.5)
    p.add_argument("--minutes", type=float, default=4.0, help="wall cap per job (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    results = []
    for phase in (args.phase1, args.phase2):
        if not phase:
            continue
        with ctx.Pool(len(phase)) as pool:
            results += pool.starmap(_safe, [(n, args) for n in phase])
    (Path(args.out) / "train.json").write_text(json.dumps({"args": vars(args), "jobs": results}, indent=1))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

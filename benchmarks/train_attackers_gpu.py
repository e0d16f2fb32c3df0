"""Train the audit's attacker decoders for longer on a GPU (issue 9 §1: "train the attackers there for
longer too, and report both; never depend on one").

Trains, into ``$VEIL_CACHE_DIR/attackers/<model key>`` (the names ``veil audit`` looks up), the naive and the
adaptive decoder for one noise file, and their perceptual-loss variants, each until its loss
plateaus or its wall budget ends, on the non-FDDB photos given. Prints one JSON line per decoder
(steps, stop reason, final L1) and writes ``attackers_gpu.json`` (metadata and learning curves).
Copy the decoder files into a CPU machine's cache to score FDDB there with ``veil audit``.

    python benchmarks/train_attackers_gpu.py --weights W --noise alpha-0.8.safetensors --images DIR [DIR ...] \\
        --device cuda --budget 110 90 60 60 --out results.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--noise", required=True, help="fitted noise file (the adaptive attackers' ALPHA)")
    ap.add_argument("--images", nargs="+", required=True, help="non-FDDB photo folders")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--budget",
        type=float,
        nargs=4,
        default=[110, 90, 60, 60],
        help="seconds: naive, adaptive, naive perceptual, adaptive perceptual",
    )
    ap.add_argument("--scale", type=float, default=3.0)
    ap.add_argument("--out", required=True, help="JSON with every decoder's metadata and learning curve")
    args = ap.parse_args()

    from veil.digest import sha256_file
    from veil.models import create
    from veil.obfuscate import load_obfuscator
    from veil.privacy.train import ModelFeatures, ensure_decoder

    t0 = time.monotonic()
    model = create("faceboxes", weights=args.weights)
    obf, nmeta = load_obfuscator(None, noise=args.noise, model=model)
    nsha = sha256_file(args.noise)
    model.to(args.device)
    obf.to(torch.device(args.device))
    feats = ModelFeatures(model)
    common = {
        "data": args.images,
        "batch": args.batch,
        "progress": False,
        "scale": args.scale,
        "device": args.device,
    }
    plan = [
        ("naive", {}, args.budget[0]),
        ("adaptive", {"obfuscator": obf, "noise_sha256": nsha, "alpha": nmeta["alpha"]}, args.budget[1]),
        ("perceptual_clean", {"loss": "perceptual", "features": feats}, args.budget[2]),
        (
            "perceptual",
            {"obfuscator": obf, "noise_sha256": nsha, "alpha": nmeta["alpha"], "loss": "perceptual", "features": feats},
            args.budget[3],
        ),
    ]
    out = {
        "device": torch.cuda.get_device_name(0) if str(args.device).startswith("cuda") else str(args.device),
        "noise_sha256": nsha,
        "decoders": {},
    }
    for name, kw, seconds in plan:
        dec = ensure_decoder(model, seconds / 60.0, **common, **kw)
        out["decoders"][name] = dec.meta
        print(
            json.dumps(
                {
                    "decoder": name,
                    **{k: dec.meta.get(k) for k in ("steps", "stop_reason", "seconds", "final_l1_px", "seed")},
                }
            ),
            flush=True,
        )
    out["seconds"] = round(time.monotonic() - t0, 1)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

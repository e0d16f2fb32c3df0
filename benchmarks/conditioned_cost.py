"""Client-side cost of input-conditioned noise (issue 9 §2b) per 1920×1080 frame, beside per-channel noise.

The conditioned noise runs a small conv net on the head's activation in the trust zone (the client)
before drawing ε, so its cost is the client's. Timed round-robin in one loop, so every alternative sees
the same machine load (medians; ratios against per-channel noise):

* the noise step alone on the frame's activation (×1: 128×34×60): per-channel ``a + μ + σ ε`` vs
  conditioned ``a + μ(a) + σ(a) ε`` (both with fresh AES-CTR ε);
* the whole client side (preprocess + head + noise) with each.

    python benchmarks/conditioned_cost.py --noise PER_CHANNEL.safetensors --conditioned COND.safetensors \
        [--runs 200] [--threads 1] [--out benchmarks/results/conditioned_cost.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from veil.jsonio import write_json
from veil.models import as_split_model
from veil.obfuscate import load_obfuscator
from veil.obfuscate.conditioned import ConditionedObfuscator, macs_per_cell
from veil.preprocess import prepare
from veil.weights import load_faceboxes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import uptime
from obfuscation_speed import frame

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--noise", required=True, help="a per-channel noise file (the baseline)")
    p.add_argument(
        "--conditioned",
        required=True,
        help="an input-conditioned noise file (veil fit-noise --noise-model conditioned)",
    )
    p.add_argument("--weights", help="FaceBoxes weights (default: $VEIL_WEIGHTS, the cache, then the shipped ones)")
    p.add_argument("--runs", type=int, default=200, help="timed rounds (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "conditioned_cost.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, digest = load_faceboxes(args.weights)
    split = as_split_model(model, digest)
    base, _ = load_obfuscator(None, noise=args.noise, model=split)
    cond, cmeta = load_obfuscator(None, noise=args.conditioned, model=split)
    if not isinstance(cond, ConditionedObfuscator):
        p.error(f"{args.conditioned} is not input-conditioned noise")
    image = frame()
    before = uptime()
    with torch.inference_mode():
        a = model.head(prepare(image, 1.0).tensor)
        alts = {
            "noise_per_channel": lambda: base(a),
            "noise_conditioned": lambda: cond(a),
            "client_per_channel": lambda: base(model.head(prepare(image, 1.0).tensor)),
            "client_conditioned": lambda: cond(model.head(prepare(image, 1.0).tensor)),
        }
        for f in alts.values():  # warm-up
            f()
        times: dict[str, list[float]] = {k: [] for k in alts}
        for i in range(args.runs):
            for k, f in alts.items():
                if k.startswith("client") and i % 5:  # the client side is ~10× longer: time it every 5th round
                    continue
                t = time.perf_counter()
                f()
                times[k].append((time.perf_counter() - t) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    h, w = a.shape[2:]
    doc = {
        "image": "1920x1080 BGR uint8, scale x1",
        "activation_shape": list(a.shape),
        "threads": args.threads,
        "median_ms": {k: round(v, 3) for k, v in med.items()},
        "n": {k: len(v) for k, v in times.items()},
        "noise_step_ratio": round(med["noise_conditioned"] / med["noise_per_channel"], 2),
        "client_side_ratio": round(med["client_conditioned"] / med["client_per_channel"], 3),
        "conditioned_extra_client_ms": round(med["client_conditioned"] - med["client_per_channel"], 3),
        "net": {
            "hidden": cond.hidden,
            "parameters": sum(p.numel() for p in cond.net.parameters()),
            "macs_per_frame": macs_per_cell(cond.channels, cond.hidden) * h * w,
        },
        "conditioned_file": {"alpha": cmeta.get("alpha"), "format": cmeta.get("format")},
        "uptime_before": before,
        "uptime_after": uptime(),
        "cpus": os.cpu_count(),
        "note": "medians on a shared machine (see uptime): absolute times vary with load, ratios less so",
    }
    for k, v in doc["median_ms"].items():
        print(f"{k}: {v:.3f} ms (median of {doc['n'][k]})")
    print(
        f"noise step ×{doc['noise_step_ratio']}, client side ×{doc['client_side_ratio']} "
        f"(+{doc['conditioned_extra_client_ms']} ms per 1080p frame); {before}"
    )
    print(f"wrote {write_json(args.out, doc)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

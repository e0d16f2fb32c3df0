"""Issue 13's done-when: `veil evaluate`'s whole time per image against the bare FP32 network forward.

On the same FDDB images, in one process, alternatives interleaved round by round:

- ``forward fp32 (2 threads)``: the baseline: eager FP32 ``model(x)`` alone, on network inputs
  prepared beforehand (no decoding, no preprocessing, no post-processing, no matching);
- ``evaluate fp32 sequential``: ``evaluate_fddb`` as it was (one step after another, FP32);
- ``evaluate BACKEND pipelined``: ``evaluate_fddb`` with the chosen backend (default: ``auto``)
  and the decode/preprocess prefetch thread: decode, preprocess, head, tail, post-processing and
  FDDB matching, wall time / images.

Each evaluate alternative also reports its mAP on these images, so the speed comes with the
accuracy it keeps. Prints medians (ms per image) and ratios to the baseline; writes JSON.

    python benchmarks/evaluate_vs_forward.py --shard 0/5 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import DATASET, WEIGHTS, machine, print_table, summary, uptime, write

from veil.data import read_fddb
from veil.detector import Detector
from veil.evaluation import Shard, evaluate_fddb
from veil.preprocess import load_image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=str(DATASET))
    p.add_argument("--weights", default=str(WEIGHTS))
    p.add_argument("--shard", default="0/5", help="which FDDB images (a shard of the present ones; default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--backend", default="auto", help="backend of the pipelined evaluate (default: %(default)s)")
    p.add_argument("--eval-threads", type=int, nargs="+", default=[2, 1],
                   help="torch threads of the pipelined evaluate, one alternative each (default: 2 1)")
    p.add_argument("--out", help="JSON result (default: benchmarks/results/evaluate_vs_forward.json)")
    args = p.parse_args()

    shard = Shard.parse(args.shard)
    ref = Detector.from_weights(args.weights, backend="fp32")
    fast = Detector(ref.model, ref.weights_sha256, backend=args.backend)
    fast.runner  # build (an ONNX export happens once) before timing
    items = shard.select(read_fddb(args.dataset).available())
    inputs = [ref.preprocess(load_image(im.path)).tensor for im in items]
    model = ref.model.eval()

    def forward(threads: int = 2):
        def run() -> float:
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            with torch.inference_mode():
                for x in inputs:
                    model(x)
            return (time.perf_counter() - t0) / len(inputs)
        return run

    maps: dict[str, float] = {}

    def evaluate(det: Detector, threads: int, prefetch: bool, key: str):
        def run() -> float:
            torch.set_num_threads(threads)
            r = evaluate_fddb(det, args.dataset, shard=shard, progress=False, prefetch=prefetch)
            maps[key] = r.mAP
            return r.wall_s / r.images
        return run

    alts = {"forward fp32 (2 threads)": forward(2), "forward fp32 (1 thread)": forward(1),
            "evaluate fp32 sequential (2 threads)": evaluate(ref, 2, False, "evaluate fp32 sequential (2 threads)")}
    for t in args.eval_threads:
        key = f"evaluate {fast.backend} pipelined ({t} thread{'s' if t > 1 else ''})"
        alts[key] = evaluate(fast, t, True, key)
    base = "forward fp32 (2 threads)"
    alts[base]()  # warm-up: first calls allocate
    samples: dict[str, list[float]] = {k: [] for k in alts}
    loads = [uptime()]
    for r in range(args.rounds):
        for k, fn in alts.items():
            samples[k].append(fn())
        loads.append(uptime())
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {1000 * v[-1]:.0f} ms" for k, v in samples.items()),
              flush=True)
    table = summary(samples, base)
    for k in table:
        if k in maps:
            table[k]["mAP"] = round(maps[k], 6)
            table[k]["mAP_minus_fp32_points"] = round(100 * (maps[k] - maps["evaluate fp32 sequential (2 threads)"]), 3)
    print_table(f"ms per image on {len(items)} FDDB images (shard {shard}), {args.rounds} interleaved rounds; "
                f"load: {loads[0]} ... {loads[-1]}", table, base)
    for k, r in table.items():
        if "mAP" in r:
            print(f"  {k}: mAP {r['mAP']:.4f} ({r['mAP_minus_fp32_points']:+.2f} points vs fp32)")
    best = min((k for k in table if k != base and k.startswith(f"evaluate {fast.backend}")),
               key=lambda k: table[k]["ratio"])
    held = table[best]["ratio"] <= 1.0 and abs(table[best]["mAP_minus_fp32_points"]) <= 0.1
    print(f"done-when (evaluate per image <= bare FP32 forward at 2 threads, mAP within 0.1 point): "
          f"{'HOLDS' if held else 'DOES NOT HOLD'} here: {best} at {table[best]['ratio']:.3f} x the forward")
    one = table[best]["median_ms"] / table["forward fp32 (1 thread)"]["median_ms"]
    print(f"  stricter, against the bare FP32 forward at 1 thread (what a loaded machine favours): {one:.3f} x")
    write("evaluate_vs_forward", {
        "benchmark": "evaluate_vs_forward", "shard": str(shard), "images": len(items), "rounds": args.rounds,
        "backend": fast.backend, "per_image": table, "samples_ms": {k: [round(1000 * x, 2) for x in v]
                                                                     for k, v in samples.items()},
        "done_when_holds": held, "best": best,
        "best_vs_forward_1_thread": round(table[best]["median_ms"] / table["forward fp32 (1 thread)"]["median_ms"], 3), "uptime": loads, "machine": machine(),
        "median_input_hw": [int(statistics.median(x.shape[2] for x in inputs)),
                            int(statistics.median(x.shape[3] for x in inputs))]}, args.out)


if __name__ == "__main__":
    main()

"""Issue 13's done-when: `veil evaluate`'s whole time per image against the bare FP32 network forward.

On the same FDDB images (all present ones by default), in one process, the alternatives are
interleaved chunk by chunk (``--chunks K``: chunk j is shard j/K, so every alternative meets the
same changes of the machine's load within seconds of each other):

- ``forward fp32 (2 threads)``: the baseline the issue names: eager FP32 ``model(x)`` alone, on
  network inputs prepared beforehand (no decoding, preprocessing, post-processing or matching);
- ``forward fp32 (1 thread)``: the same at one thread (stricter where the machine is loaded:
  two threads then collapse);
- ``evaluate fp32 sequential (R threads)``: ``evaluate_fddb`` one step after another, FP32 (as it
  was; ``--ref-threads R``, default 2): the mAP reference;
- ``evaluate BACKEND pipelined (T threads)``: ``evaluate_fddb`` with the backend (default ``auto``)
  and the decode/preprocess prefetch thread: decode, preprocess, head, tail, post-processing and
  FDDB matching — wall time per image. (Each chunk starts its pipeline afresh, so its first
  image's decoding is not overlapped: a small handicap for the pipelined runs.)

The mAP of every evaluate alternative is computed over all chunks together. Prints ms per image
(total over all chunks / images), the median of the per-chunk ratios, and the verdict; JSON out.

    python benchmarks/evaluate_vs_forward.py --chunks 25
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import DATASET, WEIGHTS, machine, uptime, write

from veil.data import read_fddb
from veil.detector import Detector
from veil.evaluation import Shard, evaluate_fddb
from veil.evaluation.result import summarise
from veil.preprocess import load_image

BASE = "forward fp32 (2 threads)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=str(DATASET))
    p.add_argument("--weights", default=str(WEIGHTS))
    p.add_argument("--chunks", type=int, default=25, help="interleaving chunks over the images (default: %(default)s)")
    p.add_argument("--limit", type=int, help="only the first N chunks (a shorter run on fewer images)")
    p.add_argument("--backend", default="auto", help="backend of the pipelined evaluate (default: %(default)s)")
    p.add_argument(
        "--eval-threads",
        type=int,
        nargs="+",
        default=[2, 1],
        help="torch threads of the pipelined evaluate, one alternative each (default: 2 1)",
    )
    p.add_argument("--ref-threads", type=int, default=2, help="threads of the sequential FP32 evaluate (default: 2)")
    p.add_argument("--out", help="JSON result (default: benchmarks/results/evaluate_vs_forward.json)")
    args = p.parse_args()

    ds = read_fddb(args.dataset)
    ref = Detector.from_weights(args.weights, backend="fp32")
    fast = {}
    for t in args.eval_threads:  # onnxruntime fixes its thread count when its session is made: one each
        torch.set_num_threads(t)
        fast[t] = Detector(ref.model, ref.weights_sha256, backend=args.backend)
        _ = fast[t].runner  # built (an ONNX export happens once per weights) before timing
    backend = fast[args.eval_threads[0]].backend
    model = ref.model.eval()
    chunks = [Shard(j, args.chunks) for j in range(args.chunks)][: args.limit]

    def forward(threads: int):
        def run(shard: Shard) -> tuple[float, int, list]:
            inputs = [ref.preprocess(load_image(im.path)).tensor for im in shard.select(ds.available())]
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            with torch.inference_mode():
                for x in inputs:
                    model(x)
            return time.perf_counter() - t0, len(inputs), []

        return run

    def evaluate(det: Detector, threads: int, prefetch: bool):
        def run(shard: Shard) -> tuple[float, int, list]:
            torch.set_num_threads(threads)
            r = evaluate_fddb(det, ds, shard=shard, progress=False, prefetch=prefetch)
            return r.wall_s, r.images, r.records

        return run

    ref_eval = f"evaluate fp32 sequential ({args.ref_threads} thread{'s' if args.ref_threads > 1 else ''})"
    alts = {BASE: forward(2), "forward fp32 (1 thread)": forward(1), ref_eval: evaluate(ref, args.ref_threads, False)}
    for t in args.eval_threads:
        alts[f"evaluate {backend} pipelined ({t} thread{'s' if t > 1 else ''})"] = evaluate(fast[t], t, True)
    alts[BASE](Shard(0, len(ds.available())))  # warm-up on one image: first calls allocate

    seconds = {k: [] for k in alts}
    counts = dict.fromkeys(alts, 0)
    records: dict[str, list] = {k: [] for k in alts}
    loads = [uptime()]
    for j, shard in enumerate(chunks):
        for k, fn in alts.items():
            dt, n, recs = fn(shard)
            seconds[k].append(dt)
            counts[k] += n
            records[k] += recs
        if (j + 1) % 5 == 0 or j + 1 == len(chunks):
            loads.append(uptime())
            print(
                f"chunk {j + 1}/{len(chunks)}: "
                + ", ".join(f"{k} {1000 * sum(v) / counts[k]:.0f}" for k, v in seconds.items())
                + f" ms/img; {loads[-1]}",
                flush=True,
            )
    n_images = counts[BASE]
    base_total = sum(seconds[BASE])
    table = {}
    for k, v in seconds.items():
        per_chunk = [a / b for a, b in zip(v, seconds[BASE])]
        table[k] = {
            "ms_per_image": round(1000 * sum(v) / counts[k], 2),
            "ratio_total": round(sum(v) / base_total, 3),
            "ratio_median_of_chunks": round(statistics.median(per_chunk), 3),
            "ratio_chunks_min_max": [round(min(per_chunk), 3), round(max(per_chunk), 3)],
        }
        if records[k]:
            res = summarise(records[k], ds.fold_counts(), {}, [], None)
            table[k]["mAP"] = round(res.mAP, 6)
    for k in table:
        if "mAP" in table[k]:
            table[k]["mAP_minus_fp32_points"] = round(100 * (table[k]["mAP"] - table[ref_eval]["mAP"]), 4)
    print(f"{n_images} FDDB images in {len(chunks)} interleaved chunks; load {loads[0]} ... {loads[-1]}")
    print(f"{'alternative':<42} {'ms/img':>8} {'ratio':>7} {'chunk median':>13} {'mAP':>9}")
    for k, r in table.items():
        print(
            f"{k:<42} {r['ms_per_image']:>8.1f} {r['ratio_total']:>7.3f} {r['ratio_median_of_chunks']:>13.3f} "
            f"{r.get('mAP', float('nan')):>9.5f}"
        )
    fast_keys = [k for k in table if k.startswith(f"evaluate {backend} pipelined")]
    best = min(fast_keys, key=lambda k: table[k]["ratio_total"])
    held = table[best]["ratio_total"] <= 1.0 and abs(table[best]["mAP_minus_fp32_points"]) <= 0.1
    strict = table[best]["ms_per_image"] / table["forward fp32 (1 thread)"]["ms_per_image"]
    print(
        f"done-when (evaluate per image <= bare FP32 forward at 2 threads, mAP within 0.1 point): "
        f"{'HOLDS' if held else 'DOES NOT HOLD'} here: {best} at {table[best]['ratio_total']:.3f} x, "
        f"mAP {table[best]['mAP_minus_fp32_points']:+.3f} points"
    )
    print(f"  stricter, against the bare FP32 forward at 1 thread: {strict:.3f} x")
    write(
        "evaluate_vs_forward",
        {
            "benchmark": "evaluate_vs_forward",
            "images": n_images,
            "chunks": len(chunks),
            "backend": backend,
            "per_image": table,
            "done_when_holds": held,
            "best": best,
            "best_vs_forward_1_thread": round(strict, 3),
            "seconds_per_chunk": {k: [round(x, 4) for x in v] for k, v in seconds.items()},
            "uptime": loads,
            "machine": machine(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()

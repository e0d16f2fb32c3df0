"""How `veil evaluate` scales: 1, 2, 4 worker processes, and an Indexed Job's shards run side by side.

Every alternative is the real command (``python -m veil evaluate``) on the same FDDB images: a
temporary FDDB tree (the real fold files, symbolic links to every k-th present image), so
process start and weights loading count as they do in a pod. Alternatives, interleaved per round:

- ``workers 1 (T threads)``: one process, the decode/preprocess prefetch thread, T torch threads;
- ``workers W``: W processes with cores/W threads each (``--workers W``);
- ``shards N``: N processes ``--shard i/N`` started together (an Indexed Job of N pods on this
  machine), each with cores/N threads; then ``veil merge-results``, checked equal to one run.

Prints the wall time per image (command start to last exit; medians over rounds) and ratios to
``workers 1``, and the machine's load; writes JSON.

    python benchmarks/evaluate_scaling.py --every 5 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import DATASET, WEIGHTS, machine, print_table, summary, uptime, write

from veil.data import read_fddb
from veil.evaluation.runner import cores


def subset_tree(dataset: Path, every: int, dest: Path) -> int:
    """A FDDB tree at ``dest`` holding every ``every``-th present image (symlinks); returns its size."""
    ds = read_fddb(dataset)
    shutil.copytree(dataset / "FDDB-folds", dest / "FDDB-folds")
    chosen = ds.available()[::every]
    for im in chosen:
        link = dest / "originalPics" / f"{im.name}.jpg"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(im.path).resolve())
    return len(chosen)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=str(DATASET))
    p.add_argument("--weights", default=str(WEIGHTS))
    p.add_argument("--every", type=int, default=5, help="every k-th present FDDB image (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--backend", default="auto", help="--backend of every run (default: %(default)s)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--shards", type=int, nargs="+", default=[2, 4])
    p.add_argument("--out", help="JSON result (default: benchmarks/results/evaluate_scaling.json)")
    args = p.parse_args()
    n_cores = cores()
    veil = [sys.executable, "-m", "veil"]
    has_threads = (
        "--threads" in subprocess.run(veil + ["evaluate", "--help"], capture_output=True, text=True, check=False).stdout
    )

    with tempfile.TemporaryDirectory(prefix="veil-scaling-") as tmp:
        tmp = Path(tmp)
        n = subset_tree(Path(args.dataset), args.every, tmp / "fddb")
        base = veil + [
            "evaluate",
            "--dataset",
            str(tmp / "fddb"),
            "--weights",
            args.weights,
            "--backend",
            args.backend,
            "--no-progress",
        ]

        def threads(t: int) -> list[str]:
            return ["--threads", str(t)] if has_threads else []

        def run_workers(w: int, t: int, key: str):
            def go() -> float:
                out = tmp / f"{key}.json"
                t0 = time.perf_counter()
                subprocess.run(
                    base + ["--workers", str(w), "--json", str(out)] + threads(t),
                    check=True,
                    capture_output=True,
                    env={**os.environ, "OMP_NUM_THREADS": str(t)},
                )
                dt = time.perf_counter() - t0
                maps[key] = json.loads(out.read_text())["mAP"]
                out.unlink()
                return dt / n

            return go

        def run_shards(count: int, key: str):
            def go() -> float:
                part = tmp / f"partials-{count}"
                shutil.rmtree(part, ignore_errors=True)
                t = max(1, n_cores // count)
                t0 = time.perf_counter()
                procs = [
                    subprocess.Popen(
                        base + ["--shard", f"{i}/{count}", "--out-partial", str(part)] + threads(t),
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                        env={**os.environ, "OMP_NUM_THREADS": str(t)},
                    )
                    for i in range(count)
                ]
                for pr in procs:
                    _, err = pr.communicate()
                    if pr.returncode:
                        raise RuntimeError(f"shard failed: {err.decode()[-2000:]}")
                dt = time.perf_counter() - t0
                merged = tmp / f"merged-{count}.json"
                subprocess.run(
                    veil + ["merge-results", str(part), "--json", str(merged)], check=True, capture_output=True
                )
                maps[key] = json.loads(merged.read_text())["mAP"]
                return dt / n

            return go

        maps: dict[str, float] = {}
        alts = {}
        for w in args.workers:
            if w == 1:
                for t in sorted({n_cores, 1}, reverse=True):
                    key = f"workers 1 ({t} thread{'s' if t > 1 else ''})"
                    alts[key] = run_workers(1, t, key)
            else:
                alts[f"workers {w}"] = run_workers(w, max(1, n_cores // w), f"workers {w}")
        for c in args.shards:
            alts[f"shards {c} (side by side)"] = run_shards(c, f"shards {c} (side by side)")
        samples: dict[str, list[float]] = {k: [] for k in alts}
        loads = [uptime()]
        for r in range(args.rounds):
            for k, fn in alts.items():
                samples[k].append(fn())
                print(f"round {r + 1}: {k}: {1000 * samples[k][-1]:.0f} ms per image; {uptime()}", flush=True)
            loads.append(uptime())
    baseline = next(iter(alts))
    table = summary(samples, baseline)
    for k in table:
        table[k]["mAP"] = round(maps[k], 6)
    print_table(
        f"veil evaluate --backend {args.backend}: wall ms per image (whole command), {n} FDDB images, "
        f"{args.rounds} rounds, {n_cores} cores; load {loads[0]} ... {loads[-1]}",
        table,
        baseline,
    )
    if len({round(v, 9) for v in maps.values()}) != 1:
        print(f"WARNING: the runs disagree on mAP: {maps}")
    write(
        "evaluate_scaling",
        {
            "benchmark": "evaluate_scaling",
            "images": n,
            "rounds": args.rounds,
            "backend": args.backend,
            "cores": n_cores,
            "threads_flag": has_threads,
            "per_image": table,
            "uptime": loads,
            "machine": machine(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()

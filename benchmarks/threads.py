"""Torch threads per process under load: why ``--threads`` defaults to 1 (issue 12, item 6).

Times the whole per-image path (preprocess, head, tail, post-processing at the FDDB ×3 scale) on the
same photos with 1 thread and with torch's default (one per core), interleaved round by round so both
see the same load, and records ``uptime``. Photos: the public-domain samples that ship with veil's
dependencies, or FDDB images with ``--dataset``.

    python benchmarks/threads.py [--rounds 3] [--dataset FDDB] [--images 4]
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import machine, print_table, summary, uptime, write

from veil import assets
from veil.detector import Detector


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dataset", help="FDDB root: time its first --images images instead of the samples")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--out")
    args = p.parse_args()
    if args.dataset:
        from veil.data import read_fddb
        from veil.preprocess import load_image

        images = [load_image(im.path) for im in read_fddb(args.dataset).available()[: args.images]]
    else:
        images = list(assets.sample_images().values())
    det = Detector.from_weights()
    default = torch.get_num_threads()
    settings = {"1 thread": 1, f"torch default ({default} threads)": default}
    samples: dict[str, list[float]] = {k: [] for k in settings}
    load_before = uptime()
    det.detect(images[0])  # warm-up
    for _ in range(args.rounds):
        for name, n in settings.items():
            torch.set_num_threads(n)
            for img in images:
                t0 = time.perf_counter()
                det.detect(img, obfuscate=False)
                samples[name].append(time.perf_counter() - t0)
    torch.set_num_threads(default)
    table = summary(samples, "1 thread")
    print_table(f"per image, ×3 scale, {len(images)} images × {args.rounds} rounds, interleaved", table, "1 thread")
    write(
        "threads",
        {
            "table": table,
            "uptime_before": load_before,
            "uptime_after": uptime(),
            "machine": machine(),
            "images": len(images),
            "rounds": args.rounds,
        },
        args.out,
    )


if __name__ == "__main__":
    main()

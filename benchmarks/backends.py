"""Head and tail per backend (veil.backends), and preprocessing old vs fused, interleaved on FDDB images.

For every image, each alternative runs once, in turn (so a change in the machine's load hits all
alternatives alike); repeated ``--rounds`` times. Network alternatives: ``fp32`` (eager, the
baseline), ``bf16`` (autocast; where the CPU has native BF16), ``onnx`` (onnxruntime) — head,
tail and both, at ``--threads`` torch/onnxruntime threads. Preprocessing alternatives: the float32
resize it replaced against ``veil.preprocess.prepare`` (uint8 resize, fused normalise+layout).
Also the largest score difference of each backend from FP32. Prints medians and ratios; JSON out.

    python benchmarks/backends.py --images 12 --rounds 2 --threads 2
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch
from _common import DATASET, WEIGHTS, machine, print_table, summary, uptime, write

from veil.backends import NAMES, bf16_unsupported_reason, make_backend
from veil.data import read_fddb
from veil.detector import Detector
from veil.preprocess import BGR_MEAN, FDDB_SCALE, load_image, prepare


def prepare_float(image: np.ndarray, scale: float = FDDB_SCALE) -> torch.Tensor:
    """The preprocessing ``prepare`` replaced: float32 copy, float resize, subtract, transpose copy."""
    img = cv2.resize(image.astype(np.float32), None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    img -= np.asarray(BGR_MEAN, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).unsqueeze(0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=str(DATASET))
    p.add_argument("--weights", default=str(WEIGHTS))
    p.add_argument(
        "--images", type=int, default=12, help="FDDB images, every k-th of the present ones (default: %(default)s)"
    )
    p.add_argument("--rounds", type=int, default=2, help="passes over the images (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads (default: %(default)s)")
    p.add_argument("--out", help="JSON result (default: benchmarks/results/backends-<threads>t.json)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(1)  # preprocessing is timed on one core (the prefetch thread's share)

    det = Detector.from_weights(args.weights)
    present = read_fddb(args.dataset).available()
    step = max(1, len(present) // args.images)
    images = [load_image(im.path) for im in present[::step][: args.images]]
    names = [n for n in NAMES if n != "bf16" or bf16_unsupported_reason() is None]
    runners = {n: make_backend(n, det.model, det.weights_sha256) for n in names}

    alts: dict[str, list[float]] = {"preprocess float32 (before)": [], "preprocess fused uint8 (prepare)": []}
    for n in names:
        alts.update({f"head {n}": [], f"tail {n}": [], f"head+tail {n}": []})
    worst = dict.fromkeys(names, 0.0)
    with torch.inference_mode():
        for x in (prepare(images[0]).tensor,):  # warm-up
            for r in runners.values():
                r.tail(r.head(x))
        loads = [uptime()]
        for _ in range(args.rounds):
            for img in images:
                t0 = time.perf_counter()
                prepare_float(img)
                t1 = time.perf_counter()
                x = prepare(img).tensor
                t2 = time.perf_counter()
                alts["preprocess float32 (before)"].append(t1 - t0)
                alts["preprocess fused uint8 (prepare)"].append(t2 - t1)
                ref_conf = None
                for n, r in runners.items():
                    t0 = time.perf_counter()
                    a = r.head(x)
                    t1 = time.perf_counter()
                    _, conf = r.tail(a)
                    t2 = time.perf_counter()
                    alts[f"head {n}"].append(t1 - t0)
                    alts[f"tail {n}"].append(t2 - t1)
                    alts[f"head+tail {n}"].append(t2 - t0)
                    if ref_conf is None:
                        ref_conf = conf
                    worst[n] = max(worst[n], float((conf - ref_conf).abs().max()))
            loads.append(uptime())
    pre = {k: v for k, v in alts.items() if k.startswith("preprocess")}
    net = {k: v for k, v in alts.items() if not k.startswith("preprocess")}
    t_pre = summary(pre, "preprocess float32 (before)")
    t_net = summary(net, "head+tail fp32")
    for part in ("head", "tail"):  # each part's ratio against its own FP32
        for n in names:
            t_net[f"{part} {n}"]["ratio_to_fp32_part"] = round(
                t_net[f"{part} {n}"]["median_ms"] / t_net[f"{part} fp32"]["median_ms"], 3
            )
    title = (
        f"{len(images)} FDDB images x{FDDB_SCALE:g}, {args.rounds} rounds, {args.threads} threads; "
        f"load {loads[0]} ... {loads[-1]}"
    )
    print_table("preprocessing (1 OpenCV thread); " + title, t_pre, "preprocess float32 (before)")
    print_table("network; " + title, t_net, "head+tail fp32")
    print("largest softmax-score difference from fp32: " + ", ".join(f"{n} {w:.2g}" for n, w in worst.items()))
    write(
        f"backends-{args.threads}t",
        {
            "benchmark": "backends",
            "images": len(images),
            "rounds": args.rounds,
            "threads": args.threads,
            "preprocess": t_pre,
            "network": t_net,
            "max_score_diff_vs_fp32": worst,
            "uptime": loads,
            "machine": machine(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()

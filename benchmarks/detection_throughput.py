"""Detection throughput at the FDDB test settings, and where the time goes.

Runs the split FaceBoxes detector on real FDDB images (upscaled ×3, confidence 0.05, NMS 0.3)
and reports images/s end to end (``Detector.detect``, the path ``veil evaluate`` runs) plus
the per-image time of each stage — preprocess, head (trust zone), tail (server), post-process
— as medians over all images and repeats. Prints a table and writes JSON.

    python benchmarks/detection_throughput.py --images 40 --repeats 3

Image decoding is excluded (images are read once, before timing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from veil.data import read_fddb
from veil.detector import Detector
from veil.preprocess import FDDB_SCALE, load_image, prepare

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VEIL_SHARED", ROOT.parent / "shared"))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=str(SHARED / "data" / "fddb"), help="FDDB root (default: %(default)s)")
    p.add_argument(
        "--weights",
        default=str(SHARED / "models" / "faceboxes" / "FaceBoxesProd.pth"),
        help="FaceBoxes weights (default: %(default)s)",
    )
    p.add_argument(
        "--images", type=int, default=40, help="FDDB images to time, in dataset order (default: %(default)s)"
    )
    p.add_argument("--repeats", type=int, default=3, help="passes over those images (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed images first (default: %(default)s)")
    p.add_argument("--scale", type=float, default=FDDB_SCALE, help="input upscale (default: %(default)s)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own choice)")
    p.add_argument("--backend", default="fp32", help="head/tail backend: fp32, bf16, onnx, auto (default: %(default)s)")
    p.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results" / "detection_throughput.json"),
        help="JSON result (default: %(default)s)",
    )
    return p.parse_args()


def ms(seconds: list[float]) -> float:
    return round(1000 * statistics.median(seconds), 2)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    det = Detector.from_weights(args.weights, scale=args.scale, backend=args.backend)
    _ = det.runner  # an ONNX export (once per weights) is not timed
    items = read_fddb(args.dataset).available()[: args.images]
    if not items:
        raise SystemExit(f"no FDDB images under {args.dataset}")
    images = [load_image(im.path) for im in items]
    for img in images[: args.warmup]:
        det.detect(img)

    stages: dict[str, list[float]] = {"preprocess": [], "head": [], "tail": [], "postprocess": []}
    end_to_end: list[float] = []
    pass_rates: list[float] = []
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        t_pass = 0.0
        for img in images:
            t0 = time.perf_counter()
            det.detect(img)
            dt = time.perf_counter() - t0
            end_to_end.append(dt)
            t_pass += dt
            # The same work stage by stage (a separate call, so the end-to-end time has no timer overhead).
            with torch.inference_mode():
                t0 = time.perf_counter()
                prep = prepare(img, det.scale)
                t1 = time.perf_counter()
                a = det.runner.head(prep.tensor)
                t2 = time.perf_counter()
                loc, conf = det.runner.tail(a)
                t3 = time.perf_counter()
                det.boxes_from_outputs(loc, conf, prep)
                t4 = time.perf_counter()
            for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                stages[name].append(dt)
        pass_rates.append(len(images) / t_pass)

    total = sum(ms(v) for v in stages.values())
    shape = [img.shape[:2] for img in images]
    result = {
        "benchmark": "detection_throughput",
        "settings": {
            "backend": det.backend,
            "scale": det.scale,
            "confidence": det.post.confidence,
            "nms_iou": det.post.nms_iou,
            "images": len(images),
            "repeats": args.repeats,
            "dataset": "FDDB originalPics (first N present)",
            "median_input_hw": [
                int(statistics.median(h for h, _ in shape) * det.scale),
                int(statistics.median(w for _, w in shape) * det.scale),
            ],
        },
        "images_per_s": round(statistics.median(pass_rates), 3),
        "images_per_s_per_pass": [round(r, 3) for r in pass_rates],
        "detect_ms_median": ms(end_to_end),
        "stage_ms_median": {k: ms(v) for k, v in stages.items()},
        "stage_share": {k: round(ms(v) / total, 3) for k, v in stages.items()},
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_1m_before": round(load_before[0], 2),
            "loadavg_1m_after": round(os.getloadavg()[0], 2),
            "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip(),
        },
    }
    print(
        f"backend {det.backend}; FaceBoxes detection at FDDB settings "
        f"(x{det.scale:g}, conf {det.post.confidence}, NMS {det.post.nms_iou}), "
        f"{len(images)} images x {args.repeats} passes, {torch.get_num_threads()} torch threads"
    )
    print(f"{'stage':<12} {'median ms':>10} {'share':>7}")
    for k, v in result["stage_ms_median"].items():
        print(f"{k:<12} {v:>10.2f} {result['stage_share'][k]:>7.1%}")
    print(f"{'detect':<12} {result['detect_ms_median']:>10.2f}   (end to end, median per image)")
    print(f"throughput: {result['images_per_s']:.2f} images/s (median of {args.repeats} passes)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

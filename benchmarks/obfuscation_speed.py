"""Speed of the obfuscation step on a 1920×1080 image, beside the whole client side.

The reference design reported 5.07 ms for its obfuscation step on a 1920×1080 image
(V100). Here: median over many runs of (a) the noise step alone (``ã = a + μ + σ ε`` on
the head's activation) and (b) the whole client side (preprocess + head + noise), at
scale ×1 (the 1920×1080 frame goes into the network as is: a 128×34×60 activation), on
CPU and, when present, CUDA. The two are timed alternately (same machine load for both), and
the noise step is reported as a fraction of the client side.

    python benchmarks/obfuscation_speed.py [--noise FILE] [--runs 200] [--out benchmarks/results/obfuscation_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from veil.obfuscate import Obfuscator, load_obfuscator
from veil.preprocess import prepare
from veil.weights import REFERENCE_SHA256, load_faceboxes

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_MS = 5.07


def interleaved_ms(noise_step, client_side, runs: int, client_runs: int, sync) -> tuple[float, float]:
    """Medians (ms) of the noise step and the client side, timed alternately so both see the same load."""
    for _ in range(3):  # warm-up: allocator, kernels, generator creation
        client_side()
        noise_step()
    sync()
    noise, client = [], []
    per_round = max(1, runs // client_runs)
    for _ in range(client_runs):
        t = time.perf_counter()
        client_side()
        sync()
        client.append((time.perf_counter() - t) * 1e3)
        for _ in range(per_round):
            t = time.perf_counter()
            noise_step()
            sync()
            noise.append((time.perf_counter() - t) * 1e3)
    return statistics.median(noise), statistics.median(client)


def frame() -> np.ndarray:
    """A 1920×1080 BGR frame: a real photo from ../shared resized, else a fixed random picture."""
    import cv2

    src = ROOT.parent / "shared" / "data" / "dlib_faces" / "2008_002079.jpg"
    img = cv2.imread(str(src)) if src.is_file() else None
    if img is None:
        img = np.random.default_rng(0).integers(0, 256, (270, 480, 3), dtype=np.uint8)
    return cv2.resize(img, (1920, 1080), interpolation=cv2.INTER_LINEAR)


def bench(device: str, model, obf: Obfuscator, image: np.ndarray, runs: int, client_runs: int) -> dict:
    dev = torch.device(device)
    model = model.to(dev)
    obf = obf.to(dev)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        a = model.head(prepare(image, 1.0).tensor.to(dev))

        def noise_step():
            obf(a)

        def client_side():
            x = prepare(image, 1.0).tensor.to(dev)
            obf(model.head(x))

        noise, client = interleaved_ms(noise_step, client_side, runs, client_runs, sync)
    return {"device": device if dev.type == "cpu" else torch.cuda.get_device_name(dev),
            "activation_shape": list(a.shape), "noise_step_ms": round(noise, 4), "client_side_ms": round(client, 3),
            "noise_fraction_of_client_side": round(noise / client, 5),
            "noise_step_vs_reference": round(noise / REFERENCE_MS, 4), "runs": max(1, runs // client_runs) * client_runs,
            "client_runs": client_runs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--noise", help="a fitted noise file (default: a 128-channel transform; speed does not depend on values)")
    p.add_argument("--weights", help="FaceBoxes weights (default: $VEIL_WEIGHTS, ../shared, then the cache)")
    p.add_argument("--runs", type=int, default=300, help="timed runs of the noise step (default: %(default)s)")
    p.add_argument("--client-runs", type=int, default=30, help="timed runs of the client side (default: %(default)s)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "obfuscation_speed.json"))
    args = p.parse_args(argv)
    weights = args.weights or os.environ.get("VEIL_WEIGHTS")
    shared = ROOT.parent / "shared" / "models" / "faceboxes" / "FaceBoxesProd.pth"
    if not weights and shared.is_file():
        weights = str(shared)
    model, digest = load_faceboxes(weights)
    if args.noise:
        obf, _ = load_obfuscator(None, noise=args.noise, weights_sha256=digest)
    else:
        obf = Obfuscator(128, init_sigma=0.5).requires_grad_(False)
    image = frame()
    results = [bench("cpu", model, obf, image, args.runs, args.client_runs)]
    if torch.cuda.is_available():
        results.append(bench("cuda", model, obf, image, args.runs, args.client_runs))
    doc = {"image": "1920x1080 BGR uint8, scale x1", "reference_ms": REFERENCE_MS, "reference_device": "V100",
           "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
           "note": "medians; the machine may be shared, so absolute times vary between runs, ratios less so",
           "weights_sha256_is_reference": digest == REFERENCE_SHA256, "results": results}
    for r in results:
        print(f"{r['device']}: noise step {r['noise_step_ms']:.3f} ms (median of {r['runs']}), client side "
              f"(preprocess + head + noise) {r['client_side_ms']:.2f} ms (median of {r['client_runs']}): "
              f"noise = {100 * r['noise_fraction_of_client_side']:.2f}% of the client side, "
              f"{r['noise_step_vs_reference']:.3f}× the reference's {REFERENCE_MS} ms")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

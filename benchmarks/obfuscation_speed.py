"""Speed of the obfuscation step on a 1920×1080 image, beside the whole client side.

The reference design reported 5.07 ms for its obfuscation step on a 1920×1080 image
(V100). Here: median over many runs of (a) the noise step alone (``ã = a + μ + σ ε`` on
the head's activation) from each noise source — torch's MT19937 generator (the old default),
the AES-256-CTR keystream (fresh noise, today's default) and keyed noise (HMAC of a client key
and the activation, then the keystream) — and (b) the whole client side (preprocess + head +
default noise), at scale ×1 (the 1920×1080 frame goes into the network as is: a 128×34×60
activation), on CPU and, when present, CUDA. All are timed round-robin in one loop (same machine
load for each); ratios are against the torch-generator path, and the noise step is reported as a
fraction of the client side.

    python benchmarks/obfuscation_speed.py [--noise FILE] [--runs 300] [--out benchmarks/results/obfuscation_speed.json]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from veil.jsonio import write_json
from veil.models import as_split_model
from veil.obfuscate import Obfuscator, load_obfuscator
from veil.preprocess import prepare
from veil.settings import settings
from veil.weights import REFERENCE_SHA256, load_faceboxes

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_MS = 5.07


def interleaved_ms(
    steps: dict[str, Callable[[], object]],
    client_side: Callable[[], object],
    runs: int,
    client_runs: int,
    sync: Callable[[], object],
) -> tuple[dict[str, float], float]:
    """Medians (ms) of each noise step and of the client side, timed round-robin so all see the same load."""
    for _ in range(3):  # warm-up: allocator, kernels, stream creation
        client_side()
        for f in steps.values():
            f()
    sync()
    times: dict[str, list[float]] = {k: [] for k in steps}
    client = []
    per_round = max(1, runs // client_runs)
    for _ in range(client_runs):
        t = time.perf_counter()
        client_side()
        sync()
        client.append((time.perf_counter() - t) * 1e3)
        for _ in range(per_round):
            for name, f in steps.items():
                t = time.perf_counter()
                f()
                sync()
                times[name].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}, statistics.median(client)


def frame() -> np.ndarray:
    """A 1920×1080 BGR frame: a real photo from ../shared resized, else a fixed random picture."""
    import cv2

    src = ROOT.parent / "shared" / "data" / "dlib_faces" / "2008_002079.jpg"
    img = cv2.imread(str(src)) if src.is_file() else None
    if img is None:
        img = np.random.default_rng(0).integers(0, 256, (270, 480, 3), dtype=np.uint8)
    return cv2.resize(img, (1920, 1080), interpolation=cv2.INTER_LINEAR)


def sources(obf: Obfuscator) -> dict[str, Obfuscator]:
    """The same transform (μ, σ) with each noise source."""
    torch_gen = copy.deepcopy(obf)
    torch_gen._explicit = torch.Generator().manual_seed(secrets.randbits(63))  # the pre-keystream default
    keyed = copy.deepcopy(obf)
    keyed.set_key(secrets.token_bytes(32))
    return {"torch_mt19937": torch_gen, "aes_ctr_fresh": copy.deepcopy(obf), "keyed_hmac_aes": keyed}


def bench(device: str, model, obf: Obfuscator, image: np.ndarray, runs: int, client_runs: int) -> dict:
    dev = torch.device(device)
    model = model.to(dev)
    obfs = {k: o.to(dev) for k, o in sources(obf).items()}
    if dev.type == "cuda":  # a torch generator is per device
        obfs["torch_mt19937"]._explicit = torch.Generator(device=dev).manual_seed(secrets.randbits(63))
    default = obfs["aes_ctr_fresh"]
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        a = model.head(prepare(image, 1.0).tensor.to(dev))
        steps = {k: (lambda o=o: o(a)) for k, o in obfs.items()}

        def client_side():
            x = prepare(image, 1.0).tensor.to(dev)
            default(model.head(x))

        noise, client = interleaved_ms(steps, client_side, runs, client_runs, sync)
    base = noise["torch_mt19937"]
    return {
        "device": device if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "activation_shape": list(a.shape),
        "noise_step_ms": {k: round(v, 4) for k, v in noise.items()},
        "ratio_to_torch_mt19937": {k: round(v / base, 3) for k, v in noise.items()},
        "client_side_ms": round(client, 3),
        "default_noise_fraction_of_client_side": round(noise["aes_ctr_fresh"] / client, 5),
        "default_noise_vs_reference": round(noise["aes_ctr_fresh"] / REFERENCE_MS, 4),
        "runs_per_source": max(1, runs // client_runs) * client_runs,
        "client_runs": client_runs,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--noise", help="a fitted noise file (default: a 128-channel transform; speed does not depend on values)"
    )
    p.add_argument("--weights", help="FaceBoxes weights (default: $VEIL_WEIGHTS, ../shared, then the cache)")
    p.add_argument("--runs", type=int, default=300, help="timed runs of the noise step (default: %(default)s)")
    p.add_argument("--client-runs", type=int, default=30, help="timed runs of the client side (default: %(default)s)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "obfuscation_speed.json"))
    args = p.parse_args(argv)
    weights = args.weights or settings().weights
    shared = ROOT.parent / "shared" / "models" / "faceboxes" / "FaceBoxesProd.pth"
    if not weights and shared.is_file():
        weights = str(shared)
    model, digest = load_faceboxes(weights)
    if args.noise:
        obf, _ = load_obfuscator(None, noise=args.noise, model=as_split_model(model, digest))
    else:
        obf = Obfuscator(128, init_sigma=0.5).requires_grad_(False)
    image = frame()
    load = list(os.getloadavg())
    results = [bench("cpu", model, obf, image, args.runs, args.client_runs)]
    if torch.cuda.is_available():
        results.append(bench("cuda", model, obf, image, args.runs, args.client_runs))
    doc = {
        "image": "1920x1080 BGR uint8, scale x1",
        "reference_ms": REFERENCE_MS,
        "reference_device": "V100",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_average_before": load,
        "load_average_after": list(os.getloadavg()),
        "cpus": os.cpu_count(),
        "note": "medians; the machine may be shared (see load_average), so absolute times vary between runs, "
        "ratios less so",
        "weights_sha256_is_reference": digest == REFERENCE_SHA256,
        "results": results,
    }
    for r in results:
        ms, ratio = r["noise_step_ms"], r["ratio_to_torch_mt19937"]
        print(
            f"{r['device']}: noise step (median of {r['runs_per_source']} each): "
            + ", ".join(f"{k} {ms[k]:.3f} ms ({ratio[k]:.2f}×)" for k in ms)
            + f"; client side (preprocess + head + default noise) {r['client_side_ms']:.2f} ms (median of "
            f"{r['client_runs']}): default noise = {100 * r['default_noise_fraction_of_client_side']:.2f}% of it, "
            f"{r['default_noise_vs_reference']:.3f}× the reference's {REFERENCE_MS} ms"
        )
    print(f"load average (1, 5, 15 min) before {load}, after {doc['load_average_after']} on {os.cpu_count()} CPUs")
    print(f"wrote {write_json(args.out, doc)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

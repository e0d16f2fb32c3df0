"""The served tail: how it runs inside Triton's python backend, and dynamic batching, under 1/4/16 clients.

Starts one bundled tritonserver (nvidia-pytriton wheel, loopback, free ports) per server variant,
all at once, and interleaves every (variant, wire mode, clients) cell round by round so they share
the machine's load. Variants of the model ``face_detection_base`` (the clean FP32 tail):

- ``torch tail, batching 2 ms``: the python backend running the TorchScript tail with torch (what
  a python backend without onnxruntime would do; model.py replaced by :data:`TORCH_MODEL`);
- ``onnxruntime tail, no batching``: the shipped python-backend model (onnxruntime inside it),
  ``dynamic_batching`` removed from config.pbtxt;
- ``onnxruntime tail, batching 2 ms``: the shipped repository as ``veil export-triton`` writes it;
- ``onnxruntime tail, batching 10 ms``: a longer queue delay, larger batches.

Wire modes: the reference design's FP32 as JSON text over HTTP (the baseline), and FP32 binary over
gRPC. The activation is a real one of the reference's size (an FDDB photo at 1024x1024: [1,128,32,32]).
Reports requests/s, p50/p99 latency and bytes per request (client → server, counted by a loopback
proxy) and the ratios of requests/s and p50 to the baseline cell with the same clients; JSON out.

    python benchmarks/served_tail.py --clients 1 4 16 --rounds 1
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import DATASET, WEIGHTS, machine, uptime, write
from triton_load import activation_1024, run_round, wire_bytes

from veil.detector import Detector
from veil.export import export_torchscript
from veil.serving.repository import BASE_MODEL, write_repository
from veil.serving.server import TritonServer

WIRE = {"HTTP FP32 JSON (reference)": "reference: HTTP FP32 JSON text", "gRPC FP32 binary": "gRPC FP32 binary"}
BASELINE = ("onnxruntime tail, batching 2 ms", "HTTP FP32 JSON (reference)")

#: A python-backend model running the TorchScript tail with torch (one thread per instance).
TORCH_MODEL = """
import os
import numpy as np
import torch
import triton_python_backend_utils as pb_utils

torch.set_num_threads(1)


class TritonPythonModel:
    def initialize(self, args):
        self.tail = torch.jit.load(os.path.join(args["model_repository"], args["model_version"], "model.pt")).eval()

    def execute(self, requests):
        out = []
        for request in requests:
            a = torch.from_numpy(pb_utils.get_input_tensor_by_name(request, "INPUT_0").as_numpy().copy())
            with torch.inference_mode():
                loc, conf = self.tail(a)
            out.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("OUTPUT_0", loc.numpy()), pb_utils.Tensor("OUTPUT_1", conf.numpy())]))
        return out
"""


def variant_repo(det: Detector, src: Path, dest: Path, tail: str, delay_us: int | None) -> Path:
    """A copy of the python repository's base model with the tail runner and batching delay changed."""
    shutil.copytree(src / BASE_MODEL, dest / BASE_MODEL)
    cfg = dest / BASE_MODEL / "config.pbtxt"
    text = cfg.read_text()
    if delay_us is None:
        text = re.sub(r"dynamic_batching\s*\{[^}]*\}\n?", "", text)
    else:
        text = re.sub(r"max_queue_delay_microseconds:\s*\d+", f"max_queue_delay_microseconds: {delay_us}", text)
    cfg.write_text(text)
    if tail == "torch":
        version = next(p for p in (dest / BASE_MODEL).iterdir() if p.is_dir())
        (version / "model.py").write_text(TORCH_MODEL)
        export_torchscript(det.model, version / "model.pt")
    return dest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(WEIGHTS))
    p.add_argument("--dataset", default=str(DATASET))
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument(
        "--per-client", type=int, default=3, help="timed requests per client per cell (default: %(default)s)"
    )
    p.add_argument("--max-seconds", type=float, default=480, help="time bound of the timed part (default: %(default)s)")
    p.add_argument("--out", help="JSON result (default: benchmarks/results/served_tail.json)")
    args = p.parse_args()

    det = Detector.from_weights(args.weights, backend="fp32")
    image = sorted((Path(args.dataset) / "originalPics").rglob("*.jpg"))[0]
    a = activation_1024(det, image)
    variants = {
        "torch tail, batching 2 ms": ("torch", 2000),
        "onnxruntime tail, no batching": ("onnx", None),
        "onnxruntime tail, batching 2 ms": ("onnx", 2000),
        "onnxruntime tail, batching 10 ms": ("onnx", 10000),
    }
    with tempfile.TemporaryDirectory(prefix="veil-served-") as tmp:
        tmp = Path(tmp)
        src = write_repository(det.model, tmp / "exported", det.weights_sha256, formats=("python",)).repositories[
            "python"
        ]
        servers = {
            v: TritonServer(variant_repo(det, src, tmp / f"v{i}", tail, delay), models=[BASE_MODEL])
            for i, (v, (tail, delay)) in enumerate(variants.items())
        }
        try:
            for s in servers.values():
                s.start()
            lat = {(v, w, c): [] for v in variants for w in WIRE for c in args.clients}
            wall = dict.fromkeys(lat, 0.0)
            errors = dict.fromkeys(lat, 0)
            loads = [uptime()]
            deadline = time.monotonic() + args.max_seconds
            for r in range(args.rounds):
                for c in args.clients:
                    for v, s in servers.items():
                        for w, mode in WIRE.items():
                            ls, wl, err = run_round(det, s, mode, c, a, args.per_client, deadline)
                            lat[(v, w, c)] += ls
                            wall[(v, w, c)] += wl
                            errors[(v, w, c)] += len(err)
                    loads.append(uptime())
                    print(f"round {r + 1}, {c} clients done; {loads[-1]}", flush=True)
            sent = {(v, w): wire_bytes(det, s, WIRE[w], a) for v, s in servers.items() for w in WIRE}
        finally:
            for s in servers.values():
                s.stop()
    rows = []
    for (v, w, c), ls in lat.items():
        ls = sorted(ls)
        rows.append(
            {
                "variant": v,
                "wire": w,
                "clients": c,
                "requests": len(ls),
                "errors": errors[(v, w, c)],
                "requests_per_s": round(len(ls) / wall[(v, w, c)], 3) if wall[(v, w, c)] else None,
                "p50_ms": round(1e3 * statistics.median(ls), 2) if ls else None,
                "p99_ms": round(1e3 * float(np.percentile(ls, 99)), 2) if ls else None,
                "bytes_sent_per_request": round(sent[(v, w)][0]),
                "bytes_received_per_request": round(sent[(v, w)][1]),
            }
        )
    base = {r["clients"]: r for r in rows if (r["variant"], r["wire"]) == BASELINE}
    print(f"served tail, activation {list(a.shape)}; load {loads[0]} ... {loads[-1]}")
    print(
        f"{'variant':<34} {'wire':<27} {'cl':>3} {'req/s':>7} {'x base':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p50 x':>6} {'sent KiB':>9}"
    )
    for r in rows:
        b = base[r["clients"]]
        r["requests_per_s_vs_baseline"] = (
            round(r["requests_per_s"] / b["requests_per_s"], 3) if r["requests_per_s"] else None
        )
        r["p50_vs_baseline"] = round(r["p50_ms"] / b["p50_ms"], 3) if r["p50_ms"] else None
        print(
            f"{r['variant']:<34} {r['wire']:<27} {r['clients']:>3} {r['requests_per_s'] or 0:>7.2f} "
            f"{r['requests_per_s_vs_baseline'] or 0:>7.3f} {r['p50_ms'] or 0:>8.1f} {r['p99_ms'] or 0:>8.1f} "
            f"{r['p50_vs_baseline'] or 0:>6.3f} {r['bytes_sent_per_request'] / 1024:>9.1f}"
            + (f"  {r['errors']} errors" if r["errors"] else "")
        )
    write(
        "served_tail",
        {
            "benchmark": "served_tail",
            "activation_shape": list(a.shape),
            "rounds": args.rounds,
            "per_client": args.per_client,
            "baseline": list(BASELINE),
            "rows": rows,
            "uptime": loads,
            "machine": machine(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()

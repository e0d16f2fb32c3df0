"""Load on the real Triton server: binary activations (FP32/FP16, HTTP/gRPC) vs the reference's JSON.

Starts the tritonserver bundled with nvidia-pytriton on loopback (free ports), then, for each wire
mode, runs ``--clients`` concurrent trust-zone clients, interleaving the modes round by round so
that every mode sees the same machine load. Reports requests/s, p50/p99 latency, and the bytes each
request puts on the wire (client → server, measured by a loopback counting proxy) and gets back.
The reference design's way, FP32 as JSON text over HTTP, runs side by side in the same process.

``--fddb`` also measures FDDB mAP in-process (FP32, and FP16 by casting the activation) and through
the server (HTTP FP32 and gRPC FP16), with the trust-zone client as the evaluation's detector.

    python benchmarks/triton_load.py --clients 4 --rounds 6 --out benchmarks/results/triton_load.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from veil.detector import Detector
from veil.jsonio import write_json
from veil.preprocess import load_image
from veil.serving.client import TritonDetector
from veil.serving.repository import resolve_repository, write_repository
from veil.serving.server import TritonServer
from veil.serving.wire import RecordingProxy

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
# name: (protocol, fp16, binary)
MODES = {
    "reference: HTTP FP32 JSON text": ("http", False, False),
    "HTTP FP32 binary": ("http", False, True),
    "HTTP FP16 binary": ("http", True, True),
    "gRPC FP32 binary": ("grpc", False, True),
    "gRPC FP16 binary": ("grpc", True, True),
}
REFERENCE = "reference: HTTP FP32 JSON text"


def activation_1024(det: Detector, image_path: Path) -> torch.Tensor:
    """A real activation of the reference design's size [1,128,32,32]: an FDDB photo at 1024x1024."""
    img = cv2.resize(load_image(image_path), (1024, 1024), interpolation=cv2.INTER_LINEAR)
    det1 = Detector(det.model, det.weights_sha256, scale=1.0)
    return det1.client_side(img)[0]


def client_for(det: Detector, server: TritonServer, mode: str, url: str | None = None) -> TritonDetector:
    protocol, fp16, binary = MODES[mode]
    return TritonDetector(det, url or server.url(protocol), protocol, fp16=fp16, binary=binary, retries=0)


def wire_bytes(det: Detector, server: TritonServer, mode: str, a: torch.Tensor, n: int = 3) -> tuple[float, float]:
    """Bytes per request client → server and back, counted by a loopback proxy over ``n`` requests."""
    protocol = MODES[mode][0]
    host, port = server.url(protocol).rsplit(":", 1)
    with RecordingProxy(host, int(port), record=False) as proxy:
        c = client_for(det, server, mode, proxy.url)
        c.infer_activation(a)  # connection set-up (HTTP/2 settings, etc.) is not per request
        time.sleep(0.2)
        s0, r0 = proxy.bytes_sent, proxy.bytes_received
        for _ in range(n):
            c.infer_activation(a)
        time.sleep(0.2)
        sent, recv = (proxy.bytes_sent - s0) / n, (proxy.bytes_received - r0) / n
        c.close()
    return sent, recv


def run_round(
    det: Detector, server: TritonServer, mode: str, n_clients: int, a: torch.Tensor, per_client: int, deadline: float
) -> tuple[list[float], float, list[str]]:
    """``n_clients`` threads, each with its own connection (tritonclient objects stay in the thread that
    made them), one untimed warm-up request, then ``per_client`` timed ones: latencies (s), wall, errors."""
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(n_clients + 1)
    go = threading.Event()
    done_at: list[float] = []

    def work() -> None:
        c = client_for(det, server, mode)
        try:
            c.infer_activation(a)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"warm-up: {exc}")
        ready.wait()
        go.wait()
        for _ in range(per_client):
            if time.monotonic() > deadline:
                break
            t = time.perf_counter()
            try:
                c.infer_activation(a)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(str(exc)[:300])
                continue
            with lock:
                lat.append(time.perf_counter() - t)
        with lock:
            done_at.append(time.perf_counter())
        c.close()

    threads = [threading.Thread(target=work) for _ in range(n_clients)]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.perf_counter()
    go.set()
    for t in threads:
        t.join()
    return lat, max(done_at) - t0, errors


def load_test(
    det: Detector,
    server: TritonServer,
    a: torch.Tensor,
    n_clients: int,
    rounds: int,
    per_client: int,
    max_seconds: float,
) -> dict:
    lat: dict[str, list[float]] = {m: [] for m in MODES}
    wall = dict.fromkeys(MODES, 0.0)
    errors: dict[str, list[str]] = {m: [] for m in MODES}
    deadline = time.monotonic() + max_seconds
    for r in range(rounds):
        for m in MODES:
            lats, w, e = run_round(det, server, m, n_clients, a, per_client, deadline)
            lat[m] += lats
            wall[m] += w
            errors[m] += e
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
        if time.monotonic() > deadline:
            print("time bound reached", file=sys.stderr)
            break
    out = {}
    for m in MODES:
        if errors[m]:
            print(f"{m}: {len(errors[m])} errors, first: {errors[m][0]}", file=sys.stderr)
        sent, recv = wire_bytes(det, server, m, a)
        ls = sorted(lat[m])
        out[m] = {
            "protocol": MODES[m][0],
            "dtype": "FP16" if MODES[m][1] else "FP32",
            "encoding": "binary" if MODES[m][2] else "JSON text",
            "requests": len(ls),
            "errors": len(errors[m]),
            "requests_per_s": len(ls) / wall[m] if wall[m] else None,
            "p50_ms": 1e3 * statistics.median(ls) if ls else None,
            "p99_ms": 1e3 * float(np.percentile(ls, 99)) if ls else None,
            "bytes_sent_per_request": sent,
            "bytes_received_per_request": recv,
        }
    ref = out[REFERENCE]
    for v in out.values():
        v["bytes_sent_vs_reference"] = v["bytes_sent_per_request"] / ref["bytes_sent_per_request"]
        v["p50_vs_reference"] = v["p50_ms"] / ref["p50_ms"] if v["p50_ms"] and ref["p50_ms"] else None
    return out


class CastFP16(nn.Module):
    """In-process stand-in for the FP16 wire: the tail sees exactly what the FP16 model sees."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a.half().float()


def fddb_maps(det: Detector, server: TritonServer, fddb: Path, workers: int = 1, save=None) -> dict:
    from veil.evaluation import evaluate_fddb

    runs = {
        "in-process FP32": det,
        "in-process FP16 (cast)": Detector(det.model, det.weights_sha256, scale=det.scale, obfuscator=CastFP16()),
        "server HTTP FP32 binary": TritonDetector(det, server.http_url, "http"),
        "server gRPC FP16 binary": TritonDetector(det, server.grpc_url, "grpc", fp16=True),
    }
    out = {}
    for name, d in runs.items():
        t0 = time.perf_counter()
        res = evaluate_fddb(d, fddb, workers=workers, progress=True)
        out[name] = {
            "mAP": res.mAP,
            "images": res.images,
            "faces": res.faces,
            "per_fold_AP": {str(k): f.ap for k, f in res.folds.items()},
            "wall_s": time.perf_counter() - t0,
        }
        print(f"{name}: mAP {res.mAP:.4f} on {res.images} images, {res.faces} faces", file=sys.stderr)
        base = out["in-process FP32"]["mAP"]
        for v in out.values():
            v["mAP_points_vs_in_process_fp32"] = 100 * (v["mAP"] - base)
        if save is not None:
            save(out)  # a long run: keep what is measured so far
    return out


def write(path: str | Path, result: dict) -> Path:
    """Write the results JSON, keeping the other part's figures when only one part was run."""
    out = Path(path)
    result = dict(result)
    if out.exists():
        old = json.loads(out.read_text())
        for k in ("load", "activation", "fddb", "fddb_command", "fddb_noisy"):
            if k not in result and k in old:
                result[k] = old[k]
    return write_json(out, result)  # standard JSON, atomically


def fddb_noisy_maps(det: Detector, server: TritonServer, fddb: Path, alpha: float, workers: int = 1) -> dict:
    """Obfuscated FDDB in-process vs through the server with the same noise samples (seed 0, per image)."""
    from veil.evaluation import evaluate_fddb
    from veil.obfuscate import load_obfuscator

    noisy = Detector(det.model, det.weights_sha256, scale=det.scale)
    noisy.obfuscator, _ = load_obfuscator(alpha, model=det.model)
    out: dict = {"alpha": alpha, "seed": 0}
    for name, d in (("in-process", noisy), ("server gRPC FP32 binary", TritonDetector(noisy, server.grpc_url, "grpc"))):
        t0 = time.perf_counter()
        res = evaluate_fddb(d, fddb, workers=workers, seed=0, progress=True)
        out[name] = {"mAP": res.mAP, "images": res.images, "faces": res.faces, "wall_s": time.perf_counter() - t0}
        print(f"noisy ALPHA {alpha:g} {name}: mAP {res.mAP:.4f}", file=sys.stderr)
    out["mAP_points_server_vs_in_process"] = 100 * (out["server gRPC FP32 binary"]["mAP"] - out["in-process"]["mAP"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-repository", help="exported repository (default: export into a temporary one)")
    ap.add_argument("--weights", default=str(SHARED / "models/faceboxes/FaceBoxesProd.pth"))
    ap.add_argument("--fddb-dir", default=str(SHARED / "data/fddb"))
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients per mode (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds (default: %(default)s)")
    ap.add_argument("--per-client", type=int, default=2, help="requests per client per round (default: %(default)s)")
    ap.add_argument("--max-seconds", type=float, default=300, help="time bound of the load part (default: %(default)s)")
    ap.add_argument("--fddb", action="store_true", help="also measure FDDB mAP in-process vs through the server")
    ap.add_argument(
        "--fddb-noisy-alpha",
        type=float,
        metavar="A",
        help="also compare obfuscated FDDB mAP (fitted noise for A, seeded) in-process vs through the server",
    )
    ap.add_argument("--no-load", action="store_true", help="skip the load part (with --fddb)")
    ap.add_argument("--workers", type=int, default=1, help="FDDB evaluation processes per run (default: %(default)s)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/triton_load.json"))
    args = ap.parse_args(argv)

    det = Detector.from_weights(args.weights)
    fddb = Path(args.fddb_dir)
    image = sorted((fddb / "originalPics").rglob("*.jpg"))[0]
    with tempfile.TemporaryDirectory(prefix="veil-bench-") as tmp:
        if args.model_repository:
            repo = resolve_repository(args.model_repository)
        else:
            repo = write_repository(
                det.model, Path(tmp) / "repo", det.weights_sha256, formats=("python",)
            ).repositories["python"]
        result: dict = {
            "benchmark": "triton_load",
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "machine": {
                "platform": platform.platform(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "cpus": __import__("os").cpu_count(),
            },
            "server": "tritonserver 2.51 (nvidia-pytriton wheel), python backend, onnxruntime tail, loopback",
            "command": "python benchmarks/triton_load.py " + " ".join(sys.argv[1:] if argv is None else argv),
        }
        with TritonServer(repo) as server:
            if not args.no_load:
                a = activation_1024(det, image)
                result["activation"] = {"shape": list(a.shape), "fp32_bytes": a.numel() * 4, "source": str(image.name)}
                result["load"] = {
                    "command": result["command"],
                    "date": result["date"],
                    "clients": args.clients,
                    "rounds": args.rounds,
                    "per_client": args.per_client,
                    "modes": load_test(det, server, a, args.clients, args.rounds, args.per_client, args.max_seconds),
                }
                for m, v in result["load"]["modes"].items():
                    print(
                        f"{m:32s} {v['requests']:4d} req {v['requests_per_s']:6.2f} req/s  p50 {v['p50_ms']:7.1f} ms  "
                        f"p99 {v['p99_ms']:7.1f} ms  sent {v['bytes_sent_per_request'] / 1024:8.1f} KiB "
                        f"({100 * v['bytes_sent_vs_reference']:5.1f}% of JSON)  received "
                        f"{v['bytes_received_per_request'] / 1024:8.1f} KiB"
                    )
            if args.fddb:
                result["fddb_command"] = result["command"]
                result["fddb"] = fddb_maps(
                    det, server, fddb, args.workers, save=lambda part: write(args.out, {**result, "fddb": part})
                )
                for m, v in result["fddb"].items():
                    print(f"{m:28s} mAP {v['mAP']:.4f} ({v['mAP_points_vs_in_process_fp32']:+.3f} points)")
            if args.fddb_noisy_alpha is not None:
                result["fddb_noisy"] = fddb_noisy_maps(det, server, fddb, args.fddb_noisy_alpha, args.workers)
                result["fddb_noisy"]["command"] = result["command"]
    out = write(args.out, result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

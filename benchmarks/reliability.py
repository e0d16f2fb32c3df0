"""Reliability under sustained load with faults: nothing is silently lost.

Starts the tritonserver bundled with nvidia-pytriton on loopback (free ports) and runs ``--clients``
trust-zone clients (alternating HTTP and gRPC, the real path: image → head → obfuscation → request
→ tail → boxes) over FDDB images for ``--duration`` seconds. Meanwhile:

* one extra client sends garbage: random bytes to both ports, malformed JSON, wrong shapes and
  dtypes, NaNs and over-bound activations (all must be refused while the server keeps serving);
* at ``--kill-at`` of the run the server is killed (SIGKILL of its process group, a crash), left
  down for ``--down`` seconds, then restarted on the same ports.

Reports requests served, errors by kind, p50/p99 latency of served images, the server's memory
high-water mark (resident set of tritonserver and its python-backend stubs, sampled every 0.2 s),
the clients' own peak memory, and the accounting that every image a client took up was either
processed or reported (``lost`` must be 0).

    python benchmarks/reliability.py --clients 3 --duration 60 --out benchmarks/results/reliability.json
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import random
import resource
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from veil.detector import Detector
from veil.jsonio import write_json
from veil.obfuscate import Obfuscator
from veil.serving.client import TritonDetector, _is_unavailable
from veil.serving.repository import BASE_MODEL, MAX_ACTIVATION_SIDE, NOISY_MODEL, write_repository
from veil.serving.server import TritonServer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def rss_of_group(pgid: int) -> int:
    """Resident bytes of every process in process group ``pgid`` (tritonserver and its stubs)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # field 5 of /proc/PID/stat: process group
                continue
            for line in (stat.parent / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            continue
    return total


class Monitor(threading.Thread):
    """Samples the server's memory until stopped; follows restarts (a new process group)."""

    def __init__(self, server: TritonServer) -> None:
        super().__init__(daemon=True)
        self.server, self.peak, self.stop_flag = server, 0, threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            p = self.server.process
            if p is not None:
                self.peak = max(self.peak, rss_of_group(p.pid))
            time.sleep(0.2)


def client_loop(
    i: int, det: Detector, server: TritonServer, images: list[Path], deadline: float, out: dict, lock: threading.Lock
) -> None:
    """One trust-zone client: images in turn until the deadline; every image's outcome is recorded."""
    protocol = "http" if i % 2 == 0 else "grpc"
    url = server.http_url if protocol == "http" else server.grpc_url
    client = TritonDetector(det, url, protocol, retries=2, retry_delay=0.5, timeout=5.0)
    rec = {
        "protocol": protocol,
        "taken": 0,
        "processed": 0,
        "unavailable": 0,
        "refused_or_failed": 0,
        "latencies": [],
        "errors": {},
    }
    start = random.Random(i).randrange(len(images))
    for path in itertools.islice(itertools.cycle(images), start, None):
        if time.monotonic() > deadline:
            break
        rec["taken"] += 1
        t = time.perf_counter()
        (r,) = client.run_many([str(path)])
        dt = time.perf_counter() - t
        if r.ok:
            rec["processed"] += 1
            rec["latencies"].append(dt)
        else:
            key = "unavailable" if r.unavailable else "refused_or_failed"
            rec[key] += 1
            kind = r.error.split(";")[0][:120]
            rec["errors"][kind] = rec["errors"].get(kind, 0) + 1
    client.close()
    with lock:
        out[i] = rec


def garbage_loop(server: TritonServer, deadline: float, stop: threading.Event, out: dict) -> None:
    """Bad requests of every kind; counts how each was answered."""
    rng = np.random.default_rng()
    counts = {"sent": 0, "refused": 0, "no_answer": 0, "accepted": 0}
    kinds: dict[str, int] = {}

    def note(kind: str, outcome: str) -> None:
        counts["sent"] += 1
        counts[outcome] += 1
        kinds[f"{kind}: {outcome}"] = kinds.get(f"{kind}: {outcome}", 0) + 1

    def http_post(path: str, body: bytes, headers: dict | None = None) -> str:
        req = urllib.request.Request(
            f"http://{server.http_url}{path}",
            data=body,
            method="POST",
            headers=headers or {"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return "accepted" if r.status == 200 else "refused"
        except urllib.error.HTTPError:
            return "refused"
        except (urllib.error.URLError, OSError):
            return "no_answer"

    def raw(port: int, data: bytes) -> str:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(data)
                s.settimeout(2)
                try:
                    s.recv(1024)
                except OSError:
                    pass
            return "refused"
        except OSError:
            return "no_answer"

    def tensor(protocol: str, shape, dtype=np.float32, fill=None) -> str:
        try:
            if protocol == "http":
                import tritonclient.http as tc

                c = tc.InferenceServerClient(server.http_url, network_timeout=10)
            else:
                import tritonclient.grpc as tc

                c = tc.InferenceServerClient(server.grpc_url)
            a = np.full(shape, fill, dtype) if fill is not None else rng.standard_normal(shape).astype(dtype)
            inp = tc.InferInput("INPUT_0", list(a.shape), "FP16" if dtype == np.float16 else "FP32")
            inp.set_data_from_numpy(a)
            kw = {"client_timeout": 10} if protocol == "grpc" else {}
            c.infer(BASE_MODEL, [inp], **kw)
            c.close()
            return "accepted"
        except Exception as exc:  # noqa: BLE001 - classified as veil's client classifies it
            return "no_answer" if _is_unavailable(exc) else "refused"

    port_http, port_grpc = server.http_port, server.grpc_port
    cases = [
        ("random bytes to HTTP", lambda: raw(port_http, rng.bytes(2048))),
        ("random bytes to gRPC", lambda: raw(port_grpc, rng.bytes(2048))),
        ("malformed JSON", lambda: http_post(f"/v2/models/{BASE_MODEL}/infer", b'{"inputs": [{"name": ')),
        (
            "lying binary header",
            lambda: http_post(
                f"/v2/models/{BASE_MODEL}/infer",
                b'{"inputs":[{"name":"INPUT_0","shape":[1,128,8,8],"datatype":"FP32",'
                b'"parameters":{"binary_data_size":32768}}]}' + b"\0" * 10,
                {"Inference-Header-Content-Length": "99", "Content-Type": "application/octet-stream"},
            ),
        ),
        ("wrong channels", lambda: tensor("http", (1, 64, 8, 8))),
        ("NaN activation", lambda: tensor("grpc", (1, 128, 8, 8), fill=np.nan)),
        ("wrong dtype", lambda: tensor("grpc", (1, 128, 8, 8), np.float16)),
        ("over the bound", lambda: tensor("http", (1, 128, MAX_ACTIVATION_SIDE + 1, 8))),
        ("unknown model", lambda: http_post("/v2/models/nope/infer", b"{}")),
        ("restricted API", lambda: http_post("/v2/logging", b'{"log_verbose_level": 3}')),
    ]
    for kind, fn in itertools.cycle(cases):
        if time.monotonic() > deadline or stop.is_set():
            break
        note(kind, fn())
        time.sleep(0.05)
    out.update(counts=counts, kinds=kinds)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(SHARED / "models/faceboxes/FaceBoxesProd.pth"))
    ap.add_argument("--images", default=str(SHARED / "data/fddb/originalPics"), help="image folder (recursive)")
    ap.add_argument("--clients", type=int, default=3, help="concurrent trust-zone clients (default: %(default)s)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load (default: %(default)s)")
    ap.add_argument(
        "--kill-at",
        type=float,
        default=0.3,
        help="fraction of the run when the server is killed (default: %(default)s; negative: no kill)",
    )
    ap.add_argument(
        "--down", type=float, default=3.0, help="seconds the killed server stays down (default: %(default)s)"
    )
    ap.add_argument("--scale", type=float, default=1.0, help="input scale (default: %(default)s)")
    ap.add_argument("--noisy", action="store_true", help="obfuscate (an OS-seeded Obfuscator, σ 0.5) before sending")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/reliability.json"))
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    det = Detector.from_weights(args.weights, scale=args.scale)
    if args.noisy:
        det.obfuscator = Obfuscator(128, init_sigma=0.5).eval()
    images = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not images:
        raise SystemExit(f"no images under {args.images}")
    result: dict = {
        "benchmark": "reliability",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": "python benchmarks/reliability.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_start": list(os.getloadavg()),
            "note": "shared machine: other jobs ran at the same time",
        },
        "settings": {
            "clients": args.clients,
            "duration_s": args.duration,
            "kill_at": args.kill_at,
            "down_s": args.down,
            "scale": args.scale,
            "noisy": args.noisy,
            "client": "retries 2, back-off 0.5 s doubling, deadline 5 s per request",
        },
    }
    with tempfile.TemporaryDirectory(prefix="veil-rel-") as tmp:
        repo = write_repository(det.model, Path(tmp) / "repo", det.weights_sha256, formats=("python",)).repositories[
            "python"
        ]
        model = NOISY_MODEL if args.noisy else BASE_MODEL
        server = TritonServer(repo, models=[model] if args.noisy else [BASE_MODEL])
        t_start = time.monotonic()
        server.start()
        result["server_start_s"] = round(time.monotonic() - t_start, 2)
        monitor = Monitor(server)
        monitor.start()
        lock = threading.Lock()
        outcomes: dict[int, dict] = {}
        garbage: dict = {}
        stop = threading.Event()
        t0 = time.monotonic()
        deadline = t0 + args.duration
        threads = [
            threading.Thread(target=client_loop, args=(i, det, server, images, deadline, outcomes, lock))
            for i in range(args.clients)
        ]
        threads.append(threading.Thread(target=garbage_loop, args=(server, deadline, stop, garbage)))
        for t in threads:
            t.start()
        fault: dict = {}
        try:
            if args.kill_at >= 0:
                time.sleep(max(0.0, args.kill_at * args.duration))
                fault["killed_at_s"] = round(time.monotonic() - t0, 2)
                os.killpg(server.process.pid, signal.SIGKILL)  # a crash: no clean shutdown
                server.stop()
                time.sleep(args.down)
                t_restart = time.monotonic()
                server.start()
                fault["restarted_ready_at_s"] = round(time.monotonic() - t0, 2)
                fault["restart_s"] = round(time.monotonic() - t_restart, 2)
                fault["downtime_s"] = round(fault["restarted_ready_at_s"] - fault["killed_at_s"], 2)
            for t in threads:
                t.join()
            result["server_alive_after_garbage"] = server.process is not None and server.process.poll() is None
        finally:
            stop.set()
            monitor.stop_flag.set()
            server.stop()
        wall = time.monotonic() - t0
    lat = sorted(x for o in outcomes.values() for x in o["latencies"])
    taken = sum(o["taken"] for o in outcomes.values())
    processed = sum(o["processed"] for o in outcomes.values())
    unavailable = sum(o["unavailable"] for o in outcomes.values())
    failed = sum(o["refused_or_failed"] for o in outcomes.values())
    errors: dict[str, int] = {}
    for o in outcomes.values():
        for k, v in o["errors"].items():
            errors[k] = errors.get(k, 0) + v
    result.update(
        {
            "wall_s": round(wall, 2),
            "fault": fault,
            "images": {
                "taken": taken,
                "processed": processed,
                "reported_unavailable": unavailable,
                "reported_other": failed,
                "lost": taken - processed - unavailable - failed,
            },
            "requests_served": processed,
            "served_per_s": round(processed / wall, 2),
            "errors": errors,
            "latency_ms": {
                "p50": round(1000 * statistics.median(lat), 1) if lat else None,
                "p99": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1) if lat else None,
                "max": round(1000 * lat[-1], 1) if lat else None,
                "what": "one image end to end in the client: head, request, tail, post-processing",
            },
            "per_client": {
                str(i): {k: v for k, v in o.items() if k not in ("latencies",)} for i, o in sorted(outcomes.items())
            },
            "garbage": garbage,
            "memory": {
                "server_rss_high_water_mb": round(monitor.peak / 2**20, 1),
                "clients_process_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            },
            "load_average_at_end": list(os.getloadavg()),
        }
    )
    out = write_json(args.out, result)
    im = result["images"]
    print(
        f"{im['taken']} images taken: {im['processed']} processed, {im['reported_unavailable']} reported "
        f"(server down), {im['reported_other']} reported (other), {im['lost']} lost; p99 "
        f"{result['latency_ms']['p99']} ms; server RSS high-water {result['memory']['server_rss_high_water_mb']} MB; "
        f"garbage {garbage.get('counts')}; fault {fault}"
    )
    print(f"wrote {out}")
    return 0 if im["lost"] == 0 and result.get("server_alive_after_garbage", False) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Cost of one privacy audit of one configuration (issue 9 §1: ≤ 20 min for 150 faces on 2 idle cores).

Runs, on the same faces, through the library's data path (:func:`veil.privacy.datapath.data_path`):

1. the clean pass once (clean-activation attackers, references and the originals' dlib embeddings),
   which every configuration reuses (``audit(..., clean=...)``, the cache ``veil audit`` keeps per
   model key);
2. each configuration (ALPHA with fresh and/or keyed noise) on top of it: the obfuscated pass and
   scoring only — the cost one more configuration adds;
3. the clean report (ALPHA 0) from the same clean pass.

The white-box inversion is batched (``--whitebox-batch`` faces per forward/backward). Records wall and
process-CPU seconds per stage (head, decoders, near-duplicates, white-box inversion, identity + SSIM,
gallery) and how many calls each stage made, and samples the machine's load every 30 s, so an
idle-machine estimate can be read from CPU time when the machine is shared. The JSON is rewritten
every 30 s while running (``status: running`` with the stages so far), so a run stopped early still
leaves what it measured. Decoders are read from ``--decoders`` (trained beforehand: training is not
part of an audit's cost). Writes the reports under ``--out`` and the measurement to ``--json``.

    python benchmarks/audit_cost.py --faces 150 --alpha 0.8 --noise N.safetensors --decoders DIR \\
        --out runs/audit-cost --json benchmarks/results/audit_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class Recorder:
    """The measurement document, rewritten to disk on every change and every 30 s while running."""

    def __init__(self, path: str, doc: dict[str, Any]) -> None:
        self.path, self.doc, self.t0 = Path(path), doc, time.monotonic()
        self.loads: list[list[float]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self.write()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(30.0):
            self.write()

    def write(self, **update: Any) -> None:
        from veil.privacy.audit import STAGES

        with self._lock:
            self.doc.update(update)
            self.loads.append(_load())
            self.doc["elapsed_s"] = round(time.monotonic() - self.t0, 1)
            self.doc["process_cpu_s"] = round(time.process_time(), 1)
            self.doc["load_samples_1m"] = [x[0] for x in self.loads]
            self.doc["load_mean_1m"] = round(sum(x[0] for x in self.loads) / len(self.loads), 2)
            self.doc["stages_now_wall_cpu_calls"] = {
                k: [round(v[0], 1), round(v[1], 1), v[2]] for k, v in dict(STAGES).items()
            }
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".part")
            tmp.write_text(json.dumps(self.doc, indent=1))
            tmp.replace(self.path)

    def stop(self) -> None:
        self._stop.set()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=150, help="faces (fold order; default: %(default)s)")
    ap.add_argument("--alpha", type=float, default=0.8)
    ap.add_argument("--noise", required=True, help="fitted noise file for --alpha")
    ap.add_argument("--decoders", required=True, help="folder with naive / adaptive(-perceptual) decoder files")
    ap.add_argument("--dataset", help="FDDB root (default: $VEIL_DATASET)")
    ap.add_argument("--weights", help="FaceBoxes weights (default: $VEIL_WEIGHTS, then the cache)")
    ap.add_argument("--scale", type=float, default=3.0)
    ap.add_argument("--whitebox-faces", type=int, default=40)
    ap.add_argument("--whitebox-steps", type=int, default=100)
    ap.add_argument("--whitebox-batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--modes",
        nargs="+",
        default=["fresh", "keyed"],
        choices=("fresh", "keyed"),
        help="noise modes audited, in order, each on the shared clean pass (default: %(default)s)",
    )
    ap.add_argument("--ks", type=int, nargs="*", default=[4, 16], help="exact-repeat averaging K")
    ap.add_argument("--dup-ks", type=int, nargs="*", default=[16], help="near-duplicate averaging K")
    ap.add_argument("--out", required=True, help="folder for the audit reports")
    ap.add_argument("--json", required=True, help="measurement JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from veil.digest import sha256_file
    from veil.models import create
    from veil.obfuscate import load_obfuscator
    from veil.privacy.audit import STAGES, Attacks, audit, cache_key, clean_pass, make_views, select_fddb_faces
    from veil.privacy.decoders import read_decoder
    from veil.settings import settings

    t0 = time.monotonic()
    model = create("faceboxes", weights=args.weights)
    dataset = args.dataset or settings().dataset
    if dataset is None:
        raise SystemExit("no FDDB dataset: pass --dataset DIR or set VEIL_DATASET")
    faces = select_fddb_faces(dataset, args.faces)
    views = make_views(faces, args.scale)
    obf, _nmeta = load_obfuscator(args.alpha, noise=args.noise, model=model)
    nsha = sha256_file(args.noise)[:16]
    d = Path(args.decoders)
    suffix = "" if args.scale == 3.0 else f"-x{args.scale:g}"
    dec = {
        "naive": read_decoder(d / f"naive{suffix}.safetensors", model),
        "perceptual_clean": read_decoder(d / f"naive-perceptual{suffix}.safetensors", model),
        "adaptive": read_decoder(d / f"adaptive-{nsha}{suffix}.safetensors", model),
        "perceptual": read_decoder(d / f"adaptive-perceptual-{nsha}{suffix}.safetensors", model),
    }
    setup_s = time.monotonic() - t0
    base = Attacks(
        model,
        dec["naive"],
        perceptual_clean=dec["perceptual_clean"],
        whitebox_steps=args.whitebox_steps,
        whitebox_faces=args.whitebox_faces,
        whitebox_batch=args.whitebox_batch,
        ks=tuple(args.ks),
        dup_ks=tuple(args.dup_ks),
    )
    decoders_meta = {k: {m: v.meta.get(m) for m in ("kind", "steps", "seed", "loss")} for k, v in dec.items()}
    rec = Recorder(
        args.json,
        {
            "what": "one privacy audit of one configuration: wall and process-CPU seconds per stage",
            "status": "running",
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "torch_threads": args.threads,
                "note": "shared 2-core machine, other jobs running (see the load samples); CPU seconds are what "
                "the audit itself used",
            },
            "faces": faces.n_faces,
            "images": len(faces.images),
            "views": len(views),
            "enlarged": sum(v.kind == "enlarged" for v in views),
            "whitebox_faces": args.whitebox_faces,
            "whitebox_steps": args.whitebox_steps,
            "whitebox_batch": args.whitebox_batch,
            "setup_s": round(setup_s, 1),
            "phase": "clean pass",
            "runs": [],
        },
    )
    rec.start()
    cache = Path(tempfile.mkdtemp(prefix="veil-audit-cost-"))
    runs: list[dict[str, Any]] = []
    try:
        STAGES.clear()
        w0, c0, l0 = time.monotonic(), time.process_time(), _load()
        key = cache_key(faces, args.scale, base, True)
        leaks, gallery, _ = clean_pass(faces, views, base, args.scale, key, cache, progress=True)
        runs.append(
            {
                "config": "clean pass (once; every configuration reuses it)",
                "wall_s": round(time.monotonic() - w0, 1),
                "cpu_s": round(time.process_time() - c0, 1),
                "load_before": l0,
                "load_after": _load(),
                "stages_wall_cpu_calls": {k: [round(v[0], 1), round(v[1], 1), v[2]] for k, v in dict(STAGES).items()},
            }
        )
        rec.write(runs=runs, phase="configurations")
        for mode in args.modes:
            obf.set_key(secrets.token_bytes(32) if mode == "keyed" else None)
            att = Attacks(**{**base.__dict__, "adaptive": dec["adaptive"], "perceptual": dec["perceptual"]})
            att.obfuscator = obf
            w0, c0, l0 = time.monotonic(), time.process_time(), _load()
            rep = audit(
                faces,
                att,
                args.alpha,
                args.scale,
                out_dir=Path(args.out) / f"alpha-{args.alpha:g}-{mode}",
                views=views,
                clean=(leaks, gallery),
                progress=True,
                meta={"decoders": decoders_meta, "noise_mode": mode, "noise_file": str(args.noise)},
            )
            obf.set_key(None)
            runs.append(
                {
                    "config": f"alpha {args.alpha:g}, {mode} noise (clean pass reused)",
                    "wall_s": round(time.monotonic() - w0, 1),
                    "cpu_s": round(time.process_time() - c0, 1),
                    "timing_s": rep["timing_s"],
                    "load_before": l0,
                    "load_after": _load(),
                    "worst": rep["worst_attacker"],
                    "worst_rank1": rep["worst_rank1"],
                }
            )
            rec.write(runs=runs)
            print(json.dumps(runs[-1]), flush=True)
        rep0 = audit(
            faces, base, 0.0, args.scale, out_dir=Path(args.out) / "alpha-0", views=views, clean=(leaks, gallery)
        )
        runs.append({"config": "clean report (ALPHA 0, clean pass reused)", "seconds": rep0["seconds"]})
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        rec.stop()
    clean_cpu = runs[0]["cpu_s"]
    config_cpu = max(r["cpu_s"] for r in runs[1:-1]) if len(runs) > 2 else None
    rec.write(
        status="done",
        phase="done",
        runs=runs,
        estimate_idle_2core_s={
            "clean_pass_once": round(clean_cpu / args.threads, 1),
            "one_configuration_with_cached_clean_pass": None
            if config_cpu is None
            else round(config_cpu / args.threads, 1),
            "one_configuration_cold": None if config_cpu is None else round((clean_cpu + config_cpu) / args.threads, 1),
            "assumption": "CPU seconds / torch threads (perfect use of 2 idle cores); an upper bound is the CPU "
            "seconds themselves (one core)",
        },
    )
    print(json.dumps(rec.doc["estimate_idle_2core_s"], indent=1))


if __name__ == "__main__":
    main()

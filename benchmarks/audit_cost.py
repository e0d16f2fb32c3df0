"""Cost of one privacy audit of one configuration (issue 9 §1: ≤ 20 min for 150 faces on 2 idle cores).

Runs, on the same faces: the clean pass (cold: nothing cached), then ALPHA's audit with fresh noise
(clean pass from the cache), then with keyed noise (cache again), then the clean report (ALPHA 0).
Records wall and process-CPU seconds per stage (head, decoders, near-duplicates, white-box
inversion, identity + SSIM, gallery) and the machine's load, so an idle-machine estimate can be
read from CPU time when the machine is shared. Decoders are read from ``--decoders`` (trained
beforehand: training is not part of an audit's cost). Writes the reports under ``--out`` and the
measurement JSON to ``--json``.

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
import time
from pathlib import Path

import torch


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


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
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--modes",
        nargs="+",
        default=["fresh", "keyed"],
        choices=("fresh", "keyed"),
        help="noise modes audited, in order (default: %(default)s); the first one pays the clean pass",
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
    from veil.privacy.audit import Attacks, audit, make_views, select_fddb_faces
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
    cache = Path(tempfile.mkdtemp(prefix="veil-audit-cost-"))
    base = {
        "model": model,
        "naive": dec["naive"],
        "perceptual_clean": dec["perceptual_clean"],
        "whitebox_steps": args.whitebox_steps,
        "whitebox_faces": args.whitebox_faces,
        "ks": tuple(args.ks),
        "dup_ks": tuple(args.dup_ks),
    }
    decoders_meta = {k: v.meta for k, v in dec.items()}
    runs = []
    modes = list(args.modes)
    try:
        for mode in modes:
            if mode == "keyed":
                obf.set_key(secrets.token_bytes(32))
            att = Attacks(**base, adaptive=dec["adaptive"], perceptual=dec["perceptual"], obfuscator=obf)
            load0 = _load()
            rep = audit(
                faces,
                att,
                args.alpha,
                args.scale,
                out_dir=Path(args.out) / f"alpha-{args.alpha:g}-{mode}",
                views=views,
                cache_dir=cache,
                progress=True,
                meta={"decoders": decoders_meta, "noise_mode": mode, "noise_file": str(args.noise)},
            )
            runs.append(
                {
                    "config": f"alpha {args.alpha:g}, {mode} noise",
                    "clean_pass_cached": rep["clean_pass_cached"],
                    "seconds": rep["seconds"],
                    "timing_s": rep["timing_s"],
                    "load_before": load0,
                    "load_after": _load(),
                    "worst": rep["worst_attacker"],
                    "worst_rank1": rep["worst_rank1"],
                }
            )
            print(json.dumps(runs[-1]), flush=True)
            if mode == "keyed":
                obf.set_key(None)
        rep0 = audit(
            faces,
            Attacks(**base),
            0.0,
            args.scale,
            out_dir=Path(args.out) / "alpha-0",
            views=views,
            cache_dir=cache,
            progress=False,
            meta={"decoders": decoders_meta},
        )
        runs.append(
            {
                "config": "clean (ALPHA 0)",
                "clean_pass_cached": rep0["clean_pass_cached"],
                "seconds": rep0["seconds"],
                "timing_s": rep0["timing_s"],
            }
        )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    cold, warm = runs[0], (runs[1] if len(runs) > 2 else None)
    per_view = {k: round(v[1] / len(views), 2) for k, v in cold["timing_s"]["stages_wall_cpu"].items()}
    per_config_cpu = (warm or cold)["timing_s"]["obfuscated_pass_cpu"]
    out = {
        "what": "one privacy audit of one configuration: wall and process-CPU seconds per stage",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "torch_threads": args.threads,
            "note": "shared 2-core machine, other jobs running (see load); CPU seconds are what the audit itself used",
        },
        "faces": faces.n_faces,
        "images": len(faces.images),
        "views": len(views),
        "enlarged": sum(v.kind == "enlarged" for v in views),
        "whitebox_faces": args.whitebox_faces,
        "whitebox_steps": args.whitebox_steps,
        "setup_s": round(setup_s, 1),
        "runs": runs,
        "first_run_cpu_s_per_view_by_stage": per_view,
        "estimate_idle_2core_s": {
            "clean_pass_once": cold["timing_s"]["clean_pass_cpu"] / args.threads,
            "one_configuration_with_cached_clean_pass": per_config_cpu / args.threads,
            "one_configuration_cold": (cold["timing_s"]["clean_pass_cpu"] + per_config_cpu) / args.threads,
            "assumption": "CPU seconds / torch threads (perfect use of 2 idle cores); an upper bound is the CPU "
            "seconds themselves (one core)",
        },
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(json.dumps(out["estimate_idle_2core_s"], indent=1))


if __name__ == "__main__":
    main()

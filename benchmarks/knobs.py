"""Deployment knobs (issue 9 §2e): input scale × split point, each with noise fitted for it.

One *cell* = (split point, input scale, ALPHA). For a cell this script

* fits per-channel noise for that split and scale (``veil.obfuscate.fit``, the ``veil fit-noise``
  recipe with the zoom range scaled by ``scale/3``), on the fitting photos only (never FDDB),
  ``--fits`` times with different fit seeds;
* evaluates FDDB mAP on every image under the dataset: the clean detector at this scale once, and
  each fit once with fresh noise, so mAP is mean ± sd over fits × draws; NSR on FDDB is recorded;
* measures privacy as ``benchmarks/defenses.py`` does: a fresh adaptive scoring decoder (own
  seed, own data order, non-FDDB crops at this scale) trained on the first fit's obfuscated
  activation, scored by dlib rank-1 / TAR@1 %FAR on the first ``--faces`` FDDB faces for one
  query (k=1) and for the mean of 8 fresh queries (avg8), with Wilson 95 % intervals.

``--competence`` instead trains the same scoring decoder (same start, seed and budget) on the
*clean* activation of that split and scale and scores it the same way (row ``clean @ split ×scale``):
the attacker recipe is competent there only if it identifies ≥ 10× chance, in the large-face bin
too; a knob's low leak proves nothing where its recipe is not competent on clean activations.

``--client-cost`` instead times the client side (head + noise) of every split × scale on one
1920×1080 frame, interleaved round-robin in one process (medians), and records the activation's
payload bytes (FP32 and FP16) per frame. Given defense files (``--noise A=FILE``,
``--bottleneck A=FILE``) it times their client side at ×3 in the same rounds and measures their NSR
on the first ``--nsr-images`` FDDB images (noise power over the power of what it is added to: the
activation, or the bottleneck's code), so every defense row of the frontier gets its cost columns.

    python benchmarks/knobs.py --split rdcl --scale 3 --alpha 0.8 --out benchmarks/results/knobs/rdcl-x3-a0.8.json
    python benchmarks/knobs.py --client-cost --noise 0.9=N09 --bottleneck 0.6=B06 \
        --out benchmarks/results/knobs/client-cost.json

Every result has the ``benchmarks/defenses.py`` shape (``defense``, ``alpha``, ``map``, ``identity``)
plus ``knob`` (split, scale), ``nsr_db``, ``client_ms`` and ``bytes_per_request``, so ``veil
frontier --defenses`` reads it like any defense row. Short decoder training makes every leak a
lower bound.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from veil import jsonio

SPLITS = ("rdcl", "inception1", "inception2", "inception3")
FRAME_HW = (1080, 1920)


def knob_name(split: str, scale: float) -> str:
    """The row name a cell gets on the frontier."""
    return f"noise @ {split} ×{scale:g}"


def load_split(split: str, weights: str | None):
    """FaceBoxes cut at ``split`` with the verified weights: (model, weights SHA-256)."""
    import veil.models
    from veil.weights import load_state_dict, resolve_weights, verify

    path = resolve_weights(weights)
    digest = verify(path)
    sm = veil.models.build("faceboxes", split)
    sm.network.load_state_dict(load_state_dict(path), strict=True)
    return sm.network.eval(), digest


def fit_cell(model, dirs, scale: float, alpha: float, seeds: list[int], steps: int, progress: bool):
    """Noise fitted for this split at this scale, once per seed (one activation bank for all)."""
    from torch.utils.data import DataLoader

    from veil.obfuscate.crops import DEFAULT_CROP, DEFAULT_SCALE_RANGE, ImageCrops
    from veil.obfuscate.fit import FitConfig, activation_bank, fit_noise

    lo, hi = (v * scale / 3.0 for v in DEFAULT_SCALE_RANGE)  # the ×3 recipe's face sizes, at this scale
    data = ImageCrops(dirs, crop=DEFAULT_CROP, scale_range=(lo, hi), crops_per_image=1, seed=0)
    bank = activation_bank(model.head, model.tail, DataLoader(data, batch_size=8, shuffle=False), progress)
    fits = []
    for seed in seeds:
        r = fit_noise(
            model.head, model.tail, None, FitConfig(alpha=alpha, steps=steps, seed=seed), progress=progress, bank=bank
        )
        fits.append(r)
    return fits, {**data.describe(), "scale_range": [round(lo, 4), round(hi, 4)], "dirs": [str(d) for d in dirs]}


def _pairs(items: list[str] | None) -> list[tuple[float, Path]]:
    out = []
    for item in items or []:
        alpha, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"expected ALPHA=FILE, got {item!r}")
        out.append((float(alpha), Path(path)))
    return out


@torch.no_grad()
def defense_nsr(head, images: list[Path], transform) -> float:
    """NSR (dB, :func:`veil.obfuscate.nsr.nsr_sums`) of ``transform = (clean_fn, noise_obfuscator)`` at ×3."""
    from veil.obfuscate.nsr import nsr_report, nsr_sums
    from veil.preprocess import FDDB_SCALE, load_image, prepare

    clean_fn, noise = transform
    total = None
    for p in images:
        sums = nsr_sums(clean_fn(head(prepare(load_image(p), FDDB_SCALE).tensor)), noise)
        total = sums if total is None else total + sums
    return nsr_report(total)["nsr_db"]


def client_cost(
    weights: str | None,
    rounds: int,
    frame: np.ndarray,
    splits: list[str],
    scales: list[float],
    noise: list[tuple[float, Path]],
    bottlenecks: list[tuple[float, Path]],
    nsr_images: list[Path],
) -> dict:
    """Median ms of the client side per 1080p frame for every split × scale (head + noise) and every
    given defense (at ×3), interleaved round-robin; payload bytes of what is sent; defenses' NSR."""
    from veil.defenses import bottleneck as bn
    from veil.defenses import files
    from veil.defenses.files import file_sha256
    from veil.models import as_split_model
    from veil.obfuscate import load_obfuscator
    from veil.obfuscate.noise import Obfuscator
    from veil.preprocess import FDDB_SCALE, prepare

    preps = {s: prepare(frame, s, None).tensor for s in {*scales, FDDB_SCALE}}  # no pixel limit: ×3 is 5760×3240
    cells: list[dict] = []
    for split in splits:
        model, digest = load_split(split, weights)
        for scale in scales:
            cells.append({"split": split, "scale": scale, "head": model.head, "times": []})
    rdcl, digest = load_split("rdcl", weights)
    defenses: list[dict] = []
    for alpha, path in noise:
        obf, _ = load_obfuscator(alpha, noise=path, model=as_split_model(rdcl, digest))
        nsr = defense_nsr(rdcl.head, nsr_images, (lambda a: a, obf)) if nsr_images else None
        for name in ("noise", "robust-tail"):  # the robust tail changes the server only: same client, same wire
            defenses.append(
                {"defense": name, "alpha": alpha, "noise_sha256": file_sha256(path), "nsr_db": nsr, "send": obf}
            )
    heads = {"rdcl": rdcl}
    for alpha, path in bottlenecks:  # each at the split its file was fitted at (a deeper one: its own row)
        split = (files.recorded_split(path) or "faceboxes.rdcl").split(".")[-1]
        if split not in heads:
            heads[split] = load_split(split, weights)[0]
        fitted, _ = bn.load_bottleneck(path, heads[split], weights_sha256=digest, alpha=alpha)
        b = fitted.bottleneck
        code = (bn.deterministic_copy(fitted), b.noise)
        nsr = defense_nsr(heads[split].head, nsr_images, code) if nsr_images else None
        defenses.append(
            {
                "defense": "bottleneck" if split == "rdcl" else f"bottleneck @ {split} ×{FDDB_SCALE:g}",
                "head": heads[split].head,
                "alpha": alpha,
                "bottleneck_sha256": file_sha256(path),
                "nsr_db": nsr,
                "send": fitted.path.wire,
                "bits_per_element": float(np.log2(fitted.spec.levels)),
            }
        )
    for d in defenses:
        d.setdefault("head", rdcl.head)
        d.update(scale=FDDB_SCALE, times=[])
    with torch.inference_mode():
        for c in cells:  # warm-up and shapes
            a = c["head"](preps[c["scale"]])
            c["send"] = Obfuscator(a.shape[1])
            c["shape"] = list(a.shape)
        for d in defenses:
            d["shape"] = list(d["send"](d["head"](preps[d["scale"]])).shape)
        for _ in range(rounds):
            for c in cells + defenses:
                t0 = time.perf_counter()
                c["send"](c["head"](preps[c["scale"]]))
                c["times"].append(1000 * (time.perf_counter() - t0))
    out = []
    for c in cells:
        n = int(np.prod(c["shape"]))
        out.append(
            {
                "split": c["split"],
                "scale": c["scale"],
                "network_input_hw": list(preps[c["scale"]].shape[2:]),
                "activation_shape": c["shape"],
                "bytes_fp32": 4 * n,
                "bytes_fp16": 2 * n,
                "client_ms_median": round(statistics.median(c["times"]), 1),
                "client_ms_all": [round(t, 1) for t in c["times"]],
            }
        )
    rows = []
    for d in defenses:
        n = int(np.prod(d["shape"]))
        row = {k: d[k] for k in ("defense", "alpha", "nsr_db", "scale", "shape") if k in d}
        row.update({k: d[k] for k in ("noise_sha256", "bottleneck_sha256", "bits_per_element") if k in d})
        row["bytes_per_request"] = 4 * n  # sent as an FP32 tensor
        if "bits_per_element" in d:
            row["bytes_packed"] = int(np.ceil(n * d["bits_per_element"] / 8))  # the code's information, packed
        row["client_ms"] = round(statistics.median(d["times"]), 1)
        row["client_ms_all"] = [round(t, 1) for t in d["times"]]
        rows.append(row)
    return {
        "frame_hw": list(frame.shape[:2]),
        "rounds": rounds,
        "nsr_images": len(nsr_images),
        "cells": out,
        "defenses": rows,
    }


def scoring_decoder(model, transform, dirs, args: argparse.Namespace, progress: bool, result: dict):
    """The attacker's decoder on ``transform``'s output (identity: the clean activation), its settings in ``result``."""
    from veil.defenses.measure import train_scoring_decoder
    from veil.privacy.decoders import read_decoder

    dec = train_scoring_decoder(
        model.head,
        transform,
        dirs,
        minutes=args.decoder_minutes,
        seed=args.decoder_seed,
        scale=args.scale,
        max_steps=args.decoder_steps,
        init=read_decoder(args.init) if args.init else None,
        progress=progress,
    )
    keys = ("steps", "seconds", "final_l1_px", "seed", "data_order_seed", "init_sha256", "batch", "crop", "stop_reason")
    result["decoder"] = {k: dec.meta.get(k) for k in keys}
    result["decoder"]["init_file"] = args.init
    return dec


def table(folder: Path) -> str:
    """The knob cells and client costs under ``folder`` as one markdown table (what docs/privacy.md shows)."""
    import json

    docs = [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))]
    cost = next((d["client_cost"] for d in docs if "client_cost" in d), {"cells": []})
    costs = {(c["split"], c["scale"]): c for c in cost["cells"]}
    clean = {(d["knob"]["split"], d["knob"]["scale"]): d for d in docs if "knob" in d and "map" not in d}
    cells = sorted(
        (d for d in docs if "knob" in d and "map" in d),
        key=lambda d: (d["knob"]["scale"], SPLITS.index(d["knob"]["split"]), d["alpha"]),
    )
    cols = ["split", "scale", "ALPHA", "clean mAP", "mAP (mean ± sd, n)", "NSR dB", "rank-1 k=1 [95 %]"]
    cols += ["rank-1 avg8 [95 %]", "rank-1 ≥ 192 px [95 %]", "same recipe on clean: k=1 / ≥ 192 px"]
    cols += ["KiB / 1080p frame (FP32)", "client ms / frame"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

    def r1(m: dict | None) -> str:
        return "–" if m is None else f"{m['rank1']:.2f} [{m['rank1_ci95'][0]:.2f}, {m['rank1_ci95'][1]:.2f}]"

    for d in cells:
        k, m, ident = d["knob"], d["map"], d.get("identity", {})
        c = costs.get((k["split"], k["scale"]))
        sd = "–" if m.get("sd") is None else f"{m['sd']:.4f}"
        row = [k["split"], f"×{k['scale']:g}", f"{d['alpha']:g}", f"{d['clean_map']:.4f}"]
        row += [f"{m['mean']:.4f} ± {sd} ({len(m['draws'])})", f"{d['nsr_db']:+.2f}"]
        row += [r1(ident.get("k1")), r1(ident.get("k8")), r1(ident.get("large_k1"))]
        ref = clean.get((k["split"], k["scale"]), {}).get("identity")
        row.append("–" if ref is None else f"{ref['k1']['rank1']:.2f} / {ref['large_k1']['rank1']:.2f}")
        row += ["–", "–"] if c is None else [f"{c['bytes_fp32'] / 1024:.0f}", f"{c['client_ms_median']:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common beside this script, also when loaded by path
    from _common import Stages, git_commit  # beside this script (run as a script)

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", choices=SPLITS, default="rdcl")
    p.add_argument("--scale", type=float, default=3.0)
    p.add_argument("--alpha", type=float, default=0.8)
    p.add_argument("--fits", type=int, default=2, help="noise fits (seeds 0..N-1), one FDDB draw each (default: 2)")
    p.add_argument("--fit-steps", type=int, default=100, help="steps per noise fit (default: the recipe's 100)")
    p.add_argument("--fit-images", nargs="+", help="photos to fit on (default: $VEIL_FIT_IMAGES' first folder)")
    p.add_argument("--images", nargs="+", help="non-FDDB photos for the scoring decoder (default: $VEIL_FIT_IMAGES)")
    p.add_argument("--weights", help="FaceBoxes weights (default: $VEIL_WEIGHTS, then the cache)")
    p.add_argument("--dataset", help="FDDB root (default: $VEIL_DATASET)")
    p.add_argument("--skip-privacy", action="store_true")
    p.add_argument("--competence", action="store_true", help="score the decoder recipe on clean activations")
    p.add_argument("--init", help="warm-start the scoring decoder from this decoder file (e.g. the naive one)")
    p.add_argument("--decoder-steps", type=int, default=120)
    p.add_argument("--decoder-minutes", type=float, default=4.0)
    p.add_argument("--decoder-seed", type=int, default=9101, help="scoring decoder seed (noise fits use 0, 1, …)")
    p.add_argument("--faces", type=int, default=100)
    p.add_argument(
        "--no-large-faces",
        action="store_true",
        help="skip the large-face bin (faces ≥ 192 px at the network, small ones enlarged: the audit's rule)",
    )
    p.add_argument("--client-cost", action="store_true", help="time head + noise of every cell on a 1080p frame")
    p.add_argument("--rounds", type=int, default=5, help="--client-cost rounds (default: 5)")
    p.add_argument("--frame", help="--client-cost: photo resized to 1920×1080 (default: the first fitting photo)")
    p.add_argument(
        "--frame-hw", nargs=2, type=int, default=list(FRAME_HW), metavar=("H", "W"), help="--client-cost frame size"
    )
    p.add_argument("--splits", nargs="+", choices=SPLITS, default=list(SPLITS), help="--client-cost: splits timed")
    p.add_argument("--scales", nargs="+", type=float, default=[1.0, 2.0, 3.0], help="--client-cost: scales timed")
    p.add_argument("--noise", nargs="*", metavar="A=FILE", help="--client-cost: noise files (also robust-tail rows)")
    p.add_argument("--bottleneck", nargs="*", metavar="A=FILE", help="--client-cost: bottleneck files")
    p.add_argument("--nsr-images", type=int, default=30, help="--client-cost: FDDB images for the NSR (default: 30)")
    p.add_argument("--shard", help="evaluate only this FDDB shard I/N (a quick check, not a result)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--table", metavar="DIR", help="print the markdown table of the results under DIR and exit")
    p.add_argument("--out", help="JSON result file (required unless --table)")
    args = p.parse_args(argv)
    if args.table:
        print(table(Path(args.table)), end="")
        return 0
    if not args.out:
        p.error("--out is required")
    torch.set_num_threads(args.threads)

    import cv2

    from veil.data.images import list_images
    from veil.preprocess import load_image
    from veil.settings import settings

    s = settings()
    progress = not args.quiet
    dirs = [Path(d) for d in args.images] if args.images else list(s.fit_images)
    fit_dirs = [Path(d) for d in args.fit_images] if args.fit_images else dirs[:1]
    result: dict = {
        "machine": {
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "load_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
    }
    if os.environ.get("VEIL_CODE_SNAPSHOT"):  # run from `git archive <commit>` while the tree was being edited
        result["code_snapshot"] = os.environ["VEIL_CODE_SNAPSHOT"]
    stage = Stages()

    if args.client_cost:
        frame_path = Path(args.frame) if args.frame else list_images(fit_dirs)[0]
        frame = cv2.resize(load_image(frame_path), tuple(args.frame_hw[::-1]), interpolation=cv2.INTER_LINEAR)
        nsr_images = []
        if (args.noise or args.bottleneck) and args.nsr_images > 0:
            from veil.data.fddb import read_fddb

            ds = read_fddb(Path(args.dataset) if args.dataset else s.dataset)
            nsr_images = [im.path for im, ok in zip(ds.images, ds.present) if ok][: args.nsr_images]
        result["client_cost"] = client_cost(
            args.weights,
            args.rounds,
            frame,
            args.splits,
            args.scales,
            _pairs(args.noise),
            _pairs(args.bottleneck),
            nsr_images,
        )
        result["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
        jsonio.write_json(args.out, result)
        for c in result["client_cost"]["cells"]:
            print(f"{c['split']:11s} ×{c['scale']:g}: {c['client_ms_median']:8.1f} ms, {c['bytes_fp32']:>10d} B")
        for d in result["client_cost"]["defenses"]:
            ms, size = d["client_ms"], d["bytes_per_request"]
            print(f"{d['defense']} {d['alpha']:g}: {ms:8.1f} ms, {size} B, NSR {d['nsr_db']}")
        return 0

    from veil.detector import Detector
    from veil.evaluation import evaluate_fddb

    dataset = Path(args.dataset) if args.dataset else s.dataset
    model, digest = load_split(args.split, args.weights)
    if args.competence:
        from veil.defenses.measure import identity_leak
        from veil.privacy.audit import select_fddb_faces

        result.update(
            {
                "defense": f"clean @ {args.split} ×{args.scale:g}",
                "alpha": None,
                "knob": {"split": args.split, "scale": args.scale},
            }
        )
        dec = scoring_decoder(model, lambda a: a, dirs, args, progress, result)
        stage("scoring decoder (clean)")
        faces = select_fddb_faces(dataset, max_faces=args.faces)
        result["identity"] = identity_leak(
            faces, model.head, lambda a: a, dec, scale=args.scale, ks=(1,), progress=progress, large_faces=True
        )
        stage("identity")
        result["stage_seconds"] = stage.seconds
        result["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
        jsonio.write_json(args.out, result)
        print(jsonio.dumps({k: result["identity"].get(k) for k in ("k1", "large_k1")}))
        return 0
    fits, data = fit_cell(model, fit_dirs, args.scale, args.alpha, list(range(args.fits)), args.fit_steps, progress)
    stage("fit")
    result.update(
        {
            "defense": knob_name(args.split, args.scale),
            "alpha": args.alpha,
            "knob": {"split": args.split, "scale": args.scale},
            "fit": {
                "data": data,
                "steps": args.fit_steps,
                "seeds": list(range(args.fits)),
                "seconds": [round(r.seconds, 1) for r in fits],
                "nsr_db_fit_data": [r.log[-1]["nsr_db"] for r in fits],
            },
        }
    )
    det = Detector(model, digest, scale=args.scale)
    clean = evaluate_fddb(det, dataset, progress=progress, shard=args.shard)
    stage("clean mAP")
    maps, nsrs = [], []
    for r in fits:
        det.obfuscator = r.obfuscator
        ev = evaluate_fddb(det, dataset, progress=progress, nsr=True, shard=args.shard)
        maps.append(ev.mAP)
        nsrs.append(ev.noisy_nsr["nsr_db"])
        print(f"fit seed {r.config.seed}: FDDB mAP {ev.mAP:.4f}, NSR {nsrs[-1]:+.2f} dB", flush=True)
    stage("noisy mAP")
    result["clean_map"] = round(clean.mAP, 4)
    result["map"] = {
        "draws": [round(m, 4) for m in maps],
        "mean": round(statistics.mean(maps), 4),
        "sd": round(statistics.stdev(maps), 4) if len(maps) > 1 else None,
        "min": round(min(maps), 4),
        "max": round(max(maps), 4),
    }
    result["drop_points_vs_clean_at_this_scale"] = round(100 * (clean.mAP - result["map"]["mean"]), 2)
    result["nsr_db"] = round(statistics.mean(nsrs), 2)
    result["nsr_db_draws"] = [round(v, 2) for v in nsrs]
    if not args.skip_privacy:
        from veil.defenses.measure import grey_reference, identity_leak
        from veil.privacy.audit import select_fddb_faces

        obf = fits[0].obfuscator
        t0 = time.monotonic()
        dec = scoring_decoder(model, obf, dirs, args, progress, result)
        stage("scoring decoder")
        faces = select_fddb_faces(dataset, max_faces=args.faces)
        result["identity"] = identity_leak(
            faces, model.head, obf, dec, scale=args.scale, progress=progress, large_faces=not args.no_large_faces
        )
        result["identity"]["grey_reference"] = grey_reference(faces)
        result["privacy_seconds"] = round(time.monotonic() - t0, 1)
        stage("identity")
    result["stage_seconds"] = stage.seconds
    result["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    jsonio.write_json(args.out, result)
    short = {k: result.get(k) for k in ("defense", "alpha", "clean_map", "map", "nsr_db")}
    if "identity" in result:
        short["rank1"] = {k: result["identity"][k]["rank1"] for k in ("k1", "k8")}
    print(jsonio.dumps(short))
    return 0


if __name__ == "__main__":
    sys.exit(main())

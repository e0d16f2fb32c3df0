"""Identity regression against the split points (issue 9 §2e): does a deeper split hide identity?

The pixel decoders identify only 2–3 % of faces from the *clean* inception2/3 activation, so the
deeper splits' low leak under noise makes no claim. This script scores a stronger, cheaper attacker
there: :mod:`veil.privacy.regressor` (a small network reads the activation at the face box and
predicts the dlib embedding directly). One *cell* = (split, scale, clean or ALPHA):

* training samples: non-FDDB faces only (WIDER subset + dlib photos), each at 4 drawn sizes over
  the audit's bins (48–400 px at the network), half mirrored, cached per split under the model's key;
* the regressor trains from scratch (OS-drawn seed and data order unless given) on the clean
  activation (``--clean``: the competence row) or on per-channel noise at ``--alpha`` (fresh
  every step): the shipped noise file for rdcl ×3, else noise fitted for that split and scale on
  the WIDER photos only (``benchmarks/knobs.py``'s recipe, fit seed 0), or ``--noise FILE``;
  until its loss plateaus or ``--minutes`` pass;
* scored on the first ``--faces`` FDDB faces ≥ 48 px (chance 1/N) through the audit's views (every
  face at natural size, and enlarged so it reaches the network at 288 px: the large-face bin), for
  one query (``regressor``), the mean of 8 (``regressor_avg8``) and, with ``--dup``, 8 near-duplicates
  (``regressor_dup8``); rank-1 and TAR@1 %FAR with Wilson 95 % intervals, per face-size bin.

    R=benchmarks/results/regressor
    python benchmarks/regressor.py --split inception2 --scale 3 --clean --out $R/clean-inception2-x3.json
    python benchmarks/regressor.py --split inception2 --scale 3 --alpha 0.8 --out $R/a0.8-inception2-x3.json
    python benchmarks/regressor.py --table $R
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from veil import jsonio

SPLITS = ("rdcl", "inception1", "inception2", "inception3")


def noise_for(model, split: str, scale: float, alpha: float, noise: str | None, dirs, progress: bool):
    """The per-channel noise of the cell and where it came from."""
    from veil.obfuscate import load_obfuscator

    if noise:
        obf, _ = load_obfuscator(alpha, noise=noise, model=model)
        return obf, {"noise_file": noise}
    if split == "rdcl" and scale == model.config.input.scale:
        obf, _ = load_obfuscator(alpha, model=model)  # the shipped default
        return obf, {"noise_file": f"shipped alpha-{alpha:g}"}
    sys.path.insert(0, str(Path(__file__).parent))
    from knobs import fit_cell

    fits, data = fit_cell(model.network, dirs[:1], scale, alpha, [0], 100, progress)
    return fits[0].obfuscator, {"noise_fit": {"seed": 0, "steps": 100, "data": data}}


def table(folder: Path) -> str:
    docs = [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))]
    docs.sort(key=lambda d: (d["scale"], SPLITS.index(d["split"]), d["alpha"] or 0))
    cols = ["split", "scale", "activation", "steps (stop)", "held-out rank-1", "rank-1 k=1 [95 %]"]
    cols += ["rank-1 avg8 [95 %]", "rank-1 dup8 [95 %]", "rank-1 ≥ 192 px [95 %]", "TAR@1%FAR k=1", "minutes", "load"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]

    def r(s: dict | None, b: str | None = None) -> str:
        if s is None:
            return "–"
        m = s if b is None else s["bins"][b]
        if m.get("rank1") is None:
            return "–"
        lo, hi = m["rank1_ci95"]
        return f"{m['rank1']:.2f} [{lo:.2f}, {hi:.2f}]"

    for d in docs:
        a = d["attackers"]
        reg = d["regressor"]
        act = "clean" if d["alpha"] is None else f"noise α {d['alpha']:g}"
        row = [d["split"], f"×{d['scale']:g}", act, f"{reg['steps']} ({reg['stop_reason']})"]
        row += [f"{reg['held_out_rank1']:.2f}", r(a.get("regressor")), r(a.get("regressor_avg8"))]
        row += [r(a.get("regressor_dup8")), r(a.get("regressor"), ">=192")]
        row += [f"{a['regressor']['tar_at_far1']:.2f}", f"{sum(d['stage_seconds'].values()) / 60:.1f}"]
        row += [f"{d['machine']['load_at_start'][0]:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common beside this script, also when loaded by path
    from _common import Stages, git_commit, uptime  # beside this script (run as a script)

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", choices=SPLITS, default="rdcl")
    p.add_argument("--scale", type=float, default=3.0)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--clean", action="store_true", help="train and score on the clean activation (competence)")
    g.add_argument("--alpha", type=float, default=0.8)
    p.add_argument("--noise", help="noise file for --alpha (default: shipped for rdcl ×3, else fitted, seed 0)")
    p.add_argument("--images", nargs="+", help="non-FDDB photo folders with face boxes (default: $VEIL_FIT_IMAGES)")
    p.add_argument("--weights", help="FaceBoxes weights (default: $VEIL_WEIGHTS, then the cache)")
    p.add_argument("--dataset", help="FDDB root (default: $VEIL_DATASET)")
    p.add_argument("--faces", type=int, default=100)
    p.add_argument("--sizes-per-face", type=int, default=4)
    p.add_argument("--minutes", type=float, default=6.0, help="training wall budget (default: 6)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=64, help="regressor channels after the 1×1 reduction (default: 64)")
    p.add_argument("--depth", type=int, default=1, help="convolution blocks (0: linear on the cells; default: 1)")
    p.add_argument("--hidden", type=int, default=0, help="hidden layer of the head (default: none)")
    p.add_argument("--weight-decay", type=float, default=1e-2)
    p.add_argument("--contrastive", type=float, default=1.0, help="weight of the retrieval term (default: 1)")
    p.add_argument("--eval-every", type=int, default=100, help="held-out rank-1 every N steps (default: 100)")
    p.add_argument("--last", action="store_true", help="keep the last weights, not the best on held-out WIDER faces")
    p.add_argument("--no-plateau", action="store_true", help="train the whole --minutes (no plateau stop)")
    p.add_argument(
        "--samples-tag",
        help="use the cached samples regressor-samples-x<scale>-<TAG> of each split (what earlier cells trained on)",
    )
    p.add_argument("--jittered-per-face", type=int, default=0, help="extra samples: jittered face boxes per face")
    p.add_argument("--patches-per-photo", type=int, default=0, help="extra samples: random boxes per photo")
    p.add_argument("--seed", type=int, help="regressor seed (default: drawn from the OS)")
    p.add_argument("--data-order-seed", type=int, help="default: drawn from the OS")
    p.add_argument("--dup", action="store_true", help="also the near-duplicate averaging attack (8 copies)")
    p.add_argument("--save", help="also write the trained regressor here")
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

    from veil.models.pretrained import create
    from veil.privacy.audit import gallery_for, make_views, select_fddb_faces, summarize
    from veil.privacy.regressor import build_samples, regressor_leaks, train_regressor
    from veil.privacy.train import Plateau
    from veil.settings import settings

    s = settings()
    progress = not args.quiet
    dirs = [Path(d) for d in args.images] if args.images else list(s.fit_images)
    dataset = Path(args.dataset) if args.dataset else s.dataset
    result: dict = {
        "split": args.split,
        "scale": args.scale,
        "alpha": None if args.clean else args.alpha,
        "machine": {
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "load_at_start": [round(x, 2) for x in os.getloadavg()],
            "uptime_at_start": uptime(),
        },
        "commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
    }
    stage = Stages()

    weights = args.weights or s.weights
    models = {sp: create("faceboxes", sp, weights=weights) for sp in SPLITS}
    model = models[args.split]
    # one head pass gives every split's samples (consecutive blocks); cached under each split's key
    if args.samples_tag:
        from veil.privacy.decoders import attackers_dir
        from veil.privacy.regressor import load_samples

        f = attackers_dir(model) / f"regressor-samples-x{args.scale:g}-{args.samples_tag}.safetensors"
        samples = load_samples(f, model)
    else:
        samples = build_samples(
            list(models.values()),
            dirs,
            scale=args.scale,
            sizes_per_face=args.sizes_per_face,
            jittered_per_face=args.jittered_per_face,
            patches_per_photo=args.patches_per_photo,
            progress=progress,
        )[args.split]
    result["samples_tag"] = args.samples_tag
    stage("samples")
    wire = None
    if not args.clean:
        wire, result["noise"] = noise_for(model, args.split, args.scale, args.alpha, args.noise, dirs, progress)
        stage("noise")
    reg = train_regressor(
        samples,
        model,
        wire,
        minutes=args.minutes,
        max_steps=args.max_steps,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        data_order_seed=args.data_order_seed,
        plateau=None if args.no_plateau else Plateau(window=100, tol=0.01, patience=3),
        progress=progress,
        arch={"width": args.width, "depth": args.depth, "hidden": args.hidden},
        weight_decay=args.weight_decay,
        contrastive=args.contrastive,
        eval_every=args.eval_every,
        keep_best=not args.last,
        out=args.save,
        meta={"alpha": None if args.clean else args.alpha, "scale": args.scale},
    )
    stage("train")
    keys = ("steps", "seconds", "seed", "data_order_seed", "stop_reason", "held_out_rank1", "held_out_faces")
    keys += ("train_faces", "batch", "lr", "weight_decay", "box_jitter", "contrastive", "temperature", "best_step")
    keys += ("state_sha256",)
    result["regressor"] = {k: reg.meta.get(k) for k in keys}
    result["regressor"]["arch"] = reg.arch()
    result["regressor"]["plateau"] = reg.meta.get("plateau")
    result["regressor"]["curve_loss"] = reg.meta["curve_loss"]
    result["regressor"]["held_out_rank1_curve"] = reg.meta["held_out_rank1_curve"]
    result["samples"] = {k: v for k, v in samples.meta.items() if k not in ("dirs",)} | {"dirs": [str(d) for d in dirs]}
    faces = select_fddb_faces(dataset, max_faces=args.faces)
    views = make_views(faces, args.scale, enlarge=True)
    gallery = gallery_for(faces)
    stage("gallery")
    leaks = regressor_leaks(
        reg, model, faces, views, args.scale, wire, ks=(1, 8), dup_ks=(8,) if args.dup else (), progress=progress
    )
    stage("scoring")
    n = faces.n_faces
    result.update(
        n_faces=n,
        n_views=len(views),
        faces_digest=faces.digest(),
        chance_rank1=round(1 / n, 5),
        far_threshold=round(gallery.threshold, 4),
        attackers={k: summarize(v, gallery) for k, v in leaks.items()},
    )
    for v in result["attackers"].values():
        v.pop("ssim", None), v.pop("psnr", None), v.pop("face_ssim", None)
    result["stage_seconds"] = stage.seconds
    result["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    jsonio.write_json(args.out, result)
    for k, v in result["attackers"].items():
        big = v["bins"][">=192"]
        print(
            f"{k:16s} rank-1 {v['rank1']:.2f} {v['rank1_ci95']}  ≥192 px {big['rank1']} {big['rank1_ci95']} "
            f"(n {big['n']})  TAR {v['tar_at_far1']:.2f}"
        )
    print(f"held-out rank-1 {reg.meta['held_out_rank1']} over {reg.meta['held_out_faces']} faces; chance {1 / n:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

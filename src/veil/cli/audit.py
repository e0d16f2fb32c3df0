"""``veil audit`` (what leaks from the activation, per attacker) and ``veil train-decoder``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from veil import jsonio
from veil.cli.options import add_model_choice, create_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="attack the (obfuscated) activation and measure what leaks",
        description="Privacy audit at the deployed scale: naive and adaptive decoders, white-box "
        "inversion of the public head, and the averaging attacks. For a face detector, on FDDB "
        "faces: SSIM/PSNR and identity (dlib ResNet rank-1 and TAR at 1% FAR). For any other "
        "model (--model), on the images of --images: how well each attacker reconstructs the "
        "network input (L1, PSNR, SSIM). Writes report.json and report.md (and image grids for "
        "faces) into --out (one sub-folder per ALPHA when several are given). Decoders train on "
        "non-evaluation photos and are cached under the veil cache, per model, split and weights.",
    )
    add_model_choice(p)
    p.add_argument(
        "--alpha", type=float, nargs="+", required=True, help="ALPHA(s) to audit; 0 audits clean activations only"
    )
    p.add_argument("--noise", help="fitted noise file (single ALPHA); default: the noise directory, else fit it")
    p.add_argument("--noise-dir", help="directory of alpha-<A>.safetensors (default: the veil cache)")
    p.add_argument("--dataset", help="FDDB root, for a face detector (default: $VEIL_DATASET)")
    p.add_argument(
        "--images",
        nargs="+",
        help="evaluation image folders, for a model without faces (the reconstruction audit)",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--max-faces", type=int, help="FDDB faces to evaluate, in fold order (default: every qualifying face present)"
    )
    p.add_argument("--min-face", type=float, default=48.0, help="smallest face box side in px (default: %(default)s)")
    p.add_argument(
        "--decoder-minutes",
        type=float,
        default=15.0,
        help="wall-time budget of a decoder that is not cached yet; it stops earlier when its loss "
        "plateaus (default: %(default)s)",
    )
    p.add_argument("--whitebox-steps", type=int, default=100, help="Adam steps per face (default: %(default)s)")
    p.add_argument(
        "--whitebox-faces",
        type=int,
        default=40,
        help="faces the white-box attacker inverts (the first ones, with their enlarged copies; default: %(default)s)",
    )
    p.add_argument("--whitebox-batch", type=int, default=8, help="faces inverted together (default: %(default)s)")
    p.add_argument(
        "--whitebox-start",
        choices=("grey", "decoder"),  # veil.privacy.campaign.WHITEBOX_STARTS (imported lazily)
        default="grey",
        help="where the white-box search starts: grey (the mean colour) or decoder (the hybrid attack: from the "
        "layer-wise chain's reconstruction with --layerwise at a deep split, else the naive or adaptive "
        "decoder's; default: %(default)s)",
    )
    p.add_argument(
        "--ks",
        type=int,
        nargs="+",
        default=[4, 16],
        help="averaging attack: obfuscations averaged per image (default: %(default)s; K=1 is 'adaptive')",
    )
    p.add_argument(
        "--dup-ks",
        type=int,
        nargs="*",
        default=[16],
        help="near-duplicate averaging: obfuscated near-duplicates (JPEG q90, 1-2 px shifts, ±3%% zoom) "
        "averaged per image (default: %(default)s; none: off)",
    )
    p.add_argument("--no-perceptual", action="store_true", help="leave out the perceptual-loss decoder")
    p.add_argument(
        "--regressor",
        action="store_true",
        help="also the identity regressor (predicts the face embedding from the activation at the box; "
        "face detectors): its training samples are built once per scale and cached (minutes), then one "
        "regressor is trained clean and one per ALPHA (--regressor-minutes each, cached); scoring adds "
        "about a second per view",
    )
    p.add_argument(
        "--regressor-minutes", type=float, default=6.0, help="training budget per regressor (default: %(default)s)"
    )
    p.add_argument(
        "--layerwise",
        action="store_true",
        help="at a deep split (e.g. --split inception1), also the layer-wise attacker: a network maps the "
        "activation back to the model's first split and that split's naive decoder reads it (the pixel "
        "decoders alone are weak on deep features); one inverter clean and one per ALPHA "
        "(--layerwise-minutes each, cached); no effect at the first split",
    )
    p.add_argument(
        "--layerwise-minutes", type=float, default=8.0, help="training budget per inverter (default: %(default)s)"
    )
    p.add_argument(
        "--layerwise-finetune-minutes",
        type=float,
        default=8.0,
        help="then train each chain end to end on pixel L1 this long, cached (default: %(default)s; 0: off)",
    )
    p.add_argument(
        "--no-enlarged",
        action="store_true",
        help="leave out the enlarged copies of faces below 192 px at the network (not a full audit)",
    )
    p.add_argument(
        "--keyed",
        action="store_true",
        help="also audit keyed noise (ε from HMAC(key, activation); a random key for the audit): exact "
        "repeats get the same noise, near-duplicates fresh noise",
    )
    p.add_argument(
        "--train-images",
        nargs="+",
        help="non-evaluation image folders for decoders and noise fitting (default: $VEIL_FIT_IMAGES)",
    )
    p.add_argument(
        "--scale", type=float, help="input scale of the deployed path (default: the model's, ×3 for faceboxes)"
    )
    p.set_defaults(func=run_audit)

    f = sub.add_parser(
        "frontier",
        help="privacy–utility frontier: join a sweep with audit reports (and every defense's results)",
        description="Join `veil sweep`'s sweep.json (mAP per ALPHA) with `veil audit` reports "
        "(worst-attacker rank-1 per ALPHA); write frontier.md, frontier.json and "
        "frontier.png (mAP against worst-attacker rank-1). With --defenses, write instead ONE table "
        "and plot over all defenses (frontier_all.md/.json/.png): defense x ALPHA -> mAP, drop, NSR, "
        "every attacker's rank-1 [95 % CI], worst rank-1 (x chance), TAR; '–' where no input has the value.",
    )
    f.add_argument("--sweep", help="sweep.json written by `veil sweep` (required without --defenses)")
    f.add_argument("--audits", nargs="+", default=[], help="report.json files or folders holding them")
    f.add_argument(
        "--defenses",
        nargs="+",
        default=[],
        help="benchmarks/defenses.py and benchmarks/audit_cost.py result JSONs (or folders of them)",
    )
    f.add_argument(
        "--clean-map",
        type=float,
        help="clean FDDB mAP for the drop column, as measured by `veil evaluate` (default: the sweep's)",
    )
    f.add_argument("--out", required=True, help="output directory")
    f.set_defaults(func=run_frontier)

    g = sub.add_parser(
        "leak-scale",
        help="identity held by the activation grid alone, per input scale",
        description="For each input scale, reduce the FDDB originals to the split's activation grid "
        "resolution (its stride: 32 for faceboxes) and back, and score identity (rank-1, TAR at 1% FAR) "
        "like an attacker: what a perfect decoder could at most recover from the grid's "
        "resolution. Cheap (no training).",
    )
    add_model_choice(g, weights=False)
    g.add_argument("--dataset", help="FDDB root (default: $VEIL_DATASET)")
    g.add_argument("--max-faces", type=int, help="faces, in fold order (default: every qualifying face)")
    g.add_argument("--min-face", type=float, default=48.0, help="smallest face box side in px (default: %(default)s)")
    g.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0], help="input scales")
    g.add_argument("--json", help="write the result here")
    g.set_defaults(func=run_leak_scale)

    t = sub.add_parser(
        "train-decoder",
        help="train (and cache) a reconstruction decoder",
        description="Train the naive decoder (clean activations) or, with --alpha, the adaptive "
        "one (activations obfuscated with that ALPHA's fitted noise) on non-FDDB photos "
        "until the loss plateaus or a wall-time budget ends; cached under the veil "
        "cache's attackers/ with its seeds and learning curve.",
    )
    t.add_argument("--alpha", type=float, help="train the adaptive decoder for this ALPHA's noise")
    t.add_argument("--noise", help="fitted noise file (default: the noise directory)")
    t.add_argument("--noise-dir", help="directory of alpha-<A>.safetensors")
    t.add_argument(
        "--minutes",
        type=float,
        default=15.0,
        help="wall-time budget; training stops earlier when the loss plateaus (default: %(default)s)",
    )
    t.add_argument(
        "--loss",
        choices=("l1", "perceptual"),
        default="l1",
        help="l1 (pixels) or perceptual (pixels + the frozen detector's features; default: %(default)s)",
    )
    t.add_argument("--batch", type=int, default=8, help="crops per step (default: %(default)s)")
    t.add_argument("--scale", type=float, help="input scale (default: the model's, ×3 for faceboxes)")
    t.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default: %(default)s)")
    t.add_argument("--train-images", nargs="+", help="non-evaluation image folders (default: $VEIL_FIT_IMAGES)")
    add_model_choice(t)
    t.set_defaults(func=run_train)


def _dataset(args: argparse.Namespace) -> Path:
    """--dataset, else $VEIL_DATASET; a clear error naming both when neither is given."""
    from veil.settings import settings

    d = args.dataset or settings().dataset
    if d is None:
        raise ValueError(
            "no FDDB dataset: pass --dataset DIR or set VEIL_DATASET (FDDB root with FDDB-folds/ and originalPics/)"
        )
    return Path(d)


def _training_dirs(args: argparse.Namespace) -> list[Path]:
    from veil.privacy.train import require_training_dirs

    return require_training_dirs(args.train_images, flag="--train-images")


def run_audit(args: argparse.Namespace) -> int:
    from veil.privacy.audit import FACE_TASKS, select_fddb_faces
    from veil.privacy.campaign import AuditSettings, audit_alphas, reconstruction_alphas

    if args.noise and len(args.alpha) > 1:
        raise ValueError("--noise names one file: give a single --alpha with it")
    if any(k < 2 for k in args.ks + args.dup_ks):
        raise ValueError("--ks/--dup-ks values must be ≥ 2 (K = 1 is the adaptive attacker itself)")
    dirs = _training_dirs(args)
    model = create_model(args)
    settings = AuditSettings(
        scale=args.scale,
        decoder_minutes=args.decoder_minutes,
        whitebox_steps=args.whitebox_steps,
        whitebox_faces=args.whitebox_faces,
        whitebox_batch=args.whitebox_batch,
        whitebox_start=args.whitebox_start,
        ks=tuple(args.ks),
        dup_ks=tuple(args.dup_ks),
        perceptual=not args.no_perceptual,
        enlarge=not args.no_enlarged,
        keyed=args.keyed,
        regressor=args.regressor,
        regressor_minutes=args.regressor_minutes,
        layerwise=args.layerwise,
        layerwise_minutes=args.layerwise_minutes,
        layerwise_finetune_minutes=args.layerwise_finetune_minutes,
    )
    if model.config.task not in FACE_TASKS:
        images, labels = _eval_images(args)
        reconstruction_alphas(
            model,
            images,
            args.alpha,
            args.out,
            dirs,
            settings,
            noise=args.noise,
            noise_dir=args.noise_dir,
            on_report=_print_reconstruction,
            labels=labels,
        )
        return 0
    faces = select_fddb_faces(_dataset(args), args.max_faces, args.min_face)
    audit_alphas(
        model,
        faces,
        args.alpha,
        args.out,
        dirs,
        settings,
        noise=args.noise,
        noise_dir=args.noise_dir,
        on_report=_print_summary,
    )
    return 0


def _eval_images(args: argparse.Namespace) -> tuple[list, list[int] | None]:
    """The images of --images, read once (a corrupt one is reported and skipped), and their labels when every
    folder lists them in a labels.csv (``veil data digits DIR`` writes one): a classifier's label leak."""
    import sys

    from veil.data.images import list_images
    from veil.data.labelled import MANIFEST, read_labels
    from veil.preprocess import ImageReadError, load_image

    if not args.images:
        raise ValueError(f"model {args.model!r} sees no faces: give its evaluation images with --images DIR")
    dirs = [Path(d) for d in args.images]
    listed: dict[Path, int] | None = None
    if all((d / MANIFEST).is_file() for d in dirs):
        listed = {}
        for d in dirs:
            paths, labels, _ = read_labels(d)
            listed.update({p.resolve(): int(y) for p, y in zip(paths, labels, strict=True)})
    out, labels_out = [], []
    for f in list_images(args.images, evaluation=True):
        if listed is not None and f.resolve() not in listed:
            continue  # a file its folder's labels.csv does not list
        try:
            out.append(load_image(f))
        except ImageReadError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            continue
        if listed is not None:
            labels_out.append(listed[f.resolve()])
    return out, (labels_out if listed is not None else None)


def _print_reconstruction(rep: dict, dest: Path) -> None:
    print(f"ALPHA {rep['alpha']:g}: {rep['n_images']} images of {rep['model']} at {rep['split_point']}")
    for k, v in rep["attackers"].items():
        print(f"  {k:16s} L1 {v['l1']:.2f}  PSNR {v['psnr']:.2f} dB  SSIM {v['ssim']}")
    print(f"  worst {rep['worst_attacker']} (SSIM {rep['worst_ssim']}); competent: {rep['competent']}")
    if "label_leak" in rep:  # a classifier with labelled images
        leak = rep["label_leak"]
        acc = ", ".join(f"{k} {v:.4f}" for k, v in leak["accuracy"].items())
        print(f"  label leak (clean classifier on the reconstructions; chance {leak['chance']:.2f}): {acc}")
    print(f"  → {dest / 'report.md'}")


def _print_summary(rep: dict, dest: Path) -> None:
    chance = rep["chance_rank1"]
    print(
        f"ALPHA {rep['alpha']:g} ({rep.get('noise_mode', 'fresh')} noise): {rep['n_faces']} faces, chance rank-1 "
        f"{chance:.4f}; clean pass {'cached' if rep['clean_pass_cached'] else 'computed'}; {rep['timing_s']}"
    )
    for k, v in rep["attackers"].items():
        lo, hi = v["rank1_ci95"]
        bins = ", ".join(f"{b}: {m['rank1']:.3f} (n={m['n']})" for b, m in v["bins"].items() if m["n"])
        print(
            f"  {k:16s} rank-1 {v['rank1']:.3f} [{lo:.3f}, {hi:.3f}] ({v['rank1'] / chance:.1f}× chance), "
            f"TAR {v['tar_at_far1']:.3f} [{v['tar_ci95'][0]:.3f}, {v['tar_ci95'][1]:.3f}]; {bins}"
        )
    print(
        f"  worst {rep['worst_attacker']} ({rep['worst_rank1_x_chance']}× chance); every bin ≤ 2× chance: "
        f"{rep.get('passes_every_bin')}; TAR ≤ 2× reference: {rep.get('passes_tar')}; "
        f"competent: {rep['competent']} ({rep['competence_attacker']} "
        f"{rep['competence_rank1_large']:.3f} in the large-face bin)"
    )
    print(f"  → {dest / 'report.md'}")


def run_train(args: argparse.Namespace) -> int:
    import torch

    from veil.privacy.campaign import audit_noise
    from veil.privacy.train import ModelFeatures, ensure_decoder

    model = create_model(args)
    dirs = _training_dirs(args)
    nz = None
    if args.alpha is not None:  # an adaptive decoder: trained on this ALPHA's noise
        nz = audit_noise(args.alpha, model, dirs, noise=args.noise, noise_dir=args.noise_dir)
        nz.obfuscator.to(torch.device(args.device))
    model.to(args.device)
    dec = ensure_decoder(
        model,
        args.minutes,
        dirs,
        obfuscator=nz.obfuscator if nz else None,
        noise_sha256=nz.sha256 if nz else None,
        alpha=args.alpha,
        batch=args.batch,
        scale=args.scale,
        loss=args.loss,
        features=ModelFeatures(model) if args.loss == "perceptual" else None,
        device=args.device,
    )
    md = {k: v for k, v in dec.meta.items() if k != "curve_l1_px"}
    print(jsonio.dumps(md))
    return 0


def run_frontier(args: argparse.Namespace) -> int:
    from veil.privacy.frontier import finish_rows, load_rows, write_all
    from veil.privacy.report import load_reports, write_frontier

    sweep = json.loads(Path(args.sweep).read_text()) if args.sweep else None
    if not args.defenses:
        if sweep is None or not args.audits:
            raise SystemExit("veil frontier: give --sweep and --audits, or --defenses (with optional --sweep/--audits)")
        _, md = write_frontier(sweep, load_reports(args.audits), args.out)
        print(md)
        return 0
    rows = finish_rows(load_rows(args.defenses + args.audits), sweep, args.clean_map)
    clean = args.clean_map if args.clean_map is not None else (sweep or {}).get("clean_mAP")
    print(write_all(rows, args.out, clean))
    return 0


def run_leak_scale(args: argparse.Namespace) -> int:
    from veil.privacy.audit import blur_leak_by_scale, select_fddb_faces

    model = create_model(args, pretrained=False)  # the split's stride is all it needs
    faces = select_fddb_faces(_dataset(args), args.max_faces, args.min_face)
    res = blur_leak_by_scale(faces, model, tuple(args.scales))
    print(f"{faces.n_faces} faces, chance rank-1 {1 / faces.n_faces:.4f}")
    for s, m in res.items():
        print(
            f"scale ×{s:g}: rank-1 {m['rank1']:.3f}, TAR@1%FAR {m['tar_at_far1']:.3f}, face SSIM {m['face_ssim']:.3f}"
        )
    if args.json:
        jsonio.write_json(args.json, {str(k): v for k, v in res.items()})
    return 0

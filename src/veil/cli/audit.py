"""``veil audit`` (what leaks from the activation, per attacker) and ``veil train-decoder``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from veil.preprocess import FDDB_SCALE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit", help="attack the (obfuscated) activation and measure what leaks",
        description="Privacy audit on FDDB faces at the deployed scale: naive and adaptive decoders, "
                    "white-box inversion of the public head, and the averaging attack; SSIM/PSNR and "
                    "identity (dlib ResNet rank-1 and TAR at 1%% FAR). Writes report.json, report.md "
                    "and image grids into --out (one sub-folder per ALPHA when several are given). "
                    "Decoders train on non-FDDB photos and are cached under the veil cache.")
    p.add_argument("--alpha", type=float, nargs="+", required=True,
                   help="ALPHA(s) to audit; 0 audits clean activations only")
    p.add_argument("--noise", help="fitted noise file (single ALPHA); default: the noise directory, else fit it")
    p.add_argument("--noise-dir", help="directory of alpha-<A>.safetensors (default: the veil cache)")
    p.add_argument("--dataset", default="../shared/data/fddb", help="FDDB root (default: %(default)s)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--max-faces", type=int, default=40, help="FDDB faces to evaluate, in fold order (default: %(default)s)")
    p.add_argument("--min-face", type=float, default=48.0, help="smallest face box side in px (default: %(default)s)")
    p.add_argument("--decoder-minutes", type=float, default=15.0,
                   help="wall time to train a decoder that is not cached yet (default: %(default)s)")
    p.add_argument("--whitebox-steps", type=int, default=100, help="Adam steps per face (default: %(default)s)")
    p.add_argument("--whitebox-faces", type=int, default=20,
                   help="faces the white-box attacker inverts (the first ones; default: %(default)s)")
    p.add_argument("--ks", type=int, nargs="+", default=[4, 16],
                   help="averaging attack: obfuscations averaged per image (default: %(default)s; K=1 is 'adaptive')")
    p.add_argument("--train-images", nargs="+", help="non-FDDB photo folders for decoders and noise fitting "
                                                      "(default: ../shared WIDER subset and dlib photos)")
    p.add_argument("--weights", help="FaceBoxes weights (default: $VEIL_WEIGHTS, then the cache)")
    p.add_argument("--scale", type=float, default=FDDB_SCALE, help="input scale of the deployed path (default: %(default)s)")
    p.set_defaults(func=run_audit)

    f = sub.add_parser("frontier", help="privacy–utility frontier: join a sweep with audit reports",
                       description="Join `veil sweep`'s sweep.json (mAP per ALPHA) with `veil audit` reports "
                                   "(worst-attacker rank-1 per ALPHA); write frontier.md, frontier.json and "
                                   "frontier.png (mAP against worst-attacker rank-1).")
    f.add_argument("--sweep", required=True, help="sweep.json written by `veil sweep`")
    f.add_argument("--audits", nargs="+", required=True, help="report.json files or folders holding them")
    f.add_argument("--out", required=True, help="output directory")
    f.set_defaults(func=run_frontier)

    g = sub.add_parser("leak-scale", help="identity held by the activation grid alone, per input scale",
                       description="For each input scale, reduce the FDDB originals to the head's stride-32 grid "
                                   "resolution and back, and score identity (rank-1, TAR at 1%% FAR) like an "
                                   "attacker: what a perfect decoder could at most recover from the grid's "
                                   "resolution. Cheap (no training).")
    g.add_argument("--dataset", default="../shared/data/fddb", help="FDDB root (default: %(default)s)")
    g.add_argument("--max-faces", type=int, default=40, help="faces, in fold order (default: %(default)s)")
    g.add_argument("--min-face", type=float, default=48.0, help="smallest face box side in px (default: %(default)s)")
    g.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0], help="input scales")
    g.add_argument("--json", help="write the result here")
    g.set_defaults(func=run_leak_scale)

    t = sub.add_parser("train-decoder", help="train (and cache) a reconstruction decoder",
                       description="Train the naive decoder (clean activations) or, with --alpha, the adaptive "
                                   "one (activations obfuscated with that ALPHA's fitted noise) on non-FDDB photos "
                                   "for a bounded wall time; cached under the veil cache's attackers/.")
    t.add_argument("--alpha", type=float, help="train the adaptive decoder for this ALPHA's noise")
    t.add_argument("--noise", help="fitted noise file (default: the noise directory)")
    t.add_argument("--noise-dir", help="directory of alpha-<A>.safetensors")
    t.add_argument("--minutes", type=float, default=15.0, help="wall time (default: %(default)s)")
    t.add_argument("--train-images", nargs="+", help="photo folders (default: ../shared WIDER subset and dlib photos)")
    t.add_argument("--weights", help="FaceBoxes weights")
    t.set_defaults(func=run_train)


def _noise(alpha: float, args: argparse.Namespace, model, sha: str, fit_dirs: list) -> tuple:
    """Load the noise for ALPHA, fitting it (``veil fit-noise``'s defaults) when none exists yet."""
    from veil.obfuscate import NoiseFileError, load_obfuscator, noise_dir, noise_filename
    from veil.weights import sha256_file

    path = Path(args.noise) if args.noise else Path(args.noise_dir or noise_dir()) / noise_filename(alpha)
    if not path.is_file():
        if args.noise:
            raise NoiseFileError(f"noise file not found: {path}")
        if not fit_dirs:
            raise NoiseFileError(f"no noise for ALPHA {alpha:g} at {path} and no --train-images to fit it on")
        print(f"fitting noise for ALPHA {alpha:g} → {path}", file=sys.stderr)
        from veil.obfuscate.fit import FitConfig
        from veil.obfuscate.recipe import fit_and_save

        fit_and_save(model, sha, fit_dirs, path, FitConfig(alpha=alpha))
    obf, meta = load_obfuscator(alpha, noise=path, weights_sha256=sha)
    return obf, meta, sha256_file(path), path


def _clean_recs(faces, attacks, args: argparse.Namespace, naive) -> dict:
    """Clean-activation reconstructions, cached on disk: every ALPHA's audit shares them."""
    import hashlib
    import pickle

    from veil.privacy.audit import reconstruct_all
    from veil.privacy.decoders import attackers_dir

    key = hashlib.sha256(json.dumps([faces.digest(), args.scale, naive.meta, attacks.whitebox_steps,
                                     attacks.whitebox_faces, attacks.tv_weight], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    path = attackers_dir() / f"clean-recs-{key}.pkl"
    if path.is_file():
        with open(path, "rb") as fh:  # written by this function; the cache is the user's own
            return pickle.load(fh)  # noqa: S301
    recs = reconstruct_all(faces, attacks, args.scale, noisy=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".part"), "wb") as fh:
        pickle.dump(recs, fh)
    path.with_suffix(".part").replace(path)
    return recs


def run_audit(args: argparse.Namespace) -> int:
    from veil.privacy.audit import Attacks, audit, select_fddb_faces
    from veil.privacy.train import default_training_dirs, ensure_decoder
    from veil.weights import load_faceboxes

    if args.noise and len(args.alpha) > 1:
        raise ValueError("--noise names one file: give a single --alpha with it")
    model, sha = load_faceboxes(args.weights)
    dirs = args.train_images or default_training_dirs()
    faces = select_fddb_faces(args.dataset, args.max_faces, args.min_face)
    # Noise first (cheap, may fail on a bad file) so a mistake surfaces before any training.
    noises = {alpha: _noise(alpha, args, model, sha, dirs) for alpha in args.alpha if alpha > 0}
    print(f"auditing {faces.n_faces} faces in {len(faces.images)} FDDB images at scale ×{args.scale:g}", file=sys.stderr)
    naive = ensure_decoder(model.head, sha, args.decoder_minutes, dirs, scale=args.scale)
    if any(k < 2 for k in args.ks):
        raise ValueError("--ks values must be ≥ 2 (K = 1 is the adaptive attacker itself)")
    base = Attacks(model.head, naive, whitebox_steps=args.whitebox_steps, whitebox_faces=args.whitebox_faces,
                   ks=tuple(args.ks))
    clean = _clean_recs(faces, base, args, naive)
    out = Path(args.out)
    rows = []
    for alpha in args.alpha:
        dest = out if len(args.alpha) == 1 else out / f"alpha-{alpha:g}"
        meta = {"naive_decoder": naive.meta}
        att = base
        if alpha > 0:
            obf, _nmeta, nsha, npath = noises[alpha]
            adaptive = ensure_decoder(model.head, sha, args.decoder_minutes, dirs, obfuscator=obf, noise_sha256=nsha,
                                      alpha=alpha, scale=args.scale)
            att = Attacks(model.head, naive, adaptive, obf, whitebox_steps=args.whitebox_steps,
                          whitebox_faces=args.whitebox_faces, ks=tuple(args.ks))
            meta.update(noise_file=str(npath), noise_sha256=nsha, adaptive_decoder=adaptive.meta)
        rep = audit(faces, att, alpha, args.scale, out_dir=dest, meta=meta, clean_recs=clean)
        rows.append(rep)
        a = rep["attackers"]
        print(f"ALPHA {alpha:g}: chance rank-1 {rep['chance_rank1']:.4f}; " +
              ", ".join(f"{k} {v['rank1']:.3f}" for k, v in a.items()) +
              f"; worst {rep['worst_attacker']} ({rep['worst_rank1_x_chance']}× chance)" +
              ("" if rep["competent"] else "; NAIVE ATTACKER FAILED: no privacy claim"))
        print(f"  → {dest / 'report.md'}")
    if len(rows) > 1:
        from veil.privacy.audit import privacy_columns

        (out / "summary.json").write_text(json.dumps([{"alpha": r["alpha"], **privacy_columns(r)} for r in rows], indent=1))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from veil.privacy.train import default_training_dirs, ensure_decoder
    from veil.weights import load_faceboxes

    model, sha = load_faceboxes(args.weights)
    dirs = args.train_images or default_training_dirs()
    if args.alpha is None:
        dec = ensure_decoder(model.head, sha, args.minutes, dirs)
    else:
        obf, _meta, nsha, _p = _noise(args.alpha, args, model, sha, dirs)
        dec = ensure_decoder(model.head, sha, args.minutes, dirs, obfuscator=obf, noise_sha256=nsha, alpha=args.alpha)
    print(json.dumps(dec.meta, indent=1))
    return 0


def run_frontier(args: argparse.Namespace) -> int:
    from veil.privacy.report import load_reports, write_frontier

    _, md = write_frontier(json.loads(Path(args.sweep).read_text()), load_reports(args.audits), args.out)
    print(md)
    return 0


def run_leak_scale(args: argparse.Namespace) -> int:
    from veil.privacy.audit import blur_leak_by_scale, select_fddb_faces

    faces = select_fddb_faces(args.dataset, args.max_faces, args.min_face)
    res = blur_leak_by_scale(faces, tuple(args.scales))
    print(f"{faces.n_faces} faces, chance rank-1 {1 / faces.n_faces:.4f}")
    for s, m in res.items():
        print(f"scale ×{s:g}: rank-1 {m['rank1']:.3f}, TAR@1%FAR {m['tar_at_far1']:.3f}, face SSIM {m['face_ssim']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({str(k): v for k, v in res.items()}, indent=1))
    return 0

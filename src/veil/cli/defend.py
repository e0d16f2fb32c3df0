"""``veil distill-tail``, ``veil export-robust-tail`` and ``veil fit-bottleneck``: train and serve the
defenses of :mod:`veil.defenses` (thin layer)."""

from __future__ import annotations

import argparse
from pathlib import Path

from veil import jsonio
from veil.cli.main import CLIError
from veil.cli.options import add_model_choice


def _images(args: argparse.Namespace) -> list[Path]:
    from veil.settings import settings

    dirs = [Path(d) for d in args.images] if args.images else list(settings().fit_images)
    if not dirs:
        raise CLIError("no training photos: pass --images DIR… (non-FDDB photos) or set VEIL_FIT_IMAGES")
    return dirs


def _model(args: argparse.Namespace) -> tuple:
    """The network ``--model/--split/--weights`` name (weights verified) and its weights' SHA-256. The
    defenses learn against a face detector's outputs on face photos: another task is refused."""
    from veil.cli.options import create_model

    split = create_model(args)
    if split.config.task != "face-detection":
        raise CLIError(
            f"the defenses are trained against a face detector on face photos; {split.name} is a "
            f"{split.config.task} model"
        )
    return split.network, split.weights_sha256


def _common(p: argparse.ArgumentParser, steps: int, minutes: float) -> None:
    p.add_argument(
        "--images", nargs="+", metavar="DIR", help="folders of unlabeled non-FDDB photos (default: $VEIL_FIT_IMAGES)"
    )
    p.add_argument("--out", required=True, help="output .safetensors file")
    add_model_choice(p)  # recorded in the file with the weights' SHA-256; refused for another model or split
    p.add_argument("--steps", type=int, default=steps, help="training steps at most (default: %(default)s)")
    p.add_argument("--minutes", type=float, default=minutes, help="wall-time cap in minutes (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="crops per step (default: %(default)s)")
    p.add_argument(
        "--crop",
        type=int,
        default=640,
        help="crop side in network pixels: large enough for ×3-sized faces and the tail's 256/512-px "
        "anchors (default: %(default)s)",
    )
    p.add_argument(
        "--crops-per-image",
        type=int,
        default=2,
        help="random zoomed crops per photo, each also mirrored (default: %(default)s)",
    )
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the training data order (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill-tail",
        help="adapt a copy of the tail to obfuscated activations (label-free)",
        description="Distil a copy of the detector's tail so it reads activations obfuscated with a fitted "
        "noise file (fresh noise every step); the clean detector is the teacher, so no labels are "
        "needed. Trains on zoomed, mirrored crops of non-FDDB photos. Writes the tail's tensors "
        "with the base weights' SHA-256, the noise file's SHA-256 and ALPHA; they are refused with "
        "other weights or noise. Example: veil distill-tail --alpha 0.9 --noise N.safetensors "
        "--out tail-0.9.safetensors",
    )
    p.add_argument("--alpha", type=float, required=True, metavar="A", help="ALPHA of the noise file")
    p.add_argument("--noise", required=True, metavar="FILE", help="fitted noise file (veil fit-noise)")
    p.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate (default: %(default)s)")
    p.add_argument(
        "--export",
        metavar="REPO",
        help="then also serve it: write the Triton model face_detection_robust (python and onnx forms, "
        "checked against the in-process tail, its weights' SHA-256 in config.pbtxt) into the repository "
        "REPO that `veil export-triton --out REPO` wrote (or a new one)",
    )
    _common(p, steps=3000, minutes=10.0)
    p.set_defaults(func=run_distill)

    e = sub.add_parser(
        "export-robust-tail",
        help="serve a robust tail file as the Triton model face_detection_robust",
        description="Write an existing robust tail (veil distill-tail) into a Triton repository as its own model, "
        "face_detection_robust, beside the models `veil export-triton --out REPO` wrote: python and onnx forms, "
        "each checked against the in-process robust tail, with the tail's SHA-256, the noise file's SHA-256 and "
        "ALPHA in config.pbtxt. The file is refused for other weights, another noise file or ALPHA. Example: "
        "veil export-robust-tail --tail tail-0.9.safetensors --noise N.safetensors --alpha 0.9 --out REPO",
    )
    e.add_argument("--tail", required=True, metavar="FILE", help="robust tail file (veil distill-tail --out)")
    e.add_argument("--noise", required=True, metavar="FILE", help="the noise file it was trained against")
    e.add_argument("--alpha", type=float, required=True, metavar="A", help="ALPHA of that noise file")
    e.add_argument("--out", required=True, metavar="REPO", help="Triton repository root (veil export-triton --out)")
    add_model_choice(e)
    e.set_defaults(func=run_export_robust)

    b = sub.add_parser(
        "fit-bottleneck",
        help="train a client-side quantised bottleneck with a distilled tail",
        description="Train a deterministic, many-to-one map of the head's activation (1×1 conv to few "
        "channels, quantised; ALPHA sets channels, levels and the noise on top) together with a "
        "distilled tail that reads it (teacher: the clean detector), optionally against an in-loop "
        "reconstruction adversary. Example: veil fit-bottleneck --alpha 0.8 --out bn-0.8.safetensors",
    )
    b.add_argument("--alpha", type=float, required=True, metavar="A", help="obfuscation strength in [0, 1)")
    b.add_argument("--channels", type=int, help="override the channels ALPHA sets")
    b.add_argument("--levels", type=int, help="override the quantisation levels ALPHA sets")
    b.add_argument("--noise-std", type=float, help="override the noise (in quantisation steps) ALPHA sets")
    b.add_argument(
        "--adversary-weight",
        type=float,
        default=0.0,
        help="weight of the in-loop adversary's (negated) privacy term (default: %(default)s: off)",
    )
    b.add_argument(
        "--privacy-term",
        choices=("l1", "perceptual", "identity"),  # veil.defenses.bottleneck.BOTTLENECK_TERMS
        default="l1",
        help="what the in-loop adversary measures: l1 (a decoder's pixel error on whole crops), perceptual, "
        "identity (a regressor's error predicting each annotated face's dlib embedding: needs face boxes beside "
        "the photos) (default: %(default)s)",
    )
    b.add_argument(
        "--adversary-seed",
        type=int,
        default=None,
        help="initial-weights seed of the identity/perceptual adversary (default: drawn from the OS; recorded)",
    )
    b.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    _common(b, steps=3000, minutes=10.0)
    b.set_defaults(func=run_bottleneck)


def _threads(args: argparse.Namespace) -> None:
    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be ≥ 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)


def run_distill(args: argparse.Namespace) -> int:
    from veil.defenses.distill import DistillConfig
    from veil.defenses.files import file_sha256
    from veil.defenses.robust_tail import distill_tail, save_robust_tail
    from veil.models import as_split_model
    from veil.obfuscate import load_obfuscator

    _threads(args)
    dirs = _images(args)
    model, digest = _model(args)
    obf, _ = load_obfuscator(args.alpha, noise=args.noise, model=as_split_model(model, digest))
    cfg = DistillConfig(steps=args.steps, minutes=args.minutes, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    student, log, data = distill_tail(
        model, obf, dirs, cfg, crop=args.crop, crops_per_image=args.crops_per_image, progress=not args.quiet
    )
    out = save_robust_tail(
        student,
        args.out,
        weights_sha256=digest,
        noise_sha256=file_sha256(args.noise),
        alpha=args.alpha,
        cfg=cfg,
        log=log,
        data=data,
    )
    print(
        f"held-out distortion {log[0]['held_out_distortion']:.4f} (original tail) → "
        f"{log[-1]['held_out_distortion']:.4f} after {log[-1]['step']} steps, {log[-1]['seconds']:.0f} s"
    )
    print(f"wrote {out}")
    if args.export:
        _export_robust(out, args.noise, args.alpha, args.export, model, digest)
    return 0


def _export_robust(tail: Path, noise: str, alpha: float, repo: str, model, digest: str) -> None:
    from veil.defenses.robust_tail import export_triton

    desc = export_triton(tail, noise, alpha, repo, model, weights_sha256=digest)
    for fmt, where in desc["forms"].items():
        print(f"{fmt:12s} {Path(repo) / where}")
    print(
        f"served robust tail {desc['model']}: tensors SHA-256 {desc['robust_tail_sha256'][:16]}…, max |exported - "
        f"in-process| = {max(desc['max_abs_error_vs_in_process'].values()):.2e}"
    )


def run_export_robust(args: argparse.Namespace) -> int:
    model, digest = _model(args)
    _export_robust(Path(args.tail), args.noise, args.alpha, args.out, model, digest)
    return 0


def run_bottleneck(args: argparse.Namespace) -> int:
    from veil.defenses.bottleneck import BottleneckSpec, fit_bottleneck, save_bottleneck
    from veil.defenses.distill import DistillConfig

    _threads(args)
    dirs = _images(args)
    model, digest = _model(args)
    spec = BottleneckSpec.from_alpha(args.alpha, channels=args.channels, levels=args.levels, noise_std=args.noise_std)
    cfg = DistillConfig(steps=args.steps, minutes=args.minutes, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    fitted, log, data = fit_bottleneck(
        model,
        spec,
        dirs,
        cfg,
        adversary_weight=args.adversary_weight,
        privacy_term=args.privacy_term,
        adversary_seed=args.adversary_seed,
        crop=args.crop,
        crops_per_image=args.crops_per_image,
        progress=not args.quiet,
    )
    out = save_bottleneck(
        fitted, args.out, weights_sha256=digest, cfg=cfg, log=log, data=data, adversary_weight=args.adversary_weight
    )
    print(
        jsonio.dumps({"spec": spec.as_dict(), "held_out_distortion": log[-1].get("held_out_distortion")}, indent=None)
    )
    print(f"wrote {out}")
    return 0

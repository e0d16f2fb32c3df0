"""``veil fit-noise``: fit the obfuscation noise for one ALPHA on unlabeled images and save it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from veil.cli.errors import CLIError
from veil.cli.options import add_model_choice, alpha_arg, create_model
from veil.jsonio import write_json
from veil.obfuscate.artifact import noise_path
from veil.obfuscate.crops import DEFAULT_CROP, DEFAULT_SCALE_RANGE
from veil.obfuscate.fit import FitConfig
from veil.obfuscate.noise import FAMILIES


def add_fit_args(p: argparse.ArgumentParser) -> None:
    """Fitting flags shared by ``fit-noise`` and ``sweep``."""
    d = FitConfig(alpha=0.0)
    g = p.add_argument_group("fitting")
    g.add_argument("--steps", type=int, default=d.steps, help="optimisation steps (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="crops per step (default: %(default)s)")
    g.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate for log σ (default: %(default)s)")
    g.add_argument("--family", choices=FAMILIES, default=d.family, help="noise distribution (default: %(default)s)")
    g.add_argument(
        "--privacy-weight",
        type=float,
        default=d.privacy_weight,
        help="scale of the privacy term against the distortion term (default: %(default)s)",
    )
    g.add_argument(
        "--channel-weight",
        type=float,
        default=d.channel_weight,
        help="privacy blend: 1 = mean per-channel log NSR, 0 = overall log NSR (default: %(default)s)",
    )
    g.add_argument("--crop", type=int, default=DEFAULT_CROP, help="crop side in network pixels (default: %(default)s)")
    g.add_argument(
        "--scale-range",
        type=float,
        nargs=2,
        default=list(DEFAULT_SCALE_RANGE),
        metavar=("LO", "HI"),
        help="images are resized by a factor drawn log-uniformly from [LO, HI] before cropping, so "
        "faces reach the sizes FDDB's ×3 protocol shows the tail (default: %(default)s)",
    )
    g.add_argument("--crops-per-image", type=int, default=1, help="random crops per image (default: %(default)s)")
    g.add_argument(
        "--fit-seed",
        type=int,
        default=d.seed,
        help="seed of the fitting data and of the noise drawn *during fitting* (default: %(default)s); "
        "the saved noise is always drawn fresh from the OS at use",
    )


def fit_images(given: list[str] | None) -> list[str]:
    """``--images``, else ``$VEIL_FIT_IMAGES``; a clear error when neither names any folder."""
    from veil.settings import settings

    images = list(given or []) or [str(p) for p in settings().fit_images]
    if not images:
        raise CLIError(
            "no fitting photos: pass --images DIR… or set VEIL_FIT_IMAGES (any folders of photos with "
            "faces that are not the evaluation set, e.g. WIDER FACE; never FDDB)"
        )
    return images


def fit_data_options(args: argparse.Namespace) -> dict[str, Any]:
    """The cropping options of :func:`add_fit_args` and ``--quiet``, as the photo-fitting functions' keywords."""
    return {
        "crop": args.crop,
        "scale_range": tuple(args.scale_range),
        "crops_per_image": args.crops_per_image,
        "progress": not args.quiet,
    }


def fit_config(args: argparse.Namespace, alpha: float) -> FitConfig:
    return FitConfig(
        alpha=alpha,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        family=args.family,
        privacy_weight=args.privacy_weight,
        channel_weight=args.channel_weight,
        seed=args.fit_seed,
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit-noise",
        help="fit the obfuscation noise for one ALPHA (no labels needed)",
        description="Fit the per-channel noise (μ, σ) applied to the head's activation, for one ALPHA in [0, 1): "
        "higher ALPHA = more noise. Only μ and σ learn; the detector is frozen. Fits on unlabeled "
        "photos that are not the evaluation set — any folder of photos with faces at various sizes "
        "(e.g. the WIDER FACE validation images; see `veil data check fit DIR`), never FDDB; "
        "default: $VEIL_FIT_IMAGES. Writes a safetensors file with metadata (ALPHA, weights SHA-256, "
        "split point, "
        "activation statistics, fitting data and settings, loss log).",
    )
    p.add_argument("--alpha", type=alpha_arg, required=True, help="obfuscation strength in [0, 1)")
    p.add_argument(
        "--images",
        nargs="+",
        metavar="DIR",
        help="folders of unlabeled photos, not FDDB (default: $VEIL_FIT_IMAGES, ':'-separated)",
    )
    p.add_argument("--out", help="output file (default: NOISE_DIR/alpha-<A>.safetensors)")
    p.add_argument(
        "--noise-dir",
        help="noise directory when --out is not given (default: $VEIL_NOISE_DIR, else noise/MODEL-SPLIT-SHA12/ in "
        "the veil cache: one directory per model, split and weights)",
    )
    add_model_choice(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_fit_args(p)
    add_defense_args(p)
    p.set_defaults(func=run)


def add_defense_args(p: argparse.ArgumentParser) -> None:
    """``fit-noise`` beyond per-channel NSR noise (issue 9 §2a, §2b): ``veil.defenses.adversarial``."""
    g = p.add_argument_group("privacy objective and noise model")
    g.add_argument(
        "--objective",
        choices=("nsr", "adversarial"),
        default="nsr",
        help="nsr: reward noise power (default); adversarial: also fight a small reconstruction decoder "
        "trained alongside on the fitting photos, with their face regions weighted (min-max)",
    )
    g.add_argument(
        "--privacy-term",
        choices=("l1", "perceptual", "identity", "identity+l1"),
        default="l1",
        help="what the adversarial objective measures: l1 = a decoder's face-weighted pixel L1; perceptual = "
        "that plus a face-weighted distance in the frozen detector's features; identity = how well an identity "
        "regressor trained alongside (it reads the activation around each annotated face of at least "
        "--min-face px and predicts the face's dlib embedding, since dlib itself gives no gradient) predicts "
        "who is there, relative to guessing the mean identity; identity+l1 = the mean of both "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--min-face",
        type=int,
        default=24,  # veil.defenses.adversarial.MIN_IDENTITY_FACE (not imported here: the CLI loads light)
        help="identity terms: smallest face (shorter side, crop px) given an embedding target (default: %(default)s)",
    )
    g.add_argument(
        "--adversary-weight", type=float, default=0.1, help="weight of the adversarial term (default: %(default)s)"
    )
    g.add_argument(
        "--face-weight", type=float, default=4.0, help="extra weight of face pixels in that term (default: %(default)s)"
    )
    g.add_argument("--adversary-seed", type=int, help="the in-loop adversary's seed (default: drawn from the OS)")
    g.add_argument(
        "--noise-model",
        choices=("per-channel", "conditioned"),
        default="per-channel",
        help="per-channel μ, σ (default), or input-conditioned μ(a), σ(a) from a small conv net run on the "
        "client, started from a per-channel fit (--init-noise)",
    )
    g.add_argument(
        "--init-noise",
        help="conditioned: the per-channel noise file to start from (default: the noise fitted for ALPHA)",
    )
    g.add_argument("--hidden", type=int, default=32, help="conditioned: width of the net (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from veil.obfuscate.recipe import fit_and_save  # heavy imports only when fitting

    if args.out and Path(args.out).suffix != ".safetensors":
        raise CLIError(f"--out must end in .safetensors, got {args.out}")
    model = create_model(args)
    if model.config.input.size is not None:  # a fixed-size model fits on whole training images
        return _fit_whole(args, model)
    images = fit_images(args.images)
    digest = model.weights_sha256
    out = Path(args.out) if args.out else noise_path(args.alpha, args.noise_dir, model)
    if args.objective != "nsr" or args.noise_model != "per-channel":
        result, meta = _fit_defended(args, model, digest, images, out)
        _report(args, result, meta, out)
        return 0
    result, meta = fit_and_save(
        model,
        digest,
        images,
        out,
        fit_config(args, args.alpha),
        **fit_data_options(args),
    )
    _report(args, result, meta, out)
    return 0


def _fit_whole(args: argparse.Namespace, model) -> int:
    """A fixed-size model (a classifier): whole images of --images (test splits refused), else the training
    split of the data set that ships for it (veil.data.builtin), prepared by its input spec."""
    from veil.data.builtin import fitting_images
    from veil.obfuscate.whole import fit_whole_images

    if args.objective != "nsr" or args.noise_model != "per-channel":
        raise CLIError("--objective/--noise-model other than the defaults fit face detectors on photos only")
    out = Path(args.out) if args.out else noise_path(args.alpha, args.noise_dir, model)
    try:
        images, data = fitting_images(model.name, args.images)
        result, meta = fit_whole_images(model, images, out, fit_config(args, args.alpha), data, not args.quiet)
    except (ValueError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    _report(args, result, meta, out)
    return 0


def _fit_defended(args: argparse.Namespace, model, digest: str, images: list[str], out: Path):
    from dataclasses import replace

    from veil.defenses.adversarial import fit_and_save as fit_defended
    from veil.digest import sha256_file
    from veil.obfuscate import find_noise_file, load_obfuscator

    cfg = replace(
        fit_config(args, args.alpha),
        objective=args.objective,
        adversary_weight=args.adversary_weight if args.objective == "adversarial" else 0.0,
    )
    init, init_sha = None, None
    if args.noise_model == "conditioned":
        path = find_noise_file(args.alpha, args.init_noise, None, model)
        init, _ = load_obfuscator(args.alpha, noise=path, model=model)
        init_sha = sha256_file(path)
    try:
        return fit_defended(
            model,
            digest,
            images,
            out,
            cfg,
            noise_model=args.noise_model,
            init_noise=init,
            init_noise_sha256=init_sha,
            hidden=args.hidden,
            privacy_term=args.privacy_term,
            min_face=args.min_face,
            face_weight=args.face_weight,
            adversary_seed=args.adversary_seed,
            **fit_data_options(args),
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


def _report(args: argparse.Namespace, result, meta: dict, out: Path) -> None:
    first, last = result.log[0], result.log[-1]
    print(
        f"fitted ALPHA {args.alpha:g} in {result.seconds:.0f} s on {meta['data']['images']} images: "
        f"loss {first['loss']:.4f} → {last['loss']:.4f}, distortion {first['distortion']:.4f} → "
        f"{last['distortion']:.4f}, NSR on the fitting data {last['nsr_db']:+.2f} dB"
    )
    print(f"wrote {out}")
    log_path = out.with_suffix(".log.json")
    write_json(log_path, result.log)
    print(f"loss log: {log_path}")
    for a in meta.get("adversaries") or ([meta["adversary"]] if "adversary" in meta else []):
        seeds = f"seed {a['seed']}, data order {a['data_order_seed']}"
        kind = f" ({a['kind']})" if a.get("kind") else ""
        print(f"in-loop adversary: {seeds}, weights SHA-256 {a['weights_sha256'][:16]}…{kind}")

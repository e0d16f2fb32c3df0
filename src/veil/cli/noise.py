"""``veil fit-noise``: fit the obfuscation noise for one ALPHA on unlabeled images and save it."""

from __future__ import annotations

import argparse
from pathlib import Path

from veil.cli.errors import CLIError
from veil.cli.options import alpha_arg
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
        help="noise directory when --out is not given (default: $VEIL_NOISE_DIR, else noise/ in the veil cache)",
    )
    p.add_argument("--weights", help="FaceBoxes weights (default: $VEIL_WEIGHTS, the cache, then the shipped ones)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_fit_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from veil.obfuscate.recipe import fit_and_save  # heavy imports only when fitting
    from veil.weights import load_faceboxes

    images = fit_images(args.images)
    out = Path(args.out) if args.out else noise_path(args.alpha, args.noise_dir)
    if out.suffix != ".safetensors":
        raise CLIError(f"--out must end in .safetensors, got {out}")
    model, digest = load_faceboxes(args.weights)
    result, meta = fit_and_save(
        model,
        digest,
        images,
        out,
        fit_config(args, args.alpha),
        crop=args.crop,
        scale_range=tuple(args.scale_range),
        crops_per_image=args.crops_per_image,
        progress=not args.quiet,
    )
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
    return 0

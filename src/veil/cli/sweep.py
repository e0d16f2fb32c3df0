"""``veil sweep``: fit (or reuse) the noise per ALPHA, evaluate on FDDB, write table, JSON and plot."""

from __future__ import annotations

import argparse
from pathlib import Path

from veil.cli.errors import CLIError
from veil.cli.noise import add_fit_args, fit_config, fit_data_options, fit_images
from veil.cli.options import add_model_choice, alpha_arg, create_model, fddb_dir
from veil.evaluation.sweep import DEFAULT_ALPHAS
from veil.obfuscate.artifact import NoiseFileError


def _alphas(text: str) -> list[float]:
    try:
        values = [alpha_arg(t) for t in text.split(",") if t.strip()]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"--alphas: {exc}") from None
    if not values:
        raise argparse.ArgumentTypeError("--alphas needs at least one value")
    return list(dict.fromkeys(values))  # run in the order given (table rows are sorted)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="mAP against ALPHA: fit/reuse noise per ALPHA, evaluate on FDDB",
        description="For each ALPHA: reuse NOISE_DIR/alpha-<A>.safetensors (without --noise-dir, else the noise "
        "shipped for the reference weights; a file fitted for other weights is refused: --refit), or fit "
        "it on --images; evaluate FDDB with the learned noise and with isotropic Gaussian noise of the "
        "same total power, and write sweep.md (the reference design's table plus mAP drop, "
        "noise-to-signal ratio, isotropic baseline and published reference mAP), sweep.json and "
        "sweep.png (mAP vs ALPHA and vs NSR) into --out. With --fits N --draws M, each ALPHA is fitted "
        "N times afresh (fit seeds --fit-seed, +1, …) and each fit evaluated with M fresh noise draws "
        "(OS seeds, recorded): repeats.md/json give mean ± sd and range. Example:\n  veil sweep "
        "--dataset FDDB --images PHOTOS/ --noise-dir runs/noise --out runs/sweep\n  veil sweep "
        "--alphas 0.8 --fits 5 --draws 2 --out runs/repeats",
    )
    p.add_argument(
        "--alphas",
        type=_alphas,
        default=list(DEFAULT_ALPHAS),
        help="comma-separated ALPHA values in [0, 1), run in this order (default: %(default)s)",
    )
    p.add_argument(
        "--dataset",
        metavar="DIR",
        help="FDDB directory (FDDB-folds/, originalPics/; default: $VEIL_DATASET; check it with "
        "`veil data check fddb DIR`)",
    )
    p.add_argument(
        "--images",
        nargs="+",
        metavar="DIR",
        help="unlabeled photos (not FDDB) to fit missing noise on (default: $VEIL_FIT_IMAGES); needed "
        "unless every ALPHA is fitted",
    )
    p.add_argument(
        "--noise-dir",
        help="where noise is reused from and saved to (default: $VEIL_NOISE_DIR, else noise/ in the veil cache)",
    )
    p.add_argument(
        "--fits",
        type=int,
        default=1,
        metavar="N",
        help="fit each ALPHA N times afresh and report mean ± sd (default: %(default)s: one fit, reused)",
    )
    p.add_argument(
        "--draws",
        type=int,
        default=1,
        metavar="M",
        help="evaluate each fit with M fresh noise draws (default: %(default)s)",
    )
    p.add_argument("--refit", action="store_true", help="fit every ALPHA again even if a noise file exists")
    p.add_argument("--out", default="runs/sweep", help="output directory for sweep.md/json/png (default: %(default)s)")
    add_model_choice(p)
    p.add_argument(
        "--seed", type=int, help="seed the evaluation noise (a reproducible experiment; default: fresh OS randomness)"
    )
    p.add_argument(
        "--audits",
        nargs="+",
        metavar="PATH",
        help="`veil audit` report.json files or folders: add privacy columns (worst-attacker rank-1 "
        "per ALPHA) as frontier.md/json and a frontier plot (mAP against worst-attacker rank-1)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_fit_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from veil.evaluation.sweep import CachedHeadDetector, MissingNoiseError, run_sweep, sweep_noise, write_outputs
    from veil.settings import settings

    dataset = fddb_dir(args.dataset)
    if args.fits < 1 or args.draws < 1:
        raise CLIError(f"--fits and --draws must be ≥ 1, got {args.fits} and {args.draws}")
    if args.fits > 1 or args.draws > 1:
        return _run_repeats(args, dataset)
    reports = None
    if args.audits:  # read them first: a bad path should not cost a whole sweep
        from veil.privacy.report import load_reports

        reports = load_reports(args.audits)
    model = _detector_model(args)
    digest = model.weights_sha256
    det = CachedHeadDetector(model=model, weights_sha256=digest)
    try:
        source = sweep_noise(
            model,
            digest,
            args.alphas,
            fit_config(args, args.alphas[0]),
            images=args.images or [str(p) for p in settings().fit_images],
            noise_dir=args.noise_dir,
            refit=args.refit,
            **fit_data_options(args),
        )
    except MissingNoiseError as exc:
        raise CLIError(f"{exc}: pass --images DIR… or set VEIL_FIT_IMAGES") from exc

    def get_noise(alpha: float):
        try:
            return source(alpha)
        except NoiseFileError as exc:
            raise CLIError(f"{exc} (or run the sweep with --refit)") from exc

    doc = run_sweep(
        det,
        dataset,
        args.alphas,
        get_noise,
        seed=args.seed,
        progress=not args.quiet,
        on_row=lambda partial: write_outputs(partial, args.out),
    )
    paths = write_outputs(doc, args.out)
    print(paths["md"].read_text(), end="")
    print(f"wrote {paths['md']}, {paths['json']}, {paths['png']}")
    if reports:
        from veil.privacy.report import write_frontier

        _, md = write_frontier(doc, reports, args.out)
        print(md, end="")
        print(f"wrote {Path(args.out) / 'frontier.md'}, frontier.json, frontier.png")
    return 0


def _run_repeats(args: argparse.Namespace, dataset) -> int:
    """``--fits N --draws M``: mean ± spread over fresh fits and fresh draws, every seed recorded."""
    from veil.evaluation.repeats import run_repeats, write
    from veil.evaluation.sweep import CachedHeadDetector
    from veil.obfuscate.recipe import fit_and_save

    if args.audits:
        raise CLIError("--audits joins a single sweep; run it without --fits/--draws")
    images = fit_images(args.images)
    model = _detector_model(args)
    digest = model.weights_sha256
    det = CachedHeadDetector(model=model, weights_sha256=digest)
    bank_cache: dict = {}

    def fit(cfg, path):
        result, _ = fit_and_save(
            model,
            digest,
            images,
            path,
            cfg,
            **fit_data_options(args),
            bank_cache=bank_cache,
        )
        return result.obfuscator

    doc = run_repeats(
        det,
        dataset,
        args.alphas,
        fit,
        fit_config(args, args.alphas[0]),
        args.fits,
        args.draws,
        Path(args.out) / "noise",
        progress=not args.quiet,
    )
    paths = write(doc, args.out)
    print(paths["md"].read_text(), end="")
    print(f"wrote {paths['md']}, {paths['json']} (fitted noise in {Path(args.out) / 'noise'})")
    return 0


def _detector_model(args: argparse.Namespace):
    """The model the flags name; the sweep measures FDDB mAP, so it must be a face detector."""
    model = create_model(args)
    if model.config.task != "face-detection":
        raise CLIError(
            f"veil sweep measures FDDB mAP, a face detector's; {model.name} does {model.config.task} "
            f"(measure it with `veil evaluate --model {model.name} --noisy --alpha A`)"
        )
    return model

"""Flags shared by every command that runs the detector: defined and checked in one place.

Not a subcommand (no ``register``): ``detect``, ``evaluate`` and ``infer`` import it so the
model and obfuscation flags mean the same everywhere.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from veil.cli.errors import CLIError
from veil.preprocess import MAX_INPUT_PIXELS

WEIGHTS_HELP = (
    "weights file (default: for the default model $VEIL_WEIGHTS, then the veil cache, then the copy shipped "
    "with veil; always checked against the model's SHA-256)"
)


def add_model_choice(p: argparse.ArgumentParser, split: bool = True, weights: bool = True) -> None:
    """``--model NAME`` (a registered split model), ``--split NAME`` and ``--weights FILE``: which network
    runs, where it is cut and which weights it loads. The one definition of these flags."""
    from veil.models import DEFAULT_MODEL, get_config, list_models

    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        choices=list_models(),
        help="registered split model (default: %(default)s); `veil models` lists them with their splits and weights",
    )
    if split:
        splits = "; ".join(f"{n}: {', '.join(s.name for s in get_config(n).splits)}" for n in list_models())
        p.add_argument(
            "--split",
            metavar="NAME",
            help=f"where the model is cut into head and tail (default: the model's first split; {splits}; "
            "`veil models` lists each split's channels and stride)",
        )
    if weights:
        p.add_argument("--weights", help=WEIGHTS_HELP)


def create_model(args: argparse.Namespace, pretrained: bool = True) -> Any:
    """The :class:`veil.models.SplitModel` the flags of :func:`add_model_choice` name, weights verified."""
    from veil.models import DEFAULT_MODEL, UnknownModelError, create

    try:
        return create(
            getattr(args, "model", DEFAULT_MODEL),
            getattr(args, "split", None),
            pretrained=pretrained,
            weights=getattr(args, "weights", None),
        )
    except UnknownModelError as exc:
        raise CLIError(str(exc)) from None


def pipeline_from_args(args: argparse.Namespace) -> Any:
    """The data path the flags name: a :class:`veil.detector.Detector` for a face detector, a
    :class:`veil.pipeline.SplitPipeline` for any other task (``--model``, ``--split``, ``--weights``,
    ``--scale``, ``--max-pixels``, ``--backend``)."""
    from veil.detector import Detector
    from veil.pipeline import SplitPipeline

    model = create_model(args)
    cls = Detector if model.config.task == "face-detection" else SplitPipeline
    return cls(model=model, scale=args.scale, max_pixels=args.max_pixels, backend=args.backend)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--weights``, ``--scale``, ``--max-pixels`` and ``--backend`` (with ``add_model_choice(p, weights=False)``
    before it for ``--model``/``--split``)."""
    p.add_argument("--weights", help=WEIGHTS_HELP)
    p.add_argument(
        "--scale",
        type=float,
        help="resize factor before the network (default: the model's; faceboxes: 3, the FDDB test protocol)",
    )
    p.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=MAX_INPUT_PIXELS,
        metavar="N",
        help="skip (and report) images whose network input, after --scale, exceeds N pixels "
        "(default: %(default)s = 4096x4096; memory grows with it)",
    )
    p.add_argument(
        "--backend",
        type=_backend,
        default="auto",
        metavar="{auto,fp32,bf16,onnx}",
        help="how head and tail are computed: fp32 (eager PyTorch, the reference), bf16 (autocast, "
        "CPUs with native BF16), onnx (onnxruntime; exported once per weights and checked "
        "against fp32), auto (the fastest within 0.1 mAP point of fp32 that this CPU runs, "
        "see docs/evaluation.md; default)",
    )


def _backend(text: str) -> str:
    """A backend name, resolved (``auto`` → the one this machine runs) or refused with the reason."""
    from veil.backends import BackendError, resolve

    try:
        return resolve(text)
    except BackendError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_noise_args(p: argparse.ArgumentParser, seed: bool = True) -> None:
    """The reference design's ``--noisy --alpha A``, plus where the fitted noise lives."""
    g = p.add_argument_group("obfuscation (as in the reference design: --noisy --alpha A)")
    g.add_argument("--noisy", action="store_true", help="obfuscate the head's activation with the fitted noise")
    g.add_argument(
        "--alpha", type=alpha_arg, metavar="A", help="obfuscation strength ALPHA of the fitted noise, in [0, 1)"
    )
    g.add_argument("--noise", metavar="FILE", help="fitted noise file (default: NOISE_DIR/alpha-A.safetensors)")
    g.add_argument(
        "--noise-dir",
        metavar="DIR",
        help="where fitted noise lives (default: $VEIL_NOISE_DIR, else the veil cache's noise/, "
        "then the noise shipped with veil)",
    )
    g.add_argument(
        "--noise-key",
        metavar="FILE",
        help="keyed noise: the same image always gets the same noise, so averaging repeated queries "
        "gains nothing; FILE holds the client's secret key (`veil noise-key new FILE`, mode 0600, "
        "never leaves this machine; default: $VEIL_NOISE_KEY_FILE, else fresh noise per call)",
    )
    g.add_argument(
        "--noise-sha256",
        metavar="HEX",
        type=_sha256,
        help="refuse the noise file unless its SHA-256 is HEX (default: $VEIL_NOISE_SHA256)",
    )
    if seed:
        g.add_argument("--seed", type=int, help="reproducible noise (experiments only; default: fresh OS randomness)")


def alpha_arg(text: str) -> float:
    """An ALPHA on the command line, checked by the library's one check (:func:`veil.obfuscate.check_alpha`)."""
    from veil.obfuscate.alpha import check_alpha

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"ALPHA must be a number in [0, 1), got {text!r}") from None
    try:
        return check_alpha(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _sha256(text: str) -> str:
    value = text.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise argparse.ArgumentTypeError(f"a SHA-256 is 64 hex digits, got {text!r}")
    return value


def check_noise_args(args: argparse.Namespace) -> None:
    """Refuse flag combinations that would silently do something else than asked."""
    seed = getattr(args, "seed", None)
    if args.noisy and args.alpha is None and args.noise is None:
        raise CLIError("--noisy needs --alpha A (or --noise FILE): which fitted noise to use")
    key, sha = getattr(args, "noise_key", None), getattr(args, "noise_sha256", None)
    if not args.noisy and (args.alpha is not None or args.noise or args.noise_dir or seed is not None or key or sha):
        raise CLIError("--alpha/--noise/--noise-dir/--noise-key/--noise-sha256/--seed only apply with --noisy")
    if key and seed is not None:
        raise CLIError("--seed and --noise-key exclude each other: keyed noise is already fixed per image")


def attach_noise(args: argparse.Namespace, detector: Any) -> tuple[dict[str, Any], Path]:
    """Load the fitted noise the flags name into ``detector.obfuscator``; return its metadata and file."""
    from veil.obfuscate import NoiseHashError, find_noise_file, load_obfuscator
    from veil.settings import settings

    env = settings()
    seed = getattr(args, "seed", None)
    key = getattr(args, "noise_key", None) or env.noise_key_file
    sha = getattr(args, "noise_sha256", None) or env.noise_sha256
    if key is not None and seed is not None:
        raise CLIError(f"--seed excludes keyed noise, and $VEIL_NOISE_KEY_FILE is set ({key})")
    if sha is not None:
        sha = _sha256_or_error(sha, CLIError)
    path = find_noise_file(args.alpha, args.noise, args.noise_dir, detector.model)
    try:  # refused, with the reason, when fitted for another model, split, weights or channel count
        obf, meta = load_obfuscator(
            args.alpha,
            noise=path,
            model=detector.model,
            weights_sha256=detector.weights_sha256,
            seed=seed,
            key=Path(key) if key is not None else None,
            sha256=sha,
        )
    except NoiseHashError as exc:  # say where the pin came from
        origin = "--noise-sha256" if getattr(args, "noise_sha256", None) else "$VEIL_NOISE_SHA256"
        raise CLIError(f"{exc} (pinned by {origin})") from exc
    meta = {**meta, "noise_mode": obf.mode, **({"noise_key_id": obf.key_id} if obf.key_id else {})}
    detector.obfuscator = obf
    return meta, path


def _sha256_or_error(text: str, error: type[Exception]) -> str:
    try:
        return _sha256(text)
    except argparse.ArgumentTypeError as exc:
        raise error(f"$VEIL_NOISE_SHA256: {exc}") from None


def fddb_dir(given: str | None) -> str:
    """``--dataset``, else ``$VEIL_DATASET``; a clear error naming both when neither is set."""
    from veil.settings import settings

    dataset = given or settings().dataset
    if dataset is None:
        raise CLIError(
            "no FDDB directory: pass --dataset DIR or set VEIL_DATASET (download and check it: "
            "`veil data check fddb DIR`)"
        )
    return str(dataset)


def check_unique_stems(images: list[str]) -> None:
    """Outputs are named after the input's file name: refuse inputs whose outputs would overwrite each other."""
    seen: dict[str, str] = {}
    for p in images:
        stem = Path(p).stem
        if stem in seen and seen[stem] != p:
            raise CLIError(
                f"{seen[stem]} and {p} would both write {stem}.jpg/.json into --out: rename one or run them separately"
            )
        seen[stem] = p

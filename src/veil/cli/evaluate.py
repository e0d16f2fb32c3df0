"""``veil evaluate`` (a model's own metric, clean or obfuscated: FDDB AP for the face detector, whole
or one shard; top-1 accuracy for a classifier) and ``veil merge-results``."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from veil.cli.errors import CLIError
from veil.cli.options import (
    add_model_args,
    add_model_choice,
    add_noise_args,
    attach_noise,
    check_noise_args,
    create_model,
    fddb_dir,
)
from veil.evaluation import EvalResult, Shard, evaluate_fddb, merge_results, write_partial
from veil.evaluation.classification import DEFAULT_DRAWS
from veil.evaluation.merge import partial_filename
from veil.evaluation.runner import SHARD_INDEX_ENV, cores
from veil.jsonio import WriteLock, write_json

_EPILOG = """\
examples:
  veil evaluate --dataset /data/fddb --json runs/clean.json
  veil evaluate --dataset /data/fddb --noisy --alpha 0.8 --json runs/alpha-0.8.json
  veil evaluate --dataset /data/fddb --shard auto/4 --out-partial /data/partials   # one pod of an Indexed Job
  veil merge-results /data/partials --json runs/clean.json
  veil evaluate --model digits                                  # top-1 accuracy on the digits test split
  veil evaluate --model digits --noisy --alpha 0.8 --draws 5    # mean ± sd over 5 fresh noise draws

Protocol (docs/evaluation.md): image upscaled x3, confidence 0.05, NMS 0.3; a detection
matches a face when IoU(rectangle, annotated ellipse region) >= 0.5, one detection per face
by descending score; per-fold AP (all-point, VOC), mAP = mean over the folds present;
TPR at 1000 false positives scaled to the images evaluated (1000 x n/2845).
A classifier (--model digits) is measured by top-1 accuracy on its labelled test data: clean, and
obfuscated as mean ± sample sd over --draws fresh noise draws, with the noise-to-signal ratio.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="a model's own metric: FDDB per-fold AP, mAP and TPR@1000FP, or a classifier's top-1 accuracy",
        description="Evaluate the face detector on the FDDB images present under --dataset "
        "(official layout: FDDB-folds/ and originalPics/), or a classifier (--model digits) on its "
        "labelled test data, clean or with the learned obfuscation (--noisy --alpha A).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        metavar="DIR",
        help="FDDB root holding FDDB-folds/ and originalPics/ (default: $VEIL_DATASET; check it with "
        "`veil data check fddb DIR`); for a classifier: a folder with labels.csv (file,label) as `veil data "
        "digits DIR` writes (default for --model digits: its test split, shipped with scikit-learn)",
    )
    add_model_choice(p, weights=False)
    add_model_args(p)
    p.add_argument("--json", metavar="OUT", help="write the result as JSON here")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes to run, each with cores/N torch threads (0: one per core; default: %(default)s)",
    )
    p.add_argument(
        "--shard",
        metavar="i/N",
        help=f"evaluate only shard i of N (0-based; 'auto/N' takes i from ${SHARD_INDEX_ENV}, "
        "as a Kubernetes Indexed Job sets it); combine with `veil merge-results`",
    )
    p.add_argument("--roc", metavar="PNG", help="draw the discrete ROC with the 1000-FP operating point here")
    p.add_argument(
        "--out-partial",
        metavar="DIR",
        help="write this run's partial result (per-image detections, counts, NSR sums) into DIR",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--draws",
        type=int,
        default=DEFAULT_DRAWS,
        metavar="N",
        help="classifier, --noisy: fresh noise draws whose accuracy is averaged (default: %(default)s)",
    )
    add_noise_args(p)
    p.set_defaults(func=run)

    m = sub.add_parser(
        "merge-results",
        help="combine shard partial results into one FDDB report",
        description="Merge the partial results written by `veil evaluate --shard i/N "
        "--out-partial DIR` into exactly the table and JSON of a single run. "
        "Refuses incomplete sets and shards run with different settings.",
    )
    m.add_argument("dir", metavar="DIR", help="directory holding fddb-partial-*-of-*.json")
    m.add_argument("--json", metavar="OUT", help="write the merged result as JSON here")
    m.add_argument("--roc", metavar="PNG", help="draw the discrete ROC with the 1000-FP operating point here")
    m.set_defaults(func=run_merge)


def _noisy_setup(args: argparse.Namespace, detector: Any) -> dict[str, Any]:
    """Load the fitted noise into the detector; return the settings that identify it (shards compare them)."""
    from veil.digest import sha256_file

    meta, path = attach_noise(args, detector)
    return {
        "mode": "noisy",
        "alpha": float(meta["alpha"]),
        "noise_family": meta.get("family"),
        "noise_sha256": sha256_file(path),
        "noise_mode": meta.get("noise_mode", "fresh"),
        "seed": args.seed,
    }


def _emit(result: EvalResult, json_path: str | None, roc_path: str | None) -> None:
    print(result.table())
    if json_path:
        print(f"wrote {write_json(json_path, result.to_json())}")
    if roc_path:
        from veil.evaluation.plots import plot_roc

        label = "clean" if result.mode == "clean" else f"ALPHA {result.settings.get('alpha')}"
        print(f"wrote {plot_roc({label: result}, roc_path)}")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the run like Ctrl-C (results intact, exit 130).

    Why: as PID 1 in a container, a process without a handler ignores SIGTERM, so Kubernetes
    would wait out the grace period and then SIGKILL it mid-write.
    """

    def on_term(_signum, _frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _claim(stack: ExitStack, paths: list[Path]) -> None:
    """Hold every output path for the whole run: a second run on the same path is refused now."""
    for p in paths:
        stack.enter_context(WriteLock(p))


def run(args: argparse.Namespace) -> int:
    with sigterm_as_interrupt():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    check_noise_args(args)
    from veil.models import get_config

    if get_config(args.model).task == "classification":
        return _run_classification(args)
    if args.workers < 0:
        raise CLIError(f"--workers must be 0 (one per core) or more, got {args.workers}")
    workers = args.workers or cores()
    shard = Shard.parse(args.shard) if args.shard else None
    from veil.data import read_fddb
    from veil.detector import Detector

    dataset = read_fddb(fddb_dir(args.dataset))  # fail on a bad dataset before loading anything else
    outputs = [Path(p) for p in (args.json, args.roc) if p]
    if args.out_partial:
        index, count = (shard.index, shard.count) if shard else (0, 1)
        outputs.append(Path(args.out_partial) / partial_filename(index, count))
    with ExitStack() as stack:
        _claim(stack, outputs)
        detector = Detector.from_weights(
            args.weights, scale=args.scale, max_pixels=args.max_pixels, backend=args.backend
        )
        settings = _noisy_setup(args, detector) if args.noisy else {"mode": "clean"}
        result = evaluate_fddb(
            detector,
            dataset,
            workers=workers,
            shard=shard,
            progress=not args.no_progress,
            nsr=args.noisy,
            seed=args.seed,
            settings=settings,
        )
        if shard is not None:
            print(
                f"shard {shard}: {result.images} of the images present (a partial result; "
                "combine all shards with `veil merge-results`)"
            )
        _emit(result, args.json, args.roc)
        print(
            f"{result.images} images in {result.wall_s:.1f} s "
            f"({result.images / max(result.wall_s, 1e-9):.2f} images/s, "
            f"{workers} worker{'s' if workers > 1 else ''})",
            file=sys.stderr,
        )
        if args.out_partial:
            print(f"wrote partial result {write_partial(result, args.out_partial)}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    with ExitStack() as stack:
        _claim(stack, [Path(p) for p in (args.json, args.roc) if p])
        result = merge_results(args.dir)
        print(f"merged {result.shards} shards")
        _emit(result, args.json, args.roc)
    return 0


def _labelled_data(dataset: str | None, model: str) -> tuple[list, Any, str]:
    """(images, labels, name) of a classifier's test data: a labelled folder (labels.csv), a built-in data
    set by name, or — without --dataset — the built-in data set named like the model (its test split)."""
    from veil.data import builtin
    from veil.data.digits import DigitsDataError
    from veil.data.labelled import LabelledDataError, read_labels

    name = dataset if dataset is not None else model
    try:
        if builtin.has(name) and not Path(name).is_dir():
            images, labels, _ = builtin.load(name, "test")
            return images, labels, f"{name}-test"
        if dataset is None:
            raise CLIError(f"--dataset DIR: a folder with labels.csv (file,label) for model {model!r}")
        from veil.preprocess import ImageReadError, load_image

        paths, labels, _ = read_labels(dataset)
        try:
            return [load_image(p) for p in paths], labels, Path(dataset).name
        except ImageReadError as exc:
            raise CLIError(str(exc)) from exc
    except (DigitsDataError, LabelledDataError) as exc:
        raise CLIError(str(exc)) from exc


def _run_classification(args: argparse.Namespace) -> int:
    """Top-1 accuracy of a classifier, clean or obfuscated (mean ± sd over --draws noise draws)."""
    if args.shard or args.out_partial or args.roc or args.workers != 1:
        raise CLIError("--shard, --out-partial, --roc and --workers apply to FDDB evaluation, not to a classifier")
    if args.draws < 1:
        raise CLIError(f"--draws must be at least 1, got {args.draws}")
    from veil.evaluation.classification import evaluate_classification
    from veil.pipeline import SplitPipeline

    images, labels, name = _labelled_data(args.dataset, args.model)
    with ExitStack() as stack:
        _claim(stack, [Path(args.json)] if args.json else [])
        pipeline = SplitPipeline(model=create_model(args), backend=args.backend)
        settings = _noisy_setup(args, pipeline) if args.noisy else {"mode": "clean"}
        result = evaluate_classification(
            pipeline,
            images,
            labels,
            dataset=name,
            draws=args.draws,
            progress=not args.no_progress,
            settings={**settings, "model": args.model, "split": pipeline.model.split},
        )
        print(result.table())
        if args.json:
            print(f"wrote {write_json(args.json, result.to_json())}")
        print(f"{result.images} images in {result.wall_s:.1f} s", file=sys.stderr)
    return 0

"""Run a detector over FDDB: one process or several, all images or one shard.

``detector`` is anything with ``detect(image_bgr_uint8) -> [K,5]`` (a
:class:`veil.detector.Detector`, or a remote trust-zone client). With ``workers > 1`` the
detector is pickled once into each worker process — each holds its own copy of the same
weights (and noise), with ``cores // workers`` torch threads so processes don't oversubscribe.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from veil.data.fddb import FDDBDataset, FDDBImage, read_fddb
from veil.evaluation.metrics import IOU_THRESHOLD, match_image
from veil.evaluation.result import EvalResult, ImageRecord, summarise
from veil.obfuscate.nsr import detect_with_nsr
from veil.preprocess import MAX_INPUT_PIXELS, ImageReadError, load_image

#: Kubernetes Indexed Jobs give each pod its index in this variable.
SHARD_INDEX_ENV = "JOB_COMPLETION_INDEX"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``: images ``index, index+count, …`` of the present ones."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard index must be in 0..{self.count - 1} for {self.count} shards, got {self.index}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, spec: str) -> Shard:
        """``"i/N"``, or ``"auto/N"`` taking ``i`` from ``$JOB_COMPLETION_INDEX`` (Kubernetes Indexed Job)."""
        try:
            index_s, count_s = spec.split("/")
            count = int(count_s)
        except ValueError:
            raise ValueError(f"--shard must look like i/N or auto/N (e.g. 0/4), got {spec!r}") from None
        if index_s == "auto":
            env = os.environ.get(SHARD_INDEX_ENV)
            if env is None:
                raise ValueError(f"--shard auto/{count} needs ${SHARD_INDEX_ENV} (set by a Kubernetes Indexed Job)")
            index_s = env
        try:
            index = int(index_s)
        except ValueError:
            raise ValueError(f"shard index must be an integer, got {index_s!r}") from None
        return cls(index, count)

    def select(self, images: list[FDDBImage]) -> list[FDDBImage]:
        """This shard's deterministic share: every ``count``-th image, so each shard spans all folds."""
        return images[self.index :: self.count]


def detector_settings(detector: Any) -> dict[str, Any]:
    """What determines the detections: weights, input scale and post-processing thresholds."""
    post = getattr(detector, "post", None)
    return {
        "weights_sha256": getattr(detector, "weights_sha256", None) or None,
        "backend": getattr(detector, "backend", None),
        "scale": getattr(detector, "scale", None),
        "confidence": getattr(post, "confidence", None),
        "nms_iou": getattr(post, "nms_iou", None),
        "top_k": getattr(post, "top_k", None),
        "keep_top_k": getattr(post, "keep_top_k", None),
        "match_iou": IOU_THRESHOLD,
    }


def _image_seed(seed: int, name: str) -> int:
    """A per-image noise seed, so seeded noisy runs give the same result however they are split."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big") >> 1


def evaluate_image(
    detector: Any, image: FDDBImage, index: int, nsr: bool = False, seed: int | None = None, loaded: Any = None
) -> tuple[ImageRecord | None, dict | None, np.ndarray | None]:
    """Detect and match one image → (record, None, nsr sums) or (None, skip note, None) if it failed.

    Any failure of one image (unreadable, over the pixel limit, out of memory, a cv2 or server
    error) is that image's skip note: the run goes on and still writes its results.
    ``loaded`` is what :func:`load_ahead` made of the image beforehand (or the exception it raised).
    """
    try:
        if isinstance(loaded, BaseException):
            raise loaded
        return _evaluate_image(detector, image, index, nsr, seed, loaded)
    except ImageReadError as exc:
        reason = str(exc)
    except MemoryError:
        reason = "out of memory while processing it (MemoryError)"
    except Exception as exc:  # noqa: BLE001 - reported with the image, never lost
        reason = f"{exc.__class__.__name__}: {exc}".strip()
    return None, {"index": index, "fold": image.fold, "image": image.name, "reason": reason}, None


def _evaluate_image(
    detector: Any, image: FDDBImage, index: int, nsr: bool, seed: int | None, loaded: Any = None
) -> tuple[ImageRecord, None, np.ndarray | None]:
    img = (
        loaded
        if loaded is not None
        else load_image(image.path, max_pixels=getattr(detector, "max_pixels", MAX_INPUT_PIXELS))
    )
    sums = None
    obf = getattr(detector, "obfuscator", None)
    if seed is not None and obf is not None and hasattr(obf, "reseed"):
        obf.reseed(_image_seed(seed, image.name))
    if nsr and obf is not None:
        boxes, sums = detect_with_nsr(detector, img)  # the one noisy path `veil detect --nsr` also takes
    else:
        boxes = detector.detect(img)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 5)
    tp = match_image(boxes, image.ellipses)
    rec = ImageRecord(index=index, fold=image.fold, name=image.name, faces=image.n_faces, detections=boxes, tp=tp)
    return rec, None, sums


# -- the pipeline: decode and preprocess ahead of the network ----------------------------------
#: Images decoded (and preprocessed) ahead of the one the network is on: 1 overlaps fully; a second
#: absorbs the variation between images' decoding times. Each ×3 FDDB input is ≈17 MB.
PREFETCH_DEPTH = 2


def prepares_ahead(detector: Any) -> bool:
    """Whether the pipeline may also preprocess ahead: a :class:`~veil.detector.Detector` whose
    ``client_side`` and ``head_activation`` are the stock ones (a subclass that overrides them, e.g.
    a cache keyed by the image's pixels, gets the decoded image)."""
    from veil.detector import Detector

    kind = type(detector)
    return (
        isinstance(detector, Detector)
        and kind.client_side is Detector.client_side
        and kind.head_activation is Detector.head_activation
    )


def load_ahead(detector: Any, image: FDDBImage, prepare: bool) -> Any:
    """Decode (and, if ``prepare``, preprocess) one image; an exception is returned, not raised,
    so :func:`evaluate_image` reports it against that image."""
    try:
        img = load_image(image.path, max_pixels=getattr(detector, "max_pixels", MAX_INPUT_PIXELS))
        return detector.preprocess(img) if prepare else img
    except Exception as exc:  # noqa: BLE001 - handed to evaluate_image, which reports it
        return exc


def pipelined(detector: Any, jobs: list[tuple[int, FDDBImage]], depth: int = PREFETCH_DEPTH):
    """Yield ``(index, image, loaded)`` in order, decoding/preprocessing up to ``depth`` images ahead
    in one thread (OpenCV and the network release the GIL, so they overlap). OpenCV runs on one
    thread meanwhile: the prefetch thread is one core's worth of work beside the network's threads,
    not a second pool competing with them."""
    import cv2

    prepare = prepares_ahead(detector)
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="veil-prefetch") as pool:
            pending: deque[tuple[int, FDDBImage, Future]] = deque()
            it = iter(jobs)

            def submit() -> None:
                job = next(it, None)
                if job is not None:
                    pending.append((*job, pool.submit(load_ahead, detector, job[1], prepare)))

            for _ in range(depth):
                submit()
            try:
                while pending:
                    index, image, fut = pending.popleft()
                    submit()
                    yield index, image, fut.result()
            finally:
                for *_, fut in pending:
                    fut.cancel()
    finally:
        cv2.setNumThreads(cv_threads)


# -- worker processes ------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _worker_init(detector: Any, threads: int, nsr: bool, seed: int | None) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(detector=detector, nsr=nsr, seed=seed)


def _worker_run(job: tuple[int, FDDBImage]):
    index, image = job
    return evaluate_image(_WORKER["detector"], image, index, _WORKER["nsr"], _WORKER["seed"])


def cores() -> int:
    """CPU cores this process may use (its affinity mask, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def evaluate_fddb(
    detector: Any,
    dataset: FDDBDataset | str | Path,
    workers: int = 1,
    shard: Shard | str | None = None,
    progress: bool = True,
    nsr: bool = False,
    seed: int | None = None,
    settings: dict[str, Any] | None = None,
    prefetch: bool = True,
) -> EvalResult:
    """Evaluate ``detector`` on the FDDB images present under ``dataset`` (or this ``shard`` of them).

    ``nsr=True`` (noisy mode, a :class:`~veil.detector.Detector` with an ``obfuscator``) also sums
    the noise-to-signal ratio over the clean activations. ``seed`` makes noisy runs reproducible
    (per-image seeds, independent of workers and shards): experiments only. ``settings`` adds
    entries (mode, alpha, noise file…) to the result's settings, which shards must agree on.
    ``prefetch`` (one process): decode and preprocess the next images in a thread while the
    network runs on this one (same results as ``prefetch=False``, which does one step at a time).
    """
    ds = dataset if isinstance(dataset, FDDBDataset) else read_fddb(dataset)
    shard = Shard.parse(shard) if isinstance(shard, str) else shard
    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    if nsr and getattr(detector, "obfuscator", None) is None:
        raise ValueError("nsr=True needs a detector with an obfuscator set (noisy mode)")
    index_of = {id(im): i for i, im in enumerate(ds.images)}
    todo = ds.available()
    if shard is not None:
        todo = shard.select(todo)
    jobs = [(index_of[id(im)], im) for im in todo]
    if not ds.available():
        raise FileNotFoundError(
            f"none of the {len(ds.images)} annotated FDDB images is under {ds.root / 'originalPics'}"
        )
    all_settings = {
        "mode": "clean",
        **detector_settings(detector),
        **(settings or {}),
        "dataset_fingerprint": ds.fingerprint(),
    }
    records: list[ImageRecord] = []
    skipped: list[dict] = []
    sums_total: np.ndarray | None = None
    desc = "FDDB" if shard is None else f"FDDB shard {shard}"
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress)

    def collect(out) -> None:
        nonlocal sums_total
        rec, skip, sums = out
        if rec is not None:
            records.append(rec)
        if skip is not None:
            skipped.append(skip)
            tqdm.write(f"skipped {skip['image']}: {skip['reason']}", file=sys.stderr)
        if sums is not None:
            sums_total = sums if sums_total is None else sums_total + sums
        bar.update(1)

    try:
        if (workers == 1 or len(jobs) <= 1) and prefetch:
            for index, image, loaded in pipelined(detector, jobs):
                collect(evaluate_image(detector, image, index, nsr, seed, loaded))
        elif workers == 1 or len(jobs) <= 1:
            for index, image in jobs:
                collect(evaluate_image(detector, image, index, nsr, seed))
        else:
            threads = max(1, cores() // workers)
            getattr(detector, "runner", None)  # build the backend here first: an ONNX export happens once
            ctx = mp.get_context("spawn")  # a fresh interpreter: no forked OpenMP state
            with ctx.Pool(workers, initializer=_worker_init, initargs=(detector, threads, nsr, seed)) as pool:
                for out in pool.imap_unordered(_worker_run, jobs, chunksize=1):
                    collect(out)
    finally:
        bar.close()
        obf = getattr(detector, "obfuscator", None)
        if seed is not None and obf is not None and hasattr(obf, "reseed"):
            obf.reseed(None)  # a seeded run must not leave the caller's obfuscator predictable
    wall = time.perf_counter() - t0
    if nsr and sums_total is None:
        raise RuntimeError("no image could be evaluated, so the noise-to-signal ratio is undefined")
    return summarise(
        records,
        ds.fold_counts(),
        all_settings,
        skipped,
        sums_total,
        wall_s=wall,
        shard=None if shard is None else (shard.index, shard.count),
    )

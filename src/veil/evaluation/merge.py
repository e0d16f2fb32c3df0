"""Shard partial results: write one per shard, merge a complete set into the single-run report.

A partial holds everything the report needs — per-image detections and true-positive flags,
per-fold counts, skipped images, noise-to-signal sums — plus the settings the shards must
share (weights, scale, thresholds, mode, ALPHA, noise file, dataset fingerprint). Merging
refuses an incomplete set or shards that ran with different settings.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np

from veil.evaluation.result import EvalResult, ImageRecord, summarise
from veil.jsonio import write_json

PARTIAL_FORMAT = "veil-fddb-partial"
PARTIAL_VERSION = 1


class MergeError(ValueError):
    """The partial results don't form one complete, consistent evaluation."""


def partial_filename(index: int, count: int) -> str:
    return f"fddb-partial-{index:04d}-of-{count:04d}.json"


def _fold_counts(result: EvalResult) -> dict[str, dict[str, int]]:
    return {
        str(k): {
            "annotated_images": f.annotated_images,
            "annotated_faces": f.annotated_faces,
            "present": f.annotated_images - f.missing,
            "missing": f.missing,
        }
        for k, f in sorted(result.folds.items())
    }


def partial_json(result: EvalResult) -> dict[str, Any]:
    """A run's result as a partial (a whole run counts as shard 0 of 1)."""
    index, count = result.shard or (0, 1)
    return {
        "format": PARTIAL_FORMAT,
        "version": PARTIAL_VERSION,
        "shard": {"index": index, "count": count},
        "settings": result.settings,
        "fold_counts": _fold_counts(result),
        "skipped": result.skipped,
        "nsr_sums": None if result.nsr_sums is None else np.asarray(result.nsr_sums, dtype=np.float64).tolist(),
        "wall_s": result.wall_s,
        "records": [r.to_json() for r in result.records],
    }


def write_partial(result: EvalResult, out_dir: str | Path) -> Path:
    """Write ``out_dir/fddb-partial-IIII-of-NNNN.json`` atomically (a half-written file never looks done).

    Through a unique temporary file and a rename (:func:`veil.jsonio.write_json`): two pods that
    were given the same shard never interleave their bytes, and a reader never sees half a file.
    """
    index, count = result.shard or (0, 1)
    return write_json(Path(out_dir) / partial_filename(index, count), partial_json(result), indent=None)


def _read(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MergeError(f"cannot read partial result {path}: {exc}") from exc
    if not isinstance(d, dict) or d.get("format") != PARTIAL_FORMAT:
        raise MergeError(f"{path} is not a veil FDDB partial result (written by `veil evaluate --out-partial`)")
    if d.get("version") != PARTIAL_VERSION:
        raise MergeError(f"{path} has partial format version {d.get('version')}, this veil reads {PARTIAL_VERSION}")
    return d


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def merge_results(source: str | Path | list[str | Path]) -> EvalResult:
    """Merge the partials in a directory (or a list of files) into exactly the single-run report."""
    if isinstance(source, (str, Path)):
        src = Path(source)
        if not src.is_dir():
            raise MergeError(f"partial-results directory does not exist: {src}")
        paths = sorted(src.glob("fddb-partial-*-of-*.json"))
        if not paths:
            raise MergeError(
                f"no partial results (fddb-partial-*-of-*.json) in {src}; "
                "write them with `veil evaluate --shard i/N --out-partial DIR`"
            )
    else:
        paths = [Path(p) for p in source]
        if not paths:
            raise MergeError("no partial results given")
    parts = [(p, _read(p)) for p in paths]
    counts = {d["shard"]["count"] for _, d in parts}
    if len(counts) != 1:
        raise MergeError(
            f"partials come from different shard counts {sorted(counts)}: "
            + ", ".join(f"{p.name} is of {d['shard']['count']}" for p, d in parts)
        )
    n = counts.pop()
    by_index: dict[int, Path] = {}
    for p, d in parts:
        i = d["shard"]["index"]
        if i in by_index:
            raise MergeError(f"shard {i}/{n} appears twice: {by_index[i].name} and {p.name}")
        by_index[i] = p
    missing = [i for i in range(n) if i not in by_index]
    if missing:
        raise MergeError(
            f"incomplete shard set: missing shard index {', '.join(map(str, missing))} of {n} "
            f"(have {', '.join(map(str, sorted(by_index)))})"
        )
    ref_path, ref = parts[0]
    for p, d in parts[1:]:
        diff = _differences(ref["settings"], d["settings"])
        if diff:
            raise MergeError(f"{p.name} ran with different settings than {ref_path.name}: " + "; ".join(diff))
        if d["fold_counts"] != ref["fold_counts"]:
            raise MergeError(f"{p.name} saw a different dataset (per-fold image counts) than {ref_path.name}")
    sums = [np.asarray(d["nsr_sums"], dtype=np.float64) for _, d in parts if d.get("nsr_sums") is not None]
    if sums and len(sums) != len(parts):
        raise MergeError("some partials carry noise-to-signal sums and some don't")
    records = [ImageRecord.from_json(r) for _, d in parts for r in d["records"]]
    seen: set[int] = set()
    for r in records:
        if r.index in seen:
            raise MergeError(f"image {r.name} is in more than one shard")
        seen.add(r.index)
    fold_counts = {int(k): v for k, v in ref["fold_counts"].items()}
    return summarise(
        records,
        fold_counts,
        ref["settings"],
        [s for _, d in parts for s in d["skipped"]],
        nsr_sums=functools.reduce(np.add, sums) if sums else None,  # in shard order, as sum() would
        wall_s=max(d.get("wall_s", 0.0) for _, d in parts),
        shards=n,
    )

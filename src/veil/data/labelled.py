"""Labelled image folders: image files plus ``labels.csv`` (``file,label[,index,split]``).

The one format veil reads and writes for classification data on disk (``veil data digits DIR``
writes it; ``veil evaluate --dataset DIR`` and ``veil audit --images DIR`` read it). A ``split``
column of ``test`` marks evaluation data, which fitting refuses (:mod:`veil.data.images`).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

#: The labels file of a labelled folder.
MANIFEST = "labels.csv"


class LabelledDataError(ValueError):
    """A labelled folder's labels.csv is missing or malformed."""


def read_labels(directory: str | Path) -> tuple[list[Path], np.ndarray, str | None]:
    """A labelled image folder in :func:`export_split`'s format: image paths, integer labels and the
    split its ``labels.csv`` names (None if it has no ``split`` column). Any classification data set
    laid out this way (``file,label`` rows) works."""
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise LabelledDataError(
            f"{directory} has no {MANIFEST} (columns file,label[,index,split]): not a labelled folder"
        )
    paths: list[Path] = []
    labels: list[int] = []
    splits: set[str] = set()
    with open(manifest, newline="") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            try:
                paths.append(directory / row["file"])
                labels.append(int(row["label"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise LabelledDataError(
                    f"{manifest}, line {n}: needs a file name and an integer label ({exc})"
                ) from None
            if row.get("split"):
                splits.add(row["split"])
    if not paths:
        raise LabelledDataError(f"{manifest} lists no images")
    split = "test" if "test" in splits else next(iter(splits), None)
    return paths, np.asarray(labels, dtype=np.int64), split

"""Labelled data sets that ship inside veil's dependencies, by name (no download).

``--dataset NAME`` on the command line, and a model's default data when a data set carries the
model's name (the ``digits`` model and the ``digits`` data). Each entry loads one split as uint8
images, integer labels and a description that noise files and reports record.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Names of the built-in data sets.
DATASETS = ("digits",)


def has(name: str | None) -> bool:
    return name in DATASETS


def load(name: str, split: str) -> tuple[list[np.ndarray], np.ndarray, dict[str, Any]]:
    """``(images, labels, description)`` of split ``split`` of the built-in data set ``name``."""
    if name == "digits":
        from veil.data.digits import load_split

        s = load_split(split)
        return list(s.images), s.labels, s.describe()
    raise KeyError(f"no built-in data set {name!r}; built in: {', '.join(DATASETS)}")

"""Labelled data sets that ship inside veil's dependencies, by name (no download).

``--dataset NAME`` on the command line, and a model's default data when a data set carries the
model's name (the ``digits`` model and the ``digits`` data). Each entry loads one split as uint8
images, integer labels and a description that noise files and reports record.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
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


def fitting_images(name: str | None, dirs: Sequence[str | Path] | None) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Whole images to fit on, and their description: the image files under ``dirs`` (test splits and FDDB
    refused, :func:`veil.data.images.list_images`), else the *training* split of the built-in data set ``name``."""
    if dirs:
        import cv2

        from veil.data.images import list_images

        files = list_images(dirs)
        images = []
        for f in files:
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                raise ValueError(f"cannot decode image (corrupt or not an image): {f}")
            images.append(img)
        from veil.data.labelled import MANIFEST, read_labels

        marked = {read_labels(d)[2] for d in map(Path, dirs) if (d / MANIFEST).is_file()}
        split = "train" if marked == {"train"} and all((Path(d) / MANIFEST).is_file() for d in dirs) else "folders"
        return images, {"dirs": [str(d) for d in dirs], "images": len(images), "split": split}
    if name is None or not has(name):
        raise ValueError(f"no built-in data set for {name!r}: give folders of training images")
    images, _, description = load(name, "train")
    return images, description

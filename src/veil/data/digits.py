"""The handwritten-digits data set of the second model (``digits``): offline, licensed, verifiable.

scikit-learn ships it inside its wheel (``sklearn.datasets.load_digits``): 1,797 grey 8×8 digits,
pixel values 0..16, 10 classes — a copy of the test part of the UCI "Optical Recognition of
Handwritten Digits" data set (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0). No download, so the model,
its noise, its audit and its tests run on any machine with the package installed.

Why a fixed split, and why it is checked: noise and attackers are fitted on the *training* split
and everything is measured on the *test* split; mixing them would flatter both accuracy and
privacy. The split is stratified per class with numpy's PCG64 generator under :data:`SPLIT_SEED`
(stable across numpy versions), and :func:`load_split` verifies the data's SHA-256
(:data:`DATA_SHA256`) so another copy of the data cannot silently give another split.

Images are uint8 grey (value × 255 / 16, rounded), the form a user's own PNG files would have;
:func:`export_split` writes them as PNG files plus ``labels.csv`` for people who want files.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from veil.data.labelled import MANIFEST, read_labels

__all__ = ["MANIFEST", "SPLITS", "DigitsDataError", "DigitsSplit", "export_split", "load_split", "read_labels"]

#: The two parts of the data set. Nothing is ever fitted or trained on ``test``.
SPLITS = ("train", "test")
#: Seed of the stratified split (an explicit, recorded experiment setting).
SPLIT_SEED = 0
#: Fraction of each class held out for ``test``.
TEST_FRACTION = 0.2
#: SHA-256 of the raw data as scikit-learn ships it: the 1,797 images as uint8 0..16, then the labels as uint8.
DATA_SHA256 = "87ff0c9e40dc7e2c0e34e7257799c2e3f3aec1a016363bb11cad869ec428a826"
#: Number of images in the data set.
TOTAL = 1797
#: Where it comes from and under which license (docs/models.md).
SOURCE = (
    "scikit-learn's load_digits: UCI Optical Recognition of Handwritten Digits (test part), "
    "E. Alpaydin and C. Kaynak, 1998, CC BY 4.0"
)


class DigitsDataError(RuntimeError):
    """The digits data is unavailable (scikit-learn missing) or is not the expected copy."""


@dataclass(frozen=True)
class DigitsSplit:
    """One part of the data set: ``images`` uint8 ``[N, 8, 8]`` (0..255), ``labels`` int64 ``[N]``,
    ``indices`` into scikit-learn's order (so any sample can be traced back)."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self) -> dict:
        """What a noise file or report records about the data it used."""
        return {
            "dataset": "digits",
            "split": self.name,
            "images": len(self),
            "split_seed": SPLIT_SEED,
            "test_fraction": TEST_FRACTION,
            "data_sha256": DATA_SHA256,
            "source": SOURCE,
        }


def _raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DigitsDataError(
            "the digits data ships with scikit-learn, which is not installed: pip install 'veil[digits]' "
            "(or scikit-learn)"
        ) from exc
    d = load_digits()
    raw = d.images.astype(np.uint8)
    labels = d.target.astype(np.uint8)
    digest = hashlib.sha256(raw.tobytes() + labels.tobytes()).hexdigest()
    if digest != DATA_SHA256 or len(labels) != TOTAL:
        raise DigitsDataError(
            f"scikit-learn's digits data has SHA-256 {digest} ({len(labels)} images), expected {DATA_SHA256} "
            f"({TOTAL}): not the copy veil's split, weights and numbers were made with"
        )
    return raw, labels.astype(np.int64)


def split_indices(labels: np.ndarray, seed: int = SPLIT_SEED, test_fraction: float = TEST_FRACTION) -> dict:
    """Stratified split: per class, a PCG64 permutation; the first ``round(n·test_fraction)`` go to test."""
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = round(len(idx) * test_fraction)
        test.append(idx[:k])
        train.append(idx[k:])
    return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


def to_uint8(raw: np.ndarray) -> np.ndarray:
    """0..16 counts → 0..255 grey levels (rounded), the form of an ordinary grey image file."""
    return np.rint(raw.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)


def load_split(name: str) -> DigitsSplit:
    """The ``train`` or ``test`` split, verified (:data:`DATA_SHA256`) and in a fixed order."""
    if name not in SPLITS:
        raise ValueError(f"the digits data has splits {', '.join(SPLITS)}, not {name!r}")
    raw, labels = _raw()
    idx = split_indices(labels)[name]
    return DigitsSplit(name, to_uint8(raw[idx]), labels[idx], idx)


def export_split(name: str, out: str | Path) -> Path:
    """Write split ``name`` as ``OUT/NNNN.png`` (8×8 grey) plus ``OUT/labels.csv`` (file, label, index, split)."""
    import cv2

    split = load_split(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, label, index) in enumerate(zip(split.images, split.labels, split.indices, strict=True)):
        fname = f"{i:04d}.png"
        if not cv2.imwrite(str(out / fname), img):
            raise OSError(f"could not write {out / fname}")
        rows.append((fname, int(label), int(index), name))
    with open(out / MANIFEST, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("file", "label", "index", "split"))
        w.writerows(rows)
    return out / MANIFEST

"""FDDB in its official layout: fold lists, ellipse annotations, images under ``originalPics/``.

Layout (as unpacked from ``FDDB-folds.tgz`` and ``originalPics.tar.gz``)::

    DIR/FDDB-folds/FDDB-fold-01.txt              image names, one per line
    DIR/FDDB-folds/FDDB-fold-01-ellipseList.txt  name, face count, then one ellipse per face
    DIR/originalPics/<name>.jpg

An ellipse line is ``major_axis_radius minor_axis_radius angle center_x center_y 1``. The
major axis points along ``angle`` (radians, image coordinates with y pointing down, as
``cv2.ellipse`` draws it); FDDB faces are mostly upright, so angles are near ±π/2.

The reader keeps every annotated image and marks which are present, so evaluation can say
per fold how many images and faces it evaluated and how many images it could not find.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: Images in the complete FDDB benchmark (all 10 folds); scales the ROC's false-positive budget.
FDDB_TOTAL_IMAGES = 2845
_FOLD_RE = re.compile(r"^FDDB-fold-(\d+)-ellipseList\.txt$")


class DatasetError(FileNotFoundError):
    """A dataset directory is missing, or doesn't hold the expected layout or annotations."""


@dataclass(frozen=True)
class FDDBImage:
    """One annotated image: its fold, its name (a fold-list line), path and face ellipses."""

    fold: int
    name: str
    path: Path
    #: ``[F,5]`` float64 rows ``major_r, minor_r, angle, cx, cy``.
    ellipses: np.ndarray = field(repr=False)

    @property
    def n_faces(self) -> int:
        return int(self.ellipses.shape[0])


@dataclass
class FDDBDataset:
    """All annotated FDDB images of the folds found under ``root``, in fold-list order."""

    root: Path
    images: list[FDDBImage]
    present: list[bool]

    @classmethod
    def open(cls, root: str | Path) -> FDDBDataset:
        """Read the fold annotations under ``root``; raise :class:`DatasetError` saying what is missing."""
        return read_fddb(root)

    @property
    def folds(self) -> list[int]:
        return sorted({im.fold for im in self.images})

    def available(self) -> list[FDDBImage]:
        """The annotated images whose file exists, in canonical (fold, list) order."""
        return [im for im, ok in zip(self.images, self.present) if ok]

    def fold_counts(self) -> dict[int, dict[str, int]]:
        """Per fold: annotated images/faces, and how many of those images are present or missing."""
        out: dict[int, dict[str, int]] = {}
        for im, ok in zip(self.images, self.present):
            c = out.setdefault(im.fold, {"annotated_images": 0, "annotated_faces": 0, "present": 0, "missing": 0})
            c["annotated_images"] += 1
            c["annotated_faces"] += im.n_faces
            c["present" if ok else "missing"] += 1
        return out

    def fingerprint(self) -> str:
        """SHA-256 over the present images and their annotations: shards of one evaluation must agree on it."""
        h = hashlib.sha256()
        for im in self.available():
            h.update(f"{im.fold}\t{im.name}\t".encode())
            h.update(np.ascontiguousarray(im.ellipses, dtype=np.float64).tobytes())
        return h.hexdigest()


def _parse_ellipse_list(path: Path, fold: int, pics: Path) -> list[FDDBImage]:
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    out: list[FDDBImage] = []
    i = 0
    while i < len(lines):
        name = lines[i]
        try:
            n = int(lines[i + 1])
            rows = [[float(v) for v in lines[i + 2 + k].split()[:5]] for k in range(n)]
        except (IndexError, ValueError) as exc:
            raise DatasetError(f"{path}: malformed annotation for {name!r} near line {i + 1} ({exc})") from exc
        if any(len(r) != 5 for r in rows):
            raise DatasetError(f"{path}: an ellipse line for {name!r} has fewer than 5 numbers")
        ell = np.asarray(rows, dtype=np.float64).reshape(n, 5)
        out.append(FDDBImage(fold=fold, name=name, path=pics / f"{name}.jpg", ellipses=ell))
        i += 2 + n
    return out


def read_fddb(root: str | Path) -> FDDBDataset:
    """Read every ``FDDB-fold-NN-ellipseList.txt`` under ``root/FDDB-folds`` and check which images exist."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"FDDB dataset directory does not exist: {root}")
    if not root.is_dir():
        raise DatasetError(f"FDDB dataset path is not a directory: {root}")
    folds_dir, pics = root / "FDDB-folds", root / "originalPics"
    missing = [p.name + "/" for p in (folds_dir, pics) if not p.is_dir()]
    if missing:
        raise DatasetError(
            f"{root} does not hold the FDDB layout: missing {' and '.join(missing)} "
            "(expected FDDB-folds/FDDB-fold-NN-ellipseList.txt and originalPics/<name>.jpg, "
            "as unpacked from FDDB-folds.tgz and originalPics.tar.gz; see docs/evaluation.md)"
        )
    lists = sorted((int(m.group(1)), p) for p in folds_dir.iterdir() if (m := _FOLD_RE.match(p.name)))
    if not lists:
        raise DatasetError(f"no FDDB-fold-NN-ellipseList.txt files in {folds_dir}")
    images: list[FDDBImage] = []
    for fold, path in lists:
        fold_images = _parse_ellipse_list(path, fold, pics)
        listing = folds_dir / f"FDDB-fold-{fold:02d}.txt"
        if listing.is_file():  # the plain list must name the same images, in the same order
            names = [
                ln.strip() for ln in listing.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()
            ]
            if names != [im.name for im in fold_images]:
                raise DatasetError(f"{listing} and {path.name} disagree on the images of fold {fold}")
        images.extend(fold_images)
    present = [im.path.is_file() for im in images]
    return FDDBDataset(root=root, images=images, present=present)

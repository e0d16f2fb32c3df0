"""Image folders for fitting (noise, attackers): listed once, FDDB and test splits refused.

The network-ready random crops drawn from them are :class:`veil.obfuscate.crops.ImageCrops` (above
preprocessing, where turning pixels into network input belongs); this module only finds the files.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def looks_like_fddb(path: Path) -> bool:
    """True for FDDB's ``originalPics`` (or anything inside it, or a folder holding it)."""
    p = path.resolve()
    if any(part == "originalPics" for part in p.parts):
        return True
    return (p / "originalPics").is_dir() or (p / "FDDB-folds").is_dir()


def marked_test_split(path: Path) -> bool:
    """True for a folder whose ``labels.csv`` (``veil data digits`` writes one) says it holds a test split."""
    from veil.data.labelled import MANIFEST

    manifest = path / MANIFEST
    if not manifest.is_file():
        return False
    with open(manifest, newline="") as f:
        return any(row.get("split") == "test" for row in csv.DictReader(f))


def list_images(dirs: Sequence[str | Path], evaluation: bool = False) -> list[Path]:
    """All image files under ``dirs`` (recursively, sorted); refuses empty folders and — unless the images
    are listed for ``evaluation`` (an audit's or evaluation's test images) — FDDB and test splits."""
    files: list[Path] = []
    for d in map(Path, dirs):
        if not d.exists():
            raise FileNotFoundError(f"image folder not found: {d}")
        if not evaluation and looks_like_fddb(d):
            raise ValueError(
                f"{d} looks like FDDB (originalPics / FDDB-folds): FDDB is evaluation data "
                "and is never used for fitting; use the WIDER subset, dlib photos or other images"
            )
        if not evaluation and d.is_dir() and marked_test_split(d):
            raise ValueError(
                f"{d} holds a test split (its labels.csv says so): evaluation data is never used for fitting; "
                "use the training split"
            )
        found = [d] if d.is_file() else sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {d}")
        files += found
    return files

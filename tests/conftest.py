"""Shared fixtures: the real data and weights in ../shared (skipped with the reason if absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VEIL_SHARED", ROOT.parent / "shared"))
WEIGHTS = SHARED / "models" / "faceboxes" / "FaceBoxesProd.pth"
FDDB = SHARED / "data" / "fddb"
WIDER = SHARED / "data" / "wider_face_val_subset"
DLIB = SHARED / "data" / "dlib_faces"

# Tests (and the commands they start) find data through veil's settings, as users do: the non-FDDB
# photos for fitting and attacker training, and the FDDB root (see veil.settings.VARIABLES).
if (WIDER / "images").is_dir() and DLIB.is_dir():
    os.environ.setdefault("VEIL_FIT_IMAGES", os.pathsep.join([str(WIDER / "images"), str(DLIB)]))
if FDDB.is_dir():
    os.environ.setdefault("VEIL_DATASET", str(FDDB))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is absent: tests on real data need ../shared beside the project (see README)")
    return path


@pytest.fixture(scope="session")
def weights_path() -> Path:
    """The reference checkpoint: the one that ships inside the package (the same file, SHA-256 verified)."""
    from veil import assets

    return WEIGHTS if WEIGHTS.exists() else _need(assets.WEIGHTS)


@pytest.fixture(scope="session")
def fddb_dir() -> Path:
    return _need(FDDB)


@pytest.fixture(scope="session")
def wider_dir() -> Path:
    return _need(WIDER)


@pytest.fixture(scope="session")
def dlib_dir() -> Path:
    return _need(DLIB)


@pytest.fixture(scope="session")
def detector(weights_path):
    from veil.detector import Detector

    return Detector.from_weights(weights_path)


@pytest.fixture(scope="session")
def fddb_image_paths(fddb_dir) -> list[Path]:
    return sorted((fddb_dir / "originalPics").rglob("*.jpg"))

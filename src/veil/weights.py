"""The FaceBoxes weights by their historical names: a thin view of :mod:`veil.models.pretrained`.

The one resolver (explicit path, ``$VEIL_WEIGHTS``, the cache, the shipped checkpoint; SHA-256
verified) is :mod:`veil.models.pretrained`, for every registered model; new code calls
``veil.models.create(name, split)``. These names keep the FaceBoxes-only callers working.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from veil.digest import sha256_file
from veil.models.faceboxes import FACEBOXES_CONFIG, FaceBoxes
from veil.models.pretrained import WeightsError, cache_dir, create, fetch, install, load_state_dict, resolve, verify

__all__ = [
    "REFERENCE_SHA256",
    "REFERENCE_URL",
    "WEIGHTS_FILENAME",
    "WeightsError",
    "cache_dir",
    "fetch",
    "install",
    "load_faceboxes",
    "load_state_dict",
    "resolve_weights",
    "sha256_file",
    "verify",
]

#: SHA-256 of the public FaceBoxes checkpoint (FaceBoxes.PyTorch, MIT): the registered config's.
REFERENCE_SHA256 = FACEBOXES_CONFIG.weights.sha256
WEIGHTS_FILENAME = FACEBOXES_CONFIG.weights.filename
REFERENCE_URL = FACEBOXES_CONFIG.weights.url


def resolve_weights(path: str | Path | None = None) -> Path:
    """The FaceBoxes weights file (:func:`veil.models.pretrained.resolve` for ``faceboxes``)."""
    return resolve(FACEBOXES_CONFIG.name, path)


def load_faceboxes(path: str | Path | None = None, verify_sha: bool = True) -> tuple[FaceBoxes, str]:
    """The whole FaceBoxes network (split ``rdcl``) with resolved, verified weights, in eval mode, and
    the weights' SHA-256: ``create("faceboxes")``'s network, for code that wants the bare module."""
    model = create(FACEBOXES_CONFIG.name, weights=path, verify_sha=verify_sha)
    return cast(FaceBoxes, model.network), model.weights_sha256

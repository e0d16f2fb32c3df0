"""Identity leak: dlib's pretrained ResNet face embedding (128-d) at annotated face boxes.

Faces are aligned with dlib's 5-point shape predictor inside the *annotated* box (no
detector), so an original and its reconstruction are embedded at exactly the same region
and a blurry reconstruction is still scored rather than silently dropped. The models come
from the PyPI package ``face-recognition-models`` (with the ``dlib-bin`` wheel), read from
its files directly because its ``__init__`` needs the deprecated ``pkg_resources``.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

EMBEDDING_DIM = 128


def _models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the identity metric needs `pip install dlib-bin face-recognition-models`")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@lru_cache(maxsize=1)
def _models():
    try:
        import dlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("the identity metric needs `pip install dlib-bin face-recognition-models`") from exc
    d = _models_dir()
    sp = dlib.shape_predictor(str(d / "shape_predictor_5_face_landmarks.dat"))
    rec = dlib.face_recognition_model_v1(str(d / "dlib_face_recognition_resnet_model_v1.dat"))
    return dlib, sp, rec


def embed_faces(image_bgr: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Embed each ``x1,y1,x2,y2`` box of a uint8 BGR image: ``[F,128]`` float64."""
    dlib, sp, rec = _models()
    rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
    out = np.zeros((len(boxes), EMBEDDING_DIM))
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, dtype=float)[:, :4]):
        rect = dlib.rectangle(round(x1), round(y1), round(x2), round(y2))
        shape = sp(rgb, rect)
        out[i] = np.asarray(rec.compute_face_descriptor(rgb, shape))
    return out


def ellipse_to_box(ellipse: np.ndarray) -> np.ndarray:
    """An FDDB ellipse ``major_r, minor_r, angle, cx, cy`` → a dlib-style square face box.

    FDDB ellipses enclose the whole head (forehead to chin); dlib's boxes are tighter squares
    around eyes, nose and mouth, so the box is a square of side ``2·minor_r`` centred 0.19·major_r
    below the ellipse centre.
    """
    major, minor, _angle, cx, cy = (float(v) for v in ellipse[:5])
    side = 2.0 * minor
    cy = cy + 0.19 * major
    return np.array([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2])

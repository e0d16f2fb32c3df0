"""Image → network input, exactly as FaceBoxes was trained and evaluated.

FaceBoxes expects BGR pixels (OpenCV order), as float, minus the per-channel
means ``(104, 117, 123)``, with no scaling to [0, 1]. The FDDB test protocol of
FaceBoxes upscales images ×3 (bilinear) before the network; boxes are mapped
back to original pixel coordinates by dividing by that factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

#: BGR channel means subtracted before the network.
BGR_MEAN = (104.0, 117.0, 123.0)
#: Upscale factor of the standard FaceBoxes FDDB test protocol.
FDDB_SCALE = 3.0


class ImageReadError(ValueError):
    """An image file is missing, unreadable or corrupt."""


def load_image(path: str | Path) -> np.ndarray:
    """Read an image as a uint8 BGR array ``[H,W,3]``; raise :class:`ImageReadError` if it can't be decoded."""
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"image not found: {p}")
    data = np.fromfile(str(p), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None or img.size == 0:
        raise ImageReadError(f"cannot decode image (corrupt or not an image): {p}")
    return img


@dataclass(frozen=True)
class Prepared:
    """A network-ready tensor and what is needed to map boxes back to the original image."""

    tensor: torch.Tensor  # [1,3,h,w] float32, mean-subtracted BGR
    scale: float  # resize factor applied to the original image
    orig_size: tuple[int, int]  # (height, width) of the original image


def prepare(image: np.ndarray, scale: float = FDDB_SCALE) -> Prepared:
    """Resize a uint8 BGR image by ``scale`` and turn it into a mean-subtracted tensor."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 BGR image, got shape {image.shape}")
    img = image.astype(np.float32)
    if scale != 1.0:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    img -= np.asarray(BGR_MEAN, dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).unsqueeze(0)
    return Prepared(tensor=tensor, scale=scale, orig_size=(image.shape[0], image.shape[1]))


def to_image(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`prepare`'s normalisation: ``[1,3,h,w]`` or ``[3,h,w]`` → uint8 BGR ``[h,w,3]``."""
    t = tensor.detach().cpu()
    if t.ndim == 4:
        t = t[0]
    img = t.numpy().transpose(1, 2, 0) + np.asarray(BGR_MEAN, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)

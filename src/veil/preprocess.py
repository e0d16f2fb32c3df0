"""Image → network input, exactly as each model was trained and evaluated.

A model's input spec (:class:`veil.models.InputSpec`) says how: per-channel mean and standard
deviation, a resize factor or a fixed size, colour or grey. The defaults are FaceBoxes': BGR
pixels (OpenCV order), as float, minus the per-channel means ``(104, 117, 123)``, with no
scaling to [0, 1]; its FDDB test protocol upscales images ×3 (bilinear) before the network, and
boxes are mapped back to original pixel coordinates by dividing by that factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

#: BGR channel means subtracted before the network.
BGR_MEAN = (104.0, 117.0, 123.0)
#: Upscale factor of the standard FaceBoxes FDDB test protocol.
FDDB_SCALE = 3.0


#: Largest network input (pixels after the resize) accepted by default: 4096×4096. Memory grows
#: with it (the float input alone is 12 bytes a pixel, the first layers several times that); at
#: the FDDB ×3 protocol this admits originals up to ≈1365×1365 (FDDB's are at most 450 px a side).
MAX_INPUT_PIXELS = 4096 * 4096
#: Longest side of the network input accepted by default (a 1×N strip is as costly per pixel).
MAX_INPUT_SIDE = 8192


class ImageReadError(ValueError):
    """An image file is missing, unreadable or corrupt."""


class ImageTooLargeError(ImageReadError):
    """An image is larger than the configured pixel limit (it is skipped, not resized)."""


def _header_size(p: Path) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding the pixels, or None if unknown."""
    try:
        from PIL import Image
    except ImportError:
        return None
    bomb_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # only the header is read: the pixel limit here is ours
        with Image.open(p) as im:
            return im.size
    except Exception:  # noqa: BLE001 - not a format PIL reads: cv2 decodes it, then its size is checked
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit


def check_pixels(
    height: int, width: int, scale: float = 1.0, max_pixels: int | None = MAX_INPUT_PIXELS, what: str = "image"
) -> None:
    """Refuse a ``height×width`` image whose network input (×``scale``) exceeds ``max_pixels``
    pixels or :data:`MAX_INPUT_SIDE` per side: before any memory is asked for it."""
    if max_pixels is None:
        return
    h, w = round(height * scale), round(width * scale)
    side = max(MAX_INPUT_SIDE, int(max_pixels**0.5))
    if h * w > max_pixels or max(h, w) > side:
        raise ImageTooLargeError(
            f"{what} is {width}×{height} px, ×{scale:g} = {w}×{h} = {h * w / 1e6:.1f} Mpx at the network input, over "
            f"the limit of {max_pixels / 1e6:.1f} Mpx ({side} px a side); skipped (raise --max-pixels to allow it)"
        )


def load_image(path: str | Path, max_pixels: int | None = MAX_INPUT_PIXELS) -> np.ndarray:
    """Read an image as a uint8 BGR array ``[H,W,3]``; raise :class:`ImageReadError` if it can't be decoded.

    Images over ``max_pixels`` (checked from the file header when possible, so a decompression
    bomb is never decoded) raise :class:`ImageTooLargeError`.
    """
    p = Path(path)
    if p.is_dir():
        raise ImageReadError(f"{p} is a directory, not an image (give its image files, e.g. {p}/*.jpg)")
    if not p.is_file():
        raise ImageReadError(f"image not found: {p}")
    size = _header_size(p)
    if size is not None:
        check_pixels(size[1], size[0], 1.0, max_pixels, what=str(p))
    data = np.fromfile(str(p), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None or img.size == 0:
        raise ImageReadError(f"cannot decode image (corrupt or not an image): {p}")
    check_pixels(img.shape[0], img.shape[1], 1.0, max_pixels, what=str(p))
    return img


@dataclass(frozen=True)
class Prepared:
    """A network-ready tensor and what is needed to map boxes back to the original image."""

    tensor: torch.Tensor  # [1,C,h,w] float32, normalised as the model's input spec says
    scale: float  # resize factor applied to the original image (its height's, for a fixed input size)
    orig_size: tuple[int, int]  # (height, width) of the original image


#: Largest difference of :func:`prepare`'s output from resizing in float32 (the implementation it
#: replaced, kept in tests/test_model.py): resizing in uint8 rounds each pixel once, and OpenCV's
#: uint8 bilinear uses 11-bit fixed-point weights. Measured on FDDB: ≤ 0.67 grey levels.
PREPARE_TOLERANCE = 1.0


def prepare(
    image: np.ndarray,
    scale: float = FDDB_SCALE,
    max_pixels: int | None = MAX_INPUT_PIXELS,
    *,
    mean: tuple[float, ...] = BGR_MEAN,
    std: tuple[float, ...] = (1.0, 1.0, 1.0),
    size: tuple[int, int] | None = None,
    channels: int = 3,
) -> Prepared:
    """Resize a uint8 image and turn it into a normalised ``[1,C,h,w]`` tensor: ``(x − mean) / std``.

    The defaults are FaceBoxes' (BGR, mean-subtracted, no scaling); a model's
    :class:`veil.models.InputSpec` gives the others (the pipeline passes them): ``size`` a fixed
    ``(height, width)`` input instead of ``scale`` (classifiers), ``channels=1`` a grey input (a
    BGR image is converted; a 2-D grey image is accepted). ``mean``/``std`` are per channel in
    BGR order, 0..255 units (a grey model uses the first).

    At memory speed: each channel plane of the (small) original is resized in uint8, then one
    pass per plane converts, subtracts the mean and writes straight into its place in the
    channel-first output (no float copy of the large image, no transpose copy). Within
    :data:`PREPARE_TOLERANCE` of resizing in float32 (× 1/std). A network input over ``max_pixels``
    raises :class:`ImageTooLargeError` before any memory is asked for it.
    """
    if channels not in (1, 3):
        raise ValueError(f"a model reads 1 (grey) or 3 (BGR) channels, not {channels}")
    grey_ok = channels == 1 and image.ndim == 2
    if not grey_ok and (image.ndim != 3 or image.shape[2] != 3):
        want = "an HxW grey or HxWx3 BGR image" if channels == 1 else "an HxWx3 BGR image"
        raise ValueError(f"expected {want}, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    orig = (image.shape[0], image.shape[1])
    if size is not None:
        scale = size[0] / orig[0]
        if min(size) < 1:
            raise ValueError(f"a fixed input size must be positive, got {size}")
    else:
        check_pixels(orig[0], orig[1], scale, max_pixels)
    planes = (
        [cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image] if channels == 1 else cv2.split(image)
    )
    out: np.ndarray | None = None
    for ch, plane in enumerate(planes):
        if size is not None:
            if plane.shape != size:
                plane = cv2.resize(plane, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        elif scale != 1.0:
            plane = cv2.resize(plane, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        if out is None:
            out = np.empty((1, channels, *plane.shape), dtype=np.float32)
        m: Any = mean[ch]  # a scalar, which OpenCV broadcasts (its type stubs list only arrays)
        cv2.subtract(plane, m, dst=out[0, ch], dtype=cv2.CV_32F)
        if std[ch] != 1.0:
            out[0, ch] *= 1.0 / std[ch]
    return Prepared(tensor=torch.from_numpy(out), scale=scale, orig_size=orig)


def to_image(
    tensor: torch.Tensor, mean: tuple[float, ...] = BGR_MEAN, std: tuple[float, ...] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """Inverse of :func:`prepare`'s normalisation: ``[1,C,h,w]`` or ``[C,h,w]`` → uint8 ``[h,w,3]`` BGR
    (``[h,w]`` grey for one channel)."""
    t = tensor.detach().cpu()
    if t.ndim == 4:
        t = t[0]
    c = t.shape[0]
    img = t.numpy().transpose(1, 2, 0) * np.asarray(std[:c], dtype=np.float32) + np.asarray(mean[:c], dtype=np.float32)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return img[:, :, 0] if c == 1 else img

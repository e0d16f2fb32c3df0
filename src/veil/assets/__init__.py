"""What ships inside the package, so the main path runs with no download and no data of one's own.

- ``faceboxes/FaceBoxesProd.pth``: the reference FaceBoxes checkpoint (MIT, ``faceboxes/LICENSE``),
  verified by its SHA-256 like any other weights file (:mod:`veil.weights`);
- ``noise/alpha-<A>.safetensors``: noise fitted for those weights at the documented ALPHAs, on
  non-FDDB photos (the fitting command and settings are in each file's metadata);
- ``decoder/naive.safetensors``: a reference decoder trained on non-FDDB photos, so a picture of
  what leaves the trust zone is always available (``veil infer``, the notebook, ``veil demo``);
- sample photos are not copied: they are read from dependencies that ship them
  (:func:`sample_images`).

Files the user makes (``veil fit-noise``, ``veil train-decoder``, ``veil weights import``) live in
the veil cache and take precedence over these.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
WEIGHTS = ROOT / "faceboxes" / "FaceBoxesProd.pth"
WEIGHTS_LICENSE = ROOT / "faceboxes" / "LICENSE"
NOISE_DIR = ROOT / "noise"
DECODER = ROOT / "decoder" / "naive.safetensors"
#: The ALPHAs whose noise ships (the reference design's sweep).
SHIPPED_ALPHAS = (0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95)
#: ALPHA used when none is given (the README's headline setting).
DEFAULT_ALPHA = 0.8


def decoder_file() -> Path | None:
    """The shipped reference decoder, or ``None`` in an installation without it."""
    return DECODER if DECODER.is_file() else None


def _grace_hopper() -> np.ndarray:
    """Rear Admiral Grace Hopper, US Navy photo (public domain), in matplotlib's sample data."""
    import cv2
    from matplotlib import cbook

    return cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)), cv2.IMREAD_COLOR)


def _astronaut() -> np.ndarray:
    """Eileen Collins, NASA photo (public domain), in scikit-image's sample data (the privacy extra)."""
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut()[:, :, ::-1])


_SAMPLES = {"grace_hopper": _grace_hopper, "astronaut": _astronaut}


def sample_images() -> dict[str, np.ndarray]:
    """Public-domain photos with faces (BGR uint8), read from installed dependencies, never FDDB.

    Offline: both ship inside the wheels (matplotlib always, scikit-image with the ``privacy``
    or ``demo`` extra); a missing one is left out.
    """
    out: dict[str, np.ndarray] = {}
    for name, load in _SAMPLES.items():
        try:
            img = load()
        except (ImportError, OSError, ValueError):
            continue
        if img is not None:
            out[name] = img
    if not out:
        raise RuntimeError("no sample photos available (matplotlib's sample data is missing from this install)")
    return out

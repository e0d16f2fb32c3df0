"""Image similarity and identity-leak metrics used by the privacy audit.

SSIM follows Wang et al. (2004) with an 11×11 Gaussian window (σ = 1.5), K1 = 0.01,
K2 = 0.03 and population covariances, averaged over colour channels — the same
definition as ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
use_sample_covariance=False, sigma=1.5)``, computed with OpenCV filters so it is fast.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` for identical images)."""
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ: {a.shape} vs {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean structural similarity of two images (``[H,W]`` or ``[H,W,C]``), averaged over channels."""
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ: {a.shape} vs {b.shape}")
    if min(a.shape[:2]) < 7:
        raise ValueError(f"ssim: image too small ({a.shape[:2]}), need at least 7×7")
    x = a.astype(np.float64)
    y = b.astype(np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(z: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(z, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    vals = []
    for c in range(x.shape[2]):
        xc, yc = np.ascontiguousarray(x[..., c]), np.ascontiguousarray(y[..., c])
        mx, my = blur(xc), blur(yc)
        sxx = blur(xc * xc) - mx * mx
        syy = blur(yc * yc) - my * my
        sxy = blur(xc * yc) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
        pad = 5  # skimage crops the window half-width at the borders
        vals.append(float(s[pad:-pad, pad:-pad].mean()) if min(s.shape) > 2 * pad else float(s.mean()))
    return float(np.mean(vals))


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``[len(a), len(b)]`` between two sets of embeddings."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(d2, 0.0))


def rank1_rate(
    originals: np.ndarray, probes: np.ndarray, valid: np.ndarray | None = None, labels: np.ndarray | None = None
) -> float:
    """Fraction of probes whose nearest original (among all originals) is their own.

    Probe ``i`` belongs to original ``labels[i]`` (default: ``i``, one probe per original).
    ``valid`` marks probes for which an embedding exists; invalid probes count as misses,
    so an attacker cannot score by producing images the recogniser rejects.
    """
    if len(originals) == 0 or len(probes) == 0:
        raise ValueError("rank1_rate: no faces")
    own = np.arange(len(probes)) if labels is None else np.asarray(labels)
    d = pairwise_distances(probes, originals)
    hits = d.argmin(1) == own
    if valid is not None:
        hits &= valid
    return float(hits.mean())


def far_threshold(originals: np.ndarray, far: float = 0.01) -> float:
    """Distance threshold at which ``far`` of pairs of *different* original faces are accepted."""
    d = pairwise_distances(originals, originals)
    iu = np.triu_indices(len(originals), k=1)
    impostor = d[iu]
    if impostor.size == 0:
        raise ValueError("far_threshold: need at least two faces")
    return float(np.quantile(impostor, far))


def tar_at_far(
    originals: np.ndarray,
    probes: np.ndarray,
    threshold: float,
    valid: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> float:
    """True-accept rate: fraction of probes within ``threshold`` of their own original (``labels`` as in rank-1)."""
    own = originals if labels is None else originals[np.asarray(labels)]
    d = np.sqrt(((own - probes) ** 2).sum(1))
    ok = d < threshold
    if valid is not None:
        ok &= valid
    return float(ok.mean())


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (95 % by default); ``(0, 1)`` when ``n = 0``.

    Why Wilson: rank-1 rates here are small proportions of ~40–200 probes, where the normal
    approximation's interval crosses 0 and under-covers; Wilson's stays in [0, 1] and covers.
    """
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def rank1_hits(originals: np.ndarray, probes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per probe: is its nearest original (among all originals) its own (``labels[i]``)?"""
    if len(probes) == 0:
        return np.zeros(0, bool)
    return pairwise_distances(probes, originals).argmin(1) == np.asarray(labels)


def tar_hits(originals: np.ndarray, probes: np.ndarray, threshold: float, labels: np.ndarray) -> np.ndarray:
    """Per probe: is it within ``threshold`` of its own original?"""
    if len(probes) == 0:
        return np.zeros(0, bool)
    return np.sqrt(((originals[np.asarray(labels)] - probes) ** 2).sum(1)) < threshold

"""SSIM/PSNR against known values and scikit-image; rank-1 and TAR on constructed embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from veil.privacy import metrics

skimage_data = pytest.importorskip("skimage.data", reason="needs the privacy extra (scikit-image)")
from skimage.metrics import structural_similarity  # noqa: E402


def test_identical_images():
    a = skimage_data.astronaut()[:100, :120]
    assert metrics.ssim(a, a) == pytest.approx(1.0)
    assert math.isinf(metrics.psnr(a, a))


def test_psnr_known_mse():
    a = np.zeros((20, 30, 3), np.uint8)
    b = np.full_like(a, 10)  # MSE = 100
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))


@pytest.mark.parametrize("sigma", [5.0, 40.0])
def test_ssim_matches_skimage(sigma):
    rng = np.random.default_rng(1)
    a = skimage_data.astronaut()[100:260, 150:330]
    b = np.clip(a + rng.normal(0, sigma, a.shape), 0, 255).astype(np.uint8)
    ref = structural_similarity(
        a, b, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert metrics.ssim(a, b) == pytest.approx(ref, abs=1e-6)
    assert metrics.ssim(a, b) < 0.99


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.ssim(np.zeros((10, 10)), np.zeros((10, 11)))


def test_rank1_and_tar():
    rng = np.random.default_rng(0)
    orig = rng.normal(size=(50, 128))
    close = orig + rng.normal(scale=0.01, size=orig.shape)
    thr = metrics.far_threshold(orig, 0.01)
    assert metrics.rank1_rate(orig, close) == 1.0
    assert metrics.tar_at_far(orig, close, thr) == 1.0
    shuffled = close[np.roll(np.arange(50), 1)]
    assert metrics.rank1_rate(orig, shuffled) == 0.0
    assert metrics.tar_at_far(orig, shuffled, thr) <= 0.05
    # probes for a subset of the gallery
    assert metrics.rank1_rate(orig, close[[3, 7]], labels=np.array([3, 7])) == 1.0
    assert metrics.rank1_rate(orig, close[[3, 7]], labels=np.array([7, 3])) == 0.0

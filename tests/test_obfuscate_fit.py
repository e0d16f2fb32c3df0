"""The tuning pass on the real FaceBoxes weights and a few real (non-FDDB) images."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from veil.obfuscate import nsr_report, nsr_sums
from veil.obfuscate.crops import ImageCrops
from veil.obfuscate.fit import FitConfig, activation_bank, fit_noise
from veil.weights import load_faceboxes


@pytest.fixture(scope="module")
def model(weights_path):
    return load_faceboxes(weights_path)[0]


@pytest.fixture(scope="module")
def bank(model, dlib_dir):
    data = ImageCrops([dlib_dir], crop=192, scale_range=(1.0, 2.0))
    return activation_bank(model.head, model.tail, DataLoader(data, batch_size=4), progress=False)


@pytest.fixture(scope="module")
def fits(model, bank):
    """Short fits at three ALPHAs on the same activations, with the weights' state before them."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = {
        a: fit_noise(
            model.head,
            model.tail,
            None,
            FitConfig(alpha=a, steps=30, batch_size=2),
            bank=bank,
            progress=False,
            log_every=1,
        )
        for a in (0.1, 0.5, 0.9)
    }
    return out, before


def test_weights_stay_frozen_and_a_short_fit_lowers_the_loss(model, fits):
    results, before = fits
    firsts, lasts = [], []
    for r in results.values():
        firsts.append(sum(e["loss"] for e in r.log[:5]) / 5)  # minibatch losses are noisy: average 5
        lasts.append(sum(e["loss"] for e in r.log[-5:]) / 5)
        assert lasts[-1] < firsts[-1], (r.config.alpha, firsts[-1], lasts[-1])
        assert not r.obfuscator.seeded  # fitted with a seed, used with OS randomness
        assert r.activation_stats["shape"][0] == 128
    assert sum(lasts) < 0.9 * sum(firsts), (firsts, lasts)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())  # restored for the caller


def test_noise_to_signal_rises_monotonically_with_alpha(bank, fits):
    results, _ = fits
    nsr = [nsr_report(nsr_sums(bank[0], results[a].obfuscator))["nsr_db"] for a in (0.1, 0.5, 0.9)]
    assert nsr[0] < nsr[1] < nsr[2], nsr


def test_bad_alpha_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        FitConfig(alpha=1.0)


def test_detect_with_nsr_is_detect_with_the_same_noise_plus_its_nsr(weights_path, dlib_dir):
    """The one noisy pass (clean activation → NSR sums → noise → tail) gives exactly the boxes of
    ``Detector.detect`` with the same noise draw, and the NSR of that activation."""
    import numpy as np

    from veil.detector import Detector
    from veil.obfuscate import detect_with_nsr, load_obfuscator
    from veil.preprocess import load_image

    det = Detector.from_weights(weights_path, scale=1.0)
    image = load_image(sorted(dlib_dir.glob("*.jpg"))[0])
    with pytest.raises(ValueError, match="obfuscator"):
        detect_with_nsr(det, image)
    det.obfuscator, _ = load_obfuscator(0.8, model=det.model, seed=3)  # the shipped noise
    boxes, sums = detect_with_nsr(det, image)
    det.obfuscator.reseed(3)
    assert np.array_equal(boxes, det.detect(image))
    a, _ = det.client_side(image, obfuscate=False)
    assert np.allclose(sums, nsr_sums(a, det.obfuscator))
    assert nsr_report(sums)["nsr_db"] > -10.0  # ALPHA 0.8 noise is strong (about +3 dB on FDDB)
    det.obfuscator.reseed(4)
    assert not np.array_equal(detect_with_nsr(det, image)[0], boxes), "another draw, other boxes"

"""White-box inversion lowers its objective and recovers the image's structure."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from veil.preprocess import load_image, prepare
from veil.privacy.whitebox import cell_window, channel_weights, invert_window, invert_windows


@pytest.fixture(scope="module")
def face(detector, dlib_dir):
    """A face from the dlib photos (2008_002506.jpg, box left 224 top 95 size 91) at the deployed ×3 scale:
    the network input, its activation, the activation's size and the window of every cell."""
    img = load_image(dlib_dir / "2008_002506.jpg")[80:208, 200:328]
    prep = prepare(img, 3.0)
    with torch.no_grad():
        a = detector.head(prep.tensor)
    hw = (a.shape[2], a.shape[3])
    return prep, a, hw, cell_window(np.array([0, 0, 384, 384]), hw, margin=0.0, context=0)


def test_inversion_lowers_objective(detector, face):
    prep, a, hw, win = face
    hist: list[float] = []
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention on a shared machine
    try:
        patch = invert_window(detector.head, a, win, hw, steps=40, upscale=3.0, history=hist)
    finally:
        torch.set_num_threads(prev)
    assert hist[-1] < 0.5 * hist[0]
    # the recovered image correlates with the truth (the grey start has no correlation)
    p = cv2.resize(patch[0].mean(0).numpy(), (32, 32), interpolation=cv2.INTER_AREA).ravel()
    t = cv2.resize(prep.tensor[0].mean(0).numpy(), (32, 32), interpolation=cv2.INTER_AREA).ravel()
    corr = np.corrcoef(p, t)[0, 1]
    print(f"white-box correlation with the truth: {corr:.3f}")
    assert corr > 0.3, corr


def test_channel_weights_follow_noise():
    from veil.obfuscate import Obfuscator

    assert channel_weights(None) == (None, None)
    obf = Obfuscator(4, seed=0)
    with torch.no_grad():
        obf.log_sigma.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    _, w = channel_weights(obf)
    assert torch.all(w[:-1] > w[1:])  # noisier channels are trusted less
    _, w16 = channel_weights(obf, averaged=16)
    assert w16[-1] / w16[0] > w[-1] / w[0]  # averaging makes noisy channels more useful


def test_learned_init_starts_the_search_there(detector, face):
    """The hybrid attack: a start from a reconstruction (here the truth itself, the ideal decoder) begins
    near the activation's optimum and stays on the image, where the grey start begins far away."""
    prep, a, hw, win = face
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        grey: list[float] = []
        invert_window(detector.head, a, win, hw, steps=3, upscale=3.0, history=grey)
        hinted: list[float] = []
        patch = invert_windows(
            detector.head, [a], [win], [hw], steps=3, upscale=3.0, history=hinted, init=[prep.tensor]
        )[0]
    finally:
        torch.set_num_threads(prev)
    assert hinted[0] < 0.2 * grey[0], (hinted[0], grey[0])
    truth = prep.tensor[0, :, : patch.shape[2], : patch.shape[3]]
    p, t = patch[0].mean(0).numpy().ravel(), truth.mean(0).numpy().ravel()
    assert np.corrcoef(p, t)[0, 1] > 0.8

"""White-box inversion lowers its objective and moves the image towards the truth."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from veil.preprocess import load_image, prepare
from veil.privacy.whitebox import cell_window, channel_weights, invert_window


def test_inversion_lowers_objective(detector, dlib_dir):
    img = load_image(sorted(dlib_dir.glob("*.jpg"))[0])
    img = cv2.resize(img, (160, 128))
    prep = prepare(img, 1.0)
    with torch.no_grad():
        a = detector.head(prep.tensor)
    hw = (a.shape[2], a.shape[3])
    win = cell_window(np.array([32, 32, 128, 96]), hw, margin=0.0, context=0)
    hist: list[float] = []
    patch = invert_window(detector.head, a, win, hw, steps=40, history=hist)
    assert hist[-1] < 0.5 * hist[0]
    r0, r1, c0, c1 = win
    truth = prep.tensor[:, :, r0 * 32:r1 * 32, c0 * 32:c1 * 32]
    # the recovered image correlates with the truth (the grey start has no correlation)
    p, t = patch.mean(1).flatten(), truth.mean(1).flatten()
    assert torch.corrcoef(torch.stack([p, t]))[0, 1] > 0.2


def test_channel_weights_follow_noise():
    from veil.obfuscate import Obfuscator

    assert channel_weights(None) == (None, None)
    obf = Obfuscator(4, seed=0)
    with torch.no_grad():
        obf.log_sigma.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    mu, w = channel_weights(obf)
    assert torch.all(w[:-1] > w[1:])  # noisier channels are trusted less
    _, w16 = channel_weights(obf, averaged=16)
    assert w16[-1] / w16[0] > w[-1] / w[0]  # averaging makes noisy channels more useful

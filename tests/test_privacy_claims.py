"""The project's central claims, on real images and the noise veil ships for ALPHA 0.8 (fitted on the WIDER
subset and dlib photos, never FDDB):

1. learned noise beats isotropic noise of the same power: at equal noise-to-signal ratio, the detector's
   outputs move far less and its detections survive (README: mAP 0.95 against 0.11);
2. the adaptive attacker (a decoder trained on obfuscated activations) is at least as good as the naive one
   (trained on clean activations) at reconstructing what was obfuscated: the audit's worst case is no
   weaker for attacking the noise itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine: one thread is faster under load
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def shipped_noise(detector):
    from veil import assets
    from veil.obfuscate import load_obfuscator

    if not (assets.NOISE_DIR / "alpha-0.8.safetensors").is_file():
        pytest.skip("the ALPHA 0.8 noise does not ship in this installation")
    obf, _ = load_obfuscator(0.8, noise=assets.NOISE_DIR / "alpha-0.8.safetensors", model=detector.model)
    return obf


def _matched(clean: np.ndarray, noisy: np.ndarray, thr: float = 0.5) -> int:
    """Confident clean detections that a confident noisy detection overlaps with IoU ≥ 0.5."""
    c, n = clean[clean[:, 4] >= thr], noisy[noisy[:, 4] >= thr]
    hits = 0
    for b in c:
        if not len(n):
            break
        x1, y1 = np.maximum(b[0], n[:, 0]), np.maximum(b[1], n[:, 1])
        x2, y2 = np.minimum(b[2], n[:, 2]), np.minimum(b[3], n[:, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        union = (b[2] - b[0]) * (b[3] - b[1]) + (n[:, 2] - n[:, 0]) * (n[:, 3] - n[:, 1]) - inter
        hits += bool((inter / union).max() >= 0.5)
    return hits


def test_learned_noise_beats_isotropic_noise_of_the_same_power_at_alpha_08(detector, shipped_noise, fddb_image_paths):
    from veil.obfuscate import isotropic_like, nsr_report, nsr_sums
    from veil.preprocess import load_image

    learned = shipped_noise
    iso = isotropic_like(learned)
    distortion = detector.model.config.distortion
    sums = {"learned": np.zeros((2, 128)), "isotropic": np.zeros((2, 128))}
    dist = {"learned": [], "isotropic": []}
    found = {"learned": 0, "isotropic": 0}
    n_clean = 0
    for p in fddb_image_paths[:6]:  # evaluation images: measured on, never fitted on
        a, prep = detector.head_activation(load_image(p))
        with torch.no_grad():
            clean_out = detector.model.tail(a)
        clean_boxes = detector.boxes_from_activation(a, prep)
        n_clean += int((clean_boxes[:, 4] >= 0.5).sum())
        for name, obf in (("learned", learned), ("isotropic", iso)):
            sums[name] += nsr_sums(a, obf)
            with torch.no_grad():
                noisy = obf(a)
                dist[name].append(float(distortion(clean_out, detector.model.tail(noisy))))
            found[name] += _matched(clean_boxes, detector.boxes_from_activation(noisy, prep))
    nsr = {k: nsr_report(v)["nsr_db"] for k, v in sums.items()}
    d = {k: float(np.mean(v)) for k, v in dist.items()}
    print(f"NSR {nsr}; distortion {d}; confident clean faces kept {found} of {n_clean}")
    assert abs(nsr["learned"] - nsr["isotropic"]) < 0.01  # the same noise power
    assert nsr["learned"] > 0.0  # and more noise than signal, as documented for ALPHA 0.8
    assert n_clean >= 6
    assert d["learned"] < 0.5 * d["isotropic"]
    assert found["learned"] >= 0.6 * n_clean and found["isotropic"] <= 0.5 * found["learned"]  # measured 7/8, 0/8


def test_the_adaptive_attacker_is_at_least_as_good_as_the_naive_one(detector, shipped_noise, dlib_dir, wider_dir):
    """The shipped reference decoder (naive: clean activations) against the same decoder trained a little
    further on activations obfuscated by the shipped ALPHA 0.8 noise (adaptive, warm start as the audit
    does), both scored on held-out photos' obfuscated activations (fresh noise)."""
    from veil import assets
    from veil.privacy.decoders import decode, decoder_arch, read_decoder
    from veil.privacy.train import photo_crops, train_decoder

    shipped = assets.decoder_file()
    if shipped is None:
        pytest.skip("the reference decoder does not ship in this installation")
    from veil.data.images import list_images

    model = detector.model
    naive = read_decoder(shipped, model)
    wider = list_images([wider_dir / "images"])
    adaptive = train_decoder(
        model.head,
        photo_crops([dlib_dir, *wider[:150]], crop=128, seed=1),
        obfuscator=shipped_noise,
        init=naive,
        max_steps=40,
        batch=8,
        lr=5e-4,  # a fine-tune of the naive decoder, as the audit's adaptive attacker starts
        seed=2,
        progress=False,
        arch=decoder_arch(model),
    )
    x = photo_crops(wider[150:], crop=128, seed=7).batch(16)  # held out: photos not in this training
    with torch.no_grad():
        a = model.head(x)
    err = {"naive": [], "adaptive": []}
    for _ in range(3):  # fresh noise each draw
        with torch.no_grad():
            obs = shipped_noise(a)
        for name, dec in (("naive", naive), ("adaptive", adaptive)):
            err[name].append(float((decode(dec, obs) - x).abs().mean()))
    e = {k: float(np.mean(v)) for k, v in err.items()}
    print(f"L1 on obfuscated activations (input units): {e}")
    assert e["adaptive"] <= e["naive"]
    assert e["adaptive"] < 0.95 * e["naive"]  # and not by a hair: attacking the noise pays (measured ≈ 0.8×)

"""The client-side bottleneck (issue 9 §2, direction 1): deterministic, many-to-one, trainable, bound to weights."""

from __future__ import annotations

import pytest
import torch

from veil.defenses import files
from veil.defenses.bottleneck import (
    BottleneckSpec,
    as_decoder_input,
    deterministic_copy,
    fit_bottleneck,
    load_bottleneck,
    save_bottleneck,
)
from veil.defenses.distill import DistillConfig, build_bank


@pytest.fixture(scope="module")
def model(weights_path):
    from veil.weights import load_faceboxes

    return load_faceboxes(weights_path)


@pytest.fixture(scope="module")
def fitted(model, wider_dir):
    m, _ = model
    torch.set_num_threads(1)
    banks = build_bank(
        m.head,
        m.tail,
        [wider_dir / "images"],
        crop=192,
        crops_per_image=1,
        max_images=24,
        held_out=0.25,
        keep_images=True,
        progress=False,
    )
    spec = BottleneckSpec.from_alpha(0.8)
    fb, log, data = fit_bottleneck(
        m, spec, [], DistillConfig(steps=30, batch_size=8, lr=3e-3), bank=banks, adversary_weight=0.1, progress=False
    )
    return fb, log, data, banks


def test_alpha_is_the_knob():
    specs = [BottleneckSpec.from_alpha(a) for a in (0.0, 0.5, 0.8, 0.9, 0.95)]
    bits = [s.bits_per_cell for s in specs]
    assert bits == sorted(bits, reverse=True) and bits[0] > bits[-1]
    assert [s.noise_std for s in specs] == sorted(s.noise_std for s in specs)
    with pytest.raises(ValueError, match="ALPHA"):
        BottleneckSpec.from_alpha(1.0)


def test_code_is_deterministic_and_many_to_one(fitted):
    fb, _, _, (train, _) = fitted
    det = deterministic_copy(fb).eval()
    a = train.acts[:4]
    with torch.no_grad():
        q1, q2 = det(a), det(a)
        assert torch.equal(q1, q2)  # no noise: the same activation always gives the same code
        levels = fb.spec.levels
        assert torch.unique(q1).numel() <= levels  # a finite alphabet
        # Many-to-one: a perturbation of the activation (5 % of its RMS) mostly leaves the code unchanged.
        moved = det(a + 0.05 * a.pow(2).mean().sqrt() * torch.randn_like(a))
        assert (moved == q1).float().mean() > 0.7
        # With its noise on, two calls differ (fresh draws), around the same code.
        n1, n2 = fb.bottleneck(a), fb.bottleneck(a)
        assert not torch.equal(n1, n2)
        assert float((n1 - q1).std()) == pytest.approx(fb.spec.noise_std * fb.spec.step, rel=0.2)
        # The wire carries `channels` maps; an attacker's decoder input is them padded to 128.
        assert n1.shape[1] == fb.spec.channels and as_decoder_input(n1, fb.bottleneck.in_channels).shape[1] == 128


def test_training_lowers_held_out_distortion(fitted):
    _, log, _, _ = fitted
    assert log[-1]["held_out_distortion"] < log[0]["held_out_distortion"]


def test_file_round_trip_and_refusals(fitted, model, tmp_path):
    fb, log, data, (train, _) = fitted
    m, digest = model
    path = save_bottleneck(
        fb,
        tmp_path / "bn.safetensors",
        weights_sha256=digest,
        cfg=DistillConfig(steps=30),
        log=log,
        data=data,
        adversary_weight=0.1,
    )
    loaded, meta = load_bottleneck(path, m, weights_sha256=digest, alpha=0.8)
    assert meta["spec"]["channels"] == fb.spec.channels
    a = train.acts[:2]
    with torch.no_grad():
        assert torch.equal(deterministic_copy(loaded)(a), deterministic_copy(fb)(a))
        out1 = loaded.model.tail(loaded.path(a))[1]
        assert out1.shape[-1] == 2 and torch.isfinite(out1).all()
    with pytest.raises(files.DefenseFileError, match="model weights"):
        load_bottleneck(path, m, weights_sha256="0" * 64)
    with pytest.raises(files.DefenseFileError, match="ALPHA"):
        load_bottleneck(path, m, weights_sha256=digest, alpha=0.9)
    with pytest.raises(files.DefenseFileError, match="holds"):
        from veil.defenses.robust_tail import load_robust_tail

        load_robust_tail(path, m, weights_sha256=digest)


def test_identity_term_reaches_the_bottleneck_and_is_recorded(model, wider_dir, dlib_dir, tmp_path):
    """``privacy_term="identity"``: an in-loop identity regressor reads the wire code of annotated dlib faces;
    its gradient changes the bottleneck (against the same fit without it), and its seeds and final weights go
    into the file, so the audit refuses a scoring attacker that shares them."""
    from veil.defenses.adversarial import build_face_bank
    from veil.privacy.audit import IndependenceError, check_independence

    m, digest = model
    torch.set_num_threads(1)
    banks = build_bank(
        m.head, m.tail, [wider_dir / "images"], crop=192, crops_per_image=1, max_images=8, progress=False
    )
    faces = build_face_bank(m, [dlib_dir], crop=256, scale_range=(1.0, 1.2), crops_per_image=1, progress=False)
    spec, cfg = BottleneckSpec.from_alpha(0.6), DistillConfig(steps=6, batch_size=4, lr=3e-3, seed=3)
    downs = {}
    for w in (0.0, 1.0):
        fb, log, data = fit_bottleneck(
            m, spec, [], cfg, bank=banks, adversary_weight=w, privacy_term="identity", adversary_seed=77,
            face_bank=faces, progress=False,
        )  # fmt: skip
        downs[w] = fb.bottleneck.down.weight.detach().clone()
    assert not torch.allclose(downs[0.0], downs[1.0])  # the identity term moved the encoder
    a = fb.adversary
    assert a is not None and a["kind"] == "identity-regressor" and a["seed"] == 77 and a["data_order_seed"] == 3
    assert a["steps"] == 6 and a["weight"] == 1.0 and a["targets"]["faces"] >= 5
    path = save_bottleneck(
        fb, tmp_path / "id.safetensors", weights_sha256=digest, cfg=cfg, log=log, data=data, adversary_weight=1.0
    )
    _, meta = load_bottleneck(path, m, weights_sha256=digest)
    assert meta["adversary"]["weights_sha256"] == a["weights_sha256"]
    with pytest.raises(IndependenceError, match="seed"):
        check_independence({"scoring decoder": {"seed": 77, "data_order_seed": 9001}}, meta)
    with pytest.raises(ValueError, match="identity\\+l1"):
        fit_bottleneck(m, spec, [], cfg, bank=banks, adversary_weight=1.0, privacy_term="identity+l1", progress=False)

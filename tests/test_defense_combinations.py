"""Levers combined (issue 9 "combine levers"): a bottleneck at a deeper split, a robust tail for conditioned noise."""

from __future__ import annotations

import pytest
import torch

from veil.defenses import files
from veil.defenses.bottleneck import BottleneckSpec, fit_bottleneck, load_bottleneck, save_bottleneck
from veil.defenses.distill import DistillConfig, build_bank, held_out_distortion, training_noise
from veil.defenses.robust_tail import distill_tail, tail_state
from veil.obfuscate.conditioned import ConditionedObfuscator
from veil.obfuscate.noise import Obfuscator


@pytest.fixture(scope="module")
def inception3(weights_path):
    from veil.models import create

    torch.set_num_threads(1)
    return create("faceboxes", "inception3", weights=weights_path)


def test_bottleneck_at_a_deeper_split_trains_records_its_split_and_is_refused_elsewhere(
    inception3, weights_path, wider_dir, tmp_path
):
    from veil.models import create

    net, digest = inception3.network, inception3.weights_sha256
    banks = build_bank(
        net.head,
        net.tail,
        [wider_dir / "images"],
        crop=192,
        crops_per_image=1,
        max_images=12,
        held_out=0.25,
        scale_range=(1.3, 4.0),
        progress=False,
    )
    spec = BottleneckSpec.from_alpha(0.8)
    fb, log, data = fit_bottleneck(
        net, spec, [], DistillConfig(steps=12, batch_size=4, lr=3e-3), bank=banks, progress=False
    )
    assert log[-1]["step"] == 12 and log[-1]["held_out_distortion"] < log[0]["held_out_distortion"]
    # The distilled tail starts after inception3: it holds no Inception block (those are the client's head).
    assert not any(k.startswith("inception") for k in tail_state(fb.model))
    assert all(torch.equal(a, b) for a, b in zip(net.head.state_dict().values(), fb.model.head.state_dict().values()))
    path = save_bottleneck(
        fb, tmp_path / "bn.safetensors", weights_sha256=digest, cfg=DistillConfig(), log=log, data=data
    )
    loaded, meta = load_bottleneck(path, net, weights_sha256=digest, alpha=0.8)
    assert meta["split_point"] == "faceboxes.inception3" and meta["channels"] == 128
    # The wire callable on the clean split activation: C quantised channels (plus fresh noise) at the split's stride.
    a = net.head(torch.zeros(1, 3, 256, 320))
    with torch.no_grad():
        z1, z2 = loaded.path.wire(a), loaded.path.wire(a)
    assert z1.shape == (1, spec.channels, *a.shape[2:]) and not torch.equal(z1, z2)
    seen = loaded.observe(a)  # an attacker's observation: the code padded to the split's 128 channels, fresh noise
    assert seen.shape == a.shape and not seen[:, spec.channels :].any() and not torch.equal(seen, loaded.observe(a))
    rdcl = create("faceboxes", "rdcl", weights=weights_path).network
    with pytest.raises(files.DefenseFileError, match=r"trained at split point .faceboxes\.inception3."):
        load_bottleneck(path, rdcl, weights_sha256=digest)


def _conditioned(bank) -> ConditionedObfuscator:
    """Conditioned noise at about +10 dB whose σ(a), μ(a) really depend on the activation (non-zero last layer)."""
    power = bank.acts.transpose(0, 1).reshape(bank.acts.shape[1], -1).pow(2).mean(1).clamp_min(1e-6)
    base = Obfuscator(bank.acts.shape[1], init_sigma=(power * 10).sqrt())
    base.signal_power.copy_(power)
    obf = ConditionedObfuscator.from_base(base, hidden=8)
    torch.manual_seed(3)
    with torch.no_grad():
        obf.net[-1].weight.normal_(0, 0.05)
    return obf.eval().requires_grad_(False)


def test_robust_tail_distils_for_conditioned_noise(weights_path, wider_dir):
    from veil.weights import load_faceboxes

    torch.set_num_threads(1)
    m, _ = load_faceboxes(weights_path)
    banks = build_bank(
        m.head,
        m.tail,
        [wider_dir / "images"],
        crop=192,
        crops_per_image=1,
        max_images=16,
        held_out=0.25,
        progress=False,
    )
    train, held = banks
    obf = _conditioned(train)
    # The training copy keeps the net (not only the per-channel base) and draws seeded ε.
    copy1, copy2 = training_noise(obf, "cpu", 5), training_noise(obf, "cpu", 5)
    assert isinstance(copy1, ConditionedObfuscator)
    a = train.acts[:2]
    with torch.no_grad():
        mu, ls = obf.noise_params(a)
        mu1, ls1 = copy1.noise_params(a)
        assert torch.equal(mu, mu1) and torch.equal(ls, ls1) and ls.std() > 0  # per element, as the served noise
        assert torch.equal(copy1(a), copy2(a))  # seeded for training ...
        assert not torch.equal(obf(a), obf(a))  # ... while the served noise stays fresh
    before = held_out_distortion(m.tail, obf, held, draws=2)
    student, _, _ = distill_tail(m, obf, [], DistillConfig(steps=25, batch_size=8, lr=1e-3), bank=banks, progress=False)
    after = held_out_distortion(student.tail, obf, held, draws=2)
    assert after < 0.85 * before, (before, after)

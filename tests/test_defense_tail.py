"""The noise-robust tail (issue 9 §2c): distillation on real non-FDDB crops, files bound to weights and noise."""

from __future__ import annotations

import pytest
import torch

from veil.defenses import files
from veil.defenses.distill import DistillConfig, build_bank, held_out_distortion
from veil.defenses.robust_tail import distill_tail, load_robust_tail, save_robust_tail, tail_state
from veil.obfuscate.noise import Obfuscator


@pytest.fixture(scope="module")
def model(weights_path):
    from veil.weights import load_faceboxes

    return load_faceboxes(weights_path)


@pytest.fixture(scope="module")
def banks(model, wider_dir):
    m, _ = model
    torch.set_num_threads(1)
    # 40 real WIDER photos (8 held out), one 256-px crop each plus its mirror image.
    return build_bank(
        m.head, m.tail, [wider_dir / "images"], crop=256, crops_per_image=1, max_images=40, held_out=0.2, progress=False
    )


def heavy_noise(bank) -> Obfuscator:
    """Per-channel noise at +10 dB of each channel's power: the tail's outputs are badly hurt."""
    power = bank.acts.transpose(0, 1).reshape(bank.acts.shape[1], -1).pow(2).mean(1).clamp_min(1e-6)
    obf = Obfuscator(bank.acts.shape[1], init_sigma=(power * 10).sqrt())
    obf.signal_power.copy_(power)  # its own statistics, as a fitted file records them
    return obf.eval().requires_grad_(False)


def test_bank_holds_out_photos_and_mirrors(banks):
    train, held = banks
    assert len(train) == 2 * 32 and len(held) == 2 * 8
    # Mirrored pairs: the second crop of a pair is the first flipped, so activations differ but not their energy much.
    assert not torch.equal(train.acts[0], train.acts[1])


def test_distillation_reduces_held_out_gap(model, banks, tmp_path):
    m, digest = model
    train, held = banks
    obf = heavy_noise(train)
    before = held_out_distortion(m.tail, obf, held, draws=3)
    student, log, data = distill_tail(
        m, obf, [], DistillConfig(steps=40, batch_size=8, lr=1e-3), bank=banks, progress=False
    )
    after = held_out_distortion(student.tail, obf, held, draws=3)
    assert after < 0.8 * before, (before, after)
    # The teacher is untouched: the base model's tail tensors are as loaded.
    assert not all(torch.equal(a, b) for a, b in zip(tail_state(m).values(), tail_state(student).values()))
    # Its head is the base model's (the client is unchanged).
    assert all(torch.equal(a, b) for a, b in zip(m.head.state_dict().values(), student.head.state_dict().values()))

    path = save_robust_tail(
        student,
        tmp_path / "tail.safetensors",
        weights_sha256=digest,
        noise_sha256="ab" * 32,
        alpha=0.9,
        cfg=DistillConfig(steps=40),
        log=log,
        data=data,
    )
    loaded, meta = load_robust_tail(path, m, weights_sha256=digest, noise_sha256="ab" * 32, alpha=0.9)
    assert meta["alpha"] == 0.9 and meta["log"][-1]["held_out_distortion"] < meta["log"][0]["held_out_distortion"]
    for k, v in tail_state(student).items():
        assert torch.equal(tail_state(loaded)[k], v)

    with pytest.raises(files.DefenseFileError, match="model weights"):
        load_robust_tail(path, m, weights_sha256="0" * 64)
    with pytest.raises(files.DefenseFileError, match="noise file"):
        load_robust_tail(path, m, weights_sha256=digest, noise_sha256="cd" * 32)
    with pytest.raises(files.DefenseFileError, match="ALPHA"):
        load_robust_tail(path, m, weights_sha256=digest, alpha=0.8)
    # Tampering: change one tensor, keep the metadata → refused by the tensors' SHA-256.
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as f:
        md = f.metadata()
    t = load_file(str(path))
    t["conf.0.bias"] = t["conf.0.bias"] + 1.0
    bad = tmp_path / "tampered.safetensors"
    save_file(t, str(bad), metadata=md)
    with pytest.raises(files.DefenseFileError, match="modified after training"):
        load_robust_tail(bad, m, weights_sha256=digest)
    with pytest.raises(files.DefenseFileError, match="not a readable"):
        (tmp_path / "junk.safetensors").write_bytes(b"not a file")
        load_robust_tail(tmp_path / "junk.safetensors", m, weights_sha256=digest)


def test_attach_selects_noise_and_tail_together(model, banks, tmp_path, fddb_image_paths):
    """robust_tail.attach: the detector obfuscates with the noise file and reads with the tail trained for it."""
    import numpy as np

    from veil.defenses.robust_tail import attach
    from veil.detector import Detector
    from veil.obfuscate.artifact import save_obfuscator
    from veil.preprocess import load_image

    m, digest = model
    train, _ = banks
    obf = heavy_noise(train)
    noise = save_obfuscator(
        obf,
        tmp_path / "alpha-0.9.safetensors",
        {"alpha": 0.9, "weights_sha256": digest, "model": "faceboxes", "split_point": "faceboxes.rdcl"},
    )
    other = save_obfuscator(
        obf,
        tmp_path / "other.safetensors",
        {
            "alpha": 0.9,
            "weights_sha256": digest,
            "model": "faceboxes",
            "split_point": "faceboxes.rdcl",
            "note": "same σ, another file",
        },
    )
    student, log, data = distill_tail(m, obf, [], DistillConfig(steps=2, batch_size=4), bank=banks, progress=False)
    path = save_robust_tail(
        student,
        tmp_path / "tail.safetensors",
        weights_sha256=digest,
        noise_sha256=files.file_sha256(noise),
        alpha=0.9,
        cfg=DistillConfig(steps=2),
        log=log,
        data=data,
    )
    det = Detector(model=m, weights_sha256=digest)
    meta = attach(det, path, noise, 0.9)
    assert meta["noise_sha256"] == files.file_sha256(noise) and det.obfuscator is not None
    assert det.model is not m and det.model.head.conv1.conv.weight.data_ptr() != m.head.conv1.conv.weight.data_ptr()
    boxes = det.detect(load_image(fddb_image_paths[0]))
    assert boxes.ndim == 2 and boxes.shape[1] == 5 and np.isfinite(boxes).all()
    with pytest.raises(files.DefenseFileError, match="noise file"):
        attach(Detector(model=m, weights_sha256=digest), path, other, 0.9)

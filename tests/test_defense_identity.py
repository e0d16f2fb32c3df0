"""Defense files record the model, split and weights they were trained for (from the model's config)
and refuse any other; the bottleneck's widths come from the split's channels."""

from __future__ import annotations

import pytest
import torch

from veil.defenses import files
from veil.defenses.bottleneck import Bottleneck, BottleneckSpec, Lift, as_decoder_input
from veil.defenses.robust_tail import tail_state
from veil.models import build
from veil.models.faceboxes import FaceBoxes

SHA = "ab" * 32


def test_defense_file_records_and_refuses_model_split_and_weights(tmp_path):
    net = FaceBoxes().eval()  # a bare network: cut where its head ends (rdcl)
    path = files.save(tmp_path / "t.safetensors", "veil-test/1", tail_state(net), {"weights_sha256": SHA}, model=net)
    tensors, meta = files.load(path, "veil-test/1", weights_sha256=SHA, model=net)
    assert (meta["model"], meta["split_point"], meta["channels"]) == ("faceboxes", "faceboxes.rdcl", 128)
    assert set(tensors) == set(tail_state(net))
    with pytest.raises(files.DefenseFileError, match=r"split point 'faceboxes\.rdcl', not 'faceboxes\.inception2'"):
        files.load(path, "veil-test/1", weights_sha256=SHA, model=build("faceboxes", "inception2"))
    with pytest.raises(files.DefenseFileError, match=r"for model 'faceboxes'.*not 'digits'"):
        files.load(path, "veil-test/1", weights_sha256=SHA, model=build("digits"))
    with pytest.raises(files.DefenseFileError, match="model weights"):
        files.load(path, "veil-test/1", weights_sha256="0" * 64, model=net)
    with pytest.raises(ValueError, match="which model"):
        files.load(path, "veil-test/1", weights_sha256=SHA)
    # No default model: metadata without one is refused, and metadata that contradicts the model too.
    with pytest.raises(ValueError, match="'model'"):
        files.save(tmp_path / "x.safetensors", "veil-test/1", {"w": torch.zeros(2)}, {"weights_sha256": SHA})
    with pytest.raises(ValueError, match="disagrees"):
        files.save(
            tmp_path / "x.safetensors", "f", {"w": torch.zeros(2)}, {"weights_sha256": SHA, "split_point": "x.y"}, net
        )
    assert not (tmp_path / "x.safetensors").exists()


def test_bottleneck_widths_follow_the_split():
    digits = build("digits")  # 16 channels at block1
    spec = BottleneckSpec.from_alpha(0.8)
    bott, lift = Bottleneck(spec, digits.channels).eval(), Lift(spec.channels, digits.channels).eval()
    a = digits.head(torch.rand(2, 1, 32, 32))
    with torch.no_grad():
        z = bott(a)
        assert z.shape[1] == spec.channels and lift(z).shape == a.shape
        assert as_decoder_input(z, bott.in_channels).shape == a.shape
    with pytest.raises(ValueError, match=r"\[N,16,h,w\]"):
        bott.code(torch.zeros(1, 128, 4, 4))
    with pytest.raises(ValueError, match="at most the activation's 16 channels"):
        Bottleneck(BottleneckSpec.from_alpha(0.0), digits.channels)  # 32 channels > 16


def test_defense_commands_refuse_a_model_that_is_not_a_face_detector(tmp_path, wider_dir, capsys):
    from veil.cli.main import main

    out = tmp_path / "b.safetensors"
    argv = ["fit-bottleneck", "--alpha", "0.8", "--out", str(out), "--images", str(wider_dir), "--model", "digits"]
    assert main(argv) == 2
    assert "digits is a classification model" in capsys.readouterr().err and not out.exists()


def test_robust_tail_tensors_are_the_tail_of_the_split():
    """At rdcl everything but conv1/conv2; deeper, the head's Inception blocks stay the client's (not in the file)."""
    from veil.defenses.robust_tail import with_tail

    rdcl, deep = FaceBoxes(0), FaceBoxes(2)
    assert set(tail_state(rdcl)) == {k for k in rdcl.state_dict() if not k.startswith(("conv1.", "conv2."))}
    assert not any(k.startswith(("conv1.", "conv2.", "inception1.", "inception2.")) for k in tail_state(deep))
    state = {k: v + 1.0 if v.is_floating_point() else v for k, v in tail_state(deep).items()}
    out = with_tail(deep, state)
    assert all(torch.equal(out.state_dict()[k], v) for k, v in state.items())
    assert torch.equal(out.inception2.branch1x1.conv.weight, deep.inception2.branch1x1.conv.weight)  # head kept
    with pytest.raises(files.DefenseFileError, match="do not fit"):
        with_tail(rdcl, state)  # an inception2 tail lacks rdcl's tail (inception1, inception2)

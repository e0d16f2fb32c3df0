"""``veil.models.create``: any registered model, its weights resolved from its config and SHA-256 verified."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TinyClassifier, register_tiny, tiny_config

from veil.digest import sha256_file
from veil.models import InputSpec, WeightsError, WeightsSpec, create, get_config
from veil.models import pretrained as P


def _state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # a fixed test network, not noise
    return TinyClassifier(4, 8, 10).state_dict()


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A model registered for this test only, whose weights 'ship' at tmp_path/tiny.pth."""
    shipped = tmp_path / "tiny.pth"
    torch.save(_state(0), shipped)
    config = tiny_config(
        "tiny-test",
        4,
        weights=WeightsSpec(filename="tiny.pth", sha256=sha256_file(shipped), shipped=shipped),
        input=InputSpec(size=(8, 8), channels=1),
    )
    register_tiny(monkeypatch, config, classes=10)
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VEIL_WEIGHTS", raising=False)
    return config


def test_create_faceboxes_verified_at_every_split(weights_path):
    ref = create("faceboxes")
    sha = get_config("faceboxes").weights.sha256
    assert ref.weights_sha256 == sha and not ref.training and ref.split == "rdcl"
    assert ref.key == f"faceboxes-rdcl-{sha[:12]}"
    other = create("faceboxes", split="inception2", weights=weights_path)
    assert other.key == f"faceboxes-inception2-{sha[:12]}" and other.channels == 128 and other.stride == 32
    x = torch.rand(1, 3, 64, 96) * 255 - 117
    for a, b in zip(ref(x), other(x), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    random = create("faceboxes", pretrained=False)
    assert random.weights_sha256 == "" and random.key.endswith("-random")
    assert not torch.allclose(random(x)[1], ref(x)[1])


def test_create_refuses_a_wrong_sha_with_the_reason_unless_opted_out(tmp_path, weights_path):
    sd = P.load_state_dict(weights_path)
    sd["conv1.bn.bias"] = sd["conv1.bn.bias"] + 0.01  # the user's own fine-tuned weights: same shape, other bytes
    mine = tmp_path / "mine.pth"
    torch.save(sd, mine)
    with pytest.raises(WeightsError, match=r"not the reference faceboxes checkpoint: SHA-256 [0-9a-f]{64} != expected"):
        create("faceboxes", weights=mine)
    m = create("faceboxes", weights=mine, verify_sha=False)
    assert m.weights_sha256 == sha256_file(mine) != get_config("faceboxes").weights.sha256
    assert torch.equal(m.network.conv1.bn.bias, sd["conv1.bn.bias"])  # loaded, strictly
    bad = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match="does not fit the faceboxes architecture"):
        create("faceboxes", weights=bad, verify_sha=False)


def test_any_registered_model_resolves_from_its_config(tiny, tmp_path, monkeypatch):
    m = create("tiny-test")
    assert m.weights_sha256 == tiny.weights.sha256 and m.key == f"tiny-test-conv-{tiny.weights.sha256[:12]}"
    assert torch.equal(m.network.fc.weight, _state(0)["fc.weight"])
    # $VEIL_WEIGHTS names the default model's weights only: another model never picks it up.
    monkeypatch.setenv("VEIL_WEIGHTS", str(tmp_path / "missing.pth"))
    assert create("tiny-test").weights_sha256 == tiny.weights.sha256
    # The cache (veil weights import --model) comes before the shipped copy, in the model's own folder.
    installed = P.install(tiny.weights.shipped, "tiny-test")
    assert installed == tmp_path / "cache" / "weights" / "tiny-test" / "tiny.pth"
    assert P.resolve("tiny-test") == installed
    other = tmp_path / "other.pth"
    torch.save(_state(1), other)
    with pytest.raises(WeightsError, match="not the reference tiny-test checkpoint"):
        P.install(other, "tiny-test")
    installed.unlink()
    tiny.weights.shipped.unlink()  # an installation without the shipped copy: says how to get it
    with pytest.raises(WeightsError, match=r"no tiny-test weights found.*veil weights import --model tiny-test"):
        create("tiny-test")
    with pytest.raises(WeightsError, match="no public download source"):
        P.fetch("tiny-test")
    assert create("tiny-test", pretrained=False).weights_sha256 == ""


def test_weights_cli_takes_the_model(tiny, tmp_path, capsys):
    from veil import assets
    from veil.cli.main import main

    assert main(["weights", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(assets.WEIGHTS)
    assert main(["weights", "path", "--model", "tiny-test"]) == 0
    assert capsys.readouterr().out.strip() == str(tiny.weights.shipped)
    assert main(["weights", "import", "--model", "tiny-test", str(tiny.weights.shipped)]) == 0
    assert "weights/tiny-test/tiny.pth" in capsys.readouterr().out
    assert main(["weights", "path", "--model", "tiny-test"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cache" / "weights" / "tiny-test" / "tiny.pth")
    assert main(["weights", "import", "--model", "faceboxes", str(tiny.weights.shipped)]) == 2
    assert "not the reference faceboxes checkpoint" in capsys.readouterr().err

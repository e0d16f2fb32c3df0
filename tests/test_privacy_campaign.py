"""The audit's policy in the library (veil.privacy.campaign): noise load-or-refuse, settings checks,
errors that name the library's arguments rather than command-line flags, and the CLI's help text."""

from __future__ import annotations

import pytest

from veil.cli.main import main
from veil.obfuscate import NoiseFileError


@pytest.fixture(scope="module")
def model_sha(weights_path):
    from veil.models import create

    m = create("faceboxes", weights=weights_path)
    return m, m.weights_sha256


def test_audit_noise_loads_the_directory_file_and_hashes_it(tmp_path, model_sha):
    from veil.obfuscate import Obfuscator, save_obfuscator
    from veil.privacy.campaign import audit_noise
    from veil.weights import sha256_file

    model, sha = model_sha
    path = tmp_path / "alpha-0.5.safetensors"
    save_obfuscator(
        Obfuscator(128, init_sigma=2.0),
        path,
        {"alpha": 0.5, "weights_sha256": sha, "model": "faceboxes", "split_point": "faceboxes.rdcl"},
    )
    with pytest.warns(UserWarning, match="NSR"):  # an unfitted file: accepted, with the warning
        nz = audit_noise(0.5, model, [], noise_dir=tmp_path, progress=False)
    assert nz.path == path and nz.sha256 == sha256_file(path) and float(nz.meta["alpha"]) == 0.5
    with pytest.raises(NoiseFileError, match=r"not the requested 0\.8"):  # a file for another ALPHA is refused
        audit_noise(0.8, model, [], noise=path, progress=False)


def test_audit_noise_refuses_without_naming_flags(tmp_path, model_sha):
    from veil.privacy.campaign import audit_noise

    model, _ = model_sha
    with pytest.raises(NoiseFileError, match="not found") as e:  # an explicit file is never fitted in its place
        audit_noise(0.5, model, [tmp_path], noise=tmp_path / "missing.safetensors", progress=False)
    assert "--" not in str(e.value)
    with pytest.raises(NoiseFileError, match="no training photos") as e:
        audit_noise(0.5, model, [], noise_dir=tmp_path, progress=False)
    assert "--" not in str(e.value)
    assert not list(tmp_path.iterdir())  # nothing was written


def test_settings_and_arguments_are_checked_before_any_work(tmp_path, model_sha, monkeypatch):
    from veil.privacy.audit import FaceSet
    from veil.privacy.campaign import AuditSettings, audit_alphas
    from veil.privacy.train import require_training_dirs

    model, _ = model_sha
    faces = FaceSet([], [])
    with pytest.raises(ValueError, match="must be ≥ 2") as e:
        audit_alphas(model, faces, [0.5], tmp_path, [], AuditSettings(dup_ks=(1,)))
    assert "--" not in str(e.value)
    with pytest.raises(ValueError, match="single ALPHA") as e:
        audit_alphas(model, faces, [0.5, 0.8], tmp_path, [], noise=tmp_path / "n.safetensors")
    assert "--" not in str(e.value)
    monkeypatch.delenv("VEIL_FIT_IMAGES", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        require_training_dirs(None)
    assert "--" not in str(e.value) and "VEIL_FIT_IMAGES" in str(e.value)
    with pytest.raises(FileNotFoundError, match="--train-images"):  # a CLI caller names its flag
        require_training_dirs(None, flag="--train-images")


def test_audit_help_renders_percent_signs(capsys):
    for cmd in ("audit", "leak-scale"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        assert "TAR at 1% FAR" in text and "%%" not in text

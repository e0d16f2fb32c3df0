"""Noise in the layout before per-model directories (CACHE/noise/alpha-<A>.safetensors): a file whose
metadata names the model's split point and weights is moved into its directory; the others are named
with the exact command that moves them."""

from __future__ import annotations

import subprocess

import pytest

from veil.models import build
from veil.obfuscate import Obfuscator
from veil.obfuscate.artifact import NoiseFileError, find_noise_file, legacy_noise_dir, save_obfuscator


def _model(split: str):
    m = build("digits", split)  # random weights: only the identity matters here
    m.weights_sha256 = "cd" * 32
    return m


def test_old_layout_noise_is_moved_when_its_metadata_proves_it_is_this_models(tmp_path, monkeypatch):
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VEIL_NOISE_DIR", raising=False)
    block1, block2 = _model("block1"), _model("block2")
    old = legacy_noise_dir()
    mine = save_obfuscator(Obfuscator(block1.channels), old / "alpha-0.8.safetensors", {"alpha": 0.8}, block1)
    theirs = save_obfuscator(Obfuscator(block2.channels), old / "alpha-0.5.safetensors", {"alpha": 0.5}, block2)

    with pytest.warns(UserWarning, match="moved 1 noise file"):
        found = find_noise_file(0.8, model=block1)
    assert found == old / block1.key / "alpha-0.8.safetensors" and found.is_file() and not mine.exists()
    assert find_noise_file(0.8, model=block1) == found  # found in its directory from now on

    # Another split's file stays where it is; the error names it and the command that moves it.
    with pytest.raises(NoiseFileError, match="layout before per-model directories") as err:
        find_noise_file(0.5, model=block1)
    assert theirs.is_file() and "digits.block2" in str(err.value)
    command = str(err.value).split("`")[-2]
    assert command.startswith("mkdir -p ") and str(old / block2.key) in command
    subprocess.run(["bash", "-c", command], check=True)
    assert find_noise_file(0.5, model=block2) == old / block2.key / "alpha-0.5.safetensors"


def test_make_private_says_where_old_noise_is(tmp_path, monkeypatch):
    from veil import make_private
    from veil.private import NoNoiseError

    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VEIL_NOISE_DIR", raising=False)
    block2 = _model("block2")
    save_obfuscator(Obfuscator(block2.channels), legacy_noise_dir() / "alpha-0.5.safetensors", {"alpha": 0.5}, block2)
    with pytest.raises(NoNoiseError, match=r"mkdir -p .*digits-block2-cdcdcdcdcdcd"):
        make_private(_model("block1"), alpha=0.5)

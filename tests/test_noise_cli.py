"""The noise flags of the detector-running commands: keyed noise, key-file refusals, pinned noise hashes."""

from __future__ import annotations

import hashlib
import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

from veil.cli.main import main
from veil.digest import sha256_file
from veil.obfuscate import Obfuscator, save_obfuscator

# The fixture's noise is weaker than a real ALPHA 0.8 fit (so detections survive isotropic noise): expected warning.
pytestmark = pytest.mark.filterwarnings("ignore::veil.obfuscate.artifact.NoiseFileWarning")


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def setup(weights_path, fddb_image_paths, tmp_path_factory):
    """A 128-channel noise file at ALPHA 0.8 for the real weights (σ ≈ 0.3 of the activation RMS), a key, an image."""
    d = tmp_path_factory.mktemp("noisecli")
    obf = Obfuscator(128, init_sigma=0.25)
    with torch.no_grad():
        obf.signal_power.fill_(0.7)  # the head's mean channel power on fitting crops (measured: 0.716)
    noise = save_obfuscator(
        obf,
        d / "noise" / "alpha-0.8.safetensors",
        {
            "alpha": 0.8,
            "weights_sha256": sha256_file(weights_path),
            "model": "faceboxes",
            "split_point": "faceboxes.rdcl",
        },
    )
    key = d / "client.key"
    rc, out, _ = run_cli("noise-key", "new", key)
    assert rc == 0 and "mode 0600" in out and (key.stat().st_mode & 0o777) == 0o600
    return {"dir": d, "noise": noise, "key": key, "image": fddb_image_paths[0], "weights": weights_path}


def _no_constants(name: str):
    raise ValueError(f"non-standard JSON constant {name}")  # strict parsers reject NaN/Infinity


def _detect(s, out: str, *extra) -> tuple[int, str, list]:
    o = s["dir"] / out
    rc, _, err = run_cli(
        "detect",
        s["image"],
        "--out",
        o,
        "--weights",
        s["weights"],
        "--scale",
        "1",
        "--noisy",
        "--alpha",
        "0.8",
        "--noise-dir",
        s["noise"].parent,
        *extra,
    )
    if rc != 0:
        return rc, err, []
    doc = json.loads((o / f"{Path(s['image']).stem}.json").read_text(), parse_constant=_no_constants)
    return rc, err, (doc["noise_mode"], doc["detections"])


def test_keyed_noise_repeats_exactly_and_fresh_noise_does_not(setup, monkeypatch):
    monkeypatch.delenv("VEIL_NOISE_KEY_FILE", raising=False)
    rc1, err, keyed1 = _detect(setup, "k1", "--noise-key", setup["key"])
    assert rc1 == 0, err
    rc2, _, keyed2 = _detect(setup, "k2", "--noise-key", setup["key"])
    assert rc2 == 0 and keyed1 == keyed2 and keyed1[1] and keyed1[0] == "keyed"
    _, _, fresh1 = _detect(setup, "f1")
    _, _, fresh2 = _detect(setup, "f2")
    assert fresh1[0] == "fresh" and fresh1 != fresh2  # fresh noise: another draw, other scores
    monkeypatch.setenv("VEIL_NOISE_KEY_FILE", str(setup["key"]))  # as a Kubernetes Secret mount sets it
    rc, err, by_env = _detect(setup, "k3")
    assert rc == 0 and by_env == keyed1, err


def test_key_file_refusals_and_flag_combinations(setup, tmp_path, monkeypatch):
    monkeypatch.delenv("VEIL_NOISE_KEY_FILE", raising=False)
    shared = tmp_path / "shared.key"
    shared.write_bytes(setup["key"].read_bytes())
    os.chmod(shared, 0o644)
    rc, err, _ = _detect(setup, "r1", "--noise-key", shared)
    assert rc == 2 and "accessible to other users (mode 0644)" in err and "chmod 600" in err
    short = tmp_path / "short.key"
    short.write_text("ab" * 16)
    os.chmod(short, 0o600)
    rc, err, _ = _detect(setup, "r2", "--noise-key", short)
    assert rc == 2 and "too short: 16 bytes" in err
    rc, err, _ = _detect(setup, "r3", "--noise-key", setup["key"], "--seed", "1")
    assert rc == 2 and "exclude each other" in err
    rc, _, err = run_cli("detect", setup["image"], "--out", tmp_path, "--noise-key", setup["key"])
    assert rc == 2 and "only apply with --noisy" in err


def test_pinned_noise_hash_by_flag_or_environment(setup, monkeypatch):
    monkeypatch.delenv("VEIL_NOISE_KEY_FILE", raising=False)
    good = hashlib.sha256(setup["noise"].read_bytes()).hexdigest()
    rc, err, _ = _detect(setup, "p1", "--noise-sha256", good)
    assert rc == 0, err
    wrong = "ab" * 32
    rc, err, _ = _detect(setup, "p2", "--noise-sha256", wrong)
    assert rc == 2 and f"SHA-256 {good}, but {wrong} is pinned" in err and "(pinned by --noise-sha256)" in err
    monkeypatch.setenv("VEIL_NOISE_SHA256", wrong.upper())
    rc, err, _ = _detect(setup, "p3")
    assert rc == 2 and f"but {wrong} is pinned" in err and "(pinned by $VEIL_NOISE_SHA256)" in err
    monkeypatch.setenv("VEIL_NOISE_SHA256", "not-a-hash")
    rc, err, _ = _detect(setup, "p4")
    assert rc == 2 and "64 hex digits" in err
    with pytest.raises(SystemExit):
        run_cli("detect", setup["image"], "--noisy", "--alpha", "0.8", "--noise-sha256", "xyz")

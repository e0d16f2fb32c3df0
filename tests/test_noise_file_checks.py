"""Noise files that would disable or break the obfuscation are refused with the reason; pinned hashes; strict JSON."""

from __future__ import annotations

import hashlib
import json
import math
import warnings

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from veil import jsonio
from veil.models import get_config
from veil.obfuscate import NoiseFileError, Obfuscator, load_obfuscator, read_metadata, save_obfuscator
from veil.obfuscate.artifact import NoiseFileWarning, expected_nsr_db, nsr_range_db
from veil.weights import REFERENCE_SHA256

FACEBOXES = get_config("faceboxes")  # its measured NSR per ALPHA (noise_nsr_db) sets the accepted range

C = 16


def _fitted_like(alpha: float) -> Obfuscator:
    """A file as a fit at ALPHA leaves it: signal power recorded, NSR near the measured value."""
    o = Obfuscator(C)
    power = torch.linspace(0.2, 3.0, C)
    nsr = expected_nsr_db(alpha, FACEBOXES) - 1.8  # own statistics read ≈ 1.8 dB below FDDB's (docs/obfuscation.md)
    spread = torch.linspace(-1.5, 1.5, C)  # per-channel allocation, as fits do
    with torch.no_grad():
        o.signal_power.copy_(power)
        var = power * torch.exp(spread)
        var *= power.sum() * 10 ** (nsr / 10) / var.sum()
        o.log_sigma.copy_(0.5 * var.log())
        o.mu.copy_(torch.linspace(-0.3, 0.3, C))
    return o.requires_grad_(False)


#: The reference head (FaceBoxes' reference weights at rdcl), given explicitly: what the test files are for.
IDENT = {"weights_sha256": REFERENCE_SHA256, "split_point": "faceboxes.rdcl"}
FOR = {**IDENT, "model": "faceboxes"}


def _save(tmp_path, alpha=0.8, name=None, stats=True):
    o = _fitted_like(alpha)
    meta = {"alpha": alpha, **FOR}
    if stats:
        meta["activation_stats"] = {"channel_power": [round(float(v), 6) for v in o.signal_power]}
    return save_obfuscator(o, tmp_path / (name or f"alpha-{alpha:g}.safetensors"), meta)


def _tamper(path, **changes):
    """Rewrite the tensors of a noise file, keeping its metadata: what an edit on a shared volume does."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    for k, fn in changes.items():
        tensors[k] = fn(tensors[k].clone())
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize("alpha", [0.05, 0.2, 0.6, 0.8, 0.9, 0.95])
def test_files_as_fitted_load_at_every_measured_alpha(tmp_path, alpha):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as fitted at the defaults: not even a warning
        obf, meta = load_obfuscator(alpha, noise=_save(tmp_path, alpha), **IDENT)
    assert meta["alpha"] == alpha and obf.mode == "fresh"


def test_accepted_but_unusual_noise_loads_with_a_warning(tmp_path):
    path = _tamper(_save(tmp_path, stats=False), log_sigma=lambda t: t - math.log(10) * 0.6)  # 12 dB quieter
    with pytest.warns(NoiseFileWarning, match=r"-10.5 dB on its own statistics, -12.0 dB from .* ALPHA 0.8"):
        load_obfuscator(0.8, noise=path, **IDENT)


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"log_sigma": lambda t: t.fill_(-80.0)}, r"log σ = -80.*noise would vanish"),
        ({"log_sigma": lambda t: t.fill_(100.0)}, r"log σ = 100.*absurdly large"),
        ({"mu": lambda t: t.fill_(1e30)}, r"μ = 1e\+30, more than 1000 × the recorded activation RMS"),
        ({"log_sigma": lambda t: t.index_fill_(0, torch.tensor([3]), float("nan"))}, r"non-finite log σ"),
        ({"signal_power": lambda t: t.fill_(float("inf"))}, r"non-finite signal_power"),
        ({"log_sigma": lambda t: t.index_fill_(0, torch.tensor([5]), -12.0)}, r"channel 5 would be left almost clean"),
    ],
)
def test_tampered_noise_is_refused_with_the_reason(tmp_path, change, reason):
    path = _tamper(_save(tmp_path, stats=False), **change)
    with pytest.raises(NoiseFileError, match=reason):
        load_obfuscator(0.8, noise=path, **IDENT)


def test_noise_far_below_or_above_its_alpha_is_refused_with_the_numbers(tmp_path):
    lo, hi = nsr_range_db(0.8, FACEBOXES)
    assert lo < expected_nsr_db(0.8, FACEBOXES) - 1.8 < hi
    quiet = _tamper(_save(tmp_path, stats=False), log_sigma=lambda t: t - 0.5 * math.log(10) * (hi - lo) / 10 * 1.1)
    with pytest.raises(NoiseFileError, match=r"ratio .* is -\d+\.\d dB, far below.*ALPHA 0.8 \(accepted -16.0 … "):
        load_obfuscator(0.8, noise=quiet, **IDENT)
    # ALPHA 0.8 noise lowered by 20 dB (about what an ALPHA 0.2 file relabelled 0.8 would be) is refused.
    low = _tamper(_save(tmp_path, 0.8, name="low.safetensors", stats=False), log_sigma=lambda t: t - math.log(10))
    with pytest.raises(NoiseFileError, match="far below"):
        load_obfuscator(0.8, noise=low, **IDENT)
    loud = _tamper(_save(tmp_path, 0.2, stats=False), log_sigma=lambda t: t + 2.5 * math.log(10))
    with pytest.raises(NoiseFileError, match=r"far above.*ALPHA 0.2"):
        load_obfuscator(0.2, noise=loud, **IDENT)


def test_statistics_and_noise_scaled_down_together_are_refused_for_the_reference_head(tmp_path):
    """Relative checks cannot see σ and the recorded power shrunk together; the reference head's power can."""
    meta = {"alpha": 0.8, **FOR}
    real = Obfuscator(128, init_sigma=2.0)  # ΣE[a²] = 128 recorded: near the head's 60–92, NSR +6 dB
    load_obfuscator(0.8, noise=save_obfuscator(real, tmp_path / "real.safetensors", meta), **IDENT)
    fake = Obfuscator(128, init_sigma=2e-3)
    with torch.no_grad():
        fake.signal_power.fill_(1e-6)  # the same +6 dB, a million times less noise on the real activation
    path = save_obfuscator(
        fake, tmp_path / "fake.safetensors", {**meta, "activation_stats": {"channel_power": [1e-6] * 128}}
    )
    with pytest.raises(NoiseFileError, match=r"total activation power of 0.000128, but the reference head's is"):
        load_obfuscator(0.8, noise=path, **IDENT)


def test_signal_statistics_edited_apart_from_the_metadata_are_refused(tmp_path):
    path = _tamper(_save(tmp_path), signal_power=lambda t: t * 1e-4)  # σ would look large beside a tiny signal
    with pytest.raises(NoiseFileError, match="disagrees with the activation statistics"):
        load_obfuscator(0.8, noise=path, **IDENT)


def test_pinned_sha256_mismatch_is_refused_with_both_hashes(tmp_path):
    path = _save(tmp_path)
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    load_obfuscator(0.8, noise=path, sha256=good.upper(), **IDENT)  # the pin matches whatever the case
    _tamper(path, mu=lambda t: t + 0.01)  # a small, otherwise plausible edit
    bad = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(NoiseFileError, match=f"{path}.*SHA-256 {bad}, but {good} is pinned"):
        load_obfuscator(0.8, noise=path, sha256=good, **IDENT)
    load_obfuscator(0.8, noise=path, **IDENT)  # without a pin the edit is plausible and loads


def test_written_noise_json_is_strict(tmp_path):
    o = _fitted_like(0.8)
    path = save_obfuscator(
        o,
        tmp_path / "n.safetensors",
        {
            "alpha": 0.8,
            **FOR,
            "loss_log": [{"nsr_db": float("inf"), "loss": float("nan")}],
        },
    )
    meta = read_metadata(path)
    assert meta["loss_log"] == [{"nsr_db": None, "loss": None}]
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata()["veil"]

    def strict(x):
        raise ValueError(f"non-standard JSON constant {x}")

    json.loads(raw, parse_constant=strict)
    assert jsonio.dumps({"a": [1.0, float("-inf"), np.float32("nan")]}, indent=None) == '{"a": [1.0, null, null]}'


def test_the_nsr_range_is_the_models_own_measurement(tmp_path):
    """FaceBoxes' measured NSR per ALPHA (its config) sets the range for FaceBoxes files only: the same
    tensors for a model that measured none are held to the per-channel bounds alone."""
    o = _fitted_like(0.8)
    with torch.no_grad():
        o.log_sigma.sub_(math.log(10))  # 20 dB below what a fit at ALPHA 0.8 gives FaceBoxes
    other = {"weights_sha256": "ab" * 32, "split_point": "mynet.block1"}
    fb = save_obfuscator(o, tmp_path / "fb.safetensors", {"alpha": 0.8, **FOR})
    mine = save_obfuscator(o, tmp_path / "mine.safetensors", {"alpha": 0.8, "model": "mynet", **other})
    with pytest.raises(NoiseFileError, match="far below"):
        load_obfuscator(0.8, noise=fb, **IDENT)
    obf, meta = load_obfuscator(0.8, noise=mine, **other)
    assert meta["model"] == "mynet" and torch.equal(obf.log_sigma, o.log_sigma)
    assert nsr_range_db(0.8, None) == (-math.inf, math.inf)

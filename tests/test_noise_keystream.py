"""The noise source: a cryptographic keystream by default, keyed noise, seeded experiments, key files."""

from __future__ import annotations

import copy
import os
import pickle

import numpy as np
import pytest
import torch
from scipy import stats

from veil.obfuscate import (
    NoiseKey,
    NoiseKeyError,
    Obfuscator,
    load_obfuscator,
    new_key_file,
    read_key_file,
    save_obfuscator,
)
from veil.obfuscate.keystream import Keystream
from veil.weights import REFERENCE_SHA256

KEY = bytes(range(32))
CPU = torch.device("cpu")


def _obf(**kw) -> Obfuscator:
    o = Obfuscator(8, kw.pop("family", "gaussian"), **kw)
    with torch.no_grad():
        o.mu.copy_(torch.linspace(-1, 1, 8))
        o.log_sigma.copy_(torch.linspace(-2, 1, 8))
    return o.requires_grad_(False)


def _mt19937_continues(draws: torch.Tensor, g_state_source: torch.Generator) -> bool:
    return torch.equal(draws, torch.randn(draws.shape, generator=g_state_source))


def test_default_noise_is_not_torch_mt19937():
    """The default stream is AES-CTR: torch's generator is never advanced, nor does any seed of it reproduce ε."""
    o = _obf()
    assert o.mode == "fresh"
    state = torch.random.get_rng_state()
    eps = o.sample_eps((4096,), CPU, torch.float32)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator was not touched
    assert not o._generators  # no per-module torch generator was created either
    for s in range(3):
        assert not _mt19937_continues(eps, torch.Generator().manual_seed(s))


@pytest.mark.parametrize("family", ["gaussian", "laplace"])
def test_keystream_samples_have_zero_mean_unit_variance_and_the_right_shape(family):
    # A seeded stream: the draw is fixed, so the bounds below (≈ 4.7σ on the mean, 4.5σ / 2.8σ on the
    # Gaussian / Laplace variance) cannot flake, yet any error in the transform moves them.
    e = Keystream.from_seed(2026).sample(100_000, family).double().numpy()
    assert abs(e.mean()) < 0.015 and abs(e.var() - 1) < 0.02
    dist = stats.norm if family == "gaussian" else stats.laplace(scale=1 / np.sqrt(2))
    assert stats.kstest(e, dist.cdf).pvalue > 1e-3
    other = stats.laplace(scale=1 / np.sqrt(2)) if family == "gaussian" else stats.norm
    assert stats.kstest(e, other.cdf).pvalue < 1e-6  # the test can tell the two families apart


def test_two_obfuscators_and_copies_never_share_a_stream():
    a = torch.zeros(1, 8, 16, 16)
    o1, o2 = _obf(), _obf()
    x1, x2, x3 = o1(a), o2(a), copy.deepcopy(o1)(a)
    assert not torch.equal(x1, x2) and not torch.equal(x1, x3)
    assert not torch.equal(o1(a), x1)  # and the stream moves on between calls


def test_a_forked_child_does_not_replay_the_parents_stream():
    o = _obf()
    o.sample_eps((16,), CPU, torch.float32)  # the stream exists before the fork
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: draw and report, then leave without running pytest's teardown
        os.write(w, o.sample_eps((1024,), CPU, torch.float32).numpy().tobytes())
        os._exit(0)
    os.close(w)
    child = np.frombuffer(b"".join(iter(lambda: os.read(r, 1 << 16), b"")), dtype=np.float32)
    os.waitpid(pid, 0)
    parent = o.sample_eps((1024,), CPU, torch.float32).numpy()
    assert child.size == 1024 and not np.array_equal(child, parent)


def test_seeded_noise_reproduces_from_the_keystream():
    a = torch.rand(2, 8, 5, 7)
    assert torch.equal(_obf(seed=3)(a), _obf(seed=3)(a))
    assert not torch.equal(_obf(seed=3)(a), _obf(seed=4)(a))
    o = _obf(seed=3)
    assert o.mode == "seeded" and "seeded" in repr(o)
    eps = o.sample_eps((1000,), CPU, torch.float32)
    assert torch.equal(eps, Keystream.from_seed(3).sample(1000, "gaussian"))


def test_keyed_noise_is_a_function_of_key_parameters_and_content():
    a = torch.rand(1, 8, 12, 10)
    b = a.clone()
    b[0, 3, 4, 4] += 1e-3  # one element differs
    o = _obf(key=KEY)
    assert o.mode == "keyed"
    first = o(a)
    assert torch.equal(o(a), first) and torch.equal(_obf(key=KEY)(a.clone()), first)  # same image, same noise
    assert not torch.equal((o(b) - b)[0, 0], (first - a)[0, 0])  # another image, other noise everywhere
    assert not torch.equal(_obf(key=bytes(range(1, 33)))(a), first)  # another key, other noise
    o2 = _obf(key=KEY)
    with torch.no_grad():
        o2.log_sigma.add_(0.1)  # another noise file: ε must differ, or the two outputs would reveal it
    eps1 = (first - a - o.mu.view(1, -1, 1, 1)) / o.sigma.view(1, -1, 1, 1)
    eps2 = (o2(a) - a - o2.mu.view(1, -1, 1, 1)) / o2.sigma.view(1, -1, 1, 1)
    assert not torch.allclose(eps1, eps2, atol=1e-3)
    # Each batch item is keyed by its own content: batching does not change an image's noise.
    batch = o(torch.cat([b, a]))
    assert torch.equal(batch[1:], first) and torch.equal(batch[:1], o(b))
    # The keyed ε still has the fitted statistics.
    big = torch.rand(1, 8, 100, 100)
    d = (o(big) - big).transpose(0, 1).reshape(8, -1)
    assert torch.allclose(d.std(1), o.sigma, rtol=0.05)


def test_averaging_keyed_repeats_equals_one_draw_while_fresh_noise_averages_away():
    a = torch.rand(1, 8, 20, 20)
    keyed, fresh = _obf(key=KEY), _obf()
    k = 16
    avg_keyed = torch.stack([keyed(a) for _ in range(k)]).mean(0)
    assert torch.allclose(avg_keyed, keyed(a), atol=1e-6)
    mu = keyed.mu.view(1, -1, 1, 1)
    err_one = (fresh(a) - mu - a).pow(2).mean()
    err_avg = (torch.stack([fresh(a) for _ in range(k)]).mean(0) - mu - a).pow(2).mean()
    assert err_avg < err_one / 8  # ≈ 1/16: what keyed noise takes away from the attacker


def test_keyed_noise_is_not_compatible_with_a_seed_and_hides_the_key():
    with pytest.raises(ValueError, match="seed"):
        _obf(seed=1, key=KEY)
    o = _obf(key=KEY)
    with pytest.raises(ValueError, match="seeded"):
        o.reseed(3)
    text = repr(o) + str(o.state_dict()) + repr(NoiseKey(KEY))
    assert KEY.hex() not in text and repr(KEY) not in text and o.key_id in repr(o)
    assert "key" not in "".join(o.state_dict())  # a saved noise file can never carry it
    a = torch.rand(1, 8, 4, 4)
    assert torch.equal(pickle.loads(pickle.dumps(o))(a), o(a))  # worker processes (trust zone) keep it
    with pytest.raises(NoiseKeyError, match="too short"):
        _obf(key=b"x" * 31)
    with pytest.raises(NoiseKeyError, match="not random"):
        _obf(key=b"\0" * 32)


def test_key_files_are_created_private_and_refused_when_not(tmp_path):
    path = tmp_path / "keys" / "client.key"
    key = new_key_file(path)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert read_key_file(path) == key
    with pytest.raises(NoiseKeyError, match="exists"):
        new_key_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(NoiseKeyError, match=r"other users.*0644.*chmod 600"):
        read_key_file(path)
    for name, content in (("empty", b""), ("short", b"ab" * 31), ("blank", b"\n\n")):
        p = tmp_path / name
        p.write_bytes(content)
        os.chmod(p, 0o600)
        with pytest.raises(NoiseKeyError, match=r"empty|too short"):
            read_key_file(p)
    with pytest.raises(NoiseKeyError, match="not found"):
        read_key_file(tmp_path / "missing.key")
    with pytest.raises(NoiseKeyError, match="not a regular file"):
        read_key_file(tmp_path)
    raw = tmp_path / "raw.key"
    raw.write_bytes(bytes(range(200, 240)))
    os.chmod(raw, 0o600)
    assert read_key_file(raw) == NoiseKey(bytes(range(200, 240)))


#: What the test noise file is for (the reference head at rdcl), given explicitly.
FOR = {"weights_sha256": REFERENCE_SHA256, "split_point": "faceboxes.rdcl"}


def test_load_obfuscator_takes_the_key_as_bytes_or_file(tmp_path):
    o = _obf()
    with torch.no_grad():
        o.signal_power.fill_(float(o.noise_variance().mean()) * 10**0.86)  # NSR −8.6 dB: as fitted at 0.5
    save_obfuscator(
        o,
        tmp_path / "alpha-0.5.safetensors",
        {"alpha": 0.5, "model": "faceboxes", **FOR},
    )
    keyfile = tmp_path / "k"
    key = new_key_file(keyfile)
    a = torch.rand(1, 8, 6, 6)
    by_bytes, _ = load_obfuscator(
        0.5, noise_dir=tmp_path, key=key, weights_sha256=REFERENCE_SHA256, split_point="faceboxes.rdcl"
    )
    by_file, _ = load_obfuscator(
        0.5, noise_dir=tmp_path, key=keyfile, weights_sha256=REFERENCE_SHA256, split_point="faceboxes.rdcl"
    )
    assert by_bytes.mode == "keyed" and torch.equal(by_bytes(a), by_file(a))
    plain, _ = load_obfuscator(0.5, noise_dir=tmp_path, **FOR)
    assert plain.mode == "fresh"

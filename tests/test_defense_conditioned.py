"""Input-conditioned noise (issue 9 §2b): fresh per call, shape-preserving, keyed, tamper-refused, same load path."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from veil.digest import tensors_sha256
from veil.obfuscate import NoiseFileError, load_obfuscator, nsr_sums, read_metadata, save_obfuscator
from veil.obfuscate.conditioned import ConditionedObfuscator

pytestmark = pytest.mark.filterwarnings("ignore::veil.obfuscate.artifact.NoiseFileWarning")
SPLIT = "faceboxes.rdcl"


@pytest.fixture(scope="module")
def setup(weights_path, fddb_image_paths, tmp_path_factory):
    """A conditioned module started from the shipped ALPHA 0.8 noise, its net's last layer made non-zero (as
    after training), saved; and one real head activation."""
    from veil import assets
    from veil.detector import Detector
    from veil.digest import sha256_file
    from veil.preprocess import load_image, prepare

    sha = sha256_file(weights_path)
    base, meta = load_obfuscator(
        0.8, noise=assets.NOISE_DIR / "alpha-0.8.safetensors", weights_sha256=sha, split_point=SPLIT
    )
    obf = ConditionedObfuscator.from_base(base, hidden=8)
    torch.manual_seed(0)
    with torch.no_grad():
        obf.net[-1].weight.normal_(0, 0.05)
    det = Detector.from_weights(weights_path)
    a = det.model.head(prepare(load_image(fddb_image_paths[0]), 1.0).tensor).detach()
    d = tmp_path_factory.mktemp("cond")
    path = save_obfuscator(
        obf,
        d / "cond-0.8.safetensors",
        {
            "alpha": 0.8,
            "model": "faceboxes",
            "split_point": SPLIT,
            "weights_sha256": sha,
            "activation_stats": meta["activation_stats"],
        },
    )
    return {"path": path, "sha": sha, "a": a, "dir": d, "weights": weights_path, "image": fddb_image_paths[0]}


def _load(s, path=None, **kw):
    return load_obfuscator(0.8, noise=path or s["path"], weights_sha256=s["sha"], split_point=SPLIT, **kw)


def test_loads_through_the_noise_path_fresh_and_shape_preserving(setup):
    obf, meta = _load(setup)
    assert isinstance(obf, ConditionedObfuscator) and meta["format"] == "veil-conditioned-noise/1"
    assert obf.mode == "fresh"
    a = setup["a"]
    with torch.inference_mode():
        x, y = obf(a), obf(a)
        mu, ls = obf.noise_params(a)
    assert x.shape == y.shape == a.shape
    assert not torch.equal(x, y)  # ε fresh per call
    # per element: σ(a) varies across positions within a channel (not a per-channel constant)
    assert float(ls.std(dim=(2, 3)).mean()) > 1e-3
    # the noise it adds is what its σ(a) says: (x - a - μ(a)) / σ(a) is unit-variance ε
    eps = (x - a - mu) / ls.exp()
    assert abs(float(eps.pow(2).mean()) - 1) < 0.05 and abs(float(eps.mean())) < 0.02
    # NSR is measured on the input's own σ(a), not the fitting data's average
    sums = nsr_sums(a, obf)
    assert torch.allclose(torch.from_numpy(sums[0]).float() / (a.numel() // a.shape[1]), obf.noise_variance_of(a))


def test_keyed_mode_repeats_per_image(setup):
    obf, _ = _load(setup, key=bytes(range(32)))
    a = setup["a"]
    with torch.inference_mode():
        assert obf.mode == "keyed" and torch.equal(obf(a), obf(a))
        assert not torch.equal(obf(a), obf(a + 1e-3))


def test_tampered_files_are_refused(setup):
    tensors, meta = {}, read_metadata(setup["path"])
    with safe_open(str(setup["path"]), "pt") as f:
        raw = f.metadata()
        for k in f.keys():  # noqa: SIM118 - a safe_open handle is not a dict
            tensors[k] = f.get_tensor(k)
    assert any(k.startswith("net.") for k in tensors)
    bad = dict(tensors)
    bad["net.4.weight"] = bad["net.4.weight"] * 1.01  # a changed net
    p = setup["dir"] / "edited.safetensors"
    save_file(bad, str(p), metadata=raw)
    with pytest.raises(NoiseFileError, match=r"SHA-256.*modified after fitting"):
        _load(setup, p)
    # a consistent forgery that turns the noise off (mean σ(a)² ≈ 0, hash recomputed) fails the NSR check
    off = dict(tensors)
    off["mean_variance"] = off["mean_variance"] * 1e-8
    off["log_sigma"] = off["log_sigma"] - 9.2
    meta2 = {**meta, "tensors_sha256": tensors_sha256(off)}
    p2 = setup["dir"] / "silenced.safetensors"
    save_file(off, str(p2), metadata={"veil": json.dumps(meta2)})
    with pytest.raises(NoiseFileError, match=r"far below|vanish|almost clean"):
        _load(setup, p2)


def test_veil_detect_runs_it(setup):
    from veil.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    o = setup["dir"] / "detect"
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(
            [
                "detect",
                str(setup["image"]),
                "--out",
                str(o),
                "--weights",
                str(setup["weights"]),
                "--scale",
                "1",
                "--noisy",
                "--alpha",
                "0.8",
                "--noise",
                str(setup["path"]),
            ]
        )
    assert rc == 0, err.getvalue()
    doc = json.loads(next(o.glob("*.json")).read_text())
    assert doc["noise_mode"] == "fresh"

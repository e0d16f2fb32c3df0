"""What ships inside the package: noise, decoder and sample photos work with nothing beside the project."""

from __future__ import annotations

import fnmatch
import itertools
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch

from veil import assets
from veil.models import build, create
from veil.obfuscate import NoiseFileError, load_obfuscator, noise_path
from veil.weights import REFERENCE_SHA256

ROOT = Path(__file__).resolve().parents[1]


def _reference():
    """FaceBoxes with the shipped checkpoint at its default split: what the shipped noise is for."""
    return create("faceboxes")


@pytest.fixture()
def empty_cache(tmp_path, monkeypatch) -> Path:
    """A user with nothing of their own: empty cache, no VEIL_* file variables."""
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("VEIL_WEIGHTS", "VEIL_NOISE_DIR", "VEIL_DECODER"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "cache"


@pytest.mark.parametrize("alpha", assets.SHIPPED_ALPHAS)
def test_shipped_noise_loads_for_the_reference_weights_only(alpha, empty_cache):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the noise-file sanity checks accept it as a fit for this ALPHA
        obf, meta = load_obfuscator(alpha, model=_reference())
    path = noise_path(alpha, assets.NOISE_DIR)
    assert path.is_file() and path.stat().st_size < 64_000, "ships, a few KB each"
    assert meta["alpha"] == alpha and meta["weights_sha256"] == REFERENCE_SHA256
    assert obf.channels == 128 and torch.isfinite(obf.log_sigma).all()
    text = str(meta["data"]) + meta["command"]
    assert "fddb" not in text.lower() and "shared" not in text and "veil fit-noise" in meta["command"]
    other = build("faceboxes")  # never used for other weights: not offered by default, refused when named
    with pytest.raises(NoiseFileError, match=f"no noise fitted for ALPHA {alpha:g}"):
        load_obfuscator(alpha, model=other)
    with pytest.raises(NoiseFileError, match="SHA-256"):
        load_obfuscator(alpha, noise=path, model=other)


def test_users_own_noise_takes_precedence(empty_cache):
    own = empty_cache / "noise" / _reference().key / "alpha-0.8.safetensors"  # the model's own noise directory
    own.parent.mkdir(parents=True)
    own.write_bytes(b"not a noise file")
    with pytest.raises(NoiseFileError, match="not a readable noise file"):  # the cache is read first
        load_obfuscator(0.8, model=_reference())
    with pytest.raises(NoiseFileError, match=r"no noise fitted for ALPHA 0\.3"):  # none ships for 0.3
        load_obfuscator(0.3, model=_reference())


def test_shipped_noise_grows_with_alpha():
    """Higher ALPHA = more obfuscation: the fitted noise power relative to the signal rises."""
    nsr = []
    for a in assets.SHIPPED_ALPHAS:
        obf, _ = load_obfuscator(a, noise=noise_path(a, assets.NOISE_DIR), model=_reference())
        nsr.append(float(((2 * obf.log_sigma).exp().sum() / obf.signal_power.sum()).log10()))
    assert all(b > a for a, b in itertools.pairwise(nsr)), nsr


def test_shipped_decoder_reconstructs_a_photo_better_than_grey(empty_cache, detector):
    """The reference decoder loads by default and really inverts the head on a photo it never saw."""
    from veil.preprocess import prepare
    from veil.privacy.decoders import decode, load_decoder

    dec = load_decoder()
    assert dec is not None and assets.DECODER.stat().st_size < 4_000_000
    sources = " ".join(map(str, dec.meta.get("sources", [])))
    assert "fddb" not in sources.lower() and dec.meta.get("weights_sha256") == REFERENCE_SHA256
    image = assets.sample_images()["grace_hopper"]
    prep = prepare(image, 1.0)
    x = prep.tensor[:, :, :480, :480]
    out = decode(dec, detector.head(x))
    err = (out - x).abs().mean().item()
    grey = (x - x.mean()).abs().mean().item()  # the best constant picture
    assert err < 0.8 * grey, (err, grey)


def test_sample_photos_are_dependency_data_with_faces(detector):
    photos = assets.sample_images()
    assert "grace_hopper" in photos
    for name, img in photos.items():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
    boxes = detector.detect(photos["grace_hopper"], obfuscate=False)
    assert int((boxes[:, 4] >= 0.5).sum()) == 1  # one face


def test_package_data_ships_every_asset():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["veil"]
    files = [
        p.relative_to(ROOT / "src" / "veil").as_posix()
        for p in assets.ROOT.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc")
    ]
    assert any(f.endswith("FaceBoxesProd.pth") for f in files)
    for f in files:
        assert any(fnmatch.fnmatch(f, pat) for pat in patterns), f"{f} would be left out of the wheel"


def test_no_shipped_default_names_a_developers_layout():
    """Help texts, defaults and notebook cells name no path outside the user's own (no ../shared)."""
    bad = re.compile(r"\.\./shared|/work/shared|shared/data|shared/models")
    shipped = [*(ROOT / "src").rglob("*.py"), *(ROOT / "notebooks").glob("*.ipynb")]
    offenders = [str(p.relative_to(ROOT)) for p in shipped if bad.search(p.read_text(encoding="utf-8"))]
    assert not offenders, offenders

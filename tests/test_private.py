"""``veil.make_private``: one call gives the obfuscated data path, with every check done inside."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import register_tiny, tiny_config

import veil
from veil.detector import Detector
from veil.models import InputSpec, build, create
from veil.models.distortion import classification_distortion
from veil.obfuscate import NoiseFileError, load_obfuscator, read_metadata
from veil.preprocess import load_image
from veil.private import NoNoiseError, PrivateDetector, PrivatePipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("VEIL_WEIGHTS", "VEIL_NOISE_DIR", "VEIL_NOISE_KEY_FILE", "VEIL_NOISE_SHA256"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "cache"


def test_make_private_detects_as_the_detector_path_with_the_same_noise(empty_cache, fddb_image_paths):
    private = veil.make_private("faceboxes", alpha=0.8, seed=5, scale=1.0)
    assert isinstance(private, PrivateDetector) and private.obfuscator is not None
    assert private.weights_sha256 == create("faceboxes").weights_sha256 and private.alpha == 0.8
    assert private.noise_file.parent.name == "noise" and read_metadata(private.noise_file)["alpha"] == 0.8  # shipped
    det = Detector.from_weights(scale=1.0)
    det.obfuscator, _ = load_obfuscator(0.8, model=det.model, seed=5)
    image = load_image(fddb_image_paths[1])
    a, prep = private.client_side(image)
    b, _ = det.client_side(image)
    assert torch.equal(a, b)  # the same seeded noise on the same activation
    got = private.boxes_from_outputs(*private.server_side(a), prep=prep)
    np.testing.assert_array_equal(got, det.boxes_from_activation(b, prep))
    assert len(got) > 0
    clean = private.detect(image, obfuscate=False)
    np.testing.assert_array_equal(clean, det.detect(image, obfuscate=False))


def test_make_private_says_how_to_fit_and_refuses_another_splits_noise(empty_cache):
    with pytest.raises(NoNoiseError, match=r"veil fit-noise --split inception2 --alpha 0\.8 --images DIR") as e:
        veil.make_private("faceboxes", split="inception2")
    assert "fit_images=" in str(e.value) and str(empty_cache) in str(e.value)
    rdcl_noise = veil.make_private().noise_file
    with pytest.raises(NoiseFileError, match=r"fitted at split point 'faceboxes\.rdcl'.*'faceboxes\.inception2'"):
        veil.make_private("faceboxes", split="inception2", noise=rdcl_noise)
    with pytest.raises(NoiseFileError, match="SHA-256"):  # the shipped noise is for the reference weights only
        veil.make_private(build("faceboxes"), noise=rdcl_noise)
    with pytest.raises(ValueError, match="ALPHA must be"):
        veil.make_private(alpha=1.0)
    with pytest.raises(ValueError, match="give them with its name"):
        veil.make_private(create("faceboxes"), split="inception1")


def test_make_private_fits_a_classifier_once_on_the_photos_named(empty_cache, monkeypatch, dlib_dir, tmp_path):
    config = tiny_config(
        "tiny-private",
        6,
        input=InputSpec(mean=(100.0,) * 3, std=(50.0,) * 3, size=(16, 16), channels=1),
        distortion=classification_distortion,
        labels=("w", "x", "y", "z"),
    )
    register_tiny(monkeypatch, config, seed=2, gain=5.0)  # confident logits: a classifier worth obfuscating
    model = build(config.name)
    with pytest.raises(NoNoiseError, match=r"--model tiny-private --alpha 0\.5"):
        veil.make_private(model, alpha=0.5)
    private = veil.make_private(model, alpha=0.5, fit_images=[dlib_dir])
    assert isinstance(private, PrivatePipeline) and not isinstance(private, Detector)
    path = private.noise_file
    assert path.parent == empty_cache / "noise" / model.key  # the model's own noise directory
    meta = read_metadata(path)
    assert meta["model"] == "tiny-private" and meta["split_point"] == "tiny-private.conv" and meta["channels"] == 6
    stamp = path.stat().st_mtime_ns
    again = veil.make_private(model, alpha=0.5, fit_images=[dlib_dir])  # found: not fitted again
    assert again.noise_file == path and path.stat().st_mtime_ns == stamp
    image = load_image(sorted(dlib_dir.glob("*.jpg"))[0])
    got = private.detect(image)
    assert got.label in config.labels and abs(got.probabilities.sum() - 1) < 1e-5
    a1, _ = private.client_side(image)
    a2, _ = private.client_side(image)
    assert not torch.equal(a1, a2)  # fresh noise on every call


def test_the_readme_library_example_runs(empty_cache):
    """The README's library example is true: it runs as written."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    example = next(b for b in blocks if "make_private" in b)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)  # our own documentation, run as written
    assert len(namespace["boxes"]) > 0 and namespace["private"].noise_file is not None

"""Head/tail backends (veil.backends): each agrees with eager FP32 on real images; bad choices are refused."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from veil import backends
from veil.backends import ACTIVATION_TOLERANCE, SCORE_TOLERANCE, BackendError, make_backend, resolve
from veil.detector import Detector
from veil.preprocess import load_image


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """A private veil cache: the test exports the ONNX files itself, and checks the second use reuses them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VEIL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def inputs(detector, fddb_image_paths):
    # Two real FDDB photos at ×1.5 (a quarter of the ×3 protocol's pixels: the same layers, faster).
    small = Detector(detector.model, detector.weights_sha256, scale=1.5)
    return [small.preprocess(load_image(p)) for p in fddb_image_paths[:2]]


def _available() -> list[str]:
    return [n for n in backends.NAMES if n != "bf16" or backends.bf16_unsupported_reason() is None]


@pytest.mark.parametrize("name", ["bf16", "onnx"])
def test_backend_agrees_with_fp32_on_real_images(name, detector, inputs, onnx_cache):
    if name not in _available():
        pytest.skip(f"bf16: {backends.bf16_unsupported_reason()}")
    ref = make_backend("fp32", detector.model, detector.weights_sha256)
    other = make_backend(name, detector.model, detector.weights_sha256)
    det_ref = Detector(detector.model, detector.weights_sha256, scale=1.5, backend="fp32")
    det_other = Detector(detector.model, detector.weights_sha256, scale=1.5, backend=name)
    for prep in inputs:
        a_ref, a = ref.head(prep.tensor), other.head(prep.tensor)
        assert a.dtype == torch.float32 and a.shape == a_ref.shape
        # The activation leaves the trust zone: relative error small against its range.
        assert float((a - a_ref).abs().max()) <= ACTIVATION_TOLERANCE[name] * float(a_ref.abs().max())
        loc_r, conf_r = ref.tail(a_ref)
        loc, conf = other.tail(a_ref)
        assert loc.dtype == conf.dtype == torch.float32 and conf.shape == conf_r.shape and loc.shape == loc_r.shape
        assert float((conf - conf_r).abs().max()) <= SCORE_TOLERANCE[name]
        # Whole path: the confident faces are the same boxes.
        b_ref, b = det_ref.detect(prep), det_other.detect(prep)
        strong_ref, strong = b_ref[b_ref[:, 4] >= 0.5], b[b[:, 4] >= 0.5]
        assert len(strong_ref) > 0 and len(strong) == len(strong_ref)
        assert np.abs(strong[:, :4] - strong_ref[:, :4]).max() < 3.0  # pixels, in the original image


def test_onnx_export_is_cached_by_weights_and_pickles(detector, onnx_cache):
    first = make_backend("onnx", detector.model, detector.weights_sha256)
    stamps = [p.stat().st_mtime_ns for p in first.files]
    assert detector.weights_sha256[:16] in str(first.files[0].parent)
    second = make_backend("onnx", detector.model, detector.weights_sha256)  # no second export
    assert [p.stat().st_mtime_ns for p in second.files] == stamps
    det = Detector(detector.model, detector.weights_sha256, backend="onnx")
    assert det.runner is not None  # built (the ONNX export) before pickling
    clone = pickle.loads(pickle.dumps(det))  # worker processes get the detector pickled
    assert clone.backend == "onnx" and clone._runner is None


def test_resolve_refuses_unknown_and_unsupported(monkeypatch, detector):
    with pytest.raises(BackendError, match=r"unknown backend 'fp64'.*auto, fp32, bf16, onnx"):
        resolve("fp64")
    with pytest.raises(BackendError, match="unknown backend"):  # the library API checks too
        Detector(detector.model, backend="int8")
    assert resolve("auto") in backends.NAMES
    assert resolve("fp32") == "fp32"
    # A CPU without native BF16 (simulated: this machine's CPU cannot be changed) is refused with
    # the reason, and auto falls back to the next backend.
    monkeypatch.setattr(backends, "bf16_unsupported_reason", lambda: "this CPU has no native BF16 (test)")
    with pytest.raises(BackendError, match="bf16: this CPU has no native BF16"):
        resolve("bf16")
    assert resolve("auto") == "onnx"
    monkeypatch.setattr(backends, "AUTO_ORDER", ("bf16", "fp32"))  # no onnxruntime: the next that runs
    assert resolve("auto") == "fp32"


def test_cli_refuses_a_bad_backend_clearly(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "veil", "detect", "x.jpg", "--out", str(tmp_path), "--backend", "gpu"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "--backend" in proc.stderr and "unknown backend 'gpu'" in proc.stderr

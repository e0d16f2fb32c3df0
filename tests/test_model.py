"""The split FaceBoxes network, its weights and its post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from veil import weights as W
from veil.models.faceboxes import FaceBoxes
from veil.postprocess import decode, nms, postprocess, prior_boxes
from veil.preprocess import ImageReadError, load_image, prepare, to_image


def test_checkpoint_loads_strict_and_matches_sha(weights_path):
    sd = W.load_state_dict(weights_path)
    assert len(sd) == 174
    model = FaceBoxes()
    model.load_state_dict(sd, strict=True)
    assert sum(p.numel() for p in model.parameters()) == 1_007_330
    assert W.verify(weights_path) == W.REFERENCE_SHA256


@pytest.mark.parametrize("hw", [(1024, 1024), (300, 437), (33, 65)])
def test_split_equals_full_forward(detector, hw):
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        a = detector.head(x)
        loc_full, conf_full = detector.model(x)
        loc_split, conf_split = detector.tail(a)
    assert a.shape == (2, 128, -(-hw[0] // 32), -(-hw[1] // 32))
    assert torch.equal(loc_full, loc_split) and torch.equal(conf_full, conf_split)
    assert loc_full.shape[1] == prior_boxes(*hw).shape[0]


def test_head_is_exactly_rdcl_128x32x32(detector):
    with torch.no_grad():
        assert detector.head(torch.zeros(1, 3, 1024, 1024)).shape == (1, 128, 32, 32)


def test_priors_layout_and_decode_identity():
    p = prior_boxes(64, 64)
    # 2x2 cells x 21 anchors, then 1x1 at stride 64 and 1x1 at stride 128
    assert p.shape == (2 * 2 * 21 + 1 + 1, 4)
    assert torch.allclose(p[0], torch.tensor([0.0, 0.0, 0.5, 0.5]))
    boxes = decode(torch.zeros_like(p), p)
    assert torch.allclose(boxes[:, 2:] - boxes[:, :2], p[:, 2:])


def test_nms_suppresses_overlaps_and_keeps_order():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=np.float32)
    scores = np.array([0.5, 0.9, 0.7], dtype=np.float32)
    assert nms(boxes, scores, 0.3).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 2, 0]


def test_postprocess_rejects_mismatched_outputs():
    with pytest.raises(ValueError, match="priors"):
        postprocess(torch.zeros(10, 4), torch.zeros(10, 2), (64, 64), 1.0)


def test_detects_faces_on_a_real_fddb_image(detector, fddb_image_paths):
    image = load_image(fddb_image_paths[1])  # 2002/07/19/big/img_135: two faces
    boxes = detector.detect(image)
    assert (boxes[:, 4] > 0.9).sum() == 2
    assert boxes[:, :4].min() > -50 and boxes[:, 2].max() < image.shape[1] + 50


def test_preprocess_roundtrip_and_bad_images(tmp_path):
    img = (np.arange(6 * 8 * 3) % 255).astype(np.uint8).reshape(6, 8, 3)
    assert np.array_equal(to_image(prepare(img, 1.0).tensor), img)
    assert prepare(img, 3.0).tensor.shape == (1, 3, 18, 24)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageReadError, match="corrupt"):
        load_image(bad)
    with pytest.raises(ImageReadError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ValueError):
        prepare(img[:, :, 0], 1.0)


def _without_shipped_copy(monkeypatch, shipped):
    """The faceboxes config as an installation whose shipped checkpoint is ``shipped`` (missing or altered)."""
    import dataclasses

    from veil.models import registry

    config, builder = registry._REGISTRY["faceboxes"]
    other = dataclasses.replace(config, weights=dataclasses.replace(config.weights, shipped=shipped))
    monkeypatch.setitem(registry._REGISTRY, "faceboxes", (other, builder))


def test_weights_resolution_and_refusal(tmp_path, monkeypatch, weights_path):
    """--weights, then $VEIL_WEIGHTS, then the cache, then the checkpoint shipped in the package."""
    from veil import assets

    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VEIL_WEIGHTS", raising=False)
    assert W.resolve_weights() == assets.WEIGHTS  # nothing of the user's: the shipped checkpoint
    with monkeypatch.context() as m:
        _without_shipped_copy(m, tmp_path / "not-installed.pth")  # an install without it
        with pytest.raises(W.WeightsError, match="veil weights fetch"):
            W.resolve_weights()
    corrupt = tmp_path / "FaceBoxesProd.pth"
    corrupt.write_bytes(weights_path.read_bytes()[:100_000])
    with pytest.raises(W.WeightsError, match="SHA-256"):
        W.install(corrupt)
    with pytest.raises(W.WeightsError, match="SHA-256"):
        W.load_faceboxes(corrupt)
    with pytest.raises(W.WeightsError, match="cannot read"):
        W.load_faceboxes(corrupt, verify_sha=False)
    installed = W.install(weights_path)
    assert installed == tmp_path / "cache" / "FaceBoxesProd.pth"  # the historical cache location, kept
    assert W.resolve_weights() == installed
    monkeypatch.setenv("VEIL_WEIGHTS", str(weights_path))
    assert W.resolve_weights() == weights_path
    assert W.resolve_weights(installed) == installed
    with pytest.raises(W.WeightsError, match="does not exist"):
        W.resolve_weights(tmp_path / "nope.pth")


def test_shipped_checkpoint_is_verified_like_any_other(tmp_path, monkeypatch):
    """The checkpoint inside the package carries its MIT license and is refused when altered."""
    from veil import assets

    assert W.verify(assets.WEIGHTS) == W.REFERENCE_SHA256
    license_text = assets.WEIGHTS_LICENSE.read_text()
    assert "MIT License" in license_text and W.REFERENCE_SHA256 in license_text
    altered = tmp_path / "FaceBoxesProd.pth"
    data = bytearray(assets.WEIGHTS.read_bytes())
    data[-1] ^= 1
    altered.write_bytes(bytes(data))
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VEIL_WEIGHTS", raising=False)
    _without_shipped_copy(monkeypatch, altered)
    with pytest.raises(W.WeightsError, match="SHA-256"):
        W.load_faceboxes()


def test_fetch_offline_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path))
    # A local closed port: the real download code, an unreachable source.
    with pytest.raises(W.WeightsError, match="could not download"):
        W.fetch(url="http://127.0.0.1:9/FaceBoxesProd.pth", timeout=2)
    assert not list(tmp_path.glob("*.part"))


def test_wrong_architecture_refused(tmp_path):
    bad = tmp_path / "other.pth"
    torch.save({"conv1.conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(W.WeightsError, match="does not fit"):
        W.load_faceboxes(bad, verify_sha=False)


def _reference_priors(h: int, w: int) -> np.ndarray:
    """The anchor layout written out cell by cell, as the FaceBoxes paper describes it."""
    import math

    from veil.postprocess import MIN_SIZES, STEPS

    out = []
    for k, step in enumerate(STEPS):
        for i in range(math.ceil(h / step)):
            for j in range(math.ceil(w / step)):
                for size in MIN_SIZES[k]:
                    offsets = {32: [0, 0.25, 0.5, 0.75], 64: [0, 0.5]}.get(size, [0.5])
                    for oy in offsets:
                        for ox in offsets:
                            out.append([(j + ox) * step / w, (i + oy) * step / h, size / w, size / h])
    return np.asarray(out, dtype=np.float32)


@pytest.mark.parametrize("hw", [(64, 64), (450, 333), (1350, 1089)])
def test_vectorised_priors_match_cell_by_cell_layout(hw):
    assert np.array_equal(prior_boxes(*hw).numpy(), _reference_priors(*hw))


def test_eval_mode_reaches_head_and_tail_views():
    model = FaceBoxes().eval()
    assert not model.head.training and not model.tail.training
    # Saving and restoring the tail's mode (as exporters do) must leave the shared BatchNorm in eval.
    model.tail.train(model.tail.training)
    assert not model.conv3_1.bn.training
    model.train()
    assert model.head.training and model.tail.training


def _prepare_float_reference(image, scale):
    """The preprocessing ``prepare`` replaced (resize in float32, subtract, transpose): the reference."""
    import cv2

    from veil.preprocess import BGR_MEAN

    img = image.astype(np.float32)
    if scale != 1.0:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    img -= np.asarray(BGR_MEAN, dtype=np.float32)
    return img.transpose(2, 0, 1)[None]


def test_fused_preprocessing_matches_the_float_reference_on_fddb(fddb_image_paths):
    from veil.preprocess import PREPARE_TOLERANCE, load_image, prepare

    for path in fddb_image_paths[:4]:
        image = load_image(path)
        for scale in (3.0, 1.0, 0.5):
            got = prepare(image, scale)
            ref = _prepare_float_reference(image, scale)
            assert got.tensor.dtype == torch.float32 and got.tensor.is_contiguous()
            assert tuple(got.tensor.shape) == ref.shape, (path, scale)
            diff = np.abs(got.tensor.numpy() - ref)
            assert diff.max() <= PREPARE_TOLERANCE, (path, scale, diff.max())
            assert diff.mean() < 0.3  # rounding, not a shift: the mean error stays well under a grey level
            if scale == 1.0:
                assert diff.max() == 0.0  # no resize: exactly the subtraction
    with pytest.raises(ValueError, match="uint8"):
        prepare(np.zeros((8, 8, 3), np.float32))


def test_registry_builds_every_faceboxes_split_with_identical_outputs(weights_path):
    """Every registered split of FaceBoxes computes the same detector: tail(head(x)) does not depend on the cut."""
    from veil.models import UnknownModelError, build, get_config
    from veil.weights import load_state_dict

    sd = load_state_dict(weights_path)
    x = torch.rand(1, 3, 96, 128) * 255 - 117
    outs = {}
    for spec in get_config("faceboxes").splits:
        m = build("faceboxes", spec.name)
        m.network.load_state_dict(sd, strict=True)
        a = m.head(x)
        assert a.shape == (1, spec.channels, 96 // spec.stride, 128 // spec.stride)
        outs[spec.name] = m(x)
        assert m.split_point == f"faceboxes.{spec.name}"
    ref = outs.pop("rdcl")
    for name, out in outs.items():
        for o, r in zip(out, ref, strict=True):
            assert torch.allclose(o, r, atol=1e-5), name
    with pytest.raises(UnknownModelError, match="inception1"):
        build("faceboxes", "conv9")
    with pytest.raises(UnknownModelError, match="faceboxes"):
        get_config("yolo")

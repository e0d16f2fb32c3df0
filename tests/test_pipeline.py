"""``veil.pipeline.SplitPipeline``: the one data path for any registered split model, by its config."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from tiny_models import register_tiny, tiny_config
from torch import nn

from veil.detector import Detector
from veil.models import InputSpec, build
from veil.pipeline import SplitPipeline
from veil.postprocess import Classification, classify
from veil.preprocess import load_image, prepare

MEAN, STD = 100.0, 50.0


@pytest.fixture
def tiny():
    """A classification model registered for this test only (random weights, fixed test seed)."""
    config = tiny_config(
        "tiny-classifier",
        4,
        input=InputSpec(mean=(MEAN,) * 3, std=(STD,) * 3, size=(8, 8), channels=1),
        labels=("zero", "one", "two"),
    )
    with pytest.MonkeyPatch.context() as mp:
        register_tiny(mp, config, seed=0)
        yield build(config.name)


class _Shift(nn.Module):
    """A stand-in obfuscator: adds a constant (what matters here is where it is applied)."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a + 0.5


def _by_hand(model, image: np.ndarray, shift: float = 0.0) -> np.ndarray:
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    x = (cv2.resize(grey, (8, 8), interpolation=cv2.INTER_LINEAR).astype(np.float32) - MEAN) / STD
    with torch.no_grad():
        logits = model.network.fc(torch.relu(model.network.conv(torch.from_numpy(x)[None, None])).flatten(1) + shift)
    return torch.softmax(logits[0], 0).numpy()


def test_classification_path_follows_the_config(tiny, fddb_image_paths, tmp_path, monkeypatch):
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path))  # the onnx backend's export goes here
    pipe = SplitPipeline(tiny)
    assert pipe.scale == 1.0 and pipe.task == "classification"
    image = load_image(fddb_image_paths[0])  # any real photo: colour, any size
    prep = pipe.preprocess(image)
    assert prep.tensor.shape == (1, 1, 8, 8)  # grey, the fixed size
    a, _ = pipe.client_side(image)
    assert a.shape == (1, 4, 4, 4)  # the split's channels at its stride
    out = pipe.server_side(a)
    assert len(out) == 1 and out[0].shape == (1, 3)
    got = pipe.predict(image)
    assert isinstance(got, Classification)
    np.testing.assert_allclose(got.probabilities, _by_hand(tiny, image), atol=1e-5)
    assert got.label == tiny.config.labels[got.index] and got.score == got.probabilities.max()
    # A grey image is taken as it is.
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    np.testing.assert_allclose(pipe.predict(grey).probabilities, _by_hand(tiny, grey), atol=1e-5)
    # The obfuscator sits between head and tail, and only there.
    noisy = SplitPipeline(tiny, obfuscator=_Shift())
    np.testing.assert_allclose(noisy.predict(image).probabilities, _by_hand(tiny, image, 0.5), atol=1e-5)
    np.testing.assert_allclose(noisy.predict(image, obfuscate=False).probabilities, got.probabilities)
    # The onnx backend computes the same (export by the config: fixed activation size, one output).
    onnx = SplitPipeline(tiny, backend="onnx")
    np.testing.assert_allclose(onnx.predict(image).probabilities, got.probabilities, atol=1e-5)
    with pytest.raises(ValueError, match="face-detection path"):
        Detector(tiny)


def test_prepare_normalises_by_the_input_spec():
    img = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)  # a test image, not noise
    p = prepare(img, 1.0, mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0))
    ref = (img.astype(np.float32) - [10, 20, 30]) / [2, 4, 8]
    np.testing.assert_allclose(p.tensor[0].numpy().transpose(1, 2, 0), ref, rtol=1e-6)
    g = prepare(img, size=(5, 6), channels=1, mean=(MEAN,) * 3, std=(STD,) * 3)
    assert g.tensor.shape == (1, 1, 5, 6) and g.orig_size == (10, 12)
    with pytest.raises(ValueError, match="HxWx3 BGR"):
        prepare(img[:, :, 0])  # a colour model refuses a grey image
    with pytest.raises(ValueError, match=r"1 \(grey\) or 3"):
        prepare(img, channels=2)


def test_classify():
    c = classify(torch.tensor([[0.0, 2.0, 1.0]]), ("a", "b", "c"))
    assert c.index == 1 and c.label == "b" and abs(c.probabilities.sum() - 1) < 1e-6
    assert classify(torch.tensor([3.0, 1.0])).label == "0"
    with pytest.raises(ValueError, match="labels"):
        classify(torch.tensor([1.0, 2.0]), ("a", "b", "c"))


def test_faceboxes_at_another_split_detects_the_same_faces(detector, fddb_image_paths):
    """The generic path at split inception2 gives the rdcl detector's boxes on a real image."""
    image = load_image(fddb_image_paths[1])
    deep = Detector.from_weights(split="inception2", scale=1.0)
    ref = Detector(detector.model, scale=1.0)
    assert deep.model.split == "inception2" and deep.weights_sha256 == detector.weights_sha256
    a, _ = deep.client_side(image)
    assert a.shape[1] == deep.model.channels
    b_deep, b_ref = deep.detect(image), ref.detect(image)
    assert len(b_ref) > 0 and b_deep.shape == b_ref.shape
    np.testing.assert_allclose(b_deep, b_ref, atol=1e-3)
    assert len(SplitPipeline.from_model("faceboxes", scale=1.0).predict(image)) == len(b_ref)


def test_a_bare_faceboxes_network_is_wrapped_and_its_backend_rebuilt(detector):
    det = Detector(detector.model, scale=1.0)
    first = det.runner
    net = detector.model.network
    det.model = net  # older code assigns the bare network (e.g. a distilled tail)
    assert det.model.network is net and det.model.split == "rdcl" and det.runner is not first


def test_a_task_of_ones_own_brings_its_postprocess(tiny, fddb_image_paths):
    """A model whose task veil does not know runs through the same path with the config's postprocess."""
    import dataclasses

    def score(outputs, prep):  # e.g. a regression head: one number per image, in the original's frame
        return float(outputs[0][0].sum()), prep.orig_size

    image = load_image(fddb_image_paths[0])
    own = dataclasses.replace(tiny.config, task="scoring", postprocess=score)
    model = build(tiny.name)
    model.config = own
    value, size = SplitPipeline(model).predict(image)
    logits = SplitPipeline(tiny).server_side(SplitPipeline(tiny).client_side(image)[0])[0]
    assert size == image.shape[:2] and abs(value - float(logits.sum())) < 1e-4
    model.config = dataclasses.replace(own, postprocess=None)
    with pytest.raises(ValueError, match="task 'scoring' and no postprocess"):
        SplitPipeline(model)


def test_observe_is_the_client_side_on_a_batch_and_trainable(detector, fddb_image_paths):
    """An attacker's training batch goes through the same head and noise as a client's image, and
    what comes out can be trained on (an inference-mode tensor could not)."""
    from veil.obfuscate import load_obfuscator

    pipe = SplitPipeline(detector.model, detector.weights_sha256, scale=1.0)
    prep = pipe.preprocess(load_image(fddb_image_paths[0]))
    a_client, _ = pipe.client_side(prep)
    a_batch = pipe.observe(torch.cat([prep.tensor, prep.tensor]))
    assert a_batch.shape[0] == 2 and not a_batch.is_inference()
    torch.testing.assert_close(a_batch[:1], a_client)
    conv = nn.Conv2d(a_batch.shape[1], 1, 1)
    conv(a_batch).mean().backward()  # raises for inference tensors
    assert conv.weight.grad is not None
    pipe.obfuscator = load_obfuscator(0.8, model=pipe.model)[0]
    noisy = pipe.observe(prep.tensor)
    assert not torch.equal(noisy, a_client) and not torch.equal(noisy, pipe.observe(prep.tensor))

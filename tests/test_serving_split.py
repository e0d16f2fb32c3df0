"""Any split model on a real Triton server: FaceBoxes cut at inception2, and a classifier, served from one
repository written by the model's config (`veil export-triton --split`), equal to the eager path."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from tiny_models import register_tiny, tiny_config
from torch import nn

from veil.cli.main import main
from veil.detector import Detector
from veil.models import InputSpec, build
from veil.pipeline import SplitPipeline
from veil.preprocess import load_image
from veil.serving.client import InferenceError, TritonDetector
from veil.serving.repository import model_name, served_prefix, write_repository
from veil.serving.server import TritonServer, unsupported_reason

pytestmark = pytest.mark.timeout(300)


class _Shift(nn.Module):
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return a + 0.25


@pytest.fixture(scope="module")
def classifier():
    config = tiny_config(
        "tiny-served",
        5,
        input=InputSpec(mean=(90.0,) * 3, std=(60.0,) * 3, size=(12, 12), channels=1),
        labels=("a", "b", "c"),
    )
    with pytest.MonkeyPatch.context() as mp:
        register_tiny(mp, config, seed=1)
        yield build(config.name)


@pytest.fixture(scope="module")
def served(tmp_path_factory, weights_path, classifier):
    """One python-backend repository: FaceBoxes at inception2 (through the CLI) and the classifier."""
    why = unsupported_reason()
    if why:
        pytest.skip(f"the bundled tritonserver cannot run here: {why}")
    root = tmp_path_factory.mktemp("split-serving")
    out = root / "fb"
    args = ["--split", "inception2", "--format", "python", "--out", str(out), "--weights", str(weights_path)]
    assert main(["export-triton", *args]) == 0
    write_repository(classifier, root / "cls", formats=("python",))
    for d in (root / "cls" / "python").iterdir():
        shutil.copytree(d, out / "python" / d.name)
    names = [
        model_name(noisy, False, p) for p in ("faceboxes_inception2", "tiny_served_conv") for noisy in (False, True)
    ]
    server = TritonServer(out / "python", models=names)
    server.start()
    try:
        yield {"server": server, "manifest": json.loads((out / "veil-export.json").read_text())}
    finally:
        server.stop()


def test_faceboxes_at_inception2_served_gives_the_eager_boxes(served, weights_path, fddb_image_paths):
    m = served["manifest"]
    assert m["split_point"] == "faceboxes.inception2" and m["models"][0] == "faceboxes_inception2_base"
    assert m["output_meaning"] == {"OUTPUT_0": "loc", "OUTPUT_1": "conf"}
    det = Detector.from_weights(weights_path, split="inception2", scale=1.0)
    assert served_prefix(det.model) == "faceboxes_inception2"
    image = load_image(fddb_image_paths[1])
    with TritonDetector(det, served["server"].http_url, "http") as client:
        assert client.model == "faceboxes_inception2_base"
        got, sent = client.detect_with_activation(image)
    ref = det.detect(image)
    assert sent.shape[1] == 128 and len(ref) > 0 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-3)


def test_a_classifier_is_served_by_its_config(served, classifier, fddb_image_paths):
    image = load_image(fddb_image_paths[0])
    for obf, name in ((None, "tiny_served_conv_base"), (_Shift(), "tiny_served_conv_noisy")):
        pipe = SplitPipeline(classifier, obfuscator=obf)
        with TritonDetector(pipe, served["server"].grpc_url, "grpc") as client:
            assert client.model == name and client.outputs == ("OUTPUT_0",)
            got = client.predict(image)
            np.testing.assert_allclose(got.probabilities, pipe.predict(image).probabilities, atol=1e-5)
            assert got.label == pipe.predict(image).label
            # The served model knows the fixed activation size from its config and refuses another.
            with pytest.raises(InferenceError, match=r"Expected \[-1,5,6,6\]"):
                client.infer_activation(torch.zeros(1, 5, 7, 7))

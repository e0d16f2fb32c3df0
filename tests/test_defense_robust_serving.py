"""The noise-robust tail served as its own Triton model (issue 9 §2c), on the real bundled tritonserver.

`veil distill-tail --export REPO` trains a (short, real) robust tail on WIDER photos against the
shipped ALPHA 0.8 noise and writes `face_detection_robust` beside the repository's other models;
the served model must equal the in-process robust tail on the same obfuscated activation, and
differ from the base tail there (it is the robust tail that is served, not a copy of the base).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from veil.cli.main import main
from veil.export import reference_outputs
from veil.preprocess import load_image
from veil.serving.repository import BASE_MODEL, MANIFEST, write_repository
from veil.serving.server import TritonServer, unsupported_reason

pytestmark = pytest.mark.timeout(300)


def test_served_robust_tail_equals_in_process(weights_path, wider_dir, fddb_image_paths, tmp_path, capsys):
    from veil import assets
    from veil.defenses import files
    from veil.defenses.robust_tail import ROBUST_MODEL, SERVED_META, load_robust_tail
    from veil.detector import Detector
    from veil.obfuscate import load_obfuscator, noise_path
    from veil.serving.client import TritonDetector
    from veil.weights import load_faceboxes

    torch.set_num_threads(1)
    model, digest = load_faceboxes(weights_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted((wider_dir / "images").rglob("*.jpg"))[:4]:
        shutil.copy(p, photos / p.name)
    noise = noise_path(0.8, assets.NOISE_DIR)
    repo = tmp_path / "repo"
    write_repository(model, repo, digest, formats=("python",), check=False)  # the base models already there
    tail = tmp_path / "tail.safetensors"
    args = ["distill-tail", "--alpha", "0.8", "--noise", str(noise), "--out", str(tail), "--export", str(repo)]
    args += ["--weights", str(weights_path), "--images", str(photos), "--steps", "3", "--batch-size", "2"]
    args += ["--crop", "128", "--crops-per-image", "1", "--threads", "1", "--quiet"]
    assert main(args) == 0
    assert "served robust tail face_detection_robust" in capsys.readouterr().out

    robust, meta = load_robust_tail(
        tail, model, weights_sha256=digest, noise_sha256=files.file_sha256(noise), alpha=0.8
    )
    served = json.loads((repo / "python" / ROBUST_MODEL / SERVED_META).read_text())
    config = (repo / "python" / ROBUST_MODEL / "config.pbtxt").read_text()
    # Its own weights hash, in the config Triton reads and in the manifest; the base models stay listed.
    assert (
        served["robust_tail_sha256"]
        == meta["tensors_sha256"]
        == files.tensors_sha256(
            {k: v for k, v in robust.state_dict().items() if not k.startswith(("conv1.", "conv2."))}
        )
    )
    assert meta["tensors_sha256"] in config and files.file_sha256(noise) in config
    manifest = json.loads((repo / MANIFEST).read_text())
    assert BASE_MODEL in manifest["models"] and ROBUST_MODEL in manifest["models"]
    assert manifest["robust_tail"]["robust_tail_sha256"] == meta["tensors_sha256"]

    if unsupported_reason():
        pytest.skip(f"the bundled tritonserver cannot run here: {unsupported_reason()}")
    obf, _ = load_obfuscator(0.8, noise=noise, weights_sha256=digest, split_point="faceboxes.rdcl")
    noisy = Detector(model, digest, scale=1.0, obfuscator=obf)
    image = load_image(fddb_image_paths[0])
    with TritonServer(repo / "python", models=[ROBUST_MODEL, BASE_MODEL]) as server:
        client = TritonDetector(noisy, server.http_url, "http", model=ROBUST_MODEL)
        a, prep = noisy.client_side(image)  # one fresh obfuscated activation
        loc, conf = client.infer_activation(a)
        base_loc, base_conf = TritonDetector(noisy, server.http_url, "http", model=BASE_MODEL).infer_activation(a)
    ref_loc, ref_conf = reference_outputs(robust, a)
    assert loc.shape == ref_loc.shape
    assert np.abs(loc - ref_loc).max() <= 1e-4 and np.abs(conf - ref_conf).max() <= 1e-4
    # The served model is the robust tail, not the base tail (which the server also serves).
    base_ref = reference_outputs(model, a)
    assert np.abs(base_loc - base_ref[0]).max() <= 1e-4
    assert np.abs(conf - base_conf).max() > 1e-3
    # Boxes from the served outputs equal the in-process robust detector's on the same sample.
    boxes = noisy.boxes_from_outputs(torch.from_numpy(loc), torch.from_numpy(conf), prep)
    ref = Detector(robust, digest, scale=1.0).boxes_from_activation(a, prep)
    assert boxes.shape == ref.shape
    np.testing.assert_allclose(boxes, ref, atol=1e-3)


def test_export_refuses_a_tail_for_other_noise(weights_path, tmp_path, capsys):
    """A robust tail is served only with the noise it was trained for (checked before anything is written)."""
    from veil import assets
    from veil.defenses import files
    from veil.defenses.distill import DistillConfig
    from veil.defenses.robust_tail import export_triton, save_robust_tail, student_model
    from veil.obfuscate import noise_path
    from veil.weights import load_faceboxes

    model, digest = load_faceboxes(weights_path)
    tail = save_robust_tail(
        student_model(model),
        tmp_path / "t.safetensors",
        weights_sha256=digest,
        noise_sha256="ab" * 32,
        alpha=0.8,
        cfg=DistillConfig(steps=1),
        log=[],
        data={},
    )
    noise = noise_path(0.8, assets.NOISE_DIR)
    with pytest.raises(files.DefenseFileError, match="noise file"):
        export_triton(tail, noise, 0.8, tmp_path / "repo", model, weights_sha256=digest)
    args = ["export-robust-tail", "--tail", str(tail), "--noise", str(noise), "--alpha", "0.8"]
    assert main([*args, "--out", str(tmp_path / "repo"), "--weights", str(weights_path)]) == 2
    assert "noise file" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()

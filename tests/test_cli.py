"""The `veil` entry points and the clean `veil detect` path, on real images."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2

from veil.cli.main import main


def test_python_m_veil_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "veil", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("weights", "detect", "evaluate", "merge-results", "fit-noise", "sweep", "audit",
                "export-triton", "serve", "infer", "k8s"):
        assert f"    {cmd}" in out


def test_detect_draws_boxes_writes_json_and_skips_a_corrupt_image(fddb_image_paths, weights_path, tmp_path, capsys):
    good = fddb_image_paths[1]  # two faces
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(good.read_bytes()[:200])
    rc = main(["detect", str(good), str(bad), "--out", str(tmp_path / "out"), "--weights", str(weights_path)])
    captured = capsys.readouterr()
    assert rc == 1  # something was skipped, and said so
    assert "skipped" in captured.err and "broken.jpg" in captured.err
    doc = json.loads((tmp_path / "out" / f"{good.stem}.json").read_text())
    assert doc["mode"] == "clean"
    assert sum(d["score"] >= 0.9 for d in doc["detections"]) == 2
    drawn = cv2.imread(str(tmp_path / "out" / f"{good.stem}.jpg"))
    assert drawn is not None and drawn.shape == cv2.imread(str(good)).shape
    assert not (tmp_path / "out" / "broken.json").exists()


def test_wrong_weights_is_one_clear_line(tmp_path, fddb_image_paths, capsys):
    fake = tmp_path / "FaceBoxesProd.pth"
    fake.write_bytes(b"not a checkpoint")
    rc = main(["detect", str(fddb_image_paths[0]), "--out", str(tmp_path), "--weights", str(fake)])
    err = capsys.readouterr().err
    assert rc == 2 and "SHA-256" in err and "Traceback" not in err


def test_inputs_whose_outputs_would_collide_are_refused(fddb_image_paths, tmp_path, capsys):
    twin = tmp_path / "other" / fddb_image_paths[0].name
    twin.parent.mkdir()
    twin.write_bytes(fddb_image_paths[0].read_bytes())
    rc = main(["detect", str(fddb_image_paths[0]), str(twin), "--out", str(tmp_path / "out")])
    assert rc == 2 and "would both write" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

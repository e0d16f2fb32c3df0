"""`veil demo` (what `make demo` runs): shipped defaults, a real Triton server on loopback, stopped after."""

from __future__ import annotations

import json
import socket

import cv2
import pytest

from veil.cli.main import main


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_on_shipped_defaults_through_a_real_triton_server(tmp_path, monkeypatch, capsys):
    from veil.serving.server import unsupported_reason

    if unsupported_reason():
        pytest.skip(unsupported_reason())
    # A fresh user: empty cache, none of the VEIL_* file variables; everything comes from the package.
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("VEIL_WEIGHTS", "VEIL_NOISE_DIR", "VEIL_DECODER", "VEIL_TRITON_URL"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    rep = json.loads((out / "report.json").read_text())
    assert rep["alpha"] == 0.8 and rep["protocol"] == "grpc" and rep["decoder"] is not None
    assert "alpha-0.8" in rep["noise"] and "| grace_hopper |" in stdout
    names = {im["name"]: im for im in rep["images"]}
    hopper = names["grace_hopper"]
    assert hopper["faces_clean"] == 1 and hopper["faces_obfuscated"] >= 1  # ALPHA 0.8 keeps the face (noise is fresh)
    for im in rep["images"]:
        boxes = json.loads((out / im["boxes"]).read_text())
        n, c, h, w = boxes["sent"]["shape"]
        assert (n, c) == (1, 128) and boxes["sent"]["dtype"] == "float16" and boxes["sent"]["bytes"] == 2 * c * h * w
        pic = cv2.imread(str(out / im["picture"]))
        assert pic is not None and pic.shape[1] > 2.5 * pic.shape[0]  # three panels side by side
    # The server is gone: nothing listens on the port it used.
    host, port = rep["server"].rsplit(":", 1)
    with socket.socket() as s:
        assert s.connect_ex((host, int(port))) != 0
    assert (out / "report.md").read_text().startswith("# veil demo: ALPHA 0.8")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_on_your_photos_skips_a_bad_one_over_http(tmp_path, monkeypatch, capsys):
    from veil import assets
    from veil.serving.server import unsupported_reason

    if unsupported_reason():
        pytest.skip(unsupported_reason())
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path / "cache"))
    good, bad = tmp_path / "mine.jpg", tmp_path / "broken.jpg"
    cv2.imwrite(str(good), assets.sample_images()["grace_hopper"])
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "demo"
    assert main(["demo", "--images", str(good), str(bad), "--protocol", "http", "--fp32", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipped:" in captured.out and "broken.jpg" in captured.out
    rep = json.loads((out / "report.json").read_text())
    assert [im["name"] for im in rep["images"]] == ["mine"] and rep["protocol"] == "http"
    sent = json.loads((out / "boxes" / "mine.json").read_text())["sent"]
    assert sent["dtype"] == "float32" and sent["bytes"] == 4 * 128 * sent["shape"][2] * sent["shape"][3]

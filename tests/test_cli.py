"""The `veil` entry points and the clean `veil detect` path, on real images."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2

from veil.cli.main import main


def test_python_m_veil_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "veil", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in (
        "weights",
        "detect",
        "evaluate",
        "merge-results",
        "fit-noise",
        "sweep",
        "audit",
        "export-triton",
        "serve",
        "infer",
        "k8s",
    ):
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


# -- hardening (issue 11) ----------------------------------------------------------------------------


def test_rerun_hint_repeats_every_option_shell_quoted(tmp_path):
    """The command printed for a rerun parses back to exactly the original options (obfuscation included)."""
    import shlex

    from veil.cli.main import build_parser
    from veil.cli.triton import rerun_command

    parser = build_parser()
    argv = [
        "infer",
        "a b.jpg",
        "c.jpg",
        "--url",
        "10.0.0.1:8001",
        "--protocol",
        "grpc",
        "--fp16",
        "--out",
        "out dir/x",
        "--min-score",
        "0.7",
        "--retries",
        "5",
        "--timeout",
        "7.5",
        "--weights",
        "/w it/F.pth",
        "--scale",
        "1.5",
        "--max-pixels",
        "1000000",
        "--noisy",
        "--alpha",
        "0.8",
        "--noise",
        "/n $x/a.safetensors",
        "--noise-dir",
        "/noise dir",
        "--decoder",
        "/d.pt",
    ]
    args = parser.parse_args(argv)
    hint = rerun_command(args, ["-x.jpg", "a b.jpg"])
    tokens = shlex.split(hint)
    assert tokens[:2] == ["veil", "infer"]
    again = parser.parse_args(tokens[1:])
    assert again.images == ["-x.jpg", "a b.jpg"]
    for key, value in vars(args).items():
        if key not in ("images", "func"):
            assert getattr(again, key) == value, key


def test_infer_prints_a_rerun_command_that_keeps_the_options(fddb_image_paths, weights_path, tmp_path, capsys):
    import shlex

    from veil.cli.main import build_parser
    from veil.serving.server import free_port

    spaced = tmp_path / "my weights" / "F.pth"
    spaced.parent.mkdir()
    spaced.symlink_to(weights_path)
    url = f"127.0.0.1:{free_port()}"
    argv = [
        "infer",
        str(fddb_image_paths[0]),
        "--url",
        url,
        "--retries",
        "0",
        "--fp16",
        "--scale",
        "1",
        "--weights",
        str(spaced),
        "--out",
        str(tmp_path / "out dir"),
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    hint = err.split("rerun them when it is back: ")[1].strip().splitlines()[0]
    again = build_parser().parse_args(shlex.split(hint)[1:])
    first = build_parser().parse_args(argv)
    assert {k: v for k, v in vars(again).items() if k != "func"} == {
        k: v for k, v in vars(first).items() if k != "func"
    }


def test_a_directory_given_as_an_image_is_named_as_such(tmp_path, weights_path, capsys):
    d = tmp_path / "photos"
    d.mkdir()
    rc = main(["detect", str(d), "--out", str(tmp_path / "out"), "--weights", str(weights_path)])
    err = capsys.readouterr().err
    assert rc == 1 and "is a directory, not an image" in err and "not found" not in err


def test_an_image_over_the_pixel_limit_is_skipped_unread_and_the_rest_run(
    fddb_image_paths, weights_path, tmp_path, capsys
):
    big = tmp_path / "huge.jpg"
    cv2.imwrite(str(big), __import__("numpy").full((9000, 12000, 3), 128, "uint8"))  # 108 Mpx, 1.7 MB
    good = fddb_image_paths[1]
    rc = main(["detect", str(big), str(good), "--out", str(tmp_path / "out"), "--weights", str(weights_path)])
    captured = capsys.readouterr()
    assert rc == 1
    assert "huge.jpg is 12000×9000 px" in captured.err and "over the limit" in captured.err
    assert (tmp_path / "out" / f"{good.stem}.json").is_file() and not (tmp_path / "out" / "huge.json").exists()
    # At the ×3 protocol a 2000×1500 image needs 27 Mpx at the network input: refused before any resize.
    from veil.preprocess import ImageTooLargeError, check_pixels

    with __import__("pytest").raises(ImageTooLargeError, match="6000×4500"):
        check_pixels(1500, 2000, 3.0)


def test_an_unexpected_failure_on_one_image_is_reported_and_the_run_goes_on(detector, fddb_image_paths):
    """Any exception of one image (here an AttributeError from a non-array; MemoryError and cv2.error
    take the same path) is that image's error; the next image still runs."""
    from veil.serving.client import TritonDetector
    from veil.serving.server import free_port

    client = TritonDetector(detector, f"127.0.0.1:{free_port()}", retries=0, timeout=2)
    results = client.run_many([("not-an-array", "pixels?"), str(fddb_image_paths[0])])
    assert "AttributeError" in results[0].error and not results[0].unavailable
    assert results[1].unavailable  # the next image still ran (and found no server)


def test_noise_for_another_channel_count_is_refused_at_load(detector, weights_path, fddb_image_paths, tmp_path, capsys):
    from veil.obfuscate import Obfuscator, save_obfuscator

    path = tmp_path / "alpha-0.8.safetensors"
    save_obfuscator(Obfuscator(64, init_sigma=0.3), path, {"alpha": 0.8}, detector.model)
    rc = main(
        [
            "detect",
            str(fddb_image_paths[0]),
            "--out",
            str(tmp_path / "out"),
            "--weights",
            str(weights_path),
            "--noisy",
            "--noise",
            str(path),
        ]
    )
    captured = capsys.readouterr()
    assert rc == 2 and "holds noise for 64 channels" in captured.err, captured.err
    assert "face" not in captured.out and not list((tmp_path / "out").glob("*.json"))  # refused before any image


def test_alpha_outside_0_1_is_refused_by_every_noisy_command(capsys):
    import pytest

    for cmd in (
        ["detect", "x.jpg", "--out", "o"],
        ["evaluate"],
        ["infer", "x.jpg", "--out", "o"],
        ["k8s", "render", "--scenario", "batch"],
    ):
        with pytest.raises(SystemExit) as exit_:
            main([*cmd, "--noisy", "--alpha", "1.5"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "--alpha: ALPHA must be in [0, 1)" in err, (cmd, err)


def test_noisy_commands_name_the_noise_file_they_loaded(detector, tmp_path, monkeypatch):
    """With nothing fitted by the user, the shipped noise for the reference weights is loaded, and the
    file named (and hashed by evaluate) is that one, not the empty cache's path."""
    import pytest

    from veil import assets
    from veil.cli.main import build_parser
    from veil.cli.options import attach_noise
    from veil.detector import Detector
    from veil.obfuscate import noise_path

    shipped = noise_path(0.8, assets.NOISE_DIR)
    if not shipped.is_file():
        pytest.skip(f"{shipped} does not ship in this installation")
    monkeypatch.setenv("VEIL_NOISE_DIR", str(tmp_path / "empty"))
    monkeypatch.delenv("VEIL_NOISE_KEY_FILE", raising=False)
    monkeypatch.delenv("VEIL_NOISE_SHA256", raising=False)
    det = Detector(detector.model, detector.weights_sha256, scale=1.0)
    args = build_parser().parse_args(["detect", "x.jpg", "--out", "o", "--noisy", "--alpha", "0.8"])
    meta, path = attach_noise(args, det)
    assert path == shipped and meta["alpha"] == 0.8 and det.obfuscator is not None
    own = tmp_path / "mine.safetensors"
    own.write_bytes(shipped.read_bytes())
    args = build_parser().parse_args(["detect", "x.jpg", "--out", "o", "--noisy", "--noise", str(own)])
    assert attach_noise(args, det)[1] == own


def test_an_http_connection_closed_mid_request_counts_as_unavailable():
    """A server killed mid-request over HTTP closes the connection: retry, then report it down (found by
    benchmarks/reliability.py), not a refusal."""
    from geventhttpclient.response import HTTPConnectionClosed

    from veil.serving.client import _is_unavailable

    assert _is_unavailable(HTTPConnectionClosed("connection closed"))


def test_serve_warns_when_the_host_exposes_the_server(tmp_path, capsys):
    rc = main(["serve", "--host", "0.0.0.0", "--model-repository", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0" in err and "no authentication" in err
    assert rc == 2 and "no Triton model repository" in err  # and it went no further
    main(["serve", "--model-repository", str(tmp_path / "none")])
    assert "warning" not in capsys.readouterr().err


def test_printed_commands_quote_paths(tmp_path, capsys):
    import shlex

    missing = tmp_path / "my repo; rm -rf x"
    assert main(["serve", "--model-repository", str(missing)]) == 2
    hint = capsys.readouterr().err.split("create one with `")[1].split("`")[0]
    assert shlex.split(hint) == ["veil", "export-triton", "--out", str(missing)]


# -- veil weights (issue 10 §8) ------------------------------------------------------------------------


def test_weights_import_then_path_uses_the_cache_and_refuses_a_truncated_copy(
    weights_path, tmp_path, monkeypatch, capsys
):
    """`veil weights import` verifies the real checkpoint and installs it in the cache, which `veil weights
    path` then names before the shipped copy; a truncated copy is refused with its SHA-256 and nothing is
    installed; `fetch` from an unreachable source says so and installs nothing."""
    from veil import assets

    cache = tmp_path / "cache"
    monkeypatch.setenv("VEIL_CACHE_DIR", str(cache))
    monkeypatch.delenv("VEIL_WEIGHTS", raising=False)
    bad = tmp_path / "FaceBoxesProd.pth"
    bad.write_bytes(weights_path.read_bytes()[:100_000])
    assert main(["weights", "import", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "SHA-256" in err and "Traceback" not in err
    assert not list(cache.rglob("*.pth"))
    assert main(["weights", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(assets.WEIGHTS)  # nothing installed: the shipped copy
    assert main(["weights", "import", str(weights_path)]) == 0
    installed = cache / "FaceBoxesProd.pth"
    assert f"installed {installed}" in capsys.readouterr().out
    assert installed.read_bytes() == weights_path.read_bytes()
    assert main(["weights", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(installed)
    assert main(["weights", "fetch", "--url", "http://127.0.0.1:9/none.pth"]) == 2  # nothing listens on port 9
    assert "Traceback" not in capsys.readouterr().err and installed.read_bytes() == weights_path.read_bytes()

"""``veil distill-tail`` / ``veil fit-bottleneck``: listed, explained, and refusing bad input in one line."""

from __future__ import annotations

import pytest

from veil.cli.main import main


def test_commands_are_listed_with_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "distill-tail" in out and "fit-bottleneck" in out
    with pytest.raises(SystemExit):
        main(["distill-tail", "--help"])
    assert "teacher" in capsys.readouterr().out


def test_distill_tail_refuses_a_bad_noise_file(weights_path, tmp_path, capsys):
    bad = tmp_path / "alpha-0.9.safetensors"
    bad.write_bytes(b"not a noise file")
    rc = main(
        [
            "distill-tail",
            "--alpha",
            "0.9",
            "--noise",
            str(bad),
            "--weights",
            str(weights_path),
            "--out",
            str(tmp_path / "t.safetensors"),
            "--images",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "noise" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t.safetensors").exists()


def test_fit_bottleneck_refuses_fddb(weights_path, fddb_dir, tmp_path, capsys):
    rc = main(
        [
            "fit-bottleneck",
            "--alpha",
            "0.8",
            "--weights",
            str(weights_path),
            "--images",
            str(fddb_dir),
            "--out",
            str(tmp_path / "b.safetensors"),
            "--steps",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "FDDB" in err
    assert not (tmp_path / "b.safetensors").exists()


@pytest.fixture()
def few_photos(wider_dir, tmp_path):
    """Six real WIDER photos in a folder of their own (a fast, real training set)."""
    import shutil

    d = tmp_path / "photos"
    d.mkdir()
    for p in sorted((wider_dir / "images").rglob("*.jpg"))[:6]:
        shutil.copy(p, d / p.name)
    return d


def test_distill_tail_and_fit_bottleneck_write_files_that_load(weights_path, few_photos, tmp_path, capsys):
    import torch

    from veil.defenses.bottleneck import load_bottleneck
    from veil.defenses.robust_tail import load_robust_tail
    from veil.obfuscate.artifact import save_obfuscator
    from veil.obfuscate.noise import Obfuscator
    from veil.weights import load_faceboxes

    model, digest = load_faceboxes(weights_path)
    obf = Obfuscator(128, init_sigma=torch.full((128,), 2.43))
    obf.signal_power.fill_(0.59)  # the head's total power (≈ 75) and +10 dB on it, like a fitted ALPHA 0.9 file
    noise = save_obfuscator(
        obf,
        tmp_path / "n.safetensors",
        {"alpha": 0.9, "weights_sha256": digest, "model": "faceboxes", "split_point": "faceboxes.rdcl"},
    )
    common = [
        "--weights",
        str(weights_path),
        "--images",
        str(few_photos),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--crop",
        "128",
        "--crops-per-image",
        "1",
        "--threads",
        "1",
        "--quiet",
    ]
    assert (
        main(
            ["distill-tail", "--alpha", "0.9", "--noise", str(noise), "--out", str(tmp_path / "t.safetensors"), *common]
        )
        == 0
    )
    assert "held-out distortion" in capsys.readouterr().out
    _, meta = load_robust_tail(tmp_path / "t.safetensors", model, weights_sha256=digest, alpha=0.9)
    assert meta["distill"]["steps"] == 2 and meta["data"]["crop"] == 128
    assert main(["fit-bottleneck", "--alpha", "0.8", "--out", str(tmp_path / "b.safetensors"), *common]) == 0
    fitted, meta = load_bottleneck(tmp_path / "b.safetensors", model, weights_sha256=digest, alpha=0.8)
    assert meta["spec"]["channels"] == fitted.spec.channels == 6


def test_fit_bottleneck_offers_the_identity_term_and_refuses_two_adversaries(capsys):
    with pytest.raises(SystemExit):
        main(["fit-bottleneck", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--privacy-term {l1,perceptual,identity}" in out and "dlib embedding" in out and "--adversary-seed" in out
    with pytest.raises(SystemExit) as exc:
        main(["fit-bottleneck", "--alpha", "0.6", "--out", "x.safetensors", "--privacy-term", "identity+l1"])
    assert exc.value.code == 2 and "invalid choice: 'identity+l1'" in capsys.readouterr().err

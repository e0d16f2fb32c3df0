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
    rc = main(["distill-tail", "--alpha", "0.9", "--noise", str(bad), "--weights", str(weights_path),
               "--out", str(tmp_path / "t.safetensors"), "--images", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "noise" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t.safetensors").exists()


def test_fit_bottleneck_refuses_fddb(weights_path, fddb_dir, tmp_path, capsys):
    rc = main(["fit-bottleneck", "--alpha", "0.8", "--weights", str(weights_path), "--images", str(fddb_dir),
               "--out", str(tmp_path / "b.safetensors"), "--steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "FDDB" in err
    assert not (tmp_path / "b.safetensors").exists()

"""``veil k8s stage``: copying a dataset from an fsspec URL onto a volume (local, file:// and memory://)."""

from __future__ import annotations

import importlib.util

from veil.cli.main import main
from veil.deploy.stage import stage


def test_stage_copies_the_layout_and_resumes(dlib_dir, tmp_path, capsys):
    dest = tmp_path / "dlib"
    files = sorted(p.relative_to(dlib_dir) for p in dlib_dir.rglob("*") if p.is_file())
    n, nbytes = stage(f"file://{dlib_dir}", dest, progress=False)
    assert n == len(files) and nbytes == sum((dlib_dir / f).stat().st_size for f in files)
    assert sorted(p.relative_to(dest) for p in dest.rglob("*") if p.is_file()) == files
    assert all((dest / f).read_bytes() == (dlib_dir / f).read_bytes() for f in files)
    # A second run copies nothing; a truncated file is copied again.
    assert stage(str(dlib_dir), dest, progress=False) == (0, 0)
    victim = dest / files[0]
    victim.write_bytes(victim.read_bytes()[:10])
    assert stage(str(dlib_dir), dest, progress=False)[0] == 1
    assert victim.read_bytes() == (dlib_dir / files[0]).read_bytes()
    assert main(["k8s", "stage", str(dlib_dir), str(dest), "--overwrite"]) == 0
    assert f"copied {len(files)} files" in capsys.readouterr().out


def test_stage_from_a_non_local_filesystem(tmp_path):
    """fsspec's in-memory filesystem stands for a remote one (same code path as s3://)."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe(
        {
            "/veil-test/fddb/FDDB-folds/FDDB-fold-01.txt": b"2002/07/19/big/img_381\n",
            "/veil-test/fddb/originalPics/2002/07/19/big/img_381.jpg": b"\xff\xd8jpeg",
        }
    )
    try:
        assert stage("memory://veil-test/fddb", tmp_path / "fddb", progress=False) == (2, 29)
    finally:
        fs.rm("/veil-test", recursive=True)
    assert (tmp_path / "fddb/originalPics/2002/07/19/big/img_381.jpg").read_bytes() == b"\xff\xd8jpeg"


def test_stage_errors_say_what_is_wrong(tmp_path, capsys):
    assert main(["k8s", "stage", str(tmp_path / "absent"), str(tmp_path / "d")]) == 2
    assert "nothing at" in capsys.readouterr().err
    if importlib.util.find_spec("s3fs") is None:
        assert main(["k8s", "stage", "s3://bucket/fddb", str(tmp_path / "d")]) == 2
        assert "pip install s3fs" in capsys.readouterr().err

"""`veil data check`: a downloaded FDDB copy and fitting photos, verified; what is missing, named."""

from __future__ import annotations

import json
import shutil

from veil.cli.main import main
from veil.data.check import FDDB_FOLD_SHA256, check_fddb, check_fit_images
from veil.digest import sha256_file


def test_the_real_copy_is_usable_and_says_what_is_missing(fddb_dir, capsys):
    rep = check_fddb(fddb_dir)
    assert rep.ok and not rep.complete
    assert rep.counts["fold_files"] == 20 and rep.counts["images_present"] == 225
    assert rep.counts["faces_present"] == 391 and len(rep.missing) == 2845 - 225
    assert all(m.startswith("originalPics/") and m.endswith(".jpg") for m in rep.missing)
    assert main(["data", "check", "fddb", str(fddb_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["counts"]["images_present"] == 225


def test_fold_checksums_are_the_official_files(fddb_dir):
    for name, digest in FDDB_FOLD_SHA256.items():
        assert sha256_file(fddb_dir / "FDDB-folds" / name) == digest, name


def test_an_edited_fold_file_and_missing_parts_are_named(fddb_dir, tmp_path, capsys):
    root = tmp_path / "fddb"
    shutil.copytree(fddb_dir / "FDDB-folds", root / "FDDB-folds")
    rep = check_fddb(root)  # no originalPics/
    assert not rep.ok and "originalPics/" in rep.missing
    (root / "originalPics").mkdir()
    (root / "FDDB-folds" / "FDDB-fold-03.txt").unlink()
    with open(root / "FDDB-folds" / "FDDB-fold-07-ellipseList.txt", "a") as f:
        f.write("\n")
    rep = check_fddb(root)
    assert not rep.ok
    assert "FDDB-folds/FDDB-fold-03.txt" in rep.missing
    assert any("FDDB-fold-07-ellipseList.txt" in line and "official" in line for line in rep.lines)
    assert main(["data", "check", "fddb", str(root)]) == 1
    out = capsys.readouterr().out
    assert "NOT usable" in out and "FDDB-folds.tgz" in out


def test_fit_photos_are_counted_and_fddb_refused(dlib_dir, fddb_dir, tmp_path):
    rep = check_fit_images([dlib_dir])
    assert rep.ok and rep.counts["photos"] == 9 and not rep.complete  # fewer than 50: a warning
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    shutil.copy(next(dlib_dir.glob("*.jpg")), tmp_path / "ok.jpg")
    rep = check_fit_images([tmp_path])
    assert rep.ok and rep.counts == {"photos": 1, "unreadable": 1}
    rep = check_fit_images([dlib_dir, fddb_dir])
    assert not rep.ok and any("FDDB" in line for line in rep.lines)
    assert not check_fit_images([]).ok


def test_check_without_a_directory_says_where_to_get_fddb(monkeypatch, capsys):
    monkeypatch.delenv("VEIL_DATASET", raising=False)
    assert main(["data", "check", "fddb"]) == 2
    assert "vis-www.cs.umass.edu/fddb" in capsys.readouterr().err

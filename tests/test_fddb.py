"""The FDDB reader: official layout, counts of present and missing images, clear errors."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from veil.data import DatasetError, read_fddb


def make_fddb(root: Path, folds: dict[int, list[tuple[str, list[list[float]]]]], images: dict[str, Path | bytes]):
    """Write an FDDB tree: fold lists, ellipse lists, and image files (copied or raw bytes)."""
    (root / "FDDB-folds").mkdir(parents=True)
    (root / "originalPics").mkdir()
    for k, entries in folds.items():
        (root / "FDDB-folds" / f"FDDB-fold-{k:02d}.txt").write_text("".join(f"{n}\n" for n, _ in entries))
        lines = []
        for name, ells in entries:
            lines += [name, str(len(ells))] + [" ".join(f"{v:.6f}" for v in e) + "  1" for e in ells]
        (root / "FDDB-folds" / f"FDDB-fold-{k:02d}-ellipseList.txt").write_text("\n".join(lines) + "\n")
    for name, src in images.items():
        dst = root / "originalPics" / f"{name}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, Path):
            shutil.copy(src, dst)
        else:
            dst.write_bytes(src)
    return root


def test_real_fddb_counts_match_the_list_of_available_images(fddb_dir):
    ds = read_fddb(fddb_dir)
    with open(fddb_dir / "available_images.tsv") as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if r]
    assert len(ds.images) == 2845 and ds.folds == list(range(1, 11))
    assert sum(im.n_faces for im in ds.images) == 5171
    available = ds.available()
    assert {(im.name, im.fold, im.n_faces) for im in available} == {(n, int(k), int(f)) for n, k, f in rows}
    counts = ds.fold_counts()
    per_fold = Counter(int(k) for _, k, _ in rows)
    for k in ds.folds:
        assert counts[k]["present"] == per_fold.get(k, 0)
        assert counts[k]["present"] + counts[k]["missing"] == counts[k]["annotated_images"]
    assert all(im.path.is_file() for im in available)


def test_ellipses_are_parsed_in_fddb_column_order(fddb_dir):
    ds = read_fddb(fddb_dir)
    first = ds.images[0]  # FDDB-fold-01-ellipseList.txt starts with this image
    assert first.fold == 1 and first.name == "2002/08/11/big/img_591"
    assert first.ellipses.tolist() == [[123.5833, 85.5495, 1.265839, 269.6934, 161.7812]]
    assert first.path == fddb_dir / "originalPics" / "2002/08/11/big/img_591.jpg"


def test_missing_directory_and_missing_layout_are_named(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        read_fddb(tmp_path / "nope")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a directory"):
        read_fddb(tmp_path / "f.txt")
    with pytest.raises(DatasetError, match="FDDB-folds/ and originalPics/"):
        read_fddb(tmp_path)
    (tmp_path / "originalPics").mkdir()
    with pytest.raises(DatasetError, match="missing FDDB-folds/"):
        read_fddb(tmp_path)
    (tmp_path / "FDDB-folds").mkdir()
    with pytest.raises(DatasetError, match=r"no FDDB-fold-NN-ellipseList\.txt"):
        read_fddb(tmp_path)


def test_malformed_annotations_and_inconsistent_lists_are_refused(tmp_path):
    root = make_fddb(tmp_path / "a", {1: [("x/img_1", [[20, 10, 1.5, 30, 30]])]}, {})
    ell = root / "FDDB-folds" / "FDDB-fold-01-ellipseList.txt"
    ell.write_text("x/img_1\n2\n20 10 1.5 30 30 1\n")  # says 2 faces, lists 1
    with pytest.raises(DatasetError, match="malformed annotation for 'x/img_1'"):
        read_fddb(root)
    ell.write_text("x/img_1\n1\n20 10 1.5 30 30 1\n")
    (root / "FDDB-folds" / "FDDB-fold-01.txt").write_text("x/img_2\n")
    with pytest.raises(DatasetError, match="disagree"):
        read_fddb(root)


def test_partial_copy_counts_present_and_missing_per_fold(tmp_path, fddb_image_paths):
    src = fddb_image_paths[0]
    ds = read_fddb(
        make_fddb(
            tmp_path / "d",
            {
                1: [("a/img_1", [[20, 10, 1.5, 30, 30]]), ("a/img_2", [[20, 10, 1.5, 30, 30]] * 2)],
                3: [("b/img_3", [[20, 10, -1.5, 30, 30]])],
            },
            {"a/img_2": src, "b/img_3": src},
        )
    )
    assert ds.folds == [1, 3]
    assert ds.fold_counts() == {
        1: {"annotated_images": 2, "annotated_faces": 3, "present": 1, "missing": 1},
        3: {"annotated_images": 1, "annotated_faces": 1, "present": 1, "missing": 0},
    }
    assert [im.name for im in ds.available()] == ["a/img_2", "b/img_3"]
    assert np.allclose(ds.available()[1].ellipses, [[20, 10, -1.5, 30, 30]])
    fp = ds.fingerprint()
    (tmp_path / "d" / "originalPics" / "a" / "img_1.jpg").write_bytes(src.read_bytes())
    assert read_fddb(tmp_path / "d").fingerprint() != fp  # a different set of images present

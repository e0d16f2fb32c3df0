"""``veil evaluate`` and ``veil merge-results`` end to end on the real FDDB images in ../shared.

The full 225-image evaluation runs twice in the whole suite: once in one go (``oneshot``) and
once split into two shards that are merged; every full-set test shares those two runs.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

from veil.cli.main import main
from veil.data import read_fddb
from veil.evaluation import MergeError, evaluate_fddb, merge_results

pytestmark = pytest.mark.timeout(900)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def report_lines(stdout: str) -> list[str]:
    """The report table: the lines a single run and a merge both print."""
    keep = ("FDDB-", "mAP:", "Evaluated ", "TPR@1000FP:")
    return [ln for ln in stdout.splitlines() if ln.startswith(keep)]


@pytest.fixture(scope="session")
def oneshot(fddb_dir, weights_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("oneshot") / "clean.json"
    rc, stdout, stderr = run_cli(
        "evaluate", "--dataset", fddb_dir, "--weights", weights_path, "--json", out, "--workers", 2, "--no-progress"
    )
    assert rc == 0, stderr
    return stdout, json.loads(out.read_text())


@pytest.fixture(scope="session")
def merged(fddb_dir, weights_path, tmp_path_factory):
    parts = tmp_path_factory.mktemp("partials")
    common = (
        "evaluate",
        "--dataset",
        fddb_dir,
        "--weights",
        weights_path,
        "--out-partial",
        parts,
        "--workers",
        2,
        "--no-progress",
    )
    rc0, _, err0 = run_cli(*common, "--shard", "0/2")
    assert rc0 == 0, err0
    mp = pytest.MonkeyPatch()
    mp.setenv("JOB_COMPLETION_INDEX", "1")  # as a Kubernetes Indexed Job's second pod
    try:
        rc1, out1, err1 = run_cli(*common, "--shard", "auto/2")
    finally:
        mp.undo()
    assert rc1 == 0, err1
    assert "shard 1/2" in out1
    out = parts.parent / "merged.json"
    rc, stdout, stderr = run_cli("merge-results", parts, "--json", out, "--roc", parts.parent / "roc.png")
    assert rc == 0, stderr
    return stdout, json.loads(out.read_text()), parts


@pytest.mark.slow
def test_evaluate_all_225_images_meets_the_accuracy_bar(oneshot, fddb_dir):
    stdout, js = oneshot
    with open(fddb_dir / "available_images.tsv") as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if r]
    folds = sorted({int(r[1]) for r in rows})
    assert js["images"] == len(rows) == 225
    assert js["faces"] == sum(int(r[2]) for r in rows)
    assert js["missing"] == 2845 - 225 and js["skipped"] == []
    assert js["mode"] == "clean" and js["mAP"] >= 0.95
    assert sorted(map(int, js["folds"])) == folds
    assert js["mAP"] == pytest.approx(np.mean(list(js["folds"].values())))
    assert 0.9 <= js["tpr_at_1000fp"] <= 1.0 and js["fp_budget"] == pytest.approx(1000 * 225 / 2845)
    s = js["settings"]
    assert (s["scale"], s["confidence"], s["nms_iou"], s["match_iou"]) == (3.0, 0.05, 0.3, 0.5)
    assert s["weights_sha256"] == "c0cb2b1e40710c0aa5fc32a8759b1496a0fe0a126c907ca0ffe35b4bd0709d09"
    for k in folds:
        d = js["fold_details"][str(k)]
        assert d["images"] == sum(1 for r in rows if int(r[1]) == k)
        assert d["images"] + d["missing"] == d["annotated_images"]
        assert f"FDDB-fold-{k} Val AP: {js['folds'][str(k)]:.4f}" in stdout
    assert js["fold_details"]["9"]["images"] == 0 and "FDDB-fold-9" not in stdout
    assert f"FDDB Dataset Average AP: {js['mAP']:.4f}" in stdout and f"mAP: {js['mAP']:.4f}" in stdout
    assert "Evaluated 225 images, 391 faces in 8 folds; 2620 annotated images not found" in stdout
    assert f"TPR@1000FP: {js['tpr_at_1000fp']:.4f}" in stdout


@pytest.mark.slow
def test_two_merged_shards_equal_the_single_run(oneshot, merged):
    one_out, one = oneshot
    merged_out, m, parts = merged
    assert sorted(p.name for p in parts.iterdir()) == [
        "fddb-partial-0000-of-0002.json",
        "fddb-partial-0001-of-0002.json",
    ]
    assert report_lines(merged_out) == report_lines(one_out)
    for key in (
        "mAP",
        "folds",
        "images",
        "faces",
        "missing",
        "tpr_at_1000fp",
        "fp_budget",
        "mode",
        "fold_details",
        "skipped",
        "settings",
    ):
        assert m[key] == one[key], key
    assert m["shards"] == 2 and one["shards"] == 1
    assert (parts.parent / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_merge_refuses_incomplete_and_mismatched_sets(merged, tmp_path):
    parts = merged[2]
    only0 = tmp_path / "only0"
    only0.mkdir()
    shutil.copy(parts / "fddb-partial-0000-of-0002.json", only0)
    rc, _, err = run_cli("merge-results", only0)
    assert rc == 2 and "missing shard index 1 of 2" in err
    # A shard run with other settings (here: another input scale) must not be merged in.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(parts / "fddb-partial-0000-of-0002.json", other)
    d = json.loads((parts / "fddb-partial-0001-of-0002.json").read_text())
    d["settings"]["scale"] = 1.0
    (other / "fddb-partial-0001-of-0002.json").write_text(json.dumps(d))
    with pytest.raises(MergeError, match=r"different settings.*scale: 3\.0 vs 1\.0"):
        merge_results(other)
    d["settings"]["scale"], d["shard"]["count"] = 3.0, 3
    (other / "fddb-partial-0001-of-0002.json").write_text(json.dumps(d))
    with pytest.raises(MergeError, match="different shard counts"):
        merge_results(other)
    rc, _, err = run_cli("merge-results", tmp_path / "absent")
    assert rc == 2 and "does not exist" in err


# -- a small copied subset: corrupt and missing images, workers, shards with other settings -----
@pytest.fixture()
def subset(tmp_path, fddb_dir) -> Path:
    """Three real images of two folds with their annotations, one corrupt jpg, one image not copied."""
    ds = read_fddb(fddb_dir)
    avail = ds.available()
    chosen = [im for im in avail if im.fold == 1][:2] + [im for im in avail if im.fold == 2][:2]
    corrupt = chosen[3]
    absent = next(im for im, ok in zip(ds.images, ds.present) if im.fold == 2 and not ok)
    root = tmp_path / "fddb"
    (root / "FDDB-folds").mkdir(parents=True)
    for k in (1, 2):
        entries = [im for im in chosen + [absent] if im.fold == k]
        text = ""
        for im in entries:
            text += f"{im.name}\n{im.n_faces}\n" + "".join(
                " ".join(f"{v:.6f}" for v in e) + "  1\n" for e in im.ellipses
            )
        (root / "FDDB-folds" / f"FDDB-fold-{k:02d}-ellipseList.txt").write_text(text)
    for im in chosen:
        dst = root / "originalPics" / f"{im.name}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if im is corrupt:
            dst.write_bytes(im.path.read_bytes()[:200])  # a truncated download: header, no pixels
        else:
            shutil.copy(im.path, dst)
    return root


def test_corrupt_image_is_reported_and_skipped_not_a_crash(subset, weights_path, tmp_path):
    out = tmp_path / "r.json"
    rc, stdout, stderr = run_cli(
        "evaluate", "--dataset", subset, "--weights", weights_path, "--json", out, "--scale", 1, "--no-progress"
    )
    assert rc == 0, stderr
    js = json.loads(out.read_text())
    assert js["images"] == 3 and len(js["skipped"]) == 1
    assert "cannot decode image" in js["skipped"][0]["reason"] and js["skipped"][0]["fold"] == 2
    assert js["fold_details"]["2"] == {
        **js["fold_details"]["2"],
        "images": 1,
        "missing": 1,
        "skipped": 1,
        "annotated_images": 3,
    }
    assert "1 annotated images not found" in stdout and "1 skipped (unreadable" in stdout
    assert "skipped" in stderr and js["skipped"][0]["image"] in stderr


def test_workers_give_the_same_result_as_one_process(subset, detector):
    from dataclasses import replace

    det = replace(detector, scale=1.0)
    one = evaluate_fddb(det, subset, workers=1, progress=False)
    two = evaluate_fddb(det, subset, workers=2, progress=False)
    assert [r.index for r in two.records] == [r.index for r in one.records]
    for a, b in zip(one.records, two.records):
        assert np.allclose(a.detections, b.detections, atol=1e-3) and (a.tp == b.tp).all()
    assert two.mAP == pytest.approx(one.mAP, abs=1e-6) and two.skipped == one.skipped


def test_cli_errors_are_clear(fddb_dir, tmp_path, monkeypatch):
    rc, _, err = run_cli("evaluate", "--dataset", fddb_dir, "--noisy")
    assert rc == 2 and "--noisy needs --alpha" in err
    rc, _, err = run_cli("evaluate", "--dataset", fddb_dir, "--alpha", "0.5")
    assert rc == 2 and "only apply with --noisy" in err
    rc, _, err = run_cli("evaluate", "--dataset", tmp_path / "nope")
    assert rc == 2 and "does not exist" in err
    rc, _, err = run_cli("evaluate", "--dataset", tmp_path)
    assert rc == 2 and "does not hold the FDDB layout" in err
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    rc, _, err = run_cli("evaluate", "--dataset", fddb_dir, "--shard", "auto/3")
    assert rc == 2 and "JOB_COMPLETION_INDEX" in err
    rc, _, err = run_cli("evaluate", "--dataset", fddb_dir, "--shard", "3/3")
    assert rc == 2 and "0..2" in err
    rc, _, err = run_cli("evaluate", "--dataset", fddb_dir, "--workers", "-1")
    assert rc == 2 and "--workers" in err


def test_dataset_defaults_to_veil_dataset_and_neither_is_a_clear_error(subset, weights_path, tmp_path, monkeypatch):
    monkeypatch.setenv("VEIL_DATASET", str(subset))
    out = tmp_path / "r.json"
    rc, _, stderr = run_cli("evaluate", "--weights", weights_path, "--json", out, "--scale", 1, "--no-progress")
    assert rc == 0, stderr
    assert json.loads(out.read_text())["images"] == 3  # the subset named by $VEIL_DATASET was evaluated
    monkeypatch.setenv("VEIL_DATASET", str(tmp_path / "nope"))
    rc, _, err = run_cli(
        "evaluate",
        "--dataset",
        subset,
        "--weights",
        weights_path,
        "--json",
        tmp_path / "s.json",
        "--scale",
        1,
        "--no-progress",
    )
    assert rc == 0, "--dataset wins over $VEIL_DATASET"
    monkeypatch.delenv("VEIL_DATASET")
    rc, _, err = run_cli("evaluate", "--weights", weights_path)
    assert rc == 2 and "--dataset" in err and "VEIL_DATASET" in err


def test_noisy_shards_merge_to_the_single_run_with_summed_nsr(subset, detector, tmp_path):
    """Seeded noise is drawn per image, so shards reproduce the one-shot run; NSR sums add up."""
    from dataclasses import replace

    from veil.evaluation import write_partial
    from veil.obfuscate import Obfuscator

    det = replace(detector, scale=1.0, obfuscator=Obfuscator(128, init_sigma=1.0))
    settings = {"mode": "noisy", "alpha": 0.5}
    one = evaluate_fddb(det, subset, progress=False, nsr=True, seed=11, settings=settings)
    for i in range(2):
        write_partial(
            evaluate_fddb(det, subset, shard=f"{i}/2", progress=False, nsr=True, seed=11, settings=settings),
            tmp_path / "parts",
        )
    merged = merge_results(tmp_path / "parts")
    assert merged.table() == one.table()
    assert np.allclose(merged.nsr_sums, one.nsr_sums, rtol=1e-12)
    js = merged.to_json()
    assert js["mode"] == "noisy" and js["alpha"] == 0.5 and js["nsr_db"] == one.nsr["nsr_db"]
    assert set(js["nsr"]["channels"]) == {"min", "median", "max"}
    # The seeded run is an experiment: afterwards the obfuscator draws unpredictable noise again.
    assert not det.obfuscator.seeded
    a = torch.zeros(1, 128, 4, 4)
    assert not torch.equal(det.obfuscator(a), det.obfuscator(a))
    with pytest.raises(ValueError, match="obfuscator"):
        evaluate_fddb(detector, subset, progress=False, nsr=True)


# -- hardening (issue 11): per-image failures, one writer per result, SIGTERM ---------------------


def _mini_fddb(fddb_dir: Path, root: Path, n: int = 3) -> Path:
    """FDDB's layout with the first ``n`` images of fold 1 (symlinks): a small, real dataset."""
    ds = root / "fddb"
    (ds / "originalPics").mkdir(parents=True)
    (ds / "FDDB-folds").symlink_to(fddb_dir / "FDDB-folds")
    rows = [ln.split("\t") for ln in (fddb_dir / "available_images.tsv").read_text().splitlines()[1:]]
    for name, _fold, _faces in [r for r in rows if r[1] == "1"][:n]:
        dst = ds / "originalPics" / f"{name}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(fddb_dir / "originalPics" / f"{name}.jpg")
    return ds


def test_an_oversized_image_is_skipped_and_the_run_still_writes_json(fddb_dir, weights_path, tmp_path):
    import cv2

    ds = _mini_fddb(fddb_dir, tmp_path)
    victim = sorted((ds / "originalPics").rglob("*.jpg"))[0]
    victim.unlink()
    cv2.imwrite(str(victim), np.full((9000, 12000, 3), 128, np.uint8))  # 108 Mpx: ~12 GB at ×3 in float
    out = tmp_path / "r.json"
    rc, _, stderr = run_cli(
        "evaluate", "--dataset", ds, "--weights", weights_path, "--json", out, "--no-progress", "--scale", 1
    )
    assert rc == 0, stderr
    js = json.loads(out.read_text())
    assert js["images"] == 2 and len(js["skipped"]) == 1
    assert "over the limit" in js["skipped"][0]["reason"] and "12000×9000" in js["skipped"][0]["reason"]


def test_a_second_run_writing_the_same_results_is_refused(fddb_dir, weights_path, tmp_path):
    from veil.jsonio import WriteLock

    out = tmp_path / "r.json"
    with WriteLock(out):  # as if another `veil evaluate --json r.json` were running
        rc, _, stderr = run_cli(
            "evaluate", "--dataset", fddb_dir, "--weights", weights_path, "--json", out, "--no-progress"
        )
        assert rc == 2 and f"is writing {out}" in stderr
        part = tmp_path / "parts"
        with WriteLock(part / "fddb-partial-0001-of-0002.json"):
            rc, _, stderr = run_cli(
                "evaluate",
                "--dataset",
                fddb_dir,
                "--weights",
                weights_path,
                "--shard",
                "1/2",
                "--out-partial",
                part,
                "--no-progress",
            )
            assert rc == 2 and "fddb-partial-0001-of-0002.json" in stderr
    assert not out.exists()


def test_sigterm_stops_evaluate_like_ctrl_c(fddb_dir, weights_path, tmp_path):
    """As PID 1 in a pod, a process without a SIGTERM handler ignores it; veil handles it like Ctrl-C."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "r.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "veil",
            "evaluate",
            "--dataset",
            str(fddb_dir),
            "--weights",
            str(weights_path),
            "--json",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = ""
        deadline = time.monotonic() + 120
        while "FDDB:" not in seen and time.monotonic() < deadline:  # the progress bar: evaluation started
            seen += proc.stderr.read(1)
        assert "FDDB:" in seen, seen
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, (proc.returncode, err[-500:])
    assert "interrupted" in err and not out.exists()
    assert not list(tmp_path.glob(".*.lock")), "the result's lock is released"


def test_a_real_memory_error_skips_that_image_only(fddb_dir, weights_path, tmp_path):
    """Under an address-space limit just above this process's size, a 2000×1500 image at ×3 (324 MB of
    float input) raises a real MemoryError; it becomes that image's skip note, the next image runs."""
    import resource
    from dataclasses import replace

    import cv2

    from veil.detector import Detector
    from veil.evaluation.runner import evaluate_image

    det = Detector.from_weights(weights_path, max_pixels=None)  # no pixel limit: memory is the limit
    image = read_fddb(fddb_dir).available()[0]
    big = tmp_path / "big.jpg"
    cv2.imwrite(str(big), np.full((1500, 2000, 3), 90, np.uint8))
    with open("/proc/self/status") as status:
        vm = next(int(ln.split()[1]) * 1024 for ln in status if ln.startswith("VmSize"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (vm + (200 << 20), hard))
    try:
        rec, skip, _ = evaluate_image(det, replace(image, path=big), 0)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert rec is None and skip["reason"] == "out of memory while processing it (MemoryError)"
    rec, skip, _ = evaluate_image(det, image, 1)
    assert skip is None and rec.faces == image.n_faces

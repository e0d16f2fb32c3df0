"""End to end on tiny real data: fit-noise → detect/evaluate --noisy → sweep (fit, then reuse)."""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from veil.cli.main import main
from veil.data import read_fddb
from veil.obfuscate import read_metadata

pytestmark = pytest.mark.timeout(600)
FAST_FIT = ("--steps", "6", "--batch-size", "2", "--crop", "256", "--scale-range", "1", "2")


def run_cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny_fddb(fddb_dir, tmp_path_factory) -> Path:
    """Three real FDDB images (two folds) in the official layout, with their annotations."""
    ds = read_fddb(fddb_dir)
    avail = ds.available()
    chosen = [im for im in avail if im.fold == 1][:2] + [im for im in avail if im.fold == 2][:1]
    root = tmp_path_factory.mktemp("fddb")
    (root / "FDDB-folds").mkdir()
    for k in (1, 2):
        text = "".join(
            f"{im.name}\n{im.n_faces}\n" + "".join(" ".join(f"{v:.6f}" for v in e) + "  1\n" for e in im.ellipses)
            for im in chosen
            if im.fold == k
        )
        (root / "FDDB-folds" / f"FDDB-fold-{k:02d}-ellipseList.txt").write_text(text)
    for im in chosen:
        dst = root / "originalPics" / f"{im.name}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(im.path, dst)
    return root


@pytest.fixture(scope="module")
def fit_images(tmp_path_factory) -> Path:
    """Three dlib photos when ../shared is there, else the public-domain samples that ship with dependencies."""
    from conftest import DLIB

    d = tmp_path_factory.mktemp("fit")
    if DLIB.is_dir():
        for p in sorted(DLIB.glob("*.jpg"))[:3]:
            shutil.copy(p, d)
    else:
        import cv2

        from veil import assets

        for name, img in assets.sample_images().items():
            cv2.imwrite(str(d / f"{name}.jpg"), img)
    return d


@pytest.fixture(scope="module")
def noise_dir(fit_images, weights_path, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("noise")
    rc, out, err = run_cli(
        "fit-noise",
        "--alpha",
        "0.8",
        "--images",
        fit_images,
        "--noise-dir",
        d,
        "--weights",
        weights_path,
        "--quiet",
        *FAST_FIT,
    )
    assert rc == 0, err
    assert "fitted ALPHA 0.8" in out and (d / "alpha-0.8.safetensors").is_file()
    return d


def test_fit_noise_writes_a_complete_artifact(noise_dir, fit_images):
    meta = read_metadata(noise_dir / "alpha-0.8.safetensors")
    assert meta["alpha"] == 0.8 and meta["split_point"] == "faceboxes.rdcl"
    assert meta["data"]["images"] == len(list(fit_images.glob("*.jpg"))) and meta["data"]["dirs"] == [str(fit_images)]
    assert meta["fit"]["steps"] == 6 and len(meta["activation_stats"]["channel_power"]) == 128
    assert meta["loss_log"][-1]["step"] == 5
    assert json.loads((noise_dir / "alpha-0.8.log.json").read_text())[0]["step"] == 0


def test_fit_noise_refuses_fddb_and_bad_alpha(fddb_dir, tmp_path, weights_path):
    rc, _, err = run_cli(
        "fit-noise",
        "--alpha",
        "0.5",
        "--images",
        fddb_dir,
        "--out",
        tmp_path / "n.safetensors",
        "--weights",
        weights_path,
    )
    assert rc == 2 and "FDDB" in err
    with pytest.raises(SystemExit):
        run_cli("fit-noise", "--alpha", "1.5", "--images", tmp_path)


def test_detect_noisy(noise_dir, tiny_fddb, weights_path, tmp_path):
    image = sorted((tiny_fddb / "originalPics").rglob("*.jpg"))[0]
    rc, out, err = run_cli(
        "detect",
        image,
        "--out",
        tmp_path,
        "--noisy",
        "--alpha",
        "0.8",
        "--noise-dir",
        noise_dir,
        "--weights",
        weights_path,
    )
    assert rc == 0, err
    doc = json.loads((tmp_path / f"{image.stem}.json").read_text())
    assert doc["mode"] == "noisy" and doc["alpha"] == 0.8 and "nsr_db" in doc and "NSR" in out
    rc, _, err = run_cli(
        "detect",
        image,
        "--out",
        tmp_path,
        "--noisy",
        "--alpha",
        "0.3",
        "--noise-dir",
        noise_dir,
        "--weights",
        weights_path,
    )
    assert rc == 2 and "no noise fitted for ALPHA 0.3" in err
    rc, _, err = run_cli("detect", image, "--out", tmp_path, "--alpha", "0.8")
    assert rc == 2 and "only apply with --noisy" in err


def test_evaluate_noisy_end_to_end(noise_dir, tiny_fddb, weights_path, tmp_path):
    """Engineer A's ``veil evaluate`` with this package's noise: JSON mode/alpha/NSR, seeded runs repeat."""
    outs = []
    for k in range(2):
        out = tmp_path / f"noisy{k}.json"
        rc, stdout, err = run_cli(
            "evaluate",
            "--dataset",
            tiny_fddb,
            "--noisy",
            "--alpha",
            "0.8",
            "--noise",
            noise_dir / "alpha-0.8.safetensors",
            "--weights",
            weights_path,
            "--seed",
            "7",
            "--json",
            out,
            "--no-progress",
        )
        assert rc == 0, err
        assert "mAP" in stdout
        outs.append(json.loads(out.read_text()))
    doc = outs[0]
    text = json.dumps(doc)
    assert '"mode": "noisy"' in text and '"alpha": 0.8' in text and '"nsr_db"' in text
    assert outs[0]["mAP"] == outs[1]["mAP"]  # same seed, same noise


def test_sweep_fits_then_reuses(noise_dir, fit_images, tiny_fddb, weights_path, tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    rc, stdout, err = run_cli(
        "sweep",
        "--alphas",
        "0.1,0.8",
        "--dataset",
        tiny_fddb,
        "--images",
        fit_images,
        "--noise-dir",
        noise_dir,
        "--out",
        out,
        "--weights",
        weights_path,
        "--quiet",
        *FAST_FIT,
    )
    assert rc == 0, err
    assert "reusing" in stdout and "fitted" in stdout  # 0.8 existed, 0.1 was fitted
    doc = json.loads((out / "sweep.json").read_text())
    assert [r["alpha"] for r in doc["rows"]] == [0.1, 0.8]
    for r in doc["rows"]:
        assert 0.0 <= r["mAP"] <= 1.0 and 0.0 <= r["iso_mAP"] <= 1.0
        assert r["reference_mAP"] in (0.9024, 0.8841)
        assert r["drop_points"] == pytest.approx(100 * (doc["clean_mAP"] - r["mAP"]), abs=0.01)
    assert doc["rows"][0]["nsr_db"] < doc["rows"][1]["nsr_db"]
    md = (out / "sweep.md").read_text()
    assert md.count("\n| yes |") == 2 and "| no |" in md
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    # Everything fitted now: a rerun needs no images.
    rc, stdout, err = run_cli(
        "sweep",
        "--alphas",
        "0.1",
        "--dataset",
        tiny_fddb,
        "--noise-dir",
        noise_dir,
        "--out",
        out,
        "--weights",
        weights_path,
        "--quiet",
    )
    assert rc == 0 and "fitted" not in stdout, err
    monkeypatch.delenv("VEIL_FIT_IMAGES", raising=False)  # nothing to fit on: a clear error
    rc, _, err = run_cli(
        "sweep",
        "--alphas",
        "0.4",
        "--dataset",
        tiny_fddb,
        "--noise-dir",
        noise_dir,
        "--out",
        out,
        "--weights",
        weights_path,
        "--quiet",
    )
    assert rc == 2 and "--images" in err and "VEIL_FIT_IMAGES" in err


def test_sweep_noise_reuses_what_is_fitted_and_refuses_up_front_what_it_cannot_fit(noise_dir, weights_path):
    """The library's fit-or-reuse policy: a fitted ALPHA is reused; one with no noise and no photos is an error
    before anything runs, naming the directory and the ALPHA, and no command-line flag."""
    from veil.evaluation.sweep import MissingNoiseError, sweep_noise
    from veil.obfuscate.fit import FitConfig
    from veil.weights import load_faceboxes

    model, digest = load_faceboxes(weights_path)
    with pytest.raises(MissingNoiseError, match=r"ALPHA 0\.3\b") as info:
        sweep_noise(model, digest, [0.8, 0.3], FitConfig(alpha=0.0), noise_dir=noise_dir, log=lambda _: None)
    assert str(noise_dir) in str(info.value) and "--" not in str(info.value)
    logged: list[str] = []
    get_noise = sweep_noise(model, digest, [0.8], FitConfig(alpha=0.0), noise_dir=noise_dir, log=logged.append)
    obf, meta, path = get_noise(0.8)
    assert path == noise_dir / "alpha-0.8.safetensors" and meta["alpha"] == 0.8 and obf.channels == 128
    assert logged == [f"reusing {path}"]


def test_sweep_with_audits_shows_utility_and_leakage_side_by_side(noise_dir, tiny_fddb, weights_path, tmp_path):
    """`--audits` joins audit reports on ALPHA: the table gains worst-attacker rank-1, plus a frontier plot."""
    m = lambda r: {"ssim": 0.2, "psnr": 12.0, "face_ssim": 0.2, "rank1": r, "tar_at_far1": r / 2}  # noqa: E731
    audits = tmp_path / "audits"
    for alpha, worst in ((0.0, 0.5), (0.8, 0.1)):
        d = audits / f"alpha-{alpha:g}"
        d.mkdir(parents=True)
        rep = {
            "alpha": alpha,
            "chance_rank1": 0.025,
            "clean_baseline": {"naive": m(0.5)},
            "attackers": {"naive": m(worst / 2), "adaptive": m(worst), "whitebox": m(worst / 4)},
        }
        (d / "report.json").write_text(json.dumps(rep))
    out = tmp_path / "sweep"
    sweep_args = ["sweep", "--alphas", "0.8", "--dataset", tiny_fddb, "--noise-dir", noise_dir, "--out", out]
    sweep_args += ["--weights", weights_path, "--quiet", "--audits"]
    rc, stdout, err = run_cli(*sweep_args, audits)
    assert rc == 0, err
    rows = json.loads((out / "frontier.json").read_text())
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["alpha"] for r in rows] == [0.0, 0.8]
    assert rows[0]["map"] == sweep["clean_mAP"] and rows[1]["map"] == sweep["rows"][0]["mAP"]
    assert rows[1]["worst_attacker"] == "adaptive" and rows[1]["worst_rank1_x_chance"] == 4.0
    assert "worst rank-1" in stdout and (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    rc, _, err = run_cli(*sweep_args, tmp_path / "none")
    assert rc == 2 and "veil audit" in err


def test_sweep_fits_times_draws_reports_the_spread_with_replayable_seeds(fit_images, tiny_fddb, weights_path, tmp_path):
    """--fits N --draws M: N fresh fits × M fresh draws; mean ± sd over them; every draw replays from its seed."""
    import statistics

    from veil.detector import Detector
    from veil.evaluation import evaluate_fddb
    from veil.obfuscate import load_obfuscator

    out = tmp_path / "rep"
    rc, stdout, err = run_cli(
        "sweep",
        "--alphas",
        "0.8",
        "--fits",
        "2",
        "--draws",
        "2",
        "--dataset",
        tiny_fddb,
        "--images",
        fit_images,
        "--out",
        out,
        "--weights",
        weights_path,
        "--quiet",
        *FAST_FIT,
    )
    assert rc == 0, err
    doc = json.loads((out / "repeats.json").read_text())
    (row,) = doc["rows"]
    runs = row["runs"]
    assert doc["fit_seeds"] == [0, 1] and [r["fit_seed"] for r in runs] == [0, 0, 1, 1]
    assert len({r["draw_seed"] for r in runs}) == 4  # fresh draws, each recorded
    maps = [r["mAP"] for r in runs]
    assert row["mAP"]["mean"] == pytest.approx(statistics.fmean(maps))
    assert row["mAP"]["sd"] == pytest.approx(statistics.stdev(maps)) and row["mAP"]["n"] == 4
    assert runs[0]["nsr_db"] == runs[1]["nsr_db"] != runs[2]["nsr_db"]  # one NSR per fit: the fits differ
    assert "| 0.8 | 2 × 2 |" in (out / "repeats.md").read_text() and "± " in stdout
    # A recorded draw replays exactly: its fit's file and its seed give the same mAP.
    det = Detector.from_weights(weights_path)
    det.obfuscator, _ = load_obfuscator(0.8, noise=runs[2]["noise_file"], model=det.model)
    again = evaluate_fddb(det, tiny_fddb, progress=False, nsr=True, seed=runs[2]["draw_seed"])
    assert again.mAP == runs[2]["mAP"]
    rc, _, err = run_cli("sweep", "--alphas", "0.8", "--fits", "0", "--dataset", tiny_fddb, "--out", out)
    assert rc == 2 and "--fits" in err

"""The audit end to end on tiny data, through the CLI: cached decoders, noise, report, grids, sweep columns."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("dlib", reason="the identity metric needs the privacy extra (dlib-bin)")

from veil.cli.main import main


@pytest.fixture()
def noise_dir(tmp_path, weights_path):
    from veil.obfuscate import Obfuscator, save_obfuscator
    from veil.weights import sha256_file

    obf = Obfuscator(128, seed=0, init_sigma=2.0)
    d = tmp_path / "noise"
    meta = {
        "alpha": 0.5,
        "weights_sha256": sha256_file(weights_path),
        "model": "faceboxes",
        "split_point": "faceboxes.rdcl",
    }
    save_obfuscator(obf, d / "alpha-0.5.safetensors", meta)
    return d


def test_audit_end_to_end(tmp_path, monkeypatch, weights_path, fddb_dir, dlib_dir, noise_dir):
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    out = tmp_path / "out"
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # small work: extra threads only add contention on a shared 2-core machine
    try:
        rc = main(
            [
                "audit",
                "--alpha",
                "0",
                "0.5",
                "--noise-dir",
                str(noise_dir),
                "--dataset",
                str(fddb_dir),
                "--out",
                str(out),
                "--max-faces",
                "2",
                "--decoder-minutes",
                "0.02",
                "--whitebox-steps",
                "3",
                "--whitebox-faces",
                "1",
                "--train-images",
                str(dlib_dir),
                "--weights",
                str(weights_path),
                "--ks",
                "2",
                "--dup-ks",
                "2",
            ]
        )
    finally:
        torch.set_num_threads(prev)
    assert rc == 0
    assert (tmp_path / "cache" / "attackers" / "naive.safetensors").is_file()
    assert list((tmp_path / "cache" / "attackers").glob("adaptive-*.safetensors"))
    assert list((tmp_path / "cache" / "attackers").glob("adaptive-perceptual-*.safetensors"))
    assert list((tmp_path / "cache" / "attackers" / "audit-cache").glob("clean-*.npz"))  # npz, not pickle
    rep = json.loads((out / "alpha-0.5" / "report.json").read_text())
    assert rep["alpha"] == 0.5 and rep["scale"] == 3.0 and rep["n_faces"] == 2
    assert rep["chance_rank1"] == pytest.approx(1 / 2, abs=1e-4)
    for group in ("attackers", "clean_baseline"):
        for name in ("naive", "adaptive", "whitebox", "adaptive_avg2", "adaptive_dup2", "perceptual"):
            assert set(rep[group][name]) >= {
                "ssim",
                "psnr",
                "face_ssim",
                "rank1",
                "tar_at_far1",
                "rank1_ci95",
                "tar_ci95",
                "bins",
            }
            lo, hi = rep[group][name]["rank1_ci95"]
            assert 0.0 <= lo <= rep[group][name]["rank1"] <= hi <= 1.0
    assert rep["faces_digest"] and rep["clean_pass_cached"]  # the ALPHA 0 audit computed it first
    assert set(rep["timing_s"]) >= {"clean_pass", "obfuscated_pass", "scoring"}
    for name in ("naive", "adaptive", "perceptual"):
        md = rep["decoders"][name]
        assert md["seed"] is not None and md["data_order_seed"] is not None and len(md["curve_l1_px"]) == md["steps"]
    assert rep["noise_mode"] == "fresh" and "competent" in rep and "passes_every_bin" in rep
    assert rep["attackers"]["whitebox"]["n_probes"] == 1
    assert rep["references"]["original"]["rank1"] == 1.0 and rep["references"]["original"]["ssim"] == 1.0
    assert rep["references"]["constant"]["ssim"] < 0.9
    assert rep["worst_attacker"] in rep["attackers"]
    for name in ("report.md", "grid_faces.png", "learning_curves.png"):
        assert (out / "alpha-0.5" / name).stat().st_size > 0
    clean = json.loads((out / "alpha-0" / "report.json").read_text())
    assert clean["attackers"]["naive"] == clean["clean_baseline"]["naive"]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["alpha"] for r in summary] == [0.0, 0.5]


def test_privacy_columns_and_frontier(tmp_path):
    from veil.privacy.report import frontier_plot
    from veil.privacy.verdict import privacy_columns

    m = lambda r: {"ssim": 0.1, "psnr": 10.0, "face_ssim": 0.1, "rank1": r, "tar_at_far1": r}  # noqa: E731
    rep = {
        "chance_rank1": 0.02,
        "attackers": {"naive": m(0.1), "adaptive": m(0.3), "whitebox": m(0.2)},
        "clean_baseline": {"naive": m(0.5)},
    }
    cols = privacy_columns(rep)
    assert cols["worst_attacker"] == "adaptive" and cols["worst_rank1_x_chance"] == 15.0
    assert cols["attacker_competent"]
    p = frontier_plot(
        [{"alpha": 0.0, "map": 0.93, "worst_rank1": 0.6}, {"alpha": 0.8, "map": 0.9, "worst_rank1": 0.1}],
        tmp_path / "f.png",
        chance=0.02,
    )
    assert p.stat().st_size > 1000
    from veil.privacy.report import frontier_markdown, frontier_rows

    sweep = {"clean_mAP": 0.93, "rows": [{"alpha": 0.8, "mAP": 0.92, "drop_points": 1.0}]}
    rows = frontier_rows(sweep, [{**rep, "alpha": 0.8}, {**rep, "alpha": 0.0}])
    assert [(r["alpha"], r["map"]) for r in rows] == [(0.0, 0.93), (0.8, 0.92)]
    assert "| 0.8 | 0.9200 | 1.0000 |" in frontier_markdown(rows)


def test_missing_noise_is_a_clear_error(tmp_path, weights_path, fddb_dir, capsys):
    rc = main(
        [
            "audit",
            "--alpha",
            "0.3",
            "--noise",
            str(tmp_path / "nope.safetensors"),
            "--dataset",
            str(fddb_dir),
            "--out",
            str(tmp_path / "o"),
            "--max-faces",
            "2",
            "--weights",
            str(weights_path),
            "--decoder-minutes",
            "0.01",
            "--train-images",
            str(tmp_path),
        ]
    )
    assert rc == 2
    assert "noise file not found" in capsys.readouterr().err


def test_missing_dataset_names_flag_and_variable(tmp_path, monkeypatch, weights_path, capsys):
    monkeypatch.delenv("VEIL_DATASET", raising=False)
    rc = main(
        [
            "audit",
            "--alpha",
            "0",
            "--out",
            str(tmp_path / "o"),
            "--weights",
            str(weights_path),
            "--train-images",
            str(tmp_path),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "--dataset" in err and "VEIL_DATASET" in err
    monkeypatch.delenv("VEIL_FIT_IMAGES", raising=False)
    rc = main(["audit", "--alpha", "0", "--out", str(tmp_path / "o"), "--dataset", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--train-images" in err and "VEIL_FIT_IMAGES" in err


def test_leak_by_scale_grows_with_resolution(fddb_dir):
    from veil.privacy.audit import blur_leak_by_scale, select_fddb_faces

    faces = select_fddb_faces(fddb_dir, max_faces=3)
    res = blur_leak_by_scale(faces, (1.0, 4.0))
    assert res[4.0]["face_ssim"] > res[1.0]["face_ssim"]
    assert res[4.0]["psnr"] > res[1.0]["psnr"]

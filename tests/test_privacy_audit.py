"""The audit end to end on tiny data, through the CLI: cached decoders, noise, report, grids, sweep columns."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("dlib", reason="the identity metric needs the privacy extra (dlib-bin)")

from veil.cli.main import main


@pytest.fixture()
def noise_dir(tmp_path, weights_path, dlib_dir):
    """Noise really fitted (a short fit on the dlib photos, never FDDB), not an untrained file."""
    from veil.models import create
    from veil.obfuscate.fit import FitConfig
    from veil.obfuscate.recipe import fit_and_save

    model = create("faceboxes", weights=weights_path)
    d = tmp_path / "noise"
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit_and_save(
            model,
            model.weights_sha256,
            [dlib_dir],
            d / "alpha-0.5.safetensors",
            FitConfig(alpha=0.5, steps=15, batch_size=3),
            crop=256,
            progress=False,
        )
    finally:
        torch.set_num_threads(prev)
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
                "--whitebox-start",
                "decoder",
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
    rep = json.loads((out / "alpha-0.5" / "report.json").read_text())
    key_dir = tmp_path / "cache" / "attackers" / rep["model_key"]  # model, split and weights
    assert rep["model_key"].startswith("faceboxes-rdcl-") and rep["split_point"] == "faceboxes.rdcl"
    assert (key_dir / "naive.safetensors").is_file()
    assert list(key_dir.glob("adaptive-*.safetensors"))
    assert list(key_dir.glob("adaptive-perceptual-*.safetensors"))
    assert list((key_dir / "audit-cache").glob("clean-*.npz"))  # npz, not pickle
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
    # the TAR goal is relative to the grey reference the audit measured, floored at the FAR
    grey_tar = rep["references"]["constant"]["tar_at_far1"]
    assert rep["tar_reference"] == max(grey_tar, 0.01) and isinstance(rep["passes_tar"], bool)
    assert rep["passes_tar"] == (rep["worst_tar_at_far1"] <= 2 * rep["tar_reference"])
    assert "the reference" in (out / "alpha-0.5" / "report.md").read_text()
    assert rep["attackers"]["whitebox"]["n_probes"] == 1 and rep["whitebox_start"] == "decoder"  # the hybrid
    assert rep["references"]["original"]["rank1"] == 1.0 and rep["references"]["original"]["ssim"] == 1.0
    assert rep["references"]["constant"]["ssim"] < 0.9
    assert rep["worst_attacker"] in rep["attackers"]
    for name in ("report.md", "grid_faces.png", "learning_curves.png"):
        assert (out / "alpha-0.5" / name).stat().st_size > 0
    clean = json.loads((out / "alpha-0" / "report.json").read_text())
    assert clean["attackers"]["naive"] == clean["clean_baseline"]["naive"]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["alpha"] for r in summary] == [0.0, 0.5]
    # `veil frontier` joins these reports with a sweep's mAP per ALPHA (veil sweep's JSON shape)
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"clean_mAP": 0.97, "rows": [{"alpha": 0.5, "mAP": 0.95, "drop_points": 2.0}]}))
    assert main(["frontier", "--sweep", str(sweep), "--audits", str(out), "--out", str(tmp_path / "fr")]) == 0
    rows = json.loads((tmp_path / "fr" / "frontier.json").read_text())
    assert [(r["alpha"], r["map"]) for r in rows] == [(0.0, 0.97), (0.5, 0.95)]
    assert rows[1]["worst_rank1"] == rep["worst_rank1"] and rows[1]["worst_attacker"] == rep["worst_attacker"]
    assert rows[1]["rank1_whitebox"] == rep["attackers"]["whitebox"]["rank1"]
    assert "| 0.5 | 0.9500 | 2.0000 |" in (tmp_path / "fr" / "frontier.md").read_text()
    assert (tmp_path / "fr" / "frontier.png").stat().st_size > 1000


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


def test_leak_scale_cli_grows_with_resolution_and_follows_the_split(fddb_dir, tmp_path, capsys):
    """`veil leak-scale`: the identity left in the activation grid grows with the input scale; a split with
    the same stride gives the same numbers; a model without faces is refused with the reason."""
    js = tmp_path / "leak.json"
    argv = ["leak-scale", "--dataset", str(fddb_dir), "--max-faces", "3", "--scales", "1", "4", "--json", str(js)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "3 faces, chance rank-1 0.3333" in out and "scale ×4:" in out
    res = json.loads(js.read_text())
    assert set(res) == {"1.0", "4.0"}
    assert res["4.0"]["face_ssim"] > res["1.0"]["face_ssim"] and res["4.0"]["psnr"] > res["1.0"]["psnr"]
    assert res["1.0"]["rank1"] <= res["4.0"]["rank1"]
    assert main([*argv[:-1], str(tmp_path / "incep.json"), "--split", "inception2"]) == 0  # stride 32 too
    assert json.loads((tmp_path / "incep.json").read_text()) == res
    capsys.readouterr()
    assert main(["leak-scale", "--model", "digits", "--dataset", str(fddb_dir), "--max-faces", "2"]) == 2
    assert "sees no faces" in capsys.readouterr().err

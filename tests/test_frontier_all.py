"""`veil frontier --defenses`: one table and plot over every defense, from the producers' own JSON formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from veil.cli.main import main
from veil.privacy.frontier import finish_rows, load_rows

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _ident(r1, r8, grey=None):
    def m(r):
        return {
            "rank1": r,
            "rank1_ci95": [r / 2, r * 2],
            "rank1_x_chance": r / 0.01,
            "tar_at_far1": r + 0.1,
            "tar_ci95": [r, r + 0.2],
        }

    d = {"n_faces": 100, "n_images": 63, "chance_rank1": 0.01, "faces_digest": "x", "k1": m(r1), "k8": m(r8)}
    if grey is not None:
        d["grey_reference"] = {"rank1": grey, "rank1_ci95": [0.0, 0.05], "tar_at_far1": 0.02, "tar_ci95": [0, 0.07]}
    return d


def _write(tmp_path: Path) -> Path:
    """Files shaped exactly like benchmarks/defenses.py and benchmarks/audit_cost.py write them."""
    d = tmp_path / "in"
    d.mkdir()
    docs = {
        "clean-id.json": {"defense": "clean", "alpha": None, "identity": _ident(0.43, 0.43)},
        "bn-0.6-map.json": {"defense": "bottleneck", "alpha": 0.6, "map": {"draws": [0.88, 0.86], "mean": 0.87}},
        "bn-0.6-id.json": {"defense": "bottleneck", "alpha": 0.6, "identity": _ident(0.04, 0.05, grey=0.01)},
        "bn-0.6-id-warm.json": {"defense": "bottleneck", "alpha": 0.6, "identity": _ident(0.06, 0.03)},
        "noise-0.9-id.json": {"defense": "noise", "alpha": 0.9, "noise_sha256": "abc", "identity": _ident(0.22, 0.25)},
        "tail-0.9-map.json": {
            "defense": "robust-tail",
            "alpha": 0.9,
            "noise_sha256": "abc",
            "map": {"draws": [0.92, 0.93], "mean": 0.925},
        },
        "audit_cost.json": {
            "faces": 40,
            "images": 24,
            "runs": [
                {"config": "alpha 0.8, fresh noise", "seconds": 10.0, "worst": "perceptual", "worst_rank1": 0.7},
                {"config": "clean (ALPHA 0)", "clean_pass_cached": True, "seconds": 0.0},
            ],
        },
    }
    for name, doc in docs.items():
        (d / name).write_text(json.dumps(doc))
    return d


def test_synthetic_table_and_plot(tmp_path, capsys):
    d = _write(tmp_path)
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"clean_mAP": 0.96, "rows": [{"alpha": 0.8, "mAP": 0.80, "nsr_db": -3.5}]}))
    assert main(["frontier", "--defenses", str(d), "--sweep", str(sweep), "--out", str(tmp_path / "o")]) == 0
    rows = {(r["defense"], r["alpha"]): r for r in json.loads((tmp_path / "o" / "frontier_all.json").read_text())}
    bn = rows[("bottleneck", 0.6)]
    assert bn["map"] == 0.87 and bn["drop_points"] == 9.0
    # two identity runs: each attacker keeps its higher rank-1; the worst is 0.06 = 6x chance
    assert bn["attackers"]["decoder k=1"]["rank1"] == 0.06 and bn["attackers"]["decoder avg8"]["rank1"] == 0.05
    assert bn["worst_rank1"] == 0.06 and bn["worst_x_chance"] == 6.0 and bn["meets_goal"] is False
    # the robust tail has no identity file: it takes the one with its noise_sha256 (same wire)
    tail = rows[("robust-tail", 0.9)]
    assert tail["worst_rank1"] == 0.25 and tail["map"] == 0.925
    # the noise-only file has no mAP and the sweep has no 0.9 row: nothing is invented
    assert rows[("noise", 0.9)]["map"] is None and rows[("noise", 0.9)]["drop_points"] is None
    audit = rows[("noise (fresh), audit_cost (40 faces)", 0.8)]
    assert audit["map"] == 0.80 and audit["nsr_db"] == -3.5 and audit["worst_x_chance"] == 28.0
    assert audit["worst_rank1_ci95"] is None
    assert rows[("clean", None)]["map"] == 0.96
    md = (tmp_path / "o" / "frontier_all.md").read_text()
    assert md == capsys.readouterr().out.rstrip("\n") + "\n"
    assert "| bottleneck | 0.6 | 0.8700 | 9.0 | – | 0.060 [0.030, 0.120] | 0.050 [0.025, 0.100] | – |" in md
    assert (tmp_path / "o" / "frontier_all.png").stat().st_size > 10_000


def test_veil_audit_report_rows(tmp_path):
    """A `veil audit` report.json (keys as src/veil/privacy/audit.py writes them) joined with a sweep."""

    def m(r):
        return {"ssim": 0.1, "psnr": 10.0, "face_ssim": 0.1, "rank1": r, "rank1_ci95": [r / 2, r * 2],
                "tar_at_far1": r, "tar_ci95": [r / 2, r * 2], "bins": {}}  # fmt: skip

    rep = {"alpha": 0.8, "noise_mode": "keyed", "chance_rank1": 0.025, "n_faces": 40,
           "attackers": {"naive": m(0.1), "adaptive": m(0.35), "whitebox": m(0.3), "extra": m(0.9)},
           "clean_baseline": {"naive": m(0.4)}, "references": {"constant": m(0.025), "original": m(1.0)}}  # fmt: skip
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "report.json").write_text(json.dumps(rep))
    sweep = {"clean_mAP": 0.97, "rows": [{"alpha": 0.8, "mAP": 0.958, "nsr_db": -1.5}]}
    (row,) = finish_rows(load_rows([tmp_path / "a"]), sweep)
    assert row["defense"] == "noise (keyed), veil audit" and set(row["attackers"]) == {"naive", "adaptive", "whitebox"}
    assert row["worst_attacker"] == "adaptive" and row["worst_x_chance"] == 14.0 and row["worst_tar_at_far1"] == 0.35
    assert row["map"] == 0.958 and row["drop_points"] == 1.2 and row["nsr_db"] == -1.5
    assert row["reference_grey_rank1"] == 0.025 and row["meets_goal"] is False


def test_refuses_unknown_json(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="neither"):
        load_rows([tmp_path / "x.json"])
    with pytest.raises(FileNotFoundError):
        load_rows([tmp_path / "missing.json"])
    with pytest.raises(SystemExit, match="--defenses"):  # neither the old (sweep + audits) nor the new inputs
        main(["frontier", "--out", str(tmp_path / "o")])


def test_committed_results():
    """The real committed results: every value in the table is the one in its file."""
    # audit_cost.py outputs (other notes named audit_cost*.json, e.g. a hand-written cost summary, are not rows)
    audits = [f for f in sorted(RESULTS.glob("audit_cost*.json")) if "runs" in json.loads(f.read_text())]
    files = sorted((RESULTS / "defenses").glob("*.json")) + audits
    rows = finish_rows(load_rows(files), clean_map=0.97)
    by = {(r["defense"], r["alpha"]): r for r in rows}
    for f in (RESULTS / "defenses").glob("*.json"):
        doc = json.loads(f.read_text())
        r = by[(doc["defense"], doc["alpha"])]
        assert str(f) in r["sources"]
        if "map" in doc:
            assert r["map"] == doc["map"]["mean"] and r["drop_points"] == round(100 * (0.97 - doc["map"]["mean"]), 2)
        if "identity" in doc:  # repeated runs keep the higher rank-1 of each attacker
            assert r["attackers"]["decoder k=1"]["rank1"] >= doc["identity"]["k1"]["rank1"]
            assert r["worst_rank1"] >= doc["identity"]["k8"]["rank1"]
            assert r["chance_rank1"] == doc["identity"]["chance_rank1"]
    for f in audits:
        doc = json.loads(f.read_text())
        for run in doc["runs"]:
            if "worst_rank1" in run:
                alpha = float(run["config"].split(",")[0].split()[1])
                mode = run["config"].split(", ")[1].split()[0]
                r = by[(f"noise ({mode}), {f.stem} ({doc['faces']} faces)", alpha)]
                assert r["worst_rank1"] == run["worst_rank1"] and r["worst_attacker"] == run["worst"]
                # no mAP in an audit-cost file: only the per-channel noise row's at that ALPHA, if measured
                plain = by.get(("noise", alpha))
                assert r["map"] == (plain["map"] if plain else None)
    tail = json.loads((RESULTS / "defenses" / "tail-0.9-map.json").read_text())
    noise = json.loads((RESULTS / "defenses" / "noise-0.9-id.json").read_text())
    assert tail["noise_sha256"] == noise["noise_sha256"]
    assert by[("robust-tail", 0.9)]["worst_rank1"] == max(noise["identity"][k]["rank1"] for k in ("k1", "k8"))

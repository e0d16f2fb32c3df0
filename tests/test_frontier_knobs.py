"""The frontier's cost columns and knob rows from real (small) benchmarks/knobs.py results, and the
independence rule: a scoring decoder that shares the defense's in-loop adversary is flagged/refused."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch

from veil.cli.main import main
from veil.privacy.frontier import _goal, finish_rows, load_rows

ROOT = Path(__file__).resolve().parents[1]


def _knobs():
    spec = importlib.util.spec_from_file_location("knobs_bench", ROOT / "benchmarks" / "knobs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def photos(wider_dir, tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    for p in sorted((wider_dir / "images").rglob("*.jpg"))[:4]:
        shutil.copy(p, d / p.name)
    return d


def test_frontier_fills_nsr_ms_bytes_and_knob_rows_from_real_results(weights_path, fddb_dir, photos, tmp_path):
    from veil import assets
    from veil.obfuscate import noise_path

    torch.set_num_threads(1)
    knobs = _knobs()
    res = tmp_path / "res"
    common = ["--weights", str(weights_path), "--dataset", str(fddb_dir), "--quiet", "--threads", "1"]
    # One real cell: inception2 at ×1, two 2-step fits on 4 WIDER photos, 3 FDDB images (a check, not a result).
    cell = res / "cell.json"
    args = ["--split", "inception2", "--scale", "1", "--alpha", "0.8", "--fits", "2", "--fit-steps", "2"]
    args += ["--fit-images", str(photos), "--skip-privacy", "--shard", "0/75", "--out", str(cell), *common]
    assert knobs.main(args) == 0
    doc = json.loads(cell.read_text())
    assert doc["defense"] == "noise @ inception2 ×1" and doc["knob"] == {"split": "inception2", "scale": 1.0}
    assert len(doc["map"]["draws"]) == 2 and doc["map"]["sd"] is not None and isinstance(doc["nsr_db"], float)
    # Client cost of that cell and of the shipped ALPHA 0.8 noise (timed together), on a small frame.
    cost = res / "cost.json"
    noise = noise_path(0.8, assets.NOISE_DIR)
    args = ["--client-cost", "--splits", "inception2", "--scales", "1", "--rounds", "2", "--frame-hw", "96", "160"]
    args += ["--frame", str(sorted(photos.iterdir())[0]), "--noise", f"0.8={noise}", "--nsr-images", "2"]
    # a bottleneck fitted after inception2 (2 steps): timed with its own split's head, named after it
    bn2 = tmp_path / "bn2.safetensors"
    fit = ["fit-bottleneck", "--alpha", "0.8", "--split", "inception2", "--steps", "2", "--batch-size", "2"]
    fit += ["--crop", "128", "--images", str(photos), "--weights", str(weights_path), "--quiet", "--out", str(bn2)]
    assert main(fit) == 0
    args += ["--bottleneck", f"0.8={bn2}"]
    assert knobs.main([*args, "--out", str(cost), *common]) == 0
    cc = json.loads(cost.read_text())["client_cost"]
    deep = next(x for x in cc["defenses"] if x["defense"] == "bottleneck @ inception2 ×3")
    assert deep["shape"] == [1, 6, 9, 15] and deep["client_ms"] > 0  # ALPHA 0.8: 6 channels on the stride-32 grid
    (c,) = cc["cells"]
    assert c["activation_shape"] == [1, 128, 3, 5] and c["bytes_fp32"] == 4 * 128 * 15  # 96x160 at x1, stride 32
    # A defenses.py-shaped mAP file for that noise: its row gets ms, bytes and NSR from the cost file.
    (res / "noise-0.8-map.json").write_text(
        json.dumps({"defense": "noise", "alpha": 0.8, "map": {"mean": 0.95, "draws": [0.95]}})
    )

    # Another objective's noise at the same ALPHA (another file): same client cost, but not this NSR.
    other = {
        "defense": "noise (adversarial)",
        "alpha": 0.8,
        "noise_sha256": "f" * 64,
        "map": {"mean": 0.9, "draws": [0.9]},
    }
    (res / "adv-0.8-map.json").write_text(json.dumps(other))
    out = tmp_path / "o"
    assert main(["frontier", "--defenses", str(res), "--clean-map", "0.97", "--out", str(out)]) == 0
    rows = {(r["defense"], r["alpha"]): r for r in json.loads((out / "frontier_all.json").read_text())}
    knob = rows[("noise @ inception2 ×1", 0.8)]
    assert knob["map"] == doc["map"]["mean"] and knob["nsr_db"] == doc["nsr_db"] and knob["knob"] == doc["knob"]
    assert knob["client_ms"] == c["client_ms_median"] and knob["bytes_per_request"] == c["bytes_fp32"]
    for name in ("noise", "robust-tail"):
        d = next(x for x in cc["defenses"] if x["defense"] == name)
        assert d["nsr_db"] > 0 and d["bytes_per_request"] == 4 * 128 * 9 * 15  # 288x480 at x3
    noisy = rows[("noise", 0.8)]
    assert noisy["client_ms"] == cc["defenses"][0]["client_ms"] and noisy["nsr_db"] == cc["defenses"][0]["nsr_db"]
    assert noisy["bytes_per_request"] == 4 * 128 * 9 * 15
    adv = rows[("noise (adversarial)", 0.8)]
    assert adv["client_ms"] == noisy["client_ms"] and adv["nsr_db"] is None
    md = (out / "frontier_all.md").read_text()
    assert f"| noise @ inception2 ×1 | 0.8 | {doc['map']['mean']:.4f} |" in md
    assert f"| {c['client_ms_median']:.2f} | {c['bytes_fp32']} |" in md


def _id_doc(decoder: dict, adversary: dict | None) -> dict:
    r = {"rank1": 0.01, "rank1_ci95": [0.002, 0.054], "tar_at_far1": 0.02, "tar_ci95": [0.005, 0.07]}
    doc = {
        "defense": "bottleneck",
        "alpha": 0.8,
        "map": {"mean": 0.965, "draws": [0.965]},
        "decoder": decoder,
        "identity": {"n_faces": 100, "chance_rank1": 0.01, "k1": r, "k8": r},
    }
    if adversary is not None:
        doc["adversary"] = adversary
    return doc


def test_scoring_decoder_sharing_the_defense_adversary_is_flagged(tmp_path):
    from veil.defenses.measure import check_scoring_independence
    from veil.privacy.audit import IndependenceError

    adv = {"seed": 0, "data_order_seed": 0, "weights_sha256": "ab" * 32}
    shared = {"seed": 0, "data_order_seed": 77, "init_sha256": None}
    fresh = {"seed": 9001, "data_order_seed": 77, "init_sha256": None}
    for name, dec in (("shared", shared), ("fresh", fresh)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "bn.json").write_text(json.dumps(_id_doc(dec, adv)))
    bad = finish_rows(load_rows([tmp_path / "shared"]), clean_map=0.97)[0]
    good = finish_rows(load_rows([tmp_path / "fresh"]), clean_map=0.97)[0]
    assert bad["independence"].startswith("clash") and "seed 0" in bad["independence"]
    assert bad["meets_goal"] is None  # within the goal on paper, but scored by the defense's own seed
    assert good["independence"] == "ok" and good["meets_goal"] is True
    with pytest.raises(IndependenceError, match="seed"):
        check_scoring_independence(shared, {"adversary": adv})
    # Starting from the adversary's own weights is refused too.
    with pytest.raises(IndependenceError, match="adversary weights"):
        check_scoring_independence({**fresh, "init_sha256": adv["weights_sha256"]}, {"adversary": adv})
    assert main(["frontier", "--defenses", str(tmp_path / "shared"), "--out", str(tmp_path / "o")]) == 0
    assert "**NO** (clash" in (tmp_path / "o" / "frontier_all.md").read_text()


def test_defense_files_record_their_adversary(weights_path, wider_dir, tmp_path):
    """A bottleneck trained against an in-loop adversary records {seed, data_order_seed, weights_sha256};
    metadata that names an adversary without them is refused."""
    from veil.defenses import files
    from veil.defenses.bottleneck import BottleneckSpec, fit_bottleneck, load_bottleneck, save_bottleneck
    from veil.defenses.distill import DistillConfig, build_bank
    from veil.weights import load_faceboxes

    torch.set_num_threads(1)
    model, digest = load_faceboxes(weights_path)
    bank = build_bank(
        model.head, model.tail, [wider_dir / "images"], crop=128, max_images=4, keep_images=True, progress=False
    )
    cfg = DistillConfig(steps=2, batch_size=2, seed=5)
    fb, log, data = fit_bottleneck(
        model, BottleneckSpec.from_alpha(0.8), [], cfg, bank=bank, adversary_weight=0.1, progress=False
    )
    assert (
        fb.adversary["seed"] == 5 and fb.adversary["data_order_seed"] == 5 and len(fb.adversary["weights_sha256"]) == 64
    )
    path = save_bottleneck(
        fb, tmp_path / "b.safetensors", weights_sha256=digest, cfg=cfg, log=log, data=data, adversary_weight=0.1
    )
    _, meta = load_bottleneck(path, model, weights_sha256=digest)
    assert meta["adversary"] == fb.adversary
    t = {"w": torch.zeros(2)}
    with pytest.raises(ValueError, match="adversary"):
        files.save(tmp_path / "x.safetensors", "f", t, {"weights_sha256": digest, "adversary_weight": 0.5})
    with pytest.raises(ValueError, match="data_order_seed"):
        files.save(tmp_path / "x.safetensors", "f", t, {"weights_sha256": digest, "adversary": {"seed": 1}})
    assert not (tmp_path / "x.safetensors").exists()


def test_audit_rows_of_noise_take_the_measured_noise_row(tmp_path):
    """An audit_cost run of ALPHA 0.8 noise has no mAP of its own: it takes the per-channel noise row's."""
    audit = {"faces": 100, "runs": [{"config": "alpha 0.8, fresh noise", "worst": "perceptual", "worst_rank1": 0.54}]}
    (tmp_path / "audit_cost.json").write_text(json.dumps(audit))
    noise = {"defense": "noise", "alpha": 0.8, "nsr_db": 3.6, "map": {"mean": 0.96, "draws": [0.96, 0.96]}}
    (tmp_path / "noise-0.8-map.json").write_text(json.dumps(noise))
    rows = {r["defense"]: r for r in finish_rows(load_rows([tmp_path]), clean_map=0.9736)}
    a = rows["noise (fresh), audit_cost (100 faces)"]
    assert a["map"] == 0.96 and a["nsr_db"] == 3.6 and a["drop_points"] == 1.36 and a["worst_x_chance"] == 54.0
    assert a["meets_goal"] is False and rows["noise"]["worst_rank1"] is None


def test_knob_rows_make_no_claim_where_the_recipe_is_not_competent_on_clean(tmp_path):
    def ident(r1):
        m = {"rank1": r1, "rank1_ci95": [0.0, 0.05], "tar_at_far1": 0.0, "tar_ci95": [0.0, 0.04]}
        return {"n_faces": 100, "chance_rank1": 0.01, "k1": m, "k8": m, "large_k1": m}

    for split, clean_r1 in (("inception2", 0.03), ("rdcl", 0.48)):
        knob = {"split": split, "scale": 3.0}
        cell = {"defense": f"noise @ {split} ×3", "alpha": 0.8, "knob": knob, "identity": ident(0.01)}
        cell["map"] = {"mean": 0.966, "draws": [0.966, 0.966]}
        clean = {"defense": f"clean @ {split} ×3", "alpha": None, "knob": knob, "identity": ident(clean_r1)}
        (tmp_path / f"{split}.json").write_text(json.dumps(cell))
        (tmp_path / f"clean-{split}.json").write_text(json.dumps(clean))
    (tmp_path / "lone.json").write_text(
        json.dumps({**cell, "defense": "noise @ inception1 ×3", "knob": {"split": "inception1", "scale": 3.0}})
    )
    # over the mAP budget and never attacked: fails the goal on mAP alone, whatever the attackers' competence
    costly = {k: v for k, v in cell.items() if k != "identity"}
    costly.update(defense="noise @ inception2 ×3", alpha=0.9, map={"mean": 0.93, "draws": [0.93]})
    (tmp_path / "costly.json").write_text(json.dumps(costly))
    done = finish_rows(load_rows([tmp_path]), clean_map=0.9735)
    rows = {r["defense"]: r for r in done if r["alpha"] != 0.9}
    over = next(r for r in done if r["alpha"] == 0.9)
    assert over["worst_rank1"] is None and over["meets_goal"] is False and _goal(over) == "no"
    assert rows["noise @ inception2 ×3"]["competent"] is False and rows["noise @ inception2 ×3"]["meets_goal"] is None
    assert rows["noise @ rdcl ×3"]["competent"] is True and rows["noise @ rdcl ×3"]["meets_goal"] is True
    assert rows["noise @ inception1 ×3"]["competent"] is None and rows["noise @ inception1 ×3"]["meets_goal"] is None
    assert main(["frontier", "--defenses", str(tmp_path), "--clean-map", "0.9735", "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "frontier_all.md").read_text()
    assert "no claim: attacker not competent on clean" in md and "– (competence not measured)" in md


def test_tar_above_twice_its_reference_fails_a_row_at_chance(tmp_path):
    """Rank-1 at chance is not enough: TAR@1 %FAR must stay within 2× max(grey's TAR, the FAR) too."""
    from veil.privacy.verdict import privacy_columns, tar_reference

    assert tar_reference(0.0) == 0.01 and tar_reference(None) == 0.01 and tar_reference(0.03) == 0.03
    fresh = {"seed": 9001, "data_order_seed": 77, "init_sha256": None}
    for name, tar in (("low", 0.02), ("high", 0.07)):
        doc = _id_doc(fresh, None)
        doc["identity"]["k1"] = {**doc["identity"]["k1"], "tar_at_far1": tar}
        doc["identity"]["grey_reference"] = {"rank1": 0.01, "tar_at_far1": 0.0}
        (tmp_path / name).mkdir()
        (tmp_path / name / "bn.json").write_text(json.dumps(doc))
    low = finish_rows(load_rows([tmp_path / "low"]), clean_map=0.97)[0]
    high = finish_rows(load_rows([tmp_path / "high"]), clean_map=0.97)[0]
    assert low["worst_x_chance"] == high["worst_x_chance"] == 1.0 and low["tar_reference"] == 0.01
    assert low["worst_tar_x_reference"] == 2.0 and low["meets_goal"] is True
    assert high["worst_tar_x_reference"] == 7.0 and high["meets_goal"] is False and _goal(high) == "no"
    assert main(["frontier", "--defenses", str(tmp_path / "high"), "--out", str(tmp_path / "o")]) == 0
    assert "| 0.070 (7×) |" in (tmp_path / "o" / "frontier_all.md").read_text()
    # the audit's own verdict applies the same rule, with the grey reference it measured
    m = lambda r, t: {"rank1": r, "tar_at_far1": t}  # noqa: E731
    rep = {
        "chance_rank1": 0.01,
        "attackers": {"naive": m(0.01, 0.05)},
        "clean_baseline": {"naive": m(0.5, 0.5)},
        "references": {"constant": m(0.0, 0.0)},
    }
    cols = privacy_columns(rep)
    assert cols["passes_tar"] is False and cols["worst_tar_x_reference"] == 5.0
    rep["references"]["constant"] = m(0.0, 0.03)
    assert privacy_columns(rep)["passes_tar"] is True


def test_a_variant_takes_the_client_cost_of_its_own_split_only():
    """A refit at inception3 costs what the inception3 bottleneck costs, never the RDCL one of the same name."""
    from veil.privacy.frontier import _new_row, apply_costs

    names = ["bottleneck (second fit) @ inception3 ×3", "bottleneck, identity adversary @ inception3 ×3"]
    names += ["bottleneck (second fit)", "bottleneck @ inception2 ×3", "noise (fresh), audit_cost (40 faces)"]
    rows = [_new_row(n, 0.6) for n in names]
    cost = {"bytes_per_request": 1, "source": "c"}
    costs = [
        {**cost, "defense": "bottleneck", "alpha": 0.6, "client_ms": 7000.0},
        {**cost, "defense": "bottleneck @ inception3 ×3", "alpha": 0.6, "client_ms": 7500.0},
        {**cost, "defense": "noise", "alpha": None, "client_ms": 6500.0},
    ]
    apply_costs(rows, costs)
    assert [r["client_ms"] for r in rows] == [7500.0, 7500.0, 7000.0, None, 6500.0]


def test_recorded_split_reads_the_file_and_refuses_a_corrupt_one(tmp_path):
    """The split a defense file names, read before any check; a file that is no defense file is refused."""
    from veil.defenses import files

    t = {"w": torch.zeros(2)}
    meta = {"weights_sha256": "ab" * 32, "model": "faceboxes", "split_point": "faceboxes.inception3"}
    path = files.save(tmp_path / "d.safetensors", "f", t, meta)
    assert files.recorded_split(path) == "faceboxes.inception3"
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(files.DefenseFileError, match="not a readable defense file"):
        files.recorded_split(tmp_path / "bad.safetensors")

"""The hybrid white-box attack (a decoder's reconstruction starts the search) and its frontier cells."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn


@pytest.fixture(scope="module")
def deep(weights_path):
    from veil.models.pretrained import create

    return create("faceboxes", "inception1", weights=weights_path)


class _Counting(nn.Module):
    """A decoder that counts its calls (the hybrid's start must come from it)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(a)


def test_audit_starts_the_whitebox_from_the_adaptive_decoder_through_a_bottleneck_code(deep, fddb_dir):
    """In the obfuscated pass the search starts from ``whitebox_init_adaptive`` and inverts ``whitebox_head``
    (head, then the bottleneck's public code): with the observation being that code, the search starts
    near its optimum, so the white-box face is scored."""
    from veil.defenses.bottleneck import Bottleneck, BottleneckSpec, as_decoder_input
    from veil.defenses.measure import ObservedHead
    from veil.privacy.audit import Attacks, make_views, run_attacks, select_fddb_faces
    from veil.privacy.decoders import Decoder

    torch.manual_seed(0)
    bn = Bottleneck(BottleneckSpec.from_alpha(0.6), deep.channels).eval()

    class Wire(nn.Module):
        def forward(self, a: torch.Tensor) -> torch.Tensor:
            return as_decoder_input(bn(a), deep.channels)

    start, clean_start = _Counting(Decoder.for_model(deep)), _Counting(Decoder.for_model(deep))
    faces = select_fddb_faces(fddb_dir, max_faces=2)
    views = make_views(faces, 1.0, enlarge=False)[:1]
    att = Attacks(
        deep,
        Decoder.for_model(deep),
        obfuscator=Wire(),
        whitebox_steps=2,
        whitebox_faces=2,
        ks=(),
        dup_ks=(),
        whitebox_init=clean_start,
        whitebox_init_adaptive=start,
        whitebox_head=ObservedHead(deep.network.head, lambda a: as_decoder_input(bn.code(a), deep.channels)),
    )
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        leaks = run_attacks(faces, views, att, 1.0, noisy=True, progress=False)
    finally:
        torch.set_num_threads(prev)
    assert start.calls == 1 and clean_start.calls == 0  # one decode per view, the adaptive one
    assert len(leaks["whitebox"].emb) == 1


def _cell(fam: str, kind: str, alpha, main: float, large: float, chain: float | None = None) -> dict:
    m = lambda r: {"rank1": r, "rank1_ci95": [0.0, 0.5], "tar_at_far1": 0.0, "tar_ci95": [0.0, 0.1]}  # noqa: E731
    atk = {fam: {**m(main), "bins": {">=192": m(large)}}}
    if chain is not None:
        atk["layerwise"] = {**m(chain), "bins": {">=192": m(chain)}}
    return {
        "split": "inception3",
        "scale": 3.0,
        "alpha": alpha,
        "defense": {"kind": kind, **({"alpha": alpha} if alpha is not None else {})},
        "attacker_family": fam,
        "chance_rank1": 0.01,
        "attackers": atk,
    }


def test_frontier_places_hybrid_cells_on_clean_and_bottleneck_rows(tmp_path):
    """A hybrid cell fills its own columns and its chain's; a competent clean hybrid makes the inception3
    bottleneck row's claim count, and its worst attacker is read from the bottleneck cell."""
    from veil.privacy.frontier import _goal, finish_rows, load_rows

    (tmp_path / "clean.json").write_text(json.dumps(_cell("hybrid", "clean", None, 0.3, 0.35, chain=0.04)))
    (tmp_path / "bn.json").write_text(json.dumps(_cell("hybrid", "bottleneck", 0.6, 0.02, 0.03, chain=0.01)))
    rows = {r["defense"]: r for r in finish_rows(load_rows([tmp_path]))}
    ref, bn = rows["clean @ inception3 ×3"], rows["bottleneck @ inception3 ×3"]
    assert ref["attackers"]["layerwise k=1"]["rank1"] == 0.04 and ref["attackers"]["hybrid k=1"]["rank1"] == 0.3
    assert bn["competent"] is True
    assert bn["worst_attacker"] == "hybrid k=1, faces ≥ 192 px" and bn["worst_rank1"] == 0.03
    (tmp_path / "clean.json").write_text(json.dumps(_cell("hybrid", "clean", None, 0.03, 0.05)))
    rows = {r["defense"]: r for r in finish_rows(load_rows([tmp_path]))}
    assert rows["bottleneck @ inception3 ×3"]["competent"] is False  # no mAP here: nothing to judge
    (tmp_path / "bn.json").write_text(json.dumps(_cell("hybrid", "bottleneck", 0.6, 0.04, 0.03)))
    rows = finish_rows(load_rows([tmp_path]))
    bn = next(r for r in rows if r["defense"].startswith("bottleneck"))
    bn["map"], bn["drop_points"], bn["meets_goal"] = 0.96, 1.3, False  # as finish_rows sets it with an mAP
    assert bn["competent"] is False and _goal(bn) == "no"  # a leak above 2x chance fails even so
    bn["meets_goal"] = None
    assert _goal(bn).startswith("no claim")
    # a labelled variant (--label) gets its own row beside the plain bottleneck's, judged by the same clean cell
    variant = _cell("hybrid", "bottleneck", 0.6, 0.01, 0.01)
    variant["defense"]["label"] = "bottleneck, identity adversary"
    (tmp_path / "variant.json").write_text(json.dumps(variant))
    rows = {r["defense"]: r for r in finish_rows(load_rows([tmp_path]))}
    assert rows["bottleneck, identity adversary @ inception3 ×3"]["worst_rank1"] == 0.01
    assert rows["bottleneck @ inception3 ×3"]["worst_rank1"] == 0.04


def test_whitebox_benchmark_scores_one_face_and_refuses_a_foreign_decoder(deep, weights_path, fddb_dir, tmp_path):
    """benchmarks/whitebox.py end to end on two real faces (two Adam steps): a cell the frontier reads; a
    decoder made for another split is refused with the reason."""
    from veil.models.pretrained import create
    from veil.privacy.decoders import Decoder, DecoderMismatchError, model_meta, save_decoder

    spec = importlib.util.spec_from_file_location("wb", Path(__file__).parents[1] / "benchmarks" / "whitebox.py")
    wb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wb)
    torch.manual_seed(0)
    mine = save_decoder(Decoder.for_model(deep), tmp_path / "dec.safetensors", model_meta(deep))
    rdcl = create("faceboxes", "rdcl", weights=weights_path)
    other = save_decoder(Decoder.for_model(rdcl), tmp_path / "rdcl.safetensors", model_meta(rdcl))
    common = ["--split", "inception1", "--scale", "1", "--faces", "2", "--steps", "2", "--quiet"]
    common += ["--weights", str(weights_path), "--dataset", str(fddb_dir)]
    out = tmp_path / "cell.json"
    assert wb.main([*common, "--decoder", str(mine), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["attacker_family"] == "whitebox" and doc["attackers"]["whitebox"]["n_probes"] == 2
    assert doc["chance_rank1"] == 0.5
    import cv2

    from veil.privacy.report import GRID_CELL

    assert cv2.imread(str(out.with_suffix(".png"))).shape[1] >= 3 * GRID_CELL  # original, white-box, decoder
    with pytest.raises(DecoderMismatchError, match="rdcl"):
        wb.main([*common, "--decoder", str(other), "--out", str(tmp_path / "x.json")])


def test_frontier_fails_a_row_whose_smaller_face_bin_leaks(tmp_path):
    """Every face-size bin must pass (issue 9): one hit among the 10 faces of 96–192 px is 10× chance and fails
    a row whose overall and large-face rank-1 are at chance; the table names that bin."""
    from veil.privacy.frontier import finish_rows, load_rows, markdown, plot

    label = "bottleneck, identity adversary"
    mapped = {"defense": f"{label} @ inception3 ×3", "alpha": 0.6, "map": {"mean": 0.9600, "draws": [0.96]}}
    mapped["knob"] = {"split": "inception3", "scale": 3.0}
    (tmp_path / "map.json").write_text(json.dumps(mapped))
    (tmp_path / "clean.json").write_text(json.dumps(_cell("hybrid", "clean", None, 0.3, 0.35)))
    for hits, verdict in ((0.1, False), (0.0, True)):
        cell = _cell("hybrid", "bottleneck", 0.6, 0.01, 0.01)
        cell["defense"]["label"] = label
        mid = {"n": 10, "rank1": hits, "rank1_ci95": [0.0, 0.4], "tar_at_far1": 0.0, "tar_ci95": [0.0, 0.3]}
        cell["attackers"]["hybrid"]["bins"]["96-192"] = mid
        (tmp_path / "cell.json").write_text(json.dumps(cell))
        rows = {r["defense"]: r for r in finish_rows(load_rows([tmp_path]), clean_map=0.9735)}
        row = rows[f"{label} @ inception3 ×3"]
        assert row["worst_x_chance"] == 1.0 and row["competent"] is True and row["meets_goal"] is verdict
        assert row["worst_bin"] == "hybrid k=1, faces 96–192 px" and row["worst_bin_x_chance"] == 100 * hits
    hit = markdown(finish_rows(load_rows([tmp_path]), clean_map=0.9735))
    assert "0.000 (0×), n = 10: hybrid k=1, faces 96–192 px" in hit
    cell["attackers"]["hybrid"]["bins"]["96-192"]["rank1"] = 0.1  # the plot marks the row with the leaking bin
    (tmp_path / "cell.json").write_text(json.dumps(cell))
    fig = plot(finish_rows(load_rows([tmp_path]), clean_map=0.9735), tmp_path / "f.png", clean_map=0.9735)
    assert fig.stat().st_size > 10_000


def test_a_chain_trained_end_to_end_with_the_perceptual_loss_starts_the_hybrid(
    weights_path, fddb_dir, dlib_dir, tmp_path
):
    """benchmarks/layerwise.py --finetune-loss perceptual --save-chain writes the whole chain (its decoder's
    weights included); benchmarks/whitebox.py --inverter reads it back as the hybrid's start."""
    from safetensors.torch import load_file

    from veil.models.pretrained import create
    from veil.privacy.decoders import Decoder, model_meta, save_decoder

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    torch.manual_seed(0)
    rdcl = create("faceboxes", "rdcl", weights=weights_path)
    dec = save_decoder(Decoder.for_model(rdcl), tmp_path / "rdcl.safetensors", model_meta(rdcl))
    common = ["--split", "inception1", "--scale", "1", "--faces", "2", "--quiet", "--decoder", str(dec)]
    common += ["--weights", str(weights_path), "--dataset", str(fddb_dir)]
    chain = tmp_path / "chain.safetensors"
    lw = [*common, "--images", str(dlib_dir), "--max-steps", "2", "--finetune-minutes", "0.01"]
    lw += ["--finetune-loss", "perceptual", "--save-chain", str(chain), "--out", str(tmp_path / "lw.json")]
    assert load("layerwise").main(lw) == 0
    doc = json.loads((tmp_path / "lw.json").read_text())
    assert doc["finetune"]["loss"] == "perceptual" and doc["finetune"]["steps"] >= 1
    assert any(k.startswith("decoder.") for k in load_file(str(chain)))  # the tuned decoder travels with it
    out = tmp_path / "wb.json"
    assert load("whitebox").main([*common, "--steps", "2", "--inverter", str(chain), "--out", str(out)]) == 0
    cell = json.loads(out.read_text())
    assert cell["attacker_family"] == "hybrid" and cell["inverter"]["finetune"]["loss"] == "perceptual"
    assert cell["attackers"]["hybrid"]["n_probes"] == 2
    with pytest.raises(SystemExit):  # a chain file needs the end-to-end training it names
        load("layerwise").main([*common, "--save-chain", str(chain), "--out", str(tmp_path / "x.json")])


def test_cells_on_another_face_set_get_their_own_rows_and_clean_reference(tmp_path):
    """Rank-1 at 1/100 and at 1/150 chance never share a row: the 150-face cells land on ``…, 150 faces @``
    rows (the mAP copied from the plain row), judged for competence by the clean cell on those 150 faces."""
    from veil.privacy.frontier import finish_rows, load_rows

    def cell(kind: str, alpha, main: float, large: float, n: int) -> dict:
        return {**_cell("hybrid", kind, alpha, main, large), "chance_rank1": round(1 / n, 5), "n_faces": n}

    (tmp_path / "150").mkdir()
    (tmp_path / "150" / "clean.json").write_text(json.dumps(cell("clean", None, 0.08, 0.087, 150)))
    (tmp_path / "150" / "bn.json").write_text(json.dumps(cell("bottleneck", 0.6, 0.02, 0.027, 150)))
    (tmp_path / "clean.json").write_text(json.dumps(cell("clean", None, 0.05, 0.09, 100)))
    (tmp_path / "bn.json").write_text(json.dumps(cell("bottleneck", 0.6, 0.04, 0.03, 100)))
    (tmp_path / "bn-map.json").write_text(
        json.dumps({"defense": "bottleneck @ inception3 ×3", "alpha": 0.6, "map": {"mean": 0.96, "draws": [0.96]}})
    )
    rows = {r["defense"]: r for r in finish_rows(load_rows([tmp_path / "150", tmp_path]), clean_map=0.9735)}
    few, many = rows["bottleneck @ inception3 ×3"], rows["bottleneck, 150 faces @ inception3 ×3"]
    assert few["chance_rank1"] == 0.01 and many["chance_rank1"] == 0.00667 and many["map"] == few["map"] == 0.96
    assert few["worst_rank1"] == 0.04 and few["competent"] is False  # the 100-face clean hybrid: 9x
    assert many["worst_rank1"] == 0.027 and many["competent"] is True  # the 150-face one: 13x
    assert many["meets_goal"] is False and rows["clean, 150 faces @ inception3 ×3"]["worst_rank1"] == 0.087

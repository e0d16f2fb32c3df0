"""Layer-wise inversion (veil.privacy.layerwise): a deep split read through the RDCL's decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from veil.privacy.layerwise import ChainedDecoder, FeatureInverter, check_pair, train_inverter


@pytest.fixture(scope="module")
def splits(weights_path):
    from veil.models.pretrained import create

    return {s: create("faceboxes", s, weights=weights_path) for s in ("rdcl", "inception1")}


def test_inverter_learns_the_rdcl_activation_back(splits, dlib_dir):
    """On real photo crops the loss falls well below its start, and the meta records how it trained."""
    from veil.privacy.train import photo_crops

    deep, shallow = splits["inception1"], splits["rdcl"]
    check_pair(deep, shallow)
    sampler = photo_crops([dlib_dir], crop=128, scale=1.0, seed=3)
    inv = train_inverter(
        deep.head,
        shallow.head,
        sampler,
        in_channels=deep.channels,
        out_channels=shallow.channels,
        max_steps=30,
        batch=2,
        width=32,
        depth=1,
        lr=3e-3,
        seed=5,
        progress=False,
    )
    curve = inv.meta["curve_l1_per_spread"]
    assert len(curve) == 30 and inv.meta["stop_reason"] == "max_steps"
    assert np.mean(curve[-5:]) < 0.8 * np.mean(curve[:3])
    assert inv.meta["seed"] == 5 and inv.meta["data_order_seed"] == 3 and not inv.meta["adaptive"]
    # the chain decodes the deep activation to the network input's size, in the decoder's units
    from veil.privacy.decoders import Decoder, decode

    chain = ChainedDecoder(inv, Decoder.for_model(shallow))
    x = sampler.batch(1)
    out = decode(chain, deep.head(x))
    assert out.shape == x.shape and chain.channels == deep.channels


def test_check_pair_refuses_another_model(splits):
    from veil.models.pretrained import create

    digits = create("digits", "block1")
    with pytest.raises(ValueError, match="same model and weights"):
        check_pair(splits["inception1"], digits)


def test_inverter_output_is_in_the_shallow_units():
    inv = FeatureInverter(8, 4, width=8, depth=1)
    inv.out_scale.fill_(3.0)
    with torch.no_grad():
        inv.out.weight.zero_()
        inv.out.bias.fill_(1.0)
    assert torch.allclose(inv.eval()(torch.randn(1, 8, 3, 3)), torch.full((1, 4, 3, 3), 3.0))


def test_frontier_places_layerwise_cells_and_judges_competence_with_them(tmp_path):
    """The layer-wise cells of benchmarks/layerwise.py (written by its add_cells) land on the knob rows: a
    competent clean cell makes the noisy row's claim count, and its averaging attacker can be the worst."""
    import importlib.util
    import json
    from pathlib import Path

    from veil.privacy.frontier import finish_rows, load_rows

    spec = importlib.util.spec_from_file_location("lw", Path(__file__).parents[1] / "benchmarks" / "layerwise.py")
    lw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lw)

    def cell(alpha, k1, large, k8=None):
        m = lambda r: {"rank1": r, "rank1_ci95": [0.0, 0.3], "tar_at_far1": 0.0, "tar_ci95": [0.0, 0.1]}  # noqa: E731
        ident = {"chance_rank1": 0.01, "k1": m(k1), "large_k1": m(large), **({"k8": m(k8)} if k8 else {})}
        defense = {"kind": "clean"} if alpha is None else {"kind": "noise", "alpha": alpha}
        return lw.add_cells(
            {"split": "inception1", "scale": 3.0, "inverter": {}, "defense": defense, "identity": ident}
        )

    (tmp_path / "clean.json").write_text(json.dumps(cell(None, 0.2, 0.22)))
    (tmp_path / "noisy.json").write_text(json.dumps(cell(0.8, 0.09, 0.11, k8=0.2)))
    rows = {r["defense"]: r for r in finish_rows(load_rows([tmp_path]))}
    noisy = rows["noise @ inception1 ×3"]
    assert noisy["competent"] is True and noisy["worst_attacker"] == "layerwise avg8" and noisy["worst_rank1"] == 0.2
    (tmp_path / "clean.json").write_text(json.dumps(cell(None, 0.02, 0.03)))
    rows = {r["defense"]: r for r in finish_rows(load_rows([tmp_path]))}
    assert rows["noise @ inception1 ×3"]["competent"] is False


def test_ensure_chain_trains_once_caches_and_the_audit_scores_it(splits, dlib_dir, fddb_dir, tmp_path, monkeypatch):
    """At the first split there is nothing to chain; at inception1 the inverter and the RDCL's naive decoder
    are trained once and cached (a second call reads them), a file is refused for another split, and the
    audit's attacker pass scores the chain (``layerwise``, and its average on noise)."""
    from veil.obfuscate.noise import Obfuscator
    from veil.privacy.audit import Attacks, make_views, run_attacks, select_fddb_faces
    from veil.privacy.decoders import Decoder, DecoderMismatchError
    from veil.privacy.layerwise import ensure_chain, inverter_path, read_inverter

    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path))
    deep = splits["inception1"]
    assert ensure_chain(splits["rdcl"], 0.01, [dlib_dir], 1.0, progress=False) is None
    chain = ensure_chain(deep, 0.01, [dlib_dir], 1.0, progress=False)
    path = inverter_path(deep, 1.0)
    assert path.is_file() and chain.meta["inverter"]["split_point"] == "faceboxes.inception1"
    again = ensure_chain(deep, 0.01, [dlib_dir], 1.0, progress=False)
    assert torch.equal(again.inverter.blocks[0].c1.weight, chain.inverter.blocks[0].c1.weight)  # read, not retrained
    with pytest.raises(DecoderMismatchError, match="inception1"):
        read_inverter(path, splits["rdcl"])
    tuned = ensure_chain(deep, 0.01, [dlib_dir], 1.0, finetune_minutes=0.005, progress=False)
    assert tuned.meta["finetune"]["steps"] >= 1 and path.with_name(path.stem + "-finetuned.safetensors").is_file()
    cached = ensure_chain(deep, 0.01, [dlib_dir], 1.0, finetune_minutes=0.005, progress=False)
    assert torch.equal(cached.decoder.out[0].weight, tuned.decoder.out[0].weight)  # the tuned chain, read back
    faces = select_fddb_faces(fddb_dir, max_faces=2)
    views = make_views(faces, 1.0, enlarge=False)[:2]
    att = Attacks(deep, Decoder.for_model(deep), whitebox_faces=0, ks=(2,), dup_ks=(), layerwise=chain)
    leaks = run_attacks(faces, views, att, 1.0, noisy=False, progress=False)
    assert len(leaks["layerwise"].emb) == len(leaks["naive"].emb) > 0
    noisy = Attacks(**{**att.__dict__, "obfuscator": Obfuscator(deep.channels), "layerwise_adaptive": chain})
    assert {"layerwise", "layerwise_avg2"} <= set(run_attacks(faces, views, noisy, 1.0, noisy=True, progress=False))

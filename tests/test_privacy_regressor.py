"""The identity-regression attacker (veil.privacy.regressor): ROI-align, training, files, scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from veil.privacy.regressor import (
    IdentityRegressor,
    RegressorMismatchError,
    build_samples,
    read_regressor,
    roi_cells,
    train_regressor,
)


@pytest.fixture(scope="module")
def rdcl(weights_path):
    from veil.models.pretrained import create

    return create("faceboxes", "rdcl", weights=weights_path)


@pytest.fixture(scope="module")
def samples(rdcl, dlib_dir):
    """Samples of the dlib photos' 43 faces, two sizes each (not cached: the test builds them)."""
    return build_samples([rdcl], [dlib_dir], sizes_per_face=2, cache=False, progress=False)["rdcl"]


def test_roi_cells_reads_a_known_gradient():
    """Channel 0 holds each cell's column index, channel 1 its row: bilinear samples read back the
    cell coordinate of every sample point, p / stride − ½, in the right image of the batch."""
    stride, h, w = 32, 12, 16
    cols = torch.arange(w, dtype=torch.float32).expand(h, w)
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    a = torch.zeros(2, 2, h, w)
    a[1, 0], a[1, 1] = cols, rows  # image 1 holds the gradients, image 0 zeros
    box = torch.tensor([[1, 96.0, 64.0, 224.0, 256.0]])
    out = roi_cells(a, box, stride, cells=4, context=0.0, samples=1)
    xs = 96 + (np.arange(4) + 0.5) * (224 - 96) / 4
    ys = 64 + (np.arange(4) + 0.5) * (256 - 64) / 4
    np.testing.assert_allclose(out[0, 0].numpy(), np.tile(xs / stride - 0.5, (4, 1)), atol=1e-5)
    np.testing.assert_allclose(out[0, 1].numpy(), np.tile((ys / stride - 0.5)[:, None], (1, 4)), atol=1e-5)
    assert roi_cells(a, torch.tensor([[0, 96.0, 64.0, 224.0, 256.0]]), stride, 4, 0.0).abs().max() == 0
    # context: one face side each way triples the extent about the same centre
    wide = roi_cells(a, torch.tensor([[1, 128.0, 128.0, 192.0, 192.0]]), stride, cells=3, context=1.0, samples=1)
    np.testing.assert_allclose(wide[0, 0, 0].numpy(), np.array([96, 160, 224]) / stride - 0.5, atol=1e-5)


def test_roi_cells_maps_a_box_to_its_cells():
    """A block of ones at rows 3–4, columns 5–6 is read at its box and nowhere else."""
    a = torch.zeros(1, 3, 10, 12)
    a[0, :, 3:5, 5:7] = 1.0
    on = roi_cells(a, torch.tensor([[0, 5 * 32.0, 3 * 32.0, 7 * 32.0, 5 * 32.0]]), 32, cells=4, context=0.0)
    off = roi_cells(a, torch.tensor([[0, 0.0, 0.0, 64.0, 64.0]]), 32, cells=4, context=0.0)
    assert on[0, :, 1:3, 1:3].min() == pytest.approx(1.0)  # the inner bins lie fully in the block
    assert on.mean() > 0.75
    assert off.abs().max() == 0
    with pytest.raises(ValueError, match="batch indices"):
        roi_cells(a, torch.tensor([[1, 0.0, 0.0, 64.0, 64.0]]), 32)


def test_training_records_its_meta_and_file_refused_for_another_split(rdcl, samples, tmp_path, weights_path):
    from veil.models.pretrained import create
    from veil.privacy.train import Plateau, state_sha256

    assert len(samples) == 2 * 43 and samples.held_out.any() and (~samples.held_out).any()
    out = tmp_path / "r.safetensors"
    reg = train_regressor(samples, rdcl, max_steps=6, batch=8, eval_every=3, progress=False, plateau=Plateau(), out=out)
    md = reg.meta
    assert md["steps"] == 6 and md["stop_reason"] == "max_steps" and len(md["curve_loss"]) == 6
    assert isinstance(md["seed"], int) and isinstance(md["data_order_seed"], int)
    assert md["state_sha256"] == state_sha256(reg) and md["split_point"] == rdcl.split_point
    assert [s for s, _ in md["held_out_rank1_curve"]] == [3, 6]
    back = read_regressor(tmp_path / "r.safetensors", rdcl)
    assert state_sha256(back) == md["state_sha256"] and back.stride == 32
    rois = samples.rois([0, 1], None, back.cells, back.context)
    torch.testing.assert_close(back(rois), reg.eval()(rois))
    deeper = create("faceboxes", "inception2", weights=weights_path)
    with pytest.raises(RegressorMismatchError, match="split point"):
        read_regressor(tmp_path / "r.safetensors", deeper)
    with pytest.raises(RegressorMismatchError, match="channels"):
        train_regressor(samples, rdcl, regressor=IdentityRegressor(64), max_steps=1, progress=False)


def test_a_leak_of_predicted_embeddings_is_scored_like_any_attacker(fddb_dir):
    """Predictions equal to the gallery identify every face; a rotation of them identifies none."""
    from veil.privacy.audit import Leak, gallery_for, make_views, select_fddb_faces, summarize

    faces = select_fddb_faces(fddb_dir, max_faces=8)
    gallery = gallery_for(faces)
    views = make_views(faces, 3.0, enlarge=False)
    right, wrong = Leak(), Leak()
    for v in views:
        right.add_embedding(v, 3.0, gallery.emb[v.faces])
        wrong.add_embedding(v, 3.0, gallery.emb[(v.faces + 1) % faces.n_faces])
    assert summarize(right, gallery)["rank1"] == 1.0
    assert summarize(wrong, gallery)["rank1"] == 0.0
    with pytest.raises(ValueError, match="embeddings for"):
        right.add_embedding(views[0], 3.0, gallery.emb[:0], sel=[0])


def test_extra_samples_have_their_own_targets_and_stay_off_held_out_photos(rdcl, samples, dlib_dir):
    """Jittered face boxes and random patches get face index −1 and their own embedding; none comes from
    a held-out photo; the retrieval term trains, and keep_best returns the recorded best evaluation."""
    more = build_samples(
        [rdcl],
        [dlib_dir],
        sizes_per_face=2,
        jittered_per_face=1,
        patches_per_photo=1,
        extra_sizes=1,
        cache=False,
        progress=False,
    )["rdcl"]
    extra = more.face < 0
    n_train_faces = len(np.unique(samples.face[~samples.held_out]))
    assert extra.sum() == more.meta["extra_samples"]
    assert more.meta["extra_samples"] >= n_train_faces  # one jittered box per training face, plus patches
    assert not (more.held_out & extra).any()
    # the faces' own samples keep their faces' targets, in the same order
    torch.testing.assert_close(more.targets[~extra], samples.targets)
    # a jittered box's target differs from its face's (its own embedding of the photo at that box)
    assert not any(torch.equal(t, u) for t in more.targets[extra][:5] for u in samples.targets)
    reg = train_regressor(
        more, rdcl, max_steps=4, batch=8, eval_every=2, contrastive=1.0, keep_best=True, progress=False
    )
    curve = dict(reg.meta["held_out_rank1_curve"])
    assert reg.meta["best_step"] in (*curve, 4) and reg.meta["contrastive"] == 1.0
    if reg.meta["best_step"] != 4:
        assert reg.meta["held_out_rank1"] == pytest.approx(curve[reg.meta["best_step"]], abs=1e-4)


def test_the_audit_runs_the_regressor_as_regressor_leaks_does(rdcl, samples, fddb_dir):
    """The audit's attacker pass scores the regressor on the same probes, boxes and activations as
    :func:`regressor_leaks` (clean: identical embeddings), and on noise adds its averaging attack."""
    from veil.obfuscate.noise import Obfuscator
    from veil.privacy.audit import Attacks, make_views, run_attacks, select_fddb_faces
    from veil.privacy.decoders import Decoder
    from veil.privacy.regressor import regressor_leaks

    reg = train_regressor(samples, rdcl, max_steps=3, batch=8, eval_every=0, progress=False)
    faces = select_fddb_faces(fddb_dir, max_faces=3)
    views = make_views(faces, 1.0, enlarge=True)[:3]
    att = Attacks(rdcl, Decoder.for_model(rdcl), whitebox_faces=0, ks=(2,), dup_ks=(), regressor=reg)
    leaks = run_attacks(faces, views, att, 1.0, noisy=False, progress=False)
    ref = regressor_leaks(reg, rdcl, faces, views, 1.0, progress=False)["regressor"]
    np.testing.assert_allclose(np.concatenate(leaks["regressor"].emb), np.concatenate(ref.emb), atol=1e-5)
    assert leaks["regressor"].face == ref.face and leaks["regressor"].kind == ref.kind
    noisy = Attacks(**{**att.__dict__, "obfuscator": Obfuscator(rdcl.channels), "regressor_adaptive": reg})
    leaks = run_attacks(faces, views, noisy, 1.0, noisy=True, progress=False)
    assert {"regressor", "regressor_avg2"} <= set(leaks)
    assert not np.allclose(np.concatenate(leaks["regressor"].emb), np.concatenate(ref.emb))  # noise arrived


def test_frontier_reads_regressor_cells_as_attackers_of_the_knob_rows(tmp_path):
    """A clean cell lands on ``clean @ split ×scale`` and decides the noisy row's competence with its
    large-face bin; the noisy cell's attackers join the ``noise @ split ×scale`` row."""
    import json

    from veil.privacy.frontier import REGRESSOR_LARGE_LABEL, finish_rows, load_rows

    def cell(alpha, k1, large):
        m = {"rank1": k1, "rank1_ci95": [0.0, 0.1], "tar_at_far1": 0.0, "tar_ci95": [0.0, 0.04]}
        big = {"n": 100, "rank1": large, "rank1_ci95": [0.0, 0.2]}
        atk = {"regressor": {**m, "bins": {">=192": big}}, "regressor_avg8": dict(m)}
        return {
            "split": "inception2",
            "scale": 3.0,
            "alpha": alpha,
            "regressor": {},
            "chance_rank1": 0.01,
            "attackers": atk,
        }

    (tmp_path / "clean.json").write_text(json.dumps(cell(None, 0.2, 0.3)))
    (tmp_path / "noisy.json").write_text(json.dumps(cell(0.8, 0.01, 0.02)))
    rows = {r["defense"]: r for r in finish_rows(load_rows([tmp_path]))}
    clean, noisy = rows["clean @ inception2 ×3"], rows["noise @ inception2 ×3"]
    assert clean["attackers"][REGRESSOR_LARGE_LABEL]["rank1"] == 0.3
    assert noisy["worst_rank1"] == 0.02 and noisy["worst_attacker"] == REGRESSOR_LARGE_LABEL
    assert noisy["competent"] is True  # 30× chance on clean in the large-face bin
    (tmp_path / "clean.json").write_text(json.dumps(cell(None, 0.02, 0.05)))
    rows = {r["defense"]: r for r in finish_rows(load_rows([tmp_path]))}
    assert rows["noise @ inception2 ×3"]["competent"] is False


def test_stretched_wider_photos_get_their_aspect_back(wider_dir, dlib_dir):
    """The WIDER subset's photos were stretched to 416×416; its size list gives each its original aspect
    (faces stretched by ±25 % would teach the regressor stretched identities). Other photos stay."""
    from veil.privacy.regressor import ORIGINAL_SIZES, unstretch_factors

    lines = (wider_dir / ORIGINAL_SIZES).read_text().splitlines()[1:3]
    for line in lines:
        name, w, h = line.split("\t")[:3]
        fx, fy = unstretch_factors(wider_dir / "images" / name, (416, 416))
        assert fx == 1.0 and fy == pytest.approx(float(h) / float(w))
    photo = sorted(dlib_dir.glob("*.jpg"))[0]
    assert unstretch_factors(photo, (300, 400)) == (1.0, 1.0)


def test_the_audit_trains_its_regressor_once_and_caches_it(rdcl, dlib_dir, tmp_path, monkeypatch):
    """``ensure_regressor`` (what ``veil audit --regressor`` calls): trained and saved under the model's key
    on the first call, read back (same weights) on the next; a noisy one needs its noise file's hash."""
    from veil.privacy import regressor as rg
    from veil.privacy.train import state_sha256

    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(rg.SAMPLE_RECIPE, "sizes_per_face", 1)
    monkeypatch.setitem(rg.SAMPLE_RECIPE, "jittered_per_face", 0)
    monkeypatch.setitem(rg.SAMPLE_RECIPE, "patches_per_photo", 0)
    first = rg.ensure_regressor(rdcl, [dlib_dir], 3.0, minutes=0.02, progress=False)
    path = rg.regressor_path(rdcl, 3.0)
    assert path.is_file() and str(tmp_path) in str(path) and rdcl.key in str(path)
    again = rg.ensure_regressor(rdcl, [dlib_dir], 3.0, minutes=0.02, progress=False)
    assert state_sha256(again) == state_sha256(first) == again.meta["state_sha256"]
    assert again.meta["trained_on"] == "clean" and again.meta["seed"] == first.meta["seed"]
    with pytest.raises(ValueError, match="SHA-256"):
        rg.ensure_regressor(rdcl, [dlib_dir], 3.0, wire=lambda a: a, minutes=0.02, progress=False)

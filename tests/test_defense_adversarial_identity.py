"""The identity-aware privacy term (``--privacy-term identity``): an in-loop identity regressor's dlib-embedding
error, its targets from real photos, a short real fit, what the noise file records, and the CLI."""

from __future__ import annotations

import io
import re
import warnings
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch

from veil.defenses.adversarial import (
    MIN_IDENTITY_FACE,
    InLoopAdversary,
    build_face_bank,
    fit_and_save,
    identity_ratio,
    identity_targets,
)
from veil.obfuscate import Obfuscator, load_obfuscator
from veil.obfuscate.fit import FitConfig

pytestmark = pytest.mark.filterwarnings("ignore::veil.obfuscate.artifact.NoiseFileWarning")
#: dlib photos at about their own size: 256-px crops then hold whole faces (≈ 40–80 px) to embed.
SMALL = {"crop": 256, "scale_range": (1.0, 1.2)}


@pytest.fixture(scope="module")
def model(weights_path):
    from veil.weights import load_faceboxes

    return load_faceboxes(weights_path)


@pytest.fixture(scope="module")
def bank(model, dlib_dir):
    return build_face_bank(model[0], [dlib_dir], crops_per_image=2, progress=False, **SMALL)


@pytest.fixture(scope="module")
def targets(bank):
    return identity_targets(bank, progress=False)


def test_identity_targets_are_the_whole_faces_of_each_crop(bank, targets):
    f, crop = targets.rois, bank.images.shape[-1]
    assert len(f) >= 10 and targets.embeddings.shape == (len(f), 128)
    side = torch.minimum(f[:, 3] - f[:, 1], f[:, 4] - f[:, 2])
    assert (side >= MIN_IDENTITY_FACE).all() and (f[:, 1:] >= 0).all() and (f[:, 1:] <= crop).all()
    # every annotated face in a crop is in bank.faces; the targets are those wholly inside and big enough
    assert len(bank.faces) > len(f) and set(f[:, 0].tolist()) <= set(range(len(bank.acts)))
    # real, distinct dlib embeddings (unit-scale, not all alike) and their mean
    norms = targets.embeddings.norm(dim=1)
    assert (norms > 1.0).all() and (norms < 2.0).all()
    assert torch.allclose(targets.mean, targets.embeddings.mean(0))
    assert torch.cdist(targets.embeddings, targets.embeddings).max() > 0.4
    with pytest.raises(ValueError, match="no face of at least 4000 px"):
        identity_targets(bank, min_face=4000, progress=False)


def test_identity_term_is_one_for_the_mean_guess_and_zero_for_a_perfect_one(bank, targets):
    e, m = targets.embeddings, targets.mean
    assert float(identity_ratio(m.expand_as(e), e, m)) == pytest.approx(1.0, abs=1e-6)
    assert float(identity_ratio(e, e, m)) == 0.0
    halfway = float(identity_ratio(0.5 * (e + m), e, m))
    assert halfway == pytest.approx(0.25, abs=1e-6)  # squared error: half-way to the faces leaves a quarter
    # the fresh in-loop regressor starts at the mean-embedding guess: its capped term is ≈ −1 (nothing recovered),
    # and the term passes a gradient to the activation cells around the faces only
    adv = InLoopAdversary(bank, "identity", seed=3, targets=targets)
    rows = sorted({int(r) for r in targets.rois[:, 0]})[:4]
    idx = torch.tensor(rows)
    noisy = bank.acts[idx].clone().requires_grad_(True)
    assert adv.regressor is not None
    with torch.no_grad():
        boxes, k = adv._faces(idx)
        from veil.privacy.regressor import roi_cells

        adv.regressor.eval()
        first = adv.regressor(roi_cells(noisy, boxes, bank.stride, adv.regressor.cells, adv.regressor.context))
    assert float(identity_ratio(first, e[k], m)) == pytest.approx(1.0, abs=0.05)
    term = adv.term(0, idx, noisy)
    term.backward()
    assert -1.0 <= float(term.detach()) < -0.5 and len(adv.identity_curve) == 1
    assert noisy.grad is not None and noisy.grad.abs().sum() > 0
    g = noisy.grad.abs().sum(1)  # [B,h,w]: zero far from every face of the batch (boxes + context)
    assert (g == 0).float().mean() > 0.2


def test_identity_fit_records_the_regressor_and_the_audit_refuses_a_scorer_sharing_it(model, dlib_dir, tmp_path):
    m, sha = model
    cfg = FitConfig(alpha=0.8, steps=4, objective="adversarial", adversary_weight=0.5, seed=5)
    runs = {}
    for term in ("identity", "identity+l1"):
        out = tmp_path / f"{term}.safetensors"
        _, meta = fit_and_save(
            m, sha, [dlib_dir], out, cfg, privacy_term=term, adversary_seed=4242, window=4, progress=False, **SMALL
        )
        runs[term] = (out, meta)
    out, meta = runs["identity"]
    a = meta["adversary"]
    assert a["kind"] == "identity-regressor" and meta["privacy_term"] == "identity" and "adversaries" not in meta
    assert a["seed"] == 4242 and a["data_order_seed"] == 5 and re.fullmatch(r"[0-9a-f]{64}", a["weights_sha256"])
    assert a["steps"] == 4 and a["targets"]["faces"] >= 10 and len(a["curve_error_ratio"]) == 4
    assert [e["adversary_term"] for e in meta["loss_log"]][-1] < 0  # the term reached the noise's loss
    obf, loaded = load_obfuscator(0.8, noise=out, weights_sha256=sha, split_point="faceboxes.rdcl")
    assert type(obf) is Obfuscator and loaded["adversary"] == a
    from veil.privacy.audit import IndependenceError, check_independence

    with pytest.raises(IndependenceError, match="seed"):
        check_independence({"scoring regressor": {"seed": 4242, "data_order_seed": 9001}}, loaded)
    with pytest.raises(IndependenceError, match="own adversary weights"):
        check_independence({"r": {"seed": 1, "data_order_seed": 2, "init_sha256": a["weights_sha256"]}}, loaded)
    # identity+l1: two adversaries (decoder: the seed, regressor: seed + 1), both recorded and both checked
    _, both = runs["identity+l1"]
    kinds = [(x["kind"], x["seed"]) for x in both["adversaries"]]
    assert kinds == [("pixel-decoder", 4242), ("identity-regressor", 4243)] and both["adversary"]["seed"] == 4242
    _, loaded2 = load_obfuscator(0.8, noise=runs["identity+l1"][0], weights_sha256=sha, split_point="faceboxes.rdcl")
    with pytest.raises(IndependenceError, match="seed"):
        check_independence({"scoring regressor": {"seed": 4243, "data_order_seed": 9001}}, loaded2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert check_independence({"s": {"seed": 9001, "data_order_seed": 9001}}, loaded2) == []


def _cli(argv: list[str]) -> tuple[int, str, str]:
    from veil.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:  # argparse: --help, bad choices
            rc = int(exc.code or 0)
    return rc, out.getvalue(), err.getvalue()


def test_fit_noise_cli_identity_term(weights_path, dlib_dir, tmp_path):
    """``--privacy-term identity`` is documented, a bogus term is refused with the choices, and the identity
    term fits input-conditioned noise at a deeper split (the regressor takes the split's channels and stride)."""
    from veil import assets

    rc, out, _ = _cli(["fit-noise", "--help"])
    text = " ".join(out.split())
    assert rc == 0 and "identity+l1" in out and "dlib embedding" in text
    assert f"given an embedding target (default: {MIN_IDENTITY_FACE})" in text  # the CLI's default is the library's
    rc, _, err = _cli(["fit-noise", "--alpha", "0.8", "--objective", "adversarial", "--privacy-term", "bogus"])
    assert rc == 2 and "invalid choice: 'bogus'" in err and "identity" in err
    with pytest.raises(ValueError, match="unknown privacy term 'bogus'; choose one of l1, perceptual, identity"):
        InLoopAdversary.__init__(object.__new__(InLoopAdversary), None, "bogus")  # type: ignore[arg-type]

    common = ["--alpha", "0.8", "--images", str(dlib_dir), "--weights", str(weights_path), "--steps", "2"]
    common += ["--crop", "256", "--scale-range", "1.0", "1.2", "--quiet", "--objective", "adversarial"]
    init = str(assets.NOISE_DIR / "alpha-0.8.safetensors")
    cond = tmp_path / "cond.safetensors"
    rc, out, err = _cli(
        [
            "fit-noise",
            *common,
            "--privacy-term",
            "identity",
            "--adversary-seed",
            "31",
            "--noise-model",
            "conditioned",
            "--init-noise",
            init,
            "--out",
            str(cond),
        ]
    )
    assert rc == 0, err
    assert re.search(r"in-loop adversary: seed 31, data order 0, .*\(identity-regressor\)", out), out
    from veil.digest import sha256_file
    from veil.obfuscate.conditioned import ConditionedObfuscator

    obf, meta = load_obfuscator(0.8, noise=cond, weights_sha256=sha256_file(weights_path), split_point="faceboxes.rdcl")
    assert isinstance(obf, ConditionedObfuscator) and meta["adversary"]["kind"] == "identity-regressor"
    deep = tmp_path / "deep.safetensors"
    rc, out, err = _cli(
        [
            "fit-noise",
            *common,
            "--split",
            "inception2",
            "--privacy-term",
            "identity",
            "--min-face",
            "32",
            "--out",
            str(deep),
        ]
    )
    assert rc == 0, err
    _, dmeta = load_obfuscator(
        0.8, noise=deep, weights_sha256=sha256_file(weights_path), split_point="faceboxes.inception2"
    )
    assert dmeta["split_point"] == "faceboxes.inception2" and dmeta["adversary"]["targets"]["min_face_px"] == 32

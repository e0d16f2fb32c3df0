"""The adversarial objective (issue 9 §2a): face boxes, a tiny real min-max fit, and what the noise file records."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from veil.data.boxes import face_boxes
from veil.defenses.adversarial import (
    InLoopAdversary,
    build_face_bank,
    fit_adversarial,
    fit_and_save,
    reconstruction_error,
)
from veil.obfuscate import Obfuscator, load_obfuscator
from veil.obfuscate.fit import FitConfig

pytestmark = pytest.mark.filterwarnings("ignore::veil.obfuscate.artifact.NoiseFileWarning")


@pytest.fixture(scope="module")
def model(weights_path):
    from veil.weights import load_faceboxes

    m, sha = load_faceboxes(weights_path)
    return m, sha


@pytest.fixture(scope="module")
def bank(model, dlib_dir):
    torch.manual_seed(0)
    return build_face_bank(model[0], [dlib_dir], crop=256, crops_per_image=2, progress=False)


def test_face_boxes_of_the_fitting_photos(wider_dir, dlib_dir, bank):
    boxes = face_boxes([wider_dir, dlib_dir])
    wider = [p for p in boxes if wider_dir.resolve() in p.parents]
    dlib = [p for p in boxes if dlib_dir.resolve() in p.parents]
    # 198 annotated WIDER photos with 4296 faces (shared/README.md); the 9 dlib photos (training + testing XML)
    assert len(wider) == 198 and sum(len(boxes[p]) for p in wider) == 4296
    assert len(dlib) == 9 and all(len(boxes[p]) > 0 for p in dlib)
    assert all((b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all() for b in boxes.values())
    # the boxes follow each crop: some crops hold faces, which then weigh 1 + face_weight
    assert bank.describe["faces_in_crops"] > 0 and 0 < bank.describe["face_area_fraction"] < 1
    assert set(torch.unique(bank.weights).tolist()) == {1.0, 5.0}


def test_adversarial_objective_beats_nsr_for_the_in_loop_adversary(model, bank):
    """Same ALPHA, same adversary seed and data order: noise fitted against the adversary leaves it a worse
    reconstruction (higher face-weighted error) than NSR noise leaves the same adversary trained alongside."""
    m = model[0]
    errs = {}
    for name, w in (("nsr", 0.0), ("adversarial", 3.0)):  # weight 0: NSR objective, the adversary only watches
        cfg = FitConfig(alpha=0.8, steps=60, objective="adversarial", adversary_weight=w)
        res, adv = fit_adversarial(m, cfg, bank, adversary_seed=123, window=4, progress=False)
        res.obfuscator.reseed(7)
        errs[name] = reconstruction_error(bank, res.obfuscator, adv.decoder, window=4)
    assert errs["adversarial"] > errs["nsr"] + 0.03, errs


def test_noise_file_records_the_adversary_and_loads_as_plain_noise(model, dlib_dir, tmp_path):
    m, sha = model
    out = tmp_path / "adv.safetensors"
    cfg = FitConfig(alpha=0.8, steps=3, objective="adversarial", adversary_weight=0.25, seed=5)
    _, meta = fit_and_save(m, sha, [dlib_dir], out, cfg, crop=256, window=4, adversary_seed=4242, progress=False)
    a = meta["adversary"]
    assert a["seed"] == 4242 and a["data_order_seed"] == 5 and re.fullmatch(r"[0-9a-f]{64}", a["weights_sha256"])
    assert meta["objective"] == "adversarial" and meta["privacy_term"] == "l1"
    obf, loaded = load_obfuscator(0.8, noise=out, weights_sha256=sha, split_point="faceboxes.rdcl")
    assert type(obf) is Obfuscator and loaded["adversary"] == a  # same format, same loading path
    # the audit's independence rule refuses a scoring attacker that shares the adversary's seeds
    from veil.privacy.audit import IndependenceError, check_independence

    with pytest.raises(IndependenceError, match="seed"):
        check_independence({"scorer": {"seed": 4242, "data_order_seed": 9001}}, loaded)
    with pytest.raises(IndependenceError, match="data_order_seed"):
        check_independence({"scorer": {"seed": 9001, "data_order_seed": 5}}, loaded)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert check_independence({"scorer": {"seed": 9001, "data_order_seed": 9001}}, loaded) == []


def test_privacy_terms(model, bank):
    m = model[0]
    with pytest.raises(ValueError, match="unknown privacy term 'pixels'"):
        InLoopAdversary(bank, "pixels", model=model[0])
    adv = InLoopAdversary(bank, "perceptual", model=model[0], seed=1)
    noisy = bank.acts[:4].clone().requires_grad_(True)
    term = adv.term(0, torch.arange(4), noisy)
    term.backward()
    assert -1.0 <= float(term.detach()) <= 0.0 and noisy.grad is not None and noisy.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="objective='adversarial'"):
        fit_adversarial(model[0], FitConfig(alpha=0.5), bank)  # the NSR objective has no adversary
    from veil.obfuscate.fit import fit_noise

    with pytest.raises(ValueError, match="privacy_term"):  # and the adversarial one needs its term
        fit_noise(m.head, m.tail, None, FitConfig(alpha=0.5, objective="adversarial"), bank=(bank.acts, bank.outs))


def test_fit_noise_cli_objective_and_noise_model(weights_path, dlib_dir, tmp_path):
    """``veil fit-noise --objective adversarial`` writes plain per-channel noise with its adversary recorded;
    ``--noise-model conditioned`` writes input-conditioned noise started from a per-channel file."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from veil import assets
    from veil.cli.main import main
    from veil.obfuscate.conditioned import ConditionedObfuscator

    common = ["--alpha", "0.8", "--images", str(dlib_dir), "--weights", str(weights_path), "--steps", "2"]
    common += ["--crop", "256", "--quiet"]
    runs = {
        "adv": ["--objective", "adversarial", "--adversary-seed", "77"],
        "cond": ["--noise-model", "conditioned", "--init-noise", str(assets.NOISE_DIR / "alpha-0.8.safetensors")],
    }
    printed = {}
    for name, extra in runs.items():
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            rc = main(["fit-noise", *common, "--out", str(tmp_path / f"{name}.safetensors"), *extra])
        assert rc == 0, err.getvalue()
        printed[name] = out.getvalue()
    assert "in-loop adversary: seed 77" in printed["adv"] and "in-loop adversary" not in printed["cond"]
    from veil.digest import sha256_file

    sha = sha256_file(weights_path)
    adv, meta = load_obfuscator(
        0.8, noise=tmp_path / "adv.safetensors", weights_sha256=sha, split_point="faceboxes.rdcl"
    )
    assert type(adv) is Obfuscator and meta["adversary"]["seed"] == 77 and meta["objective"] == "adversarial"
    cond, cmeta = load_obfuscator(
        0.8, noise=tmp_path / "cond.safetensors", weights_sha256=sha, split_point="faceboxes.rdcl"
    )
    assert isinstance(cond, ConditionedObfuscator) and cmeta["objective"] == "nsr" and "adversary" not in cmeta
    assert cmeta["conditioned"]["init_noise_sha256"] == sha256_file(assets.NOISE_DIR / "alpha-0.8.safetensors")

"""The obfuscation transform, its artifact and the noise-to-signal ratio (no model needed)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from veil.data.images import list_images
from veil.models import get_config
from veil.models.faceboxes import SPLIT_POINT
from veil.obfuscate import (
    NoiseFileError,
    Obfuscator,
    check_alpha,
    find_noise_file,
    isotropic_like,
    load_obfuscator,
    noise_filename,
    noise_path,
    nsr_report,
    nsr_sums,
    read_metadata,
    save_obfuscator,
)
from veil.obfuscate.artifact import expected_nsr_db
from veil.obfuscate.crops import ImageCrops
from veil.weights import REFERENCE_SHA256


def _obf(seed=None, family="gaussian") -> Obfuscator:
    o = Obfuscator(8, family, seed=seed)
    with torch.no_grad():
        o.mu.copy_(torch.linspace(-1, 1, 8))
        o.log_sigma.copy_(torch.linspace(-2, 1, 8))
    return o.requires_grad_(False)


def test_fresh_noise_each_call_with_the_fitted_statistics():
    o = _obf()
    a = torch.rand(4, 8, 30, 40)
    d1, d2 = o(a) - a, o(a) - a
    assert not torch.equal(d1, d2)
    for d in (d1, d2):
        per_c = d.transpose(0, 1).reshape(8, -1)
        assert torch.allclose(per_c.mean(1), o.mu, atol=0.05 * float(o.sigma.max()))
        assert torch.allclose(per_c.std(1), o.sigma, rtol=0.05)


def test_default_noise_is_unpredictable_per_module_and_copy():
    a = torch.zeros(1, 8, 16, 16)
    o1, o2 = _obf(), _obf()
    assert not o1.seeded
    assert not torch.equal(o1(a), o2(a))
    assert not torch.equal(o1(a), copy.deepcopy(o1)(a))  # a copy draws its own stream


def test_seeded_noise_is_reproducible():
    a = torch.rand(2, 8, 5, 7)
    assert torch.equal(_obf(seed=3)(a), _obf(seed=3)(a))
    assert not torch.equal(_obf(seed=3)(a), _obf(seed=4)(a))
    o = _obf(seed=5)
    first = o(a)
    o.reseed(5)
    assert torch.equal(o(a), first)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(Obfuscator(8, generator=g1)(a), Obfuscator(8, generator=g2)(a))


def test_laplace_has_unit_variance_and_heavier_tails():
    e = Obfuscator(1, "laplace", seed=0).sample_eps((200_000,), torch.device("cpu"), torch.float32)
    g = Obfuscator(1, "gaussian", seed=0).sample_eps((200_000,), torch.device("cpu"), torch.float32)
    assert abs(float(e.mean())) < 0.02 and abs(float(e.var()) - 1) < 0.03
    kurt = lambda x: float((x**4).mean() / x.var() ** 2)  # noqa: E731
    assert kurt(e) > 5 and abs(kurt(g) - 3) < 0.2  # Laplace kurtosis 6, Gaussian 3


def test_any_input_size_and_channel_check():
    o = _obf()
    for shape in ((1, 8, 1, 1), (3, 8, 17, 33), (2, 8, 40)):
        assert o(torch.zeros(shape)).shape == shape
    with pytest.raises(ValueError, match="8 channels"):
        o(torch.zeros(1, 4, 5, 5))
    with pytest.raises(ValueError, match="family"):
        Obfuscator(8, "uniform")


def test_isotropic_baseline_has_the_same_total_noise_power():
    o = _obf()
    iso = isotropic_like(o)
    assert torch.allclose(iso.noise_variance().sum(), o.noise_variance().sum())
    assert torch.allclose(iso.sigma, iso.sigma[0].expand(8)) and torch.count_nonzero(iso.mu) == 0


def test_nsr_definition_excludes_mu_and_adds_up_over_batches():
    o = _obf()
    a = torch.rand(6, 8, 9, 11) + 0.5
    whole = nsr_sums(a, o)
    parts = nsr_sums(a[:2], o) + nsr_sums(a[2:], o)
    assert np.allclose(whole, parts)
    rep = nsr_report(whole)
    expected = 10 * math.log10(float((o.sigma**2).sum() * 6 * 9 * 11 / (a**2).sum()))
    assert rep["nsr_db"] == pytest.approx(expected, abs=1e-3)
    per = 10 * np.log10(whole[0] / whole[1])
    assert rep["channels"]["min"] == pytest.approx(per.min(), abs=1e-3)
    assert rep["channels"]["max"] == pytest.approx(per.max(), abs=1e-3)
    # μ is a deterministic shift: changing it changes nothing in the ratio.
    with torch.no_grad():
        o.mu.add_(100.0)
    assert nsr_report(nsr_sums(a, o)) == rep


def test_nsr_of_a_generic_module_is_estimated_from_its_output():
    class Plain(torch.nn.Module):
        def forward(self, a):
            return a + 3.0 + 0.5 * torch.randn_like(a)

    a = torch.ones(1, 4, 100, 100)
    torch.manual_seed(0)  # the estimate's spread (≈ 0.03 dB) is then fixed, not a 1-in-1000 flake
    assert nsr_report(nsr_sums(a, Plain()))["nsr_db"] == pytest.approx(10 * math.log10(0.25), abs=0.1)


def test_nsr_reports_dead_channels_and_rejects_silence():
    o = _obf()
    a = torch.rand(1, 8, 4, 4)
    a[:, 3] = 0
    assert nsr_report(nsr_sums(a, o))["dead_channels"] == 1
    with pytest.raises(ValueError, match="no signal"):
        nsr_report(nsr_sums(torch.zeros(1, 8, 2, 2), o))


#: What the 8-channel test noise is for (no SplitModel here: the identity is given explicitly).
IDENT = {"weights_sha256": REFERENCE_SHA256, "split_point": SPLIT_POINT}


def _save(tmp_path, alpha=0.4, sha=REFERENCE_SHA256, name=None, split_point=SPLIT_POINT):
    path = tmp_path / (name or noise_filename(alpha))
    o = _obf()
    with torch.no_grad():  # recorded statistics that put the noise where a fit at ALPHA does
        o.signal_power.fill_(
            float(o.noise_variance().mean()) * 10 ** (-(expected_nsr_db(alpha, get_config("faceboxes")) - 1.8) / 10)
        )
    meta = {"alpha": alpha, "weights_sha256": sha, "model": split_point.split(".")[0], "split_point": split_point}
    save_obfuscator(o, path, meta)
    return path


def test_artifact_round_trip_and_noise_dir_lookup(tmp_path):
    path = _save(tmp_path, 0.4)
    assert path.name == "alpha-0.4.safetensors"
    obf, meta = load_obfuscator(0.4, noise_dir=tmp_path, **IDENT)
    assert meta["alpha"] == 0.4 and meta["split_point"] == SPLIT_POINT and meta["family"] == "gaussian"
    assert meta["model"] == "faceboxes"
    assert torch.equal(obf.log_sigma, _obf().log_sigma) and torch.equal(obf.mu, _obf().mu)
    assert not obf.seeded
    seeded, _ = load_obfuscator(None, noise=path, seed=1, **IDENT)
    assert seeded.seeded


def test_artifact_refuses_other_weights_split_alpha_and_missing(tmp_path):
    path = _save(tmp_path, 0.4, sha="0" * 64)
    with pytest.raises(NoiseFileError, match="fitted for model weights with SHA-256 0000"):
        load_obfuscator(0.4, noise=path, **IDENT)
    good = _save(tmp_path, 0.6)
    with pytest.raises(NoiseFileError, match=r"fitted at split point 'faceboxes\.rdcl'.*splits at 'faceboxes\.other'"):
        load_obfuscator(0.6, noise=good, weights_sha256=REFERENCE_SHA256, split_point="faceboxes.other")
    with pytest.raises(NoiseFileError, match=r"fitted for model 'faceboxes'.*this model is 'digits'"):
        load_obfuscator(0.6, noise=good, weights_sha256=REFERENCE_SHA256, split_point="digits.block1")
    with pytest.raises(NoiseFileError, match=r"ALPHA 0.6, not the requested 0.8"):
        load_obfuscator(0.8, noise=good, **IDENT)
    with pytest.raises(NoiseFileError, match=r"veil fit-noise --alpha 0.9"):
        load_obfuscator(0.9, noise_dir=tmp_path, **IDENT)
    with pytest.raises(ValueError, match="which model is the noise for"):  # no default model
        load_obfuscator(0.6, noise=good, weights_sha256=REFERENCE_SHA256)
    with pytest.raises(ValueError, match="needs 'model'"):  # nor a default model in the file
        save_obfuscator(_obf(), tmp_path / "x.safetensors", {"alpha": 0.4, "weights_sha256": REFERENCE_SHA256})


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1, float("nan"), float("inf"), True, "0.8"])
def test_alpha_outside_0_1_is_refused_by_every_entry_point(bad, tmp_path):
    from veil.deploy.k8s import Options

    for call in (
        lambda: check_alpha(bad),
        lambda: noise_path(bad, tmp_path),
        lambda: noise_filename(bad),
        lambda: load_obfuscator(bad, noise_dir=tmp_path, **IDENT),
        lambda: find_noise_file(bad, noise_dir=tmp_path),
    ):
        with pytest.raises(ValueError, match="ALPHA must be"):
            call()
    with pytest.raises(ValueError, match="--alpha must be"):
        Options(noisy=True, alpha=bad).check()


def test_alpha_in_range_is_accepted_as_a_float():
    assert check_alpha(0) == 0.0 and isinstance(check_alpha(0), float)
    assert check_alpha(0.8) == 0.8 and check_alpha(0.999) == 0.999


def test_noise_path_is_built_in_one_place(tmp_path, monkeypatch):
    monkeypatch.setenv("VEIL_NOISE_DIR", str(tmp_path / "env"))
    assert noise_path(0.8) == tmp_path / "env" / "alpha-0.8.safetensors"
    assert noise_path(0.80, tmp_path) == tmp_path / "alpha-0.8.safetensors" == tmp_path / noise_filename(0.8)
    assert noise_path(0.05, str(tmp_path)).name == "alpha-0.05.safetensors"
    # What save writes at noise_path is what the lookup finds.
    path = _save(tmp_path / "env", 0.4)
    assert path == noise_path(0.4) and find_noise_file(0.4) == path


def test_noise_lookup_order_user_file_then_shipped_for_the_reference_weights_only(tmp_path, monkeypatch):
    from veil import assets
    from veil.models import build, create

    monkeypatch.setenv("VEIL_NOISE_DIR", str(tmp_path))
    shipped = noise_path(0.8, assets.NOISE_DIR)
    if not shipped.is_file():
        pytest.skip(f"{shipped} does not ship in this installation")
    ref = create("faceboxes")
    assert find_noise_file(0.8, model=ref) == shipped  # nothing of the user's: the shipped file
    for other in (build("faceboxes"), create("faceboxes", split="inception2")):  # other weights, other split
        with pytest.raises(NoiseFileError, match=r"no noise fitted for ALPHA 0.8 for faceboxes\."):
            find_noise_file(0.8, model=other)  # shipped noise is for the reference weights at rdcl only
    with pytest.raises(NoiseFileError, match=r"veil fit-noise --split inception2 --alpha 0.8"):
        find_noise_file(0.8, model=create("faceboxes", split="inception2"))
    with pytest.raises(NoiseFileError, match=r"veil fit-noise --alpha 0.8"):
        find_noise_file(0.8, noise_dir=tmp_path, model=ref)  # an explicit directory is searched alone
    own = _save(tmp_path, 0.8)
    assert find_noise_file(0.8, model=ref) == own  # the user's own comes first
    assert find_noise_file(None, noise=tmp_path / "x.safetensors") == tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match="give ALPHA or an explicit noise file"):
        find_noise_file(None)


def test_corrupt_or_foreign_files_get_a_clear_error(tmp_path):
    path = _save(tmp_path, 0.4)
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    for name in ("trunc.safetensors", "junk.safetensors"):
        with pytest.raises(NoiseFileError, match=r"corrupt|not a readable"):
            load_obfuscator(None, noise=tmp_path / name, **IDENT)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(NoiseFileError, match="without veil noise metadata"):
        read_metadata(tmp_path / "plain.safetensors")


def test_fitting_images_refuse_fddb_and_skip_corrupt(tmp_path, capsys):
    fddb = tmp_path / "fddb" / "originalPics" / "2002"
    fddb.mkdir(parents=True)
    with pytest.raises(ValueError, match="FDDB"):
        list_images([tmp_path / "fddb"])
    with pytest.raises(ValueError, match="FDDB"):
        list_images([fddb])
    import cv2

    good = tmp_path / "imgs"
    good.mkdir()
    cv2.imwrite(str(good / "a.png"), np.full((50, 70, 3), 128, np.uint8))
    (good / "b.jpg").write_bytes(b"broken")
    ds = ImageCrops([good], crop=64, scale_range=(1.0, 2.0), crops_per_image=2)
    assert len(ds) == 2 and "skipped" in capsys.readouterr().err
    assert ds[0].shape == (3, 64, 64) and torch.equal(ds[1], ds[1])


def test_inference_fast_path_equals_the_differentiable_path():
    a = torch.rand(2, 8, 6, 5).permute(0, 1, 3, 2)  # non-contiguous on purpose
    o = _obf()
    o._explicit = torch.Generator().manual_seed(11)  # one torch stream for both paths: same ε
    o.requires_grad_(True)
    ref = o(a)  # autograd path (parameters require grad)
    assert ref.requires_grad
    o.requires_grad_(False)
    o._explicit = torch.Generator().manual_seed(11)
    with torch.inference_mode():
        fast = o(a)
    assert torch.allclose(fast, ref.detach(), atol=1e-6)


def test_half_precision_activations_are_obfuscated_in_their_dtype():
    from veil.obfuscate import Obfuscator

    obf = Obfuscator(4, init_sigma=1.0)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.inference_mode():
            out = obf(torch.zeros(1, 4, 8, 8, dtype=dtype))
        assert out.dtype == dtype and out.float().std() > 0.5

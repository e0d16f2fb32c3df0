"""Decoders: a briefly trained one beats a constant image; save/load round trip; clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from veil.preprocess import BGR_MEAN
from veil.privacy.decoders import PIXEL_SCALE, Decoder, decode, load_decoder, read_decoder, reconstruct, save_decoder
from veil.privacy.train import CropSampler, train_decoder, training_images


@pytest.fixture(scope="module")
def head(weights_path):
    from veil.weights import load_faceboxes

    return load_faceboxes(weights_path)[0].head


@pytest.fixture(scope="module")
def trained(head, dlib_dir):
    torch.manual_seed(0)
    sampler = CropSampler(training_images([dlib_dir]), crop=128, rng=np.random.default_rng(0))
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: extra threads only add contention on a shared 2-core machine
    try:
        return train_decoder(head, sampler, max_steps=60, batch=4, lr=3e-3, progress=False)
    finally:
        torch.set_num_threads(prev)


def test_trained_decoder_beats_constant_image(head, trained, wider_dir):
    # Held-out photos (WIDER, not seen in training), at the deployed scale.
    sampler = CropSampler(training_images([wider_dir / "images"])[:20], crop=128, rng=np.random.default_rng(1))
    x = sampler.batch(16)
    with torch.no_grad():
        rec = decode(trained, head(x))
    err = (rec - x).abs().mean().item()
    best_constant = x - x.median(dim=0, keepdim=True).values.median(2, True).values.median(3, True).values
    const_err = min(x.abs().mean().item(), best_constant.abs().mean().item())  # BGR mean, or per-channel median
    print(f"decoder L1 {err:.1f} vs best constant {const_err:.1f} (network-input units)")
    assert err < 0.9 * const_err, (err, const_err)


def test_roundtrip_and_reconstruct(tmp_path, monkeypatch, trained, head):
    from veil import assets

    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("VEIL_DECODER", raising=False)
    shipped = assets.decoder_file()
    fallback = load_decoder()  # nothing trained in this cache: the decoder that ships with veil, if any
    if shipped is None:
        assert fallback is None
    else:
        assert fallback is not None and fallback.meta == read_decoder(shipped).meta
    p = save_decoder(trained, tmp_path / "attackers" / "naive.safetensors", {"kind": "naive", "alpha": None})
    dec = load_decoder()
    assert dec is not None and dec.meta["kind"] == "naive"
    a = head(torch.zeros(1, 3, 100, 70))
    img = reconstruct(dec, a, size=(100, 70))
    assert img.shape == (100, 70, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, reconstruct(read_decoder(p), a, size=(100, 70)))


def test_bad_files_are_refused(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a decoder")
    with pytest.raises(ValueError, match="not a readable decoder"):
        read_decoder(bad)
    with pytest.raises(FileNotFoundError):
        read_decoder(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"\[1,128"):
        reconstruct(Decoder(), torch.zeros(1, 3, 4, 4))


def test_training_refuses_fddb(tmp_path):
    d = tmp_path / "fddb"
    d.mkdir()
    with pytest.raises(ValueError, match="FDDB"):
        training_images([d])


def test_pixel_units():
    assert PIXEL_SCALE > 0 and len(BGR_MEAN) == 3


def test_decoder_cache_is_keyed_by_input_scale(tmp_path, monkeypatch, trained, head, weights_path, dlib_dir):
    """A decoder trained at ×3 is not reused to attack a ×2 deployment: it only knows ×3 image statistics."""
    from veil.privacy.train import ensure_decoder
    from veil.weights import sha256_file

    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path))
    sha = sha256_file(weights_path)
    save_decoder(
        trained, tmp_path / "attackers" / "naive.safetensors", {"kind": "naive", "weights_sha256": sha, "scale": 3.0}
    )
    reused = ensure_decoder(head, sha, 0.01, [dlib_dir], progress=False)
    assert reused.meta["kind"] == "naive" and "steps" not in reused.meta  # from the cache, not retrained
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x2 = ensure_decoder(head, sha, 0.005, [dlib_dir], progress=False, scale=2.0, crop=128, batch=2)
    finally:
        torch.set_num_threads(prev)
    assert x2.meta["scale"] == 2.0 and (tmp_path / "attackers" / "naive-x2.safetensors").is_file()


def test_train_decoder_cli_trains_naive_then_adaptive_on_the_shipped_noise(dlib_dir, tmp_path, monkeypatch, capsys):
    """`veil train-decoder`: the naive decoder, then the adaptive one keyed by the noise file it used."""
    from veil.cli.main import main
    from veil.digest import sha256_file
    from veil.models import create
    from veil.obfuscate import find_noise_file

    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VEIL_NOISE_DIR", raising=False)
    common = ["--minutes", "0.02", "--batch", "2", "--train-images", str(dlib_dir), "--threads", "1"]
    assert main(["train-decoder", *common]) == 0
    naive = json.loads(capsys.readouterr().out)
    assert naive["kind"] == "naive" and naive["weights_sha256"]
    cached = sorted((tmp_path / "cache" / "attackers").glob("*.safetensors"))
    assert [p.name for p in cached] == ["naive.safetensors"]
    assert main(["train-decoder", "--alpha", "0.8", *common]) == 0
    meta = json.loads(capsys.readouterr().out)
    shipped = find_noise_file(0.8, model=create("faceboxes"))
    assert meta["kind"] == "adaptive" and meta["alpha"] == 0.8
    assert meta["noise_sha256"] == sha256_file(shipped)
    names = sorted(p.name for p in (tmp_path / "cache" / "attackers").glob("*.safetensors"))
    assert len(names) == 2 and names[0].startswith("adaptive-") and meta["noise_sha256"][:16] in names[0]
    assert meta["weights_sha256"] == naive["weights_sha256"]

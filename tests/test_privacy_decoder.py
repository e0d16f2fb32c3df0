"""Decoders (FaceBoxes): a briefly trained one beats a constant image; save/load round trip; clear errors;
the cache keyed by model, split, weights and input scale; `veil train-decoder` through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from veil.privacy.decoders import Decoder, decode, load_decoder, model_meta, read_decoder, reconstruct, save_decoder
from veil.privacy.train import photo_crops, train_decoder


@pytest.fixture(scope="module")
def model(weights_path):
    from veil.models import create

    return create("faceboxes", weights=weights_path)


@pytest.fixture(scope="module")
def head(model):
    return model.head


@pytest.fixture(scope="module")
def trained(head, dlib_dir):
    torch.manual_seed(0)
    sampler = photo_crops([dlib_dir], crop=128, seed=0)
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: extra threads only add contention on a shared 2-core machine
    try:
        return train_decoder(head, sampler, max_steps=60, batch=4, lr=3e-3, progress=False)
    finally:
        torch.set_num_threads(prev)


def test_trained_decoder_beats_constant_image(head, trained, wider_dir):
    # Held-out photos (WIDER, not seen in training), at the deployed scale.
    sampler = photo_crops([wider_dir / "images"], crop=128, seed=1)
    x = sampler.batch(16)
    with torch.no_grad():
        rec = decode(trained, head(x))
    err = (rec - x).abs().mean().item()
    best_constant = x - x.median(dim=0, keepdim=True).values.median(2, True).values.median(3, True).values
    const_err = min(x.abs().mean().item(), best_constant.abs().mean().item())  # BGR mean, or per-channel median
    print(f"decoder L1 {err:.1f} vs best constant {const_err:.1f} (network-input units)")
    assert err < 0.9 * const_err, (err, const_err)


def test_roundtrip_and_reconstruct(tmp_path, monkeypatch, trained, head, model):
    from veil import assets

    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("VEIL_DECODER", raising=False)
    shipped = assets.decoder_file()
    fallback = load_decoder(model=model)  # nothing trained in this cache: the decoder that ships with veil, if any
    if shipped is None:
        assert fallback is None
    else:
        assert fallback is not None and fallback.meta == read_decoder(shipped).meta
    p = save_decoder(
        trained, tmp_path / "attackers" / model.key / "naive.safetensors", {**model_meta(model), "kind": "naive"}
    )
    dec = load_decoder(model=model)
    assert dec is not None and dec.meta["kind"] == "naive" and dec.meta["model_key"] == model.key
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


def test_training_refuses_fddb(fddb_dir):
    with pytest.raises(ValueError, match="FDDB"):
        photo_crops([fddb_dir])
    with pytest.raises(ValueError, match="FDDB"):
        photo_crops([fddb_dir / "originalPics"])


def test_decoder_pixels_are_the_models_input_pixels(model, fddb_image_paths):
    """What a decoder predicts is turned back into pixels by the inverse of the model's own input
    normalisation: the network input of a real image comes back as that image."""
    from veil.preprocess import load_image
    from veil.privacy.datapath import data_path
    from veil.privacy.decoders import to_pixels

    img = load_image(fddb_image_paths[0])
    prep = data_path(model, scale=1.0).preprocess(img)
    dec = Decoder.for_model(model)
    np.testing.assert_array_equal(to_pixels(prep.tensor, dec.mean, dec.std), img)
    # and a decoder's output unit is PIXEL_SCALE grey levels in those units (FaceBoxes: std 1)
    assert dec.unit == 64.0 and read_decoder_unit(dec) == dec.unit


def read_decoder_unit(dec: Decoder) -> float:
    with torch.no_grad():
        for p in dec.parameters():
            p.zero_()
        dec.out[0].bias.fill_(1.0)  # every output 1.0 before the unit: decode gives exactly one unit
    return float(decode(dec, torch.zeros(1, dec.channels, 2, 2)).mean())


def test_decoder_cache_is_keyed_by_input_scale(tmp_path, monkeypatch, trained, model, dlib_dir):
    """A decoder trained at ×3 is not reused to attack a ×2 deployment: it only knows ×3 image statistics."""
    from veil.privacy.train import ensure_decoder

    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path))
    key_dir = tmp_path / "attackers" / model.key
    save_decoder(trained, key_dir / "naive.safetensors", {**model_meta(model), "kind": "naive", "scale": 3.0})
    reused = ensure_decoder(model, 0.01, [dlib_dir], progress=False)
    assert reused.meta["kind"] == "naive" and "steps" not in reused.meta  # from the cache, not retrained
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x2 = ensure_decoder(model, 0.005, [dlib_dir], progress=False, scale=2.0, crop=128, batch=2)
    finally:
        torch.set_num_threads(prev)
    assert x2.meta["scale"] == 2.0 and (key_dir / "naive-x2.safetensors").is_file()


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
    key_dir = tmp_path / "cache" / "attackers" / f"faceboxes-rdcl-{naive['weights_sha256'][:12]}"
    assert naive["model_key"] == key_dir.name and naive["split_point"] == "faceboxes.rdcl"
    cached = sorted(key_dir.glob("*.safetensors"))
    assert [p.name for p in cached] == ["naive.safetensors"]
    assert main(["train-decoder", "--alpha", "0.8", *common]) == 0
    meta = json.loads(capsys.readouterr().out)
    shipped = find_noise_file(0.8, model=create("faceboxes"))
    assert meta["kind"] == "adaptive" and meta["alpha"] == 0.8
    assert meta["noise_sha256"] == sha256_file(shipped)
    names = sorted(p.name for p in key_dir.glob("*.safetensors"))
    assert len(names) == 2 and names[0].startswith("adaptive-") and meta["noise_sha256"][:16] in names[0]
    assert meta["weights_sha256"] == naive["weights_sha256"]

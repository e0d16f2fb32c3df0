"""The privacy package for any registered split model: a tiny grey 32×32 classifier registered here (random
weights), attacked through the library's data path on real photos (the dlib and WIDER images, read grey at
32×32 by the model's own preprocessing). Decoders follow the split's stride and the input's channels;
decoder files and caches are keyed by model, split and weights and refused for another; the reconstruction
audit runs; identity attacks are refused for a model without faces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from veil.models import InputSpec, ModelConfig, SplitNetwork, SplitSpec, WeightsSpec, build

TINY = ModelConfig(
    name="tiny-grey-test",
    task="classification",
    splits=(SplitSpec("s2", 8, 2, "after one stride-2 conv"), SplitSpec("s4", 12, 4, "after two")),
    weights=WeightsSpec(filename="tiny.pth", sha256="0" * 64),
    input=InputSpec(mean=(120.0, 120.0, 120.0), std=(60.0, 60.0, 60.0), size=(32, 32), channels=1),
    labels=tuple("abc"),
)


def tiny(split: str) -> SplitNetwork:
    c1 = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU())
    c2 = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU())
    cls = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 3))
    net = nn.Sequential(c1, c2, cls)
    head, tail = (c1, nn.Sequential(c2, cls)) if split == "s2" else (nn.Sequential(c1, c2), cls)
    return SplitNetwork(net, head, tail)


def tiny_model(split: str = "s2", weights: str = "ab" * 32):
    torch.manual_seed({"s2": 1, "s4": 2}[split])
    m = build("tiny-grey-test", split)
    m.weights_sha256 = weights
    return m


@pytest.fixture(scope="module")
def photos(dlib_dir, wider_dir):
    from veil.data.images import list_images
    from veil.preprocess import load_image

    train = [dlib_dir, *sorted((wider_dir / "images").iterdir())[:60]]
    held_out = [load_image(p) for p in list_images([wider_dir / "images"])[-12:]]
    return train, held_out


@pytest.fixture(autouse=True)
def _tiny_registered(monkeypatch):
    """The tiny model is registered for this module's tests only (other tests list the real registry)."""
    from veil.models import registry

    monkeypatch.setitem(registry._REGISTRY, TINY.name, (TINY, tiny))


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add contention on the shared machine
    yield
    torch.set_num_threads(prev)


@pytest.mark.parametrize("split,shape", [("s2", (8, 16, 16)), ("s4", (12, 8, 8))])
def test_decoder_follows_the_split_and_the_input(split, shape):
    from veil.privacy.decoders import Decoder, decoder_arch, reconstruct

    m = tiny_model(split)
    arch = decoder_arch(m)
    assert (arch["channels"], arch["stride"], arch["out_channels"]) == (shape[0], int(split[1]), 1)
    dec = Decoder.for_model(m)
    a = m.head(torch.zeros(2, 1, 32, 32))
    assert tuple(a.shape[1:]) == shape
    assert tuple(dec(a).shape) == (2, 1, 32, 32)
    img = reconstruct(dec, a[:1])
    assert img.shape == (32, 32) and img.dtype == np.uint8  # grey, in the model's pixels
    with pytest.raises(ValueError, match="power of two"):
        Decoder(channels=8, stride=3, out_channels=1, mean=[0.0], std=[1.0])
    with pytest.raises(ValueError, match=rf"\[1,{shape[0]},h,w\]"):
        reconstruct(dec, torch.zeros(1, shape[0] + 1, 4, 4))


def test_decoder_files_are_refused_for_another_model_split_or_weights(tmp_path, weights_path):
    from veil.models import create
    from veil.privacy.decoders import Decoder, DecoderMismatchError, model_meta, read_decoder, save_decoder

    m = tiny_model("s2")
    p = save_decoder(Decoder.for_model(m), tmp_path / "d.safetensors", {**model_meta(m), "kind": "naive"})
    back = read_decoder(p, m)
    assert back.meta["split_point"] == "tiny-grey-test.s2" and back.meta["model_key"] == m.key
    assert (back.channels, back.stride, back.out_channels) == (8, 2, 1)
    with pytest.raises(DecoderMismatchError, match=r"split point 'tiny-grey-test\.s2', not 'tiny-grey-test\.s4'"):
        read_decoder(p, tiny_model("s4"))
    with pytest.raises(DecoderMismatchError, match="other weights"):
        read_decoder(p, tiny_model("s2", weights="cd" * 32))
    with pytest.raises(DecoderMismatchError, match=r"faceboxes\.rdcl"):
        read_decoder(p, create("faceboxes", pretrained=False))
    # the decoder that ships with veil attacks the reference FaceBoxes only
    from veil import assets
    from veil.privacy.decoders import load_decoder

    shipped = assets.decoder_file()
    if shipped is not None:
        with pytest.raises(DecoderMismatchError, match=r"tiny-grey-test\.s2"):
            read_decoder(shipped, m)
        assert load_decoder(model=m) is None  # nothing cached for it, and the shipped one does not fit
        fb = create("faceboxes", weights=weights_path)
        assert load_decoder(model=fb) is not None


def test_cached_decoders_are_keyed_by_model_split_and_weights(tmp_path, monkeypatch, photos):
    from veil.privacy.decoders import DecoderMismatchError, read_decoder
    from veil.privacy.train import decoder_path, ensure_decoder

    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path))
    train, _ = photos
    m = tiny_model("s2")
    first = ensure_decoder(m, 0.005, train, batch=4, progress=False)
    path = decoder_path(m, "naive", None)
    assert path == tmp_path / "attackers" / m.key / "naive.safetensors" and path.is_file()
    assert first.meta["model_key"] == m.key and first.meta["steps"] >= 1
    again = ensure_decoder(m, 0.005, train, batch=4, progress=False)
    assert again.meta["seconds"] == first.meta["seconds"]  # read from the cache, not retrained
    other = tiny_model("s2", weights="cd" * 32)
    assert decoder_path(other, "naive", None) != path  # other weights: another key, another file
    assert decoder_path(tiny_model("s4"), "naive", None).parent.name == "tiny-grey-test-s4-abababababab"
    # a file placed under the wrong key is refused, not used
    wrong = decoder_path(other, "naive", None)
    wrong.parent.mkdir(parents=True)
    wrong.write_bytes(path.read_bytes())
    with pytest.raises(DecoderMismatchError, match="other weights"):
        ensure_decoder(other, 0.005, train, batch=4, progress=False)
    assert read_decoder(path, m).meta["kind"] == "naive"


def test_a_trained_decoder_beats_the_mean_image_and_the_audit_says_so(tmp_path, photos):
    """A decoder trained on clean activations of real photos (grey 32×32) recovers held-out inputs better
    than knowing nothing; the reconstruction audit measures it, clean and obfuscated, white-box included."""
    from veil.obfuscate import Obfuscator
    from veil.privacy.audit import Attacks
    from veil.privacy.decoders import decoder_arch
    from veil.privacy.reconstruction import reconstruction_audit
    from veil.privacy.train import Batches, NetworkInputs, train_decoder

    train, held_out = photos
    m = tiny_model("s2")
    data = Batches(NetworkInputs(m, train), seed=3)
    dec = train_decoder(m.head, data, max_steps=150, batch=8, lr=3e-3, progress=False, arch=decoder_arch(m), seed=4)
    obf = Obfuscator(8, seed=0, init_sigma=0.3)
    att = Attacks(m, dec, adaptive=dec, obfuscator=obf, whitebox_steps=30, whitebox_faces=4, ks=(4,))
    rep = reconstruction_audit(held_out, att, 0.5, out_dir=tmp_path / "rep", progress=False)
    naive, const = rep["clean_baseline"]["naive"], rep["references"]["constant"]
    print(f"clean naive L1 {naive['l1']:.1f} SSIM {naive['ssim']:.3f}; mean image L1 {const['l1']:.1f}")
    assert naive["l1"] < 0.7 * const["l1"] and naive["ssim"] > const["ssim"] + 0.1
    assert rep["competent"] and rep["n_images"] == len(held_out) and rep["model_key"] == m.key
    assert set(rep["attackers"]) == {"naive", "adaptive", "adaptive_avg4", "whitebox"}
    assert rep["attackers"]["whitebox"]["n"] == 4 and rep["clean_baseline"]["whitebox"]["n"] == 4
    # noise of about the activation's own power costs the attacker detail; averaging 4 draws wins some back
    noisy = rep["attackers"]
    assert noisy["naive"]["l1"] > naive["l1"] and noisy["adaptive_avg4"]["l1"] < noisy["adaptive"]["l1"]
    assert rep["worst_attacker"] in noisy and (tmp_path / "rep" / "report.md").read_text().count("|") > 20


def test_identity_attacks_are_refused_for_a_model_without_faces(fddb_dir):
    from veil.privacy.audit import Attacks, FaceSet, audit, blur_leak_by_scale
    from veil.privacy.decoders import Decoder

    m = tiny_model()
    faces = FaceSet([], [])
    with pytest.raises(ValueError, match=r"sees no faces.*reconstruction audit"):
        audit(faces, Attacks(m, Decoder.for_model(m)), 0.5)
    with pytest.raises(ValueError, match="classification"):
        blur_leak_by_scale(faces, m)


def test_whitebox_inverts_a_grey_model(photos):
    from veil.privacy.whitebox import input_args, invert_windows

    _, held_out = photos
    from veil.privacy.datapath import data_path

    m = tiny_model("s4")
    a, prep = data_path(m).head_activation(held_out[0])
    hist: list[float] = []
    (patch,) = invert_windows(m.head, [a], [(0, 8, 0, 8)], [(8, 8)], steps=60, history=hist, **input_args(m))
    assert tuple(patch.shape) == (1, 1, 32, 32) and hist[-1] < 0.5 * hist[0]
    lo, hi = (0 - 120) / 60, (255 - 120) / 60  # stays inside the valid pixel range of the model's input
    assert float(patch.min()) >= lo - 1e-4 and float(patch.max()) <= hi + 1e-4
    corr = np.corrcoef(patch.flatten().numpy(), prep.tensor.flatten().numpy())[0, 1]
    assert corr > 0.3, corr


def test_veil_audit_runs_the_reconstruction_audit_on_the_digits_classifier(tmp_path, monkeypatch, capsys):
    """The second model through `veil audit --model digits`: noise fitted on its training split, decoders
    trained on its training images, scored on test images; the adaptive attacker is at least as good as
    the naive one there too, and the report names model, split and the cache key."""
    import json

    import cv2

    from veil.cli.main import main
    from veil.data.digits import load_split
    from veil.models import create
    from veil.obfuscate.fit import FitConfig
    from veil.obfuscate.whole import fit_whole_images

    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path / "cache"))
    model = create("digits")
    train, test = load_split("train"), load_split("test")
    for name, split, n in (("train", train, len(train.images)), ("test", test, 40)):
        (tmp_path / name).mkdir()
        for i, img in enumerate(split.images[:n]):
            cv2.imwrite(str(tmp_path / name / f"{i:04d}.png"), img)
    fit_whole_images(
        model,
        train.images,
        tmp_path / "noise" / "alpha-0.8.safetensors",
        FitConfig(alpha=0.8, steps=30),
        {"dataset": "digits", "split": "train"},
        progress=False,
    )
    argv = ["audit", "--model", "digits", "--alpha", "0.8", "--noise-dir", str(tmp_path / "noise")]
    argv += [
        "--images",
        str(tmp_path / "test"),
        "--train-images",
        str(tmp_path / "train"),
        "--out",
        str(tmp_path / "o"),
    ]
    argv += ["--decoder-minutes", "0.05", "--whitebox-faces", "4", "--whitebox-steps", "10", "--ks", "4"]
    assert main(argv) == 0
    assert "ALPHA 0.8: 40 images of digits at digits.block1" in capsys.readouterr().out
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["audit"] == "reconstruction" and rep["model_key"] == model.key and rep["n_images"] == 40
    att = rep["attackers"]
    print({k: (v["l1"], v["ssim"]) for k, v in att.items()})
    assert rep["competent"] and att["adaptive"]["ssim"] >= att["naive"]["ssim"]
    assert (tmp_path / "cache" / "attackers" / model.key / "naive.safetensors").is_file()
    from veil.privacy.report import load_reports

    with pytest.raises(ValueError, match="reconstruction audit of 'digits'"):  # not a face detector's frontier
        load_reports([tmp_path / "o"])
    assert list((tmp_path / "cache" / "attackers" / model.key).glob("adaptive-*.safetensors"))
    # no evaluation images: one clear line naming the flag (a model without faces has no FDDB audit)
    assert main(["audit", "--model", "digits", "--alpha", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--images" in capsys.readouterr().err
    # no noise file for ALPHA 0.6: refused with the reason (never fitted on photo crops), before any training
    argv = ["audit", "--model", "digits", "--alpha", "0.6", "--images", str(tmp_path / "test"), "--out", str(tmp_path)]
    assert main([*argv, "--train-images", str(tmp_path / "train")]) == 2
    assert "fixed input size" in capsys.readouterr().err

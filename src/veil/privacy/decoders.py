"""Reconstruction decoders: activation → image, the picture of what leaves the trust zone.

A :class:`Decoder` is the reference design's ``decoder_function`` made into an attacker: a small
upsampling CNN trained (see :mod:`veil.privacy.train`) to map a split model's activation
``[N,C,h,w]`` back to the network input ``[N,K,stride·h,stride·w]`` it came from. Its shape comes
from the model's config (:func:`decoder_arch`: the split's channels and stride, the input's
channels, mean and std), so one class serves every registered model and split.

A decoder file (safetensors) records the model, the split point, the weights' SHA-256 and the
architecture; :func:`read_decoder` refuses a file made for another model, split or weights, with
the reason. Trained decoders are cached under ``veil.weights.cache_dir()/"attackers"/<model.key>``
(model, split and weights hash), so a decoder for one model never attacks another.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from veil import jsonio
from veil.weights import cache_dir

if TYPE_CHECKING:
    from veil.models import SplitModel

#: Pixels are predicted in (0..255 units, mean subtracted) / this: keeps the outputs near unit scale.
PIXEL_SCALE = 64.0
#: File name of the naive (clean-activation) decoder in a model's attackers cache.
DEFAULT_NAME = "naive.safetensors"
#: The architecture of a decoder file that records none (files from before the model registry):
#: FaceBoxes after the RDCL, 128 channels at stride 32, BGR input minus the FaceBoxes means.
LEGACY_ARCH: dict[str, Any] = {
    "channels": 128,
    "stride": 32,
    "out_channels": 3,
    "mean": [104.0, 117.0, 123.0],
    "std": [1.0, 1.0, 1.0],
}
_ARCH_KEYS = ("channels", "stride", "out_channels", "mean", "std", "widths")


class DecoderMismatchError(ValueError):
    """A decoder file made for another model, split point or weights than the one it is used with."""


def attackers_dir(model: SplitModel | None = None) -> Path:
    """Where trained attackers are cached: ``cache_dir()/"attackers"`` (``/<model.key>`` for a model)."""
    root = cache_dir() / "attackers"
    return root if model is None else root / model.key


def decoder_arch(model: SplitModel) -> dict[str, Any]:
    """The decoder architecture for ``model``'s split: activation channels and stride, the input's
    channels and normalisation (to turn predictions back into pixels)."""
    spec = model.config.input
    k = int(spec.channels)
    return {
        "channels": int(model.channels),
        "stride": int(model.stride),
        "out_channels": k,
        "mean": [float(v) for v in spec.mean[:k]],
        "std": [float(v) for v in spec.std[:k]],
    }


def _stages(stride: int) -> int:
    n = round(math.log2(stride)) if stride >= 1 else -1
    if n < 0 or 2**n != stride:
        raise ValueError(f"a decoder upsamples by the split's stride, which must be a power of two; got {stride}")
    return n


class _Up(nn.Module):
    """×2 nearest upsampling then a 3×3 conv, BatchNorm, ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))))


class Decoder(nn.Module):
    """Activation ``[N,channels,h,w]`` → network input ``[N,out_channels,stride·h,stride·w]``, predicted
    in units of :attr:`unit` (``decode`` multiplies back).

    ``log2(stride) − 1`` ×2 upsampling stages then a pixel-shuffle ×2 to full resolution, so no
    convolution runs at full resolution (the dominant cost on CPU); stride 1 needs no upsampling.
    Input BatchNorm adapts to the activation's scale, which matters for noisy (adaptive) inputs.
    The defaults are FaceBoxes after the RDCL (128 channels, stride 32, BGR input).
    """

    def __init__(
        self,
        widths: tuple[int, ...] | None = None,
        *,
        channels: int = 128,
        stride: int = 32,
        out_channels: int = 3,
        mean: tuple[float, ...] | list[float] = (104.0, 117.0, 123.0),
        std: tuple[float, ...] | list[float] = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        n = _stages(int(stride))
        if widths is None:
            widths = tuple(max(16, 128 >> i) for i in range(max(n - 1, 1)))
        widths = tuple(int(w) for w in widths)
        if len(widths) != max(n - 1, 1):
            raise ValueError(f"stride {stride} needs {max(n - 1, 1)} widths, got {len(widths)}")
        if len(mean) != out_channels or len(std) != out_channels:
            raise ValueError(f"mean and std need {out_channels} values (one per input channel)")
        self.widths, self.channels, self.stride, self.out_channels = widths, int(channels), int(stride), out_channels
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]
        #: network-input units per output unit: PIXEL_SCALE pixel levels, in the model's normalisation
        self.unit = PIXEL_SCALE / float(np.mean(self.std))
        self.inp = nn.Sequential(nn.BatchNorm2d(channels), nn.Conv2d(channels, widths[0], 3, padding=1), nn.ReLU())
        ups = widths[: n - 1] if n >= 2 else ()
        self.ups = nn.Sequential(*[_Up(a, b) for a, b in zip((widths[0],) + ups[:-1], ups)])
        last = ups[-1] if ups else widths[0]
        if n >= 1:
            self.out = nn.Sequential(nn.Conv2d(last, out_channels * 4, 3, padding=1), nn.PixelShuffle(2))
        else:
            self.out = nn.Sequential(nn.Conv2d(last, out_channels, 3, padding=1))
        self.meta: dict[str, Any] = {}

    @classmethod
    def for_model(cls, model: SplitModel, widths: tuple[int, ...] | None = None) -> Decoder:
        """A fresh decoder shaped for ``model``'s split (see :func:`decoder_arch`)."""
        return cls(widths, **decoder_arch(model))

    def arch(self) -> dict[str, Any]:
        """What rebuilds this architecture (recorded in the decoder file)."""
        return {
            "channels": self.channels,
            "stride": self.stride,
            "out_channels": self.out_channels,
            "mean": self.mean,
            "std": self.std,
            "widths": list(self.widths),
        }

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.out(self.ups(self.inp(a)))


def model_meta(model: SplitModel) -> dict[str, Any]:
    """What a decoder file records about the model it attacks (checked by :func:`check_decoder`)."""
    return {
        "model": model.name,
        "split": model.split,
        "split_point": model.split_point,
        "weights_sha256": model.weights_sha256,
        "model_key": model.key,
    }


def save_decoder(decoder: Decoder, path: str | Path, meta: dict) -> Path:
    """Write weights, architecture and metadata (JSON-encoded values) atomically.

    ``meta`` should hold :func:`model_meta` of the model attacked, so the file is refused for another.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    md = {k: jsonio.dumps(v, indent=None) for k, v in meta.items()}
    md.update({k: jsonio.dumps(v, indent=None) for k, v in decoder.arch().items()})
    tmp = p.with_suffix(".part")
    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, str(tmp), metadata=md)
    tmp.replace(p)
    decoder.meta = {k: json.loads(v) for k, v in md.items()}
    return p


def check_decoder(meta: dict[str, Any], model: SplitModel, what: str = "the decoder") -> None:
    """Refuse (:class:`DecoderMismatchError`, with the reason) a decoder made for another model,
    split point, weights or activation shape than ``model``'s."""
    sp = meta.get("split_point")
    if sp != model.split_point:
        raise DecoderMismatchError(
            f"{what} was trained for split point {sp!r}, not {model.split_point!r}: train one for this model and split"
        )
    w = meta.get("weights_sha256")
    if w and model.weights_sha256 and w != model.weights_sha256:
        raise DecoderMismatchError(
            f"{what} was trained on activations of other weights (SHA-256 {str(w)[:12]}…, "
            f"these are {model.weights_sha256[:12]}…): train one for these weights"
        )
    arch = {**LEGACY_ARCH, **{k: meta[k] for k in _ARCH_KEYS if k in meta}}
    want = decoder_arch(model)
    for k in ("channels", "stride", "out_channels"):
        if int(arch[k]) != int(want[k]):
            raise DecoderMismatchError(f"{what} reads {k} {arch[k]}, the model's split has {want[k]}")


def read_decoder(path: str | Path, model: SplitModel | None = None) -> Decoder:
    """Load a decoder file; ``ValueError`` if it is not one, :class:`DecoderMismatchError` if ``model``
    is given and the file was made for another model, split point or weights."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"decoder file not found: {p}")
    try:
        with safe_open(str(p), "pt") as f:
            md = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
        state = load_file(str(p))
    except Exception as exc:  # safetensors raises several types for bad files
        raise ValueError(f"{p} is not a readable decoder file: {exc}") from exc
    if model is not None:
        check_decoder(md, model, what=str(p))
    arch = {**LEGACY_ARCH, **{k: md[k] for k in _ARCH_KEYS if k in md}}
    widths = tuple(arch.pop("widths", None) or (128, 64, 32, 16))
    try:
        dec = Decoder(widths, **arch)
        dec.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(f"{p} does not fit the decoder architecture: {exc}") from exc
    dec.meta = md
    return dec.eval()


def load_decoder(path: str | Path | None = None, model: SplitModel | None = None) -> Decoder | None:
    """The decoder at ``path``, else ``$VEIL_DECODER``, else (with ``model``) the cached naive decoder
    for that model, else the reference decoder that ships with veil (``veil.assets``) when it was
    made for ``model`` (or no model is given), else ``None``. Files for another model are refused."""
    from veil import assets
    from veil.settings import settings

    path = path if path is not None else settings().decoder
    if path is not None:
        return read_decoder(path, model)
    if model is not None:
        default = attackers_dir(model) / DEFAULT_NAME
        if default.is_file():
            return read_decoder(default, model)
    shipped = assets.decoder_file()
    if shipped is None:
        return None
    if model is not None:
        try:
            return read_decoder(shipped, model)
        except DecoderMismatchError:
            return None  # the shipped decoder attacks the reference model only
    return read_decoder(shipped)


def to_pixels(x: torch.Tensor, mean: list[float], std: list[float]) -> np.ndarray:
    """Network-input tensor ``[1,K,h,w]`` or ``[K,h,w]`` → uint8 image ``[h,w,K]`` (``[h,w]`` when grey):
    the inverse of the model's input normalisation."""
    t = x.detach().cpu().float()
    if t.ndim == 4:
        t = t[0]
    img = t.numpy().transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out[:, :, 0] if out.shape[2] == 1 else out


@torch.no_grad()
def decode(decoder: nn.Module, activation: torch.Tensor) -> torch.Tensor:
    """Batch decode to network-input tensors ``[N,K,stride·h,stride·w]``."""
    decoder.eval()
    unit = float(getattr(decoder, "unit", PIXEL_SCALE))
    return decoder(activation.float()) * unit


def decoder_image(decoder: Decoder, activation: torch.Tensor) -> np.ndarray:
    """Decode the first activation of a batch to a uint8 image in the model's input pixels."""
    return to_pixels(decode(decoder, activation[:1]), decoder.mean, decoder.std)


def reconstruct(decoder: Decoder, activation: torch.Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
    """One activation ``[1,C,h,w]`` → uint8 image at the network-input resolution.

    ``size=(H, W)`` crops to the prepared input's size (the head rounds up to multiples of its stride).
    """
    if activation.ndim == 3:
        activation = activation.unsqueeze(0)
    c = decoder.channels
    if activation.ndim != 4 or activation.shape[1] != c:
        raise ValueError(f"expected an activation [1,{c},h,w] (the decoder's split), got {tuple(activation.shape)}")
    img = decoder_image(decoder, activation)
    if size is not None:
        img = img[: size[0], : size[1]]
    return np.ascontiguousarray(img)

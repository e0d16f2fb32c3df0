"""Reconstruction decoders: activation → image, the picture of what leaves the trust zone.

A :class:`Decoder` is the reference design's ``decoder_function`` made into an attacker:
a small upsampling CNN trained (see :mod:`veil.privacy.train`) to map the head's
activation ``[N,128,h,w]`` back to the mean-subtracted BGR input ``[N,3,32h,32w]`` it came
from. Trained decoders are saved as safetensors with their metadata (kind, ALPHA, weights
and noise checksums) under ``veil.weights.cache_dir()/"attackers"`` and reused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from veil import jsonio
from veil.models.faceboxes import HEAD_CHANNELS, HEAD_STRIDE, SPLIT_POINT
from veil.preprocess import to_image
from veil.weights import cache_dir

#: Pixels are predicted in mean-subtracted BGR units divided by this (keeps outputs ~unit scale).
PIXEL_SCALE = 64.0
#: File name of the default (naive, clean-activation) decoder in the attackers cache.
DEFAULT_NAME = "naive.safetensors"


def attackers_dir() -> Path:
    """Where trained attackers are cached: ``cache_dir()/"attackers"``."""
    return cache_dir() / "attackers"


class _Up(nn.Module):
    """×2 nearest upsampling then a 3×3 conv, BatchNorm, ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))))


class Decoder(nn.Module):
    """Activation ``[N,128,h,w]`` → image ``[N,3,32h,32w]`` (mean-subtracted BGR / ``PIXEL_SCALE``).

    Four ×2 upsampling stages then a pixel-shuffle ×2 to full resolution, so no convolution
    runs at full resolution (the dominant cost on CPU). Input BatchNorm adapts to the
    activation's scale, which matters for noisy (adaptive) inputs.
    """

    def __init__(self, widths: tuple[int, ...] = (128, 64, 32, 16)) -> None:
        super().__init__()
        self.widths = tuple(widths)
        self.inp = nn.Sequential(
            nn.BatchNorm2d(HEAD_CHANNELS), nn.Conv2d(HEAD_CHANNELS, widths[0], 3, padding=1), nn.ReLU()
        )
        self.ups = nn.Sequential(*[_Up(a, b) for a, b in zip((widths[0],) + widths[:-1], widths)])
        self.out = nn.Sequential(nn.Conv2d(widths[-1], 3 * 4, 3, padding=1), nn.PixelShuffle(2))
        self.meta: dict[str, str] = {}

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.out(self.ups(self.inp(a)))


def save_decoder(decoder: Decoder, path: str | Path, meta: dict) -> Path:
    """Write weights and metadata (JSON-encoded values) atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    md = {k: jsonio.dumps(v, indent=None) for k, v in meta.items()}
    md["widths"] = jsonio.dumps(list(decoder.widths), indent=None)
    md["split_point"] = jsonio.dumps(SPLIT_POINT, indent=None)
    tmp = p.with_suffix(".part")
    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, str(tmp), metadata=md)
    tmp.replace(p)
    decoder.meta = {k: json.loads(v) for k, v in md.items()}
    return p


def read_decoder(path: str | Path) -> Decoder:
    """Load a decoder file; raise ``ValueError`` if it is not one or was made for another split."""
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
    if md.get("split_point") != SPLIT_POINT:
        raise ValueError(f"{p} was trained for split point {md.get('split_point')!r}, not {SPLIT_POINT!r}")
    dec = Decoder(tuple(md.get("widths", (128, 64, 32, 16))))
    try:
        dec.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{p} does not fit the decoder architecture: {exc}") from exc
    dec.meta = md
    return dec.eval()


def load_decoder(path: str | Path | None = None) -> Decoder | None:
    """The decoder at ``path``, else ``$VEIL_DECODER``, else the cached naive decoder, else the
    reference decoder that ships with veil (``veil.assets``), else ``None``."""
    from veil import assets
    from veil.settings import settings

    path = path if path is not None else settings().decoder
    if path is not None:
        return read_decoder(path)
    default = attackers_dir() / DEFAULT_NAME
    if default.is_file():
        return read_decoder(default)
    shipped = assets.decoder_file()
    return read_decoder(shipped) if shipped is not None else None


@torch.no_grad()
def decode(decoder: nn.Module, activation: torch.Tensor) -> torch.Tensor:
    """Batch decode to mean-subtracted BGR float tensors ``[N,3,32h,32w]`` (network-input units)."""
    decoder.eval()
    return decoder(activation.float()) * PIXEL_SCALE


def reconstruct(decoder: nn.Module, activation: torch.Tensor, size: tuple[int, int] | None = None) -> np.ndarray:
    """One activation ``[1,128,h,w]`` → uint8 BGR image at the network-input resolution.

    ``size=(H, W)`` crops to the prepared input's size (the head rounds up to multiples of 32).
    """
    if activation.ndim == 3:
        activation = activation.unsqueeze(0)
    if activation.ndim != 4 or activation.shape[1] != HEAD_CHANNELS:
        raise ValueError(f"expected a head activation [1,{HEAD_CHANNELS},h,w], got {tuple(activation.shape)}")
    img = to_image(decode(decoder, activation[:1]))
    if size is not None:
        img = img[: size[0], : size[1]]
    return np.ascontiguousarray(img)


def output_size(activation_hw: tuple[int, int]) -> tuple[int, int]:
    """Pixel size a decoder produces for an activation of size ``(h, w)``."""
    return activation_hw[0] * HEAD_STRIDE, activation_hw[1] * HEAD_STRIDE

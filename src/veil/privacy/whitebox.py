"""White-box inversion: find an image whose head activation matches the observed one.

The head's weights are public, so an adversary needs no training data: start from a grey
image and run Adam on ``‖w ⊙ (head(x) + μ − y)‖² + λ·TV(x)``. With a known obfuscator
``a + μ + σ⊙ε`` the residual is weighted per channel by ``1/(σ_c² + τ²)`` (the Gaussian
log-likelihood, i.e. the attacker trusts the channels the noise spares); on clean
activations ``w = 1``. To stay cheap, only the activation cells around a face (plus a
margin) are inverted: the head's receptive field is ~79 px, so cells are local, and the
outermost ring of cells (influenced by the patch's artificial border) is left out of the loss.

Nothing here is one model's: the split's stride, the input's channels and normalisation come in as
arguments (from the model's config, see :func:`input_args`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from veil.privacy.decoders import LEGACY_ARCH, PIXEL_SCALE, decoder_arch

if TYPE_CHECKING:
    from veil.models import SplitModel


def input_args(model: SplitModel) -> dict[str, Any]:
    """The keyword arguments :func:`invert_windows` and :func:`cell_window` need from a model's config."""
    arch = decoder_arch(model)
    return {"stride": arch["stride"], "input_mean": arch["mean"], "input_std": arch["std"]}


def channel_weights(obfuscator: nn.Module | None, averaged: int = 1) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-channel ``(μ, weight)`` an attacker derives from a public obfuscator (None, None if clean)."""
    mu_p, sigma_p = getattr(obfuscator, "mu", None), getattr(obfuscator, "sigma", None)
    if not (isinstance(mu_p, torch.Tensor) and isinstance(sigma_p, torch.Tensor)):
        return None, None
    with torch.no_grad():
        mu = mu_p.detach().float()
        var = sigma_p.detach().float() ** 2 / max(averaged, 1)
        sig = getattr(obfuscator, "signal_power", None)
        tau2 = 1e-2 * (float(sig.mean()) if sig is not None else 1.0)
        w = 1.0 / (var + tau2)
        return mu, w / w.mean()


def tv(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation (mean absolute neighbour difference)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def cell_window(
    box: np.ndarray, act_hw: tuple[int, int], margin: float = 0.25, context: int = 1, stride: int = 32
) -> tuple[int, int, int, int]:
    """Activation cells ``(r0, r1, c0, c1)`` covering a box (input pixels) plus ``margin``·size and
    ``context`` cells, for a split of ``stride`` input pixels per cell."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    h, w = act_hw
    r0 = max(0, math.floor((y1 - my) / stride) - context)
    r1 = min(h, math.ceil((y2 + my) / stride) + context)
    c0 = max(0, math.floor((x1 - mx) / stride) - context)
    c1 = min(w, math.ceil((x2 + mx) / stride) + context)
    return r0, r1, c0, c1


def invert_window(
    head: nn.Module,
    target: torch.Tensor,
    window: tuple[int, int, int, int],
    act_hw: tuple[int, int],
    steps: int = 100,
    lr: float = 0.08,
    tv_weight: float = 0.05,
    upscale: float = 1.0,
    mu: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    history: list[float] | None = None,
    **inputs: Any,
) -> torch.Tensor:
    """Invert the activation cells ``window`` of ``target [1,C,h,w]``; return the patch ``[1,K,H,W]`` (input units).

    One face of :func:`invert_windows` (see there; ``inputs``: its ``stride``/``input_mean``/``input_std``)."""
    return invert_windows(
        head,
        [target],
        [window],
        [act_hw],
        steps=steps,
        lr=lr,
        tv_weight=tv_weight,
        upscale=upscale,
        mu=mu,
        weight=weight,
        history=history,
        **inputs,
    )[0]


def _window_mask(window: tuple[int, int, int, int], act_hw: tuple[int, int], rows: int, cols: int) -> torch.Tensor:
    """Cells of a window that enter the loss, inside a ``rows×cols`` padded batch slot.

    Cells on the window's border that are not on the real image border are left out (their
    receptive field reaches past the patch), and so is the last row/column before padding.
    """
    r0, r1, c0, c1 = window
    h, w = act_hw
    hh, ww = r1 - r0, c1 - c0
    mask = torch.zeros(1, rows, cols)
    mask[:, :hh, :ww] = 1
    if r0 > 0:
        mask[:, 0, :] = 0
    if r1 < h or hh < rows:
        mask[:, hh - 1, :] = 0
    if c0 > 0:
        mask[:, :, 0] = 0
    if c1 < w or ww < cols:
        mask[:, :, ww - 1] = 0
    if mask.sum() == 0:
        mask[:, :hh, :ww] = 1
    return mask


def invert_windows(
    head: nn.Module,
    targets: list[torch.Tensor],
    windows: list[tuple[int, int, int, int]],
    act_hws: list[tuple[int, int]],
    steps: int = 100,
    lr: float = 0.08,
    tv_weight: float = 0.05,
    upscale: float = 1.0,
    mu: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    history: list[float] | None = None,
    stride: int = 32,
    input_mean: list[float] | None = None,
    input_std: list[float] | None = None,
    init: list[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Invert several faces at once: window ``i`` of ``targets[i] [1,C,h,w]``; return each patch ``[1,K,H_i,W_i]``
    in network-input units (``K`` input channels).

    The windows are padded to the largest one and run through the head as one batch (one
    forward/backward per step for all faces instead of one per face); each face has its own
    loss normalisation and mask, and Adam's per-element steps keep the faces independent.
    ``history`` collects the mean data term per step, to show the optimisation works.
    ``upscale`` > 1 optimises a smaller image that is bilinearly upscaled before the head —
    the attacker knows the deployed path resizes ×3, so the true input is itself such an
    upscale (a strong, free prior). ``stride`` is the split's (input pixels per activation cell);
    ``input_mean``/``input_std`` the model's input normalisation (default: FaceBoxes' BGR means), which
    set the number of input channels and the valid pixel range the image is kept in.
    ``init`` (one patch ``[1,K,H_i,W_i]`` per face, network-input units, e.g. a trained decoder's
    reconstruction of the window) starts the search there instead of at the mean colour: a learned
    prior that the optimisation then corrects to match the activation (the hybrid attack).
    """
    mean = list(LEGACY_ARCH["mean"] if input_mean is None else input_mean)
    std = list(LEGACY_ARCH["std"] if input_std is None else input_std)
    k = len(mean)
    unit = PIXEL_SCALE / float(np.mean(std))  # optimisation variables ~ unit scale
    m_t, s_t = torch.tensor(mean).view(1, k, 1, 1), torch.tensor(std).view(1, k, 1, 1)
    lo, hi = (0.0 - m_t) / s_t / unit, (255.0 - m_t) / s_t / unit
    n = len(targets)
    rows = max(w[1] - w[0] for w in windows)
    cols = max(w[3] - w[2] for w in windows)
    c = targets[0].shape[1]
    y = torch.zeros(n, c, rows, cols)
    mask = torch.zeros(n, 1, rows, cols)
    for i, (t, win, hw) in enumerate(zip(targets, windows, act_hws)):
        r0, r1, c0, c1 = win
        y[i, :, : r1 - r0, : c1 - c0] = t[0, :, r0:r1, c0:c1].detach().float()
        mask[i] = _window_mask(win, hw, rows, cols)
    if mu is not None:
        y = y - mu.view(1, -1, 1, 1)
    wt = torch.ones(1, c, 1, 1) if weight is None else weight.view(1, -1, 1, 1)
    norm = (y**2 * wt * mask).mean(dim=(1, 2, 3)).clamp_min(1e-6)  # per face
    size = (rows * stride, cols * stride)
    small = (max(min(8, size[0]), round(size[0] / upscale)), max(min(8, size[1]), round(size[1] / upscale)))
    z = torch.zeros(n, k, *small)  # 0: the mean colour
    if init is not None:
        for i, p in enumerate(init):
            rh, rw = min(p.shape[2], size[0]), min(p.shape[3], size[1])
            full0 = torch.zeros(1, k, *size)
            full0[:, :, :rh, :rw] = p[:, :, :rh, :rw].float() / unit
            z[i] = F.interpolate(full0, size=small, mode="area")[0] if small != size else full0[0]
        z = torch.maximum(torch.minimum(z, hi), lo)
    z.requires_grad_(True)
    regions = [((w[1] - w[0]) * stride, (w[3] - w[2]) * stride) for w in windows]  # each face's own

    def render(z: torch.Tensor) -> torch.Tensor:
        return z if small == size else F.interpolate(z, size=size, mode="bilinear", align_corners=False)

    opt = torch.optim.Adam([z], lr=lr)
    for p in head.parameters():
        p.requires_grad_(False)
    for _ in range(steps):
        x = render(z)
        a = head(x * unit)
        data = ((a - y) ** 2 * wt * mask).mean(dim=(1, 2, 3)) / norm
        prior = torch.stack([tv(x[i : i + 1, :, :rh, :rw]) for i, (rh, rw) in enumerate(regions)])
        loss = (data + tv_weight * prior).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # stay within valid pixel values
            z.copy_(torch.maximum(torch.minimum(z, hi), lo))
        if history is not None:
            history.append(float(data.detach().mean()))
    full = render(z.detach()) * unit
    return [full[i : i + 1, :, : (w[1] - w[0]) * stride, : (w[3] - w[2]) * stride] for i, w in enumerate(windows)]

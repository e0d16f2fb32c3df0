"""Train reconstruction decoders on non-evaluation data, until their loss plateaus or a wall budget ends.

Training data are network-ready inputs of the attacked model: for photo models, random crops of
WIDER / dlib photos at the deployed input scale (×3 by default, jittered ±25 %) drawn by the one crop
sampler (:class:`veil.obfuscate.crops.ImageCrops`, which lists the folders with FDDB refused);
for any other model, any ``Dataset`` of its network inputs (e.g. a classifier's training split).
Never the evaluation set, which is what the audit scores. The *naive* decoder sees clean
activations; the *adaptive* decoder sees activations passed through the fitted obfuscator for the
ALPHA under audit (fresh noise every step), starting from the naive decoder's weights (an attacker
may reuse anything public). A decoder's shape comes from the model's config
(:func:`veil.privacy.decoders.decoder_arch`) and its cache path from ``model.key``.

Independence (issue 9): every decoder draws its own seed from the OS unless one is given;
the seed (initial weights of a from-scratch decoder) and the data-order seed (which crops,
in which order) are recorded in its metadata with the per-step learning curve, so the audit
can refuse a scoring attacker that shares them with an adversary used inside a defense.

Losses: ``l1`` (pixels) or ``perceptual`` (pixels plus a feature-space term). The feature space is
the frozen attacked model's own (:class:`ModelFeatures`; for FaceBoxes conv1 at stride 4, the
RDCL output at stride 32 and the first three Inception blocks): the only differentiable network in
reach that was trained on the task's data (dlib's recogniser is not differentiable from Python,
torchvision is not a dependency), so its features respond to its structure rather than to pixel noise.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from veil.preprocess import FDDB_SCALE
from veil.privacy.datapath import data_path
from veil.privacy.decoders import PIXEL_SCALE, Decoder, attackers_dir, decoder_arch, model_meta, save_decoder

if TYPE_CHECKING:
    from veil.models import InputSpec, SplitModel

LOSSES = ("l1", "perceptual")
#: Crops drawn per photo index range: large, so every batch draws new crops (ImageCrops is a fixed
#: function of (seed, index)).
_CROPS_PER_PHOTO = 1_000_000


class Batches:
    """Random batches of a ``Dataset`` of network inputs ``[K,H,W]`` (or ``(input, label)`` pairs), in an
    order drawn from its own seed: the data-order seed recorded in a decoder's metadata."""

    def __init__(self, dataset: Dataset, seed: int | None = None, scale: float | None = None) -> None:
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ValueError("no training data for the decoder")
        self.dataset = dataset
        self.seed = secrets.randbits(31) if seed is None else int(seed)
        self.rng = np.random.default_rng(self.seed)
        #: the input scale the data was drawn at (photo crops), recorded with the decoder
        self.scale = scale

    def one(self, i: int) -> torch.Tensor:
        item = self.dataset[i]
        return torch.as_tensor(item[0] if isinstance(item, (tuple, list)) else item, dtype=torch.float32)

    def batch(self, n: int) -> torch.Tensor:
        """``[n,K,H,W]`` network inputs."""
        idx = self.rng.integers(len(self.dataset), size=n)  # type: ignore[arg-type]
        return torch.stack([self.one(int(i)) for i in idx])

    def reseeded(self, seed: int | None = None) -> Batches:
        """The same data in another (OS-drawn unless given) order: for a decoder that must not share it."""
        return Batches(self.dataset, seed, self.scale)

    def describe(self) -> dict[str, Any]:
        d = getattr(self.dataset, "describe", None)
        return {**(d() if callable(d) else {"items": len(self.dataset)}), "data_order_seed": self.seed}  # type: ignore[arg-type]


def photo_crops(
    dirs: Sequence[str | Path],
    crop: int = 384,
    scale: float = FDDB_SCALE,
    jitter: float = 0.25,
    seed: int | None = None,
    input: InputSpec | None = None,
) -> Batches:
    """Random ``crop``-px crops of the photos under ``dirs`` at ×``scale`` (log-uniform ±``jitter``), the
    one crop sampler's (:class:`~veil.obfuscate.crops.ImageCrops`), normalised as the model's ``input``
    spec says (default FaceBoxes'), in an order drawn from ``seed``."""
    from veil.obfuscate.crops import ImageCrops

    seed = secrets.randbits(31) if seed is None else int(seed)
    lo, hi = scale * math.exp(-jitter), scale * math.exp(jitter)
    ds = ImageCrops(dirs, crop=crop, scale_range=(lo, hi), crops_per_image=_CROPS_PER_PHOTO, seed=seed, input=input)
    return Batches(ds, seed, scale)


class NetworkInputs(Dataset):
    """Every image under ``dirs`` (listed once, FDDB refused) as the model's network input, through the
    data path's own preprocessing: the training data of a fixed-size model's decoders. A corrupt image
    is reported and skipped."""

    def __init__(self, model: SplitModel, dirs: Sequence[str | Path]) -> None:
        import sys

        from veil.data.images import list_images
        from veil.preprocess import ImageReadError, load_image
        from veil.privacy.datapath import data_path

        path = data_path(model)
        self.tensors: list[torch.Tensor] = []
        for f in list_images(dirs):
            try:
                self.tensors.append(path.preprocess(load_image(f)).tensor[0].clone())
            except ImageReadError as exc:
                print(f"skipped: {exc}", file=sys.stderr)
        if not self.tensors:
            raise ValueError("no readable training images")
        self.dirs = [str(d) for d in dirs]

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.tensors[i]

    def describe(self) -> dict[str, Any]:
        return {"images": len(self.tensors), "dirs": self.dirs}


class ModelFeatures(nn.Module):
    """Frozen features of the attacked model at several depths, for the perceptual loss.

    FaceBoxes: conv1 (stride 4), the RDCL output (stride 32) and after the three Inception blocks;
    any other model: its head's activation.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)  # not a child: its weights are not the decoder's
        for p in model.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        from veil.models.faceboxes import FaceBoxes, FaceBoxesHead

        m: Any = self.model
        net = getattr(m, "network", m)
        if isinstance(net, FaceBoxes):
            f1 = net.conv1(x)
            a = FaceBoxesHead(net, 0)(x)
            return [f1, a, net.inception3(net.inception2(net.inception1(a)))]
        return [m.head(x)]


def perceptual_loss(features: ModelFeatures, rec: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over depths of ``|F(rec) − F(target)|`` normalised by ``|F(target)|`` (network-input units in)."""
    with torch.no_grad():
        ft = features(target)
    fr = features(rec)
    return sum((r - t).abs().mean() / t.abs().mean().clamp_min(1e-6) for r, t in zip(fr, ft)) / len(ft)


class Plateau:
    """Stops training when the mean loss of the last ``window`` steps improved by less than
    ``tol`` (relative) on the window before, ``patience`` windows in a row."""

    def __init__(self, window: int = 50, tol: float = 0.01, patience: int = 3) -> None:
        self.window, self.tol, self.patience = window, tol, patience
        self._flat = 0
        self._prev: float | None = None

    def update(self, losses: list[float]) -> bool:
        if len(losses) % self.window or len(losses) < self.window:
            return False
        cur = float(np.mean(losses[-self.window :]))
        if self._prev is not None:
            self._flat = self._flat + 1 if (self._prev - cur) < self.tol * self._prev else 0
        self._prev = cur
        return self._flat >= self.patience


def budget_step(
    opt: torch.optim.Optimizer,
    lr: float,
    step: int,
    elapsed: float,
    budget: float,
    max_steps: int | None,
    plateau: Plateau | None,
    curve: list[float],
) -> str | None:
    """One bookkeeping step of every attacker's training loop: why to stop (``max_steps``, ``budget`` of
    wall seconds, ``plateau`` of the loss ``curve``), else None after setting the learning rate on a cosine
    decay over the budget (to 5 % of ``lr``)."""
    if max_steps is not None and step >= max_steps:
        return "max_steps"
    if elapsed >= budget:
        return "budget"
    if plateau is not None and plateau.update(curve):
        return "plateau"
    frac = step / max_steps if max_steps else elapsed / budget
    for g in opt.param_groups:
        g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(frac, 1.0))))
    return None


def state_sha256(dec: nn.Module) -> str:
    """SHA-256 of a module's weights (to record which weights a decoder started from)."""
    h = hashlib.sha256()
    for k, v in sorted(dec.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_decoder(
    head: Callable[[torch.Tensor], torch.Tensor],
    sampler: Batches,
    minutes: float = 15.0,
    obfuscator: nn.Module | None = None,
    init: Decoder | None = None,
    batch: int = 6,
    lr: float = 2e-3,
    max_steps: int | None = None,
    out: str | Path | None = None,
    meta: dict | None = None,
    progress: bool = True,
    seed: int | None = None,
    loss: str = "l1",
    features: ModelFeatures | None = None,
    perceptual_weight: float = 1.0,
    plateau: Plateau | None = None,
    device: str | torch.device = "cpu",
    arch: dict[str, Any] | None = None,
) -> Decoder:
    """Train a decoder until its loss plateaus (``plateau``), ``minutes`` of wall time pass or
    ``max_steps`` are done; L1 in pixel space, plus the feature term for ``loss="perceptual"``.

    ``head`` maps a batch of network inputs to what the attacker observes (the data path's
    :meth:`~veil.pipeline.SplitPipeline.observe`, a model's head, or a defense's wire code);
    ``obfuscator`` (if given) is then applied to every activation with fresh noise: the adaptive
    attacker. ``init`` warm-starts from another decoder, else ``arch``
    (:func:`~veil.privacy.decoders.decoder_arch` of the model; default: FaceBoxes after the RDCL)
    shapes a fresh one. ``seed`` (default: drawn from the OS) sets the initial weights; the
    sampler's own seed sets the data order. The metadata records both, why training stopped,
    and the learning curve (mean L1 in 0..255 pixel levels per step).
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown decoder loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if loss == "perceptual" and features is None:
        raise ValueError("the perceptual loss needs the model's features (ModelFeatures(model))")
    seed = secrets.randbits(31) if seed is None else int(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        dec = _fresh(arch) if init is None else _clone(init)
    dec.to(device)
    opt = torch.optim.Adam(dec.parameters(), lr=lr)
    if isinstance(head, nn.Module):
        head.eval()
    budget = minutes * 60.0
    t0 = time.monotonic()
    step, ema, reason = 0, None, "budget"
    curve: list[float] = []
    bar = tqdm(
        total=int(budget) if max_steps is None else max_steps,
        desc=f"train decoder ({loss})",
        unit="s" if max_steps is None else "step",
        disable=not progress,
    )
    dec.train()
    while True:
        stop = budget_step(opt, lr, step, time.monotonic() - t0, budget, max_steps, plateau, curve)
        if stop is not None:
            reason = stop
            break
        x = sampler.batch(batch).to(device)
        with torch.no_grad():
            a = head(x)
            if obfuscator is not None:
                a = obfuscator(a)
        rec = dec(a)
        l1 = F.l1_loss(rec, x / dec.unit)
        total = (
            l1
            if loss == "l1" or features is None
            else l1 + perceptual_weight * perceptual_loss(features, rec * dec.unit, x)
        )
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        step += 1
        curve.append(round(l1.item() * PIXEL_SCALE, 2))
        ema = l1.item() if ema is None else 0.95 * ema + 0.05 * l1.item()
        if max_steps is None:
            bar.n = min(int(time.monotonic() - t0), int(budget))
            bar.refresh()
        else:
            bar.update(1)
        bar.set_postfix(step=step, l1=f"{ema * PIXEL_SCALE:.1f}px")
    bar.close()
    dec.eval().cpu()
    info = dict(meta or {})
    info.update(
        steps=step,
        seconds=round(time.monotonic() - t0, 1),
        batch=batch,
        data=sampler.describe(),
        final_l1_px=round(float(ema or 0) * PIXEL_SCALE, 2),
        seed=seed,
        data_order_seed=sampler.seed,
        loss=loss,
        stop_reason=reason,
        budget_minutes=minutes,
        lr=lr,
        curve_l1_px=curve,
        init_sha256=state_sha256(init) if init is not None else None,
        device=str(device),
    )
    if sampler.scale is not None:
        info.setdefault("scale", sampler.scale)
    if loss == "perceptual":
        info["perceptual_weight"] = perceptual_weight
    if plateau is not None:
        info["plateau"] = {"window": plateau.window, "tol": plateau.tol, "patience": plateau.patience}
    if out is not None:
        save_decoder(dec, out, info)
    else:
        dec.meta = info
    return dec


def _fresh(arch: dict[str, Any] | None) -> Decoder:
    if arch is None:
        return Decoder()
    a = dict(arch)
    widths = a.pop("widths", None)
    return Decoder(tuple(widths) if widths else None, **a)


def _clone(dec: Decoder) -> Decoder:
    """A trainable copy of a warm start: a :class:`Decoder` rebuilt from its arch; any other decoder-like
    module (e.g. :class:`~veil.privacy.layerwise.ChainedDecoder`: ``forward`` and ``unit``) deep-copied."""
    if not isinstance(dec, Decoder):
        import copy

        return copy.deepcopy(dec)
    new = _fresh(dec.arch())
    new.load_state_dict(dec.state_dict())
    return new


def default_training_dirs() -> list[Path]:
    """The non-FDDB photo folders from ``VEIL_FIT_IMAGES`` (``veil.settings``); empty if unset."""
    from veil.settings import settings

    return [Path(d) for d in settings().fit_images]


def require_training_dirs(dirs: Sequence[str | Path] | None, flag: str | None = None) -> list[Path]:
    """``dirs`` if given, else ``VEIL_FIT_IMAGES``; a clear error naming both when neither is set
    (``flag``: the command-line option that gives ``dirs``, named in that error by a CLI caller)."""
    out = [Path(d) for d in dirs] if dirs else default_training_dirs()
    if not out:
        how = f"pass {flag} DIR [DIR ...]" if flag else "give training photo folders"
        raise FileNotFoundError(
            f"no training photos for the attackers: {how} (non-FDDB photos) "
            "or set VEIL_FIT_IMAGES (folders separated by ':')"
        )
    return out


def decoder_path(
    model: SplitModel, kind: str, scale: float | None, noise_sha256: str | None = None, loss: str = "l1"
) -> Path:
    """Cache path of a decoder, under the model's key (model, split, weights hash):
    ``<key>/naive[-perceptual][-x<scale>]`` or ``<key>/adaptive[-perceptual]-<noise sha>[-x<scale>]``."""
    suffix = "" if scale is None or scale == model.config.input.scale else f"-x{scale:g}"
    tag = "" if loss == "l1" else f"-{loss}"
    if kind == "naive":
        return attackers_dir(model) / f"naive{tag}{suffix}.safetensors"
    if not noise_sha256:
        raise ValueError("an adaptive decoder needs the noise file's SHA-256 to be cached")
    return attackers_dir(model) / f"adaptive{tag}-{noise_sha256[:16]}{suffix}.safetensors"


#: Training data of :func:`ensure_decoder`: photo folders (crops at the deployed scale) or network inputs.
TrainingData = Sequence[str | Path] | Batches | None


def ensure_decoder(
    model: SplitModel,
    minutes: float,
    data: TrainingData = None,
    obfuscator: nn.Module | None = None,
    noise_sha256: str | None = None,
    alpha: float | None = None,
    crop: int = 384,
    batch: int = 8,
    progress: bool = True,
    scale: float | None = None,
    loss: str = "l1",
    features: ModelFeatures | None = None,
    plateau: Plateau | None = None,
    device: str | torch.device = "cpu",
) -> Decoder:
    """The cached naive (or, with ``obfuscator``, adaptive) decoder for ``model`` (its key: model, split,
    weights), input scale and loss; train and cache it if absent.

    ``data``: photo folders (default ``VEIL_FIT_IMAGES``), cropped at ×``scale`` (default: the model's
    input scale), or :class:`Batches` of the model's network inputs (a fixed-size model's own data).
    The adaptive decoder is keyed by the noise file's SHA-256 and warm-starts from the naive one;
    a perceptual decoder warm-starts from the L1 decoder of the same kind. A decoder only knows the
    image statistics of the scale it was trained at, so the scale is part of the cache key.
    A cached file made for another model, split or weights is refused, with the reason.
    """
    from veil.privacy.decoders import read_decoder

    scale = model.config.input.scale if scale is None else float(scale)
    path = decoder_path(model, "naive" if obfuscator is None else "adaptive", scale, noise_sha256, loss)
    if path.is_file():
        dec = read_decoder(path, model)
        if float(dec.meta.get("scale", scale)) == scale:
            return dec
        print(f"{path} was trained at another input scale; retraining")
    if isinstance(data, Batches):
        batches, sources = data.reseeded(), None
    else:
        data = require_training_dirs(data)
        sources = [str(d) for d in data]
        # photos of any size: crops at the deployed scale; a fixed-size model: each image as its input
        fixed = model.config.input.size is not None
        batches = (
            Batches(NetworkInputs(model, data))
            if fixed
            else photo_crops(data, crop=crop, scale=scale, input=model.config.input)
        )

    def l1_decoder(obf: nn.Module | None, nsha: str | None, a: float | None) -> Decoder:
        """The L1 decoder this one warm-starts from (same settings, its own default plateau)."""
        return ensure_decoder(
            model,
            minutes,
            data,
            obfuscator=obf,
            noise_sha256=nsha,
            alpha=a,
            crop=crop,
            batch=batch,
            progress=progress,
            scale=scale,
            device=device,
        )

    init = None
    if loss != "l1":
        init = l1_decoder(obfuscator, noise_sha256, alpha)
    elif obfuscator is not None:
        init = l1_decoder(None, None, None)
    meta = {
        **model_meta(model),
        "kind": "adaptive" if obfuscator is not None else "naive",
        "alpha": alpha,
        "noise_sha256": noise_sha256,
        "scale": scale,
        "sources": sources if sources is not None else batches.describe(),
    }
    # What the attacker trains on comes from the library's one data path (head, then the noise).
    return train_decoder(
        data_path(model, scale, obfuscator).observe,
        batches,
        minutes=minutes,
        init=init,
        batch=batch,
        out=path,
        meta=meta,
        progress=progress,
        loss=loss,
        features=features,
        plateau=plateau if plateau is not None else Plateau(),
        device=device,
        arch=decoder_arch(model),
    )

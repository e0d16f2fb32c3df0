"""Train reconstruction decoders on non-FDDB images, until their loss plateaus or a wall budget ends.

Training data are random crops of WIDER / dlib / scikit-image photos taken at the deployed
input scale (×3 by default, jittered ±25 %) — never FDDB, which is what the audit scores.
The *naive* decoder sees clean activations; the *adaptive* decoder sees activations passed
through the fitted obfuscator for the ALPHA under audit (fresh noise every step), starting
from the naive decoder's weights (an attacker may reuse anything public).

Independence (issue 9): every decoder draws its own seed from the OS unless one is given;
the seed (initial weights of a from-scratch decoder) and the data-order seed (which crops,
in which order) are recorded in its metadata with the per-step learning curve, so the audit
can refuse a scoring attacker that shares them with an adversary used inside a defense.

Losses: ``l1`` (pixels) or ``perceptual`` (pixels plus a feature-space term). The feature
space is the frozen FaceBoxes detector's own (conv1 at stride 4, the head's output at stride
32, and the first three Inception blocks): the only differentiable network in reach that was
trained on faces (dlib's recogniser is not differentiable from Python, torchvision is not a
dependency), so its features respond to facial structure rather than to pixel noise.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from veil.models.faceboxes import FaceBoxes
from veil.preprocess import BGR_MEAN, FDDB_SCALE, ImageReadError, load_image
from veil.privacy.decoders import PIXEL_SCALE, Decoder, save_decoder

_EXTS = {".jpg", ".jpeg", ".png", ".bmp"}
LOSSES = ("l1", "perceptual")


def training_images(dirs: Sequence[str | Path] | None = None, max_side: int = 640) -> list[np.ndarray]:
    """Load the training photos (BGR uint8): images under ``dirs`` plus scikit-image's colour samples.

    Refuses any path containing ``fddb`` (case-insensitive): FDDB is evaluation data only.
    """
    images: list[np.ndarray] = []
    for d in dirs or []:
        d = Path(d)
        if "fddb" in str(d).lower():
            raise ValueError(f"refusing to train an attacker on {d}: FDDB is the evaluation set")
        if not d.exists():
            raise FileNotFoundError(f"training image folder not found: {d}")
        for p in sorted(d.rglob("*") if d.is_dir() else [d]):
            if p.suffix.lower() in _EXTS:
                try:
                    img = load_image(p)
                except ImageReadError as exc:
                    print(f"skipped: {exc}")
                    continue
                s = max_side / max(img.shape[:2])
                images.append(cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else img)
    try:
        import skimage.data as sd

        for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina"):
            images.append(np.ascontiguousarray(getattr(sd, name)()[:, :, ::-1]))
    except Exception:  # noqa: BLE001 - sample data are optional extras
        pass
    if not images:
        raise ValueError("no training images found")
    return images


class CropSampler:
    """Random crops at the deployed scale: ``crop`` px after a ×``scale`` (jittered) bilinear resize."""

    def __init__(
        self,
        images: list[np.ndarray],
        crop: int = 384,
        scale: float = FDDB_SCALE,
        jitter: float = 0.25,
        rng: np.random.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        if crop % 32:
            raise ValueError("crop must be a multiple of 32")
        self.images, self.crop, self.scale, self.jitter = images, crop, scale, jitter
        #: the data-order seed, recorded in the decoder's metadata (None: not known, e.g. a caller's ``rng``)
        self.seed = seed
        self.rng = rng or np.random.default_rng(seed)

    def one(self) -> np.ndarray:
        img = self.images[self.rng.integers(len(self.images))]
        s = self.scale * float(np.exp(self.rng.uniform(-self.jitter, self.jitter)))
        src = int(np.ceil(self.crop / s)) + 1
        h, w = img.shape[:2]
        if h < src or w < src:  # small image: upscale it so a crop fits
            f = src / min(h, w)
            img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR)
            h, w = img.shape[:2]
        y, x = self.rng.integers(0, h - src + 1), self.rng.integers(0, w - src + 1)
        patch = cv2.resize(img[y : y + src, x : x + src], None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
        patch = patch[: self.crop, : self.crop]
        if self.rng.random() < 0.5:
            patch = patch[:, ::-1]
        return patch

    def batch(self, n: int) -> torch.Tensor:
        """``[n,3,crop,crop]`` mean-subtracted BGR float tensor (network-input units)."""
        arr = np.stack([self.one() for _ in range(n)]).astype(np.float32) - np.asarray(BGR_MEAN, np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


class FaceFeatures(nn.Module):
    """Frozen FaceBoxes features at three depths (stride 4, 32 and 32 after three Inception blocks)."""

    model: FaceBoxes

    def __init__(self, model: FaceBoxes) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)  # not a child: its weights are not the decoder's
        for p in model.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        m = self.model
        f1 = m.conv1(x)
        a = m.head(x)
        f3 = m.inception3(m.inception2(m.inception1(a)))
        return [f1, a, f3]


def perceptual_loss(features: FaceFeatures, rec: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
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


def state_sha256(dec: nn.Module) -> str:
    """SHA-256 of a module's weights (to record which weights a decoder started from)."""
    h = hashlib.sha256()
    for k, v in sorted(dec.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_decoder(
    head: nn.Module,
    sampler: CropSampler,
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
    features: FaceFeatures | None = None,
    perceptual_weight: float = 1.0,
    plateau: Plateau | None = None,
    device: str | torch.device = "cpu",
) -> Decoder:
    """Train a decoder until its loss plateaus (``plateau``), ``minutes`` of wall time pass or
    ``max_steps`` are done; L1 in pixel space, plus the feature term for ``loss="perceptual"``.

    ``obfuscator`` (if given) is applied to every clean activation with fresh noise: the
    adaptive attacker. ``init`` warm-starts from another decoder. ``seed`` (default: drawn from
    the OS) sets the initial weights; the sampler's own seed sets the data order. The metadata
    records both, why training stopped, and the learning curve (mean L1 in px per step).
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown decoder loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if loss == "perceptual" and features is None:
        raise ValueError("the perceptual loss needs the detector's features (FaceFeatures(model))")
    seed = secrets.randbits(31) if seed is None else int(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        dec = Decoder() if init is None else _clone(init)
    dec.to(device)
    opt = torch.optim.Adam(dec.parameters(), lr=lr)
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
        elapsed = time.monotonic() - t0
        if max_steps is not None and step >= max_steps:
            reason = "max_steps"
            break
        if elapsed >= budget:
            reason = "budget"
            break
        if plateau is not None and plateau.update(curve):
            reason = "plateau"
            break
        frac = step / max_steps if max_steps else elapsed / budget
        for g in opt.param_groups:  # cosine decay over the budget
            g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(frac, 1.0))))
        x = sampler.batch(batch).to(device)
        with torch.no_grad():
            a = head(x)
            if obfuscator is not None:
                a = obfuscator(a)
        rec = dec(a)
        l1 = F.l1_loss(rec, x / PIXEL_SCALE)
        total = (
            l1
            if loss == "l1" or features is None
            else l1 + perceptual_weight * perceptual_loss(features, rec * PIXEL_SCALE, x)
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
        crop=sampler.crop,
        scale=sampler.scale,
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
    if loss == "perceptual":
        info["perceptual_weight"] = perceptual_weight
    if plateau is not None:
        info["plateau"] = {"window": plateau.window, "tol": plateau.tol, "patience": plateau.patience}
    if out is not None:
        save_decoder(dec, out, info)
    else:
        dec.meta = info
    return dec


def seeded_sampler(images: list[np.ndarray], crop: int, scale: float, seed: int | None = None) -> CropSampler:
    """A crop sampler whose data order comes from its own recorded seed (OS-drawn unless given)."""
    seed = secrets.randbits(31) if seed is None else int(seed)
    return CropSampler(images, crop=crop, scale=scale, seed=seed)


def _clone(dec: Decoder) -> Decoder:
    new = Decoder(dec.widths)
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


def decoder_path(kind: str, scale: float, noise_sha256: str | None = None, loss: str = "l1") -> Path:
    """Cache path of a decoder: ``naive[-perceptual][-x<scale>]`` or
    ``adaptive[-perceptual]-<noise sha>[-x<scale>]``."""
    from veil.privacy.decoders import attackers_dir

    suffix = "" if scale == FDDB_SCALE else f"-x{scale:g}"
    tag = "" if loss == "l1" else f"-{loss}"
    if kind == "naive":
        return attackers_dir() / f"naive{tag}{suffix}.safetensors"
    if not noise_sha256:
        raise ValueError("an adaptive decoder needs the noise file's SHA-256 to be cached")
    return attackers_dir() / f"adaptive{tag}-{noise_sha256[:16]}{suffix}.safetensors"


def ensure_decoder(
    head: nn.Module,
    weights_sha256: str,
    minutes: float,
    train_dirs: Sequence[str | Path] | None = None,
    obfuscator: nn.Module | None = None,
    noise_sha256: str | None = None,
    alpha: float | None = None,
    crop: int = 384,
    batch: int = 8,
    progress: bool = True,
    scale: float = FDDB_SCALE,
    loss: str = "l1",
    features: FaceFeatures | None = None,
    plateau: Plateau | None = None,
    device: str | torch.device = "cpu",
) -> Decoder:
    """The cached naive (or, with ``obfuscator``, adaptive) decoder for these weights, input scale
    and loss; train and cache it if absent.

    The adaptive decoder is keyed by the noise file's SHA-256 and warm-starts from the naive one;
    a perceptual decoder warm-starts from the L1 decoder of the same kind. A decoder only knows
    the image statistics of the scale it was trained at, so the scale is part of the cache key
    (the default ×3 keeps the plain names that ``load_decoder()`` finds).
    """
    from veil.privacy.decoders import read_decoder

    path = decoder_path("naive" if obfuscator is None else "adaptive", scale, noise_sha256, loss)
    if path.is_file():
        dec = read_decoder(path)
        same_scale = float(dec.meta.get("scale", FDDB_SCALE)) == float(scale)
        if dec.meta.get("weights_sha256") == weights_sha256 and same_scale:
            return dec
        print(f"{path} was trained for other weights or another scale; retraining")
    dirs = require_training_dirs(train_dirs)
    sampler = seeded_sampler(training_images(dirs), crop=crop, scale=scale)

    def l1_decoder(obf: nn.Module | None, nsha: str | None, a: float | None) -> Decoder:
        """The L1 decoder this one warm-starts from (same settings, its own default plateau)."""
        return ensure_decoder(
            head,
            weights_sha256,
            minutes,
            dirs,
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
        "kind": "adaptive" if obfuscator is not None else "naive",
        "alpha": alpha,
        "weights_sha256": weights_sha256,
        "noise_sha256": noise_sha256,
        "sources": [str(d) for d in dirs] + ["skimage.data"],
    }
    return train_decoder(
        head,
        sampler,
        minutes=minutes,
        obfuscator=obfuscator,
        init=init,
        batch=batch,
        out=path,
        meta=meta,
        progress=progress,
        loss=loss,
        features=features,
        plateau=plateau if plateau is not None else Plateau(),
        device=device,
    )

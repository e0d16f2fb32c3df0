"""Train reconstruction decoders on non-FDDB images, for a bounded wall time.

Training data are random crops of WIDER / dlib / scikit-image photos taken at the deployed
input scale (×3 by default, jittered ±25 %) — never FDDB, which is what the audit scores.
The *naive* decoder sees clean activations; the *adaptive* decoder sees activations passed
through the fitted obfuscator for the ALPHA under audit (fresh noise every step), starting
from the naive decoder's weights (an attacker may reuse anything public).
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from veil.preprocess import BGR_MEAN, FDDB_SCALE, ImageReadError, load_image
from veil.privacy.decoders import PIXEL_SCALE, Decoder, save_decoder

_EXTS = {".jpg", ".jpeg", ".png", ".bmp"}


def training_images(dirs: list[str | Path] | None = None, max_side: int = 640) -> list[np.ndarray]:
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

    def __init__(self, images: list[np.ndarray], crop: int = 384, scale: float = FDDB_SCALE,
                 jitter: float = 0.25, rng: np.random.Generator | None = None) -> None:
        if crop % 32:
            raise ValueError("crop must be a multiple of 32")
        self.images, self.crop, self.scale, self.jitter = images, crop, scale, jitter
        self.rng = rng or np.random.default_rng()

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
        patch = cv2.resize(img[y:y + src, x:x + src], None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR)
        patch = patch[: self.crop, : self.crop]
        if self.rng.random() < 0.5:
            patch = patch[:, ::-1]
        return patch

    def batch(self, n: int) -> torch.Tensor:
        """``[n,3,crop,crop]`` mean-subtracted BGR float tensor (network-input units)."""
        arr = np.stack([self.one() for _ in range(n)]).astype(np.float32) - np.asarray(BGR_MEAN, np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))


def train_decoder(head: nn.Module, sampler: CropSampler, minutes: float = 15.0, obfuscator: nn.Module | None = None,
                  init: Decoder | None = None, batch: int = 6, lr: float = 2e-3, max_steps: int | None = None,
                  out: str | Path | None = None, meta: dict | None = None, progress: bool = True) -> Decoder:
    """Train a decoder for ``minutes`` of wall time (or ``max_steps``); L1 loss in pixel space.

    ``obfuscator`` (if given) is applied to every clean activation with fresh noise: the
    adaptive attacker. ``init`` warm-starts from another decoder. Saves to ``out`` if given.
    """
    dec = Decoder() if init is None else _clone(init)
    opt = torch.optim.Adam(dec.parameters(), lr=lr)
    head.eval()
    budget = minutes * 60.0
    t0 = time.monotonic()
    step, ema = 0, None
    bar = tqdm(total=int(budget) if max_steps is None else max_steps, desc="train decoder",
               unit="s" if max_steps is None else "step", disable=not progress)
    dec.train()
    while True:
        elapsed = time.monotonic() - t0
        if (max_steps is not None and step >= max_steps) or (max_steps is None and elapsed >= budget):
            break
        frac = step / max_steps if max_steps else elapsed / budget
        for g in opt.param_groups:  # cosine decay over the budget
            g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(frac, 1.0))))
        x = sampler.batch(batch)
        with torch.no_grad():
            a = head(x)
            if obfuscator is not None:
                a = obfuscator(a)
        loss = F.l1_loss(dec(a), x / PIXEL_SCALE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if max_steps is None:
            bar.n = min(int(time.monotonic() - t0), int(budget))
            bar.refresh()
        else:
            bar.update(1)
        bar.set_postfix(step=step, l1=f"{ema * PIXEL_SCALE:.1f}px")
    bar.close()
    dec.eval()
    info = dict(meta or {})
    info.update(steps=step, seconds=round(time.monotonic() - t0, 1), batch=batch, crop=sampler.crop,
                scale=sampler.scale, final_l1_px=round(float(ema or 0) * PIXEL_SCALE, 2))
    if out is not None:
        save_decoder(dec, out, info)
    else:
        dec.meta = info
    return dec


def _clone(dec: Decoder) -> Decoder:
    new = Decoder(dec.widths)
    new.load_state_dict(dec.state_dict())
    return new


def default_training_dirs() -> list[Path]:
    """The non-FDDB photos beside the project (``../shared``), if present: WIDER subset and dlib photos."""
    import os

    shared = Path(os.environ.get("VEIL_SHARED", "../shared"))
    dirs = [shared / "data" / "wider_face_val_subset" / "images", shared / "data" / "dlib_faces"]
    return [d for d in dirs if d.is_dir()]


def ensure_decoder(head: nn.Module, weights_sha256: str, minutes: float, train_dirs: list[str | Path] | None = None,
                   obfuscator: nn.Module | None = None, noise_sha256: str | None = None, alpha: float | None = None,
                   crop: int = 384, batch: int = 8, progress: bool = True, scale: float = FDDB_SCALE) -> Decoder:
    """The cached naive (or, with ``obfuscator``, adaptive) decoder for these weights and input scale;
    train and cache it if absent.

    The adaptive decoder is keyed by the noise file's SHA-256 and warm-starts from the naive one.
    A decoder only knows the image statistics of the scale it was trained at, so the scale is part
    of the cache key (the default ×3 keeps the plain names that ``load_decoder()`` finds).
    """
    from veil.privacy.decoders import DEFAULT_NAME, attackers_dir, read_decoder

    suffix = "" if scale == FDDB_SCALE else f"-x{scale:g}"
    if obfuscator is None:
        path = attackers_dir() / DEFAULT_NAME.replace(".safetensors", f"{suffix}.safetensors")
    else:
        if not noise_sha256:
            raise ValueError("an adaptive decoder needs the noise file's SHA-256 to be cached")
        path = attackers_dir() / f"adaptive-{noise_sha256[:16]}{suffix}.safetensors"
    if path.is_file():
        dec = read_decoder(path)
        same_scale = float(dec.meta.get("scale", FDDB_SCALE)) == float(scale)
        if dec.meta.get("weights_sha256") == weights_sha256 and same_scale:
            return dec
        print(f"{path} was trained for other weights or another scale; retraining")
    dirs = list(train_dirs) if train_dirs else default_training_dirs()
    if not dirs:
        raise FileNotFoundError("no training images for the decoder: pass --train-images DIR (WIDER, dlib or your "
                                "own non-evaluation photos)")
    sampler = CropSampler(training_images(dirs), crop=crop, scale=scale)
    init = None
    if obfuscator is not None:
        init = ensure_decoder(head, weights_sha256, minutes, dirs, crop=crop, batch=batch, progress=progress,
                              scale=scale)
    meta = {"kind": "adaptive" if obfuscator is not None else "naive", "alpha": alpha, "weights_sha256": weights_sha256,
            "noise_sha256": noise_sha256, "sources": [str(d) for d in dirs] + ["skimage.data"]}
    return train_decoder(head, sampler, minutes=minutes, obfuscator=obfuscator, init=init, batch=batch, out=path,
                         meta=meta, progress=progress)

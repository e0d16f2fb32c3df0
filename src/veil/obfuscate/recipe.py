"""The standard recipe: fit noise for the FaceBoxes split on image folders and save the artifact.

One function shared by ``veil fit-noise`` and ``veil sweep`` so both produce identical
artifacts for the same settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from veil.models.faceboxes import FaceBoxes
from veil.obfuscate.artifact import save_obfuscator
from veil.obfuscate.crops import DEFAULT_CROP, DEFAULT_SCALE_RANGE, ImageCrops
from veil.obfuscate.fit import FitConfig, FitResult, activation_bank, fit_noise

#: Random crops taken from each fitting photo.
DEFAULT_CROPS_PER_IMAGE = 1


def fit_and_save(
    model: FaceBoxes,
    weights_sha256: str,
    images: Sequence[str | Path],
    out: str | Path,
    config: FitConfig,
    crop: int = DEFAULT_CROP,
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
    crops_per_image: int = DEFAULT_CROPS_PER_IMAGE,
    progress: bool = True,
    bank_cache: dict | None = None,
) -> tuple[FitResult, dict[str, Any]]:
    """Fit ``config.alpha`` on zoomed crops of ``images`` (never FDDB) and write ``out``; return result, metadata.

    ``bank_cache`` (a dict the caller keeps) reuses the clean activations between calls
    with the same data settings, as a sweep over ALPHA does.
    """
    data = ImageCrops(images, crop=crop, scale_range=scale_range, crops_per_image=crops_per_image, seed=config.seed)
    key = (tuple(map(str, images)), crop, tuple(scale_range), crops_per_image, config.seed)
    bank = (bank_cache or {}).get(key)
    if bank is None:
        loader = DataLoader(data, batch_size=config.batch_size, shuffle=False)
        bank = activation_bank(model.head, model.tail, loader, progress)
        if bank_cache is not None:
            bank_cache[key] = bank
    result = fit_noise(model.head, model.tail, None, config, progress=progress, bank=bank)
    meta = {
        "alpha": config.alpha,
        "weights_sha256": weights_sha256,
        "fit": dict(vars(config)),
        "fit_seconds": round(result.seconds, 1),
        "data": {**data.describe(), "dirs": [str(Path(d)) for d in images]},
        "activation_stats": result.activation_stats,
        "loss_log": result.log,
    }
    save_obfuscator(result.obfuscator, out, meta)
    return result, meta

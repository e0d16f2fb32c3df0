"""The standard recipe: fit noise for any split model on image folders and save the artifact.

One function shared by ``veil fit-noise`` and ``veil sweep`` so both produce identical
artifacts for the same settings. The distortion the fit minimises is the model's own
(``model.config.distortion``); the file records the model, split point and weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader, Dataset

from veil.models import SplitModel, as_split_model
from veil.obfuscate.artifact import save_obfuscator
from veil.obfuscate.crops import DEFAULT_CROP, DEFAULT_SCALE_RANGE, ImageCrops
from veil.obfuscate.fit import FitConfig, FitResult, activation_bank, fit_noise

#: Random crops taken from each fitting photo.
DEFAULT_CROPS_PER_IMAGE = 1


def fit_and_save(
    model: SplitModel | nn.Module,
    weights_sha256: str,
    images: Sequence[str | Path] | None,
    out: str | Path,
    config: FitConfig,
    crop: int = DEFAULT_CROP,
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
    crops_per_image: int = DEFAULT_CROPS_PER_IMAGE,
    progress: bool = True,
    bank_cache: dict | None = None,
    data: Dataset | None = None,
) -> tuple[FitResult, dict[str, Any]]:
    """Fit ``config.alpha`` on zoomed crops of ``images`` (never FDDB), or on ``data`` (any dataset of
    network-ready input tensors, e.g. a fixed-size classifier's), and write ``out``; return result, metadata.

    ``bank_cache`` (a dict the caller keeps) reuses the clean activations between calls
    with the same data settings, as a sweep over ALPHA does. ``weights_sha256`` must be the model's
    (a bare FaceBoxes network takes it as its own).
    """
    model = as_split_model(model, weights_sha256)
    if model.weights_sha256 != weights_sha256:
        raise ValueError(f"weights_sha256 {weights_sha256} is not the model's {model.weights_sha256}")
    distortion = model.config.distortion
    if distortion is None:
        raise ValueError(f"model {model.name!r} names no distortion in its config: noise cannot be fitted for it")
    if (data is None) == (images is None):
        raise ValueError("give the fitting photos (images) or a dataset of network-ready inputs (data), not both")
    if data is None:  # zoomed crops: a model of any input size (a fixed-size one: veil.obfuscate.whole)
        assert images is not None
        data = ImageCrops(
            images,
            crop=crop,
            scale_range=scale_range,
            crops_per_image=crops_per_image,
            seed=config.seed,
            input=model.config.input,
        )
        described = {**data.describe(), "dirs": [str(Path(d)) for d in images]}
        key: tuple = (model.key, tuple(map(str, images)), crop, tuple(scale_range), crops_per_image, config.seed)
    else:
        describe = getattr(data, "describe", None)
        described = describe() if callable(describe) else {"samples": len(data)}  # type: ignore[arg-type]
        key = (model.key, id(data), config.seed)
    bank = (bank_cache or {}).get(key)
    if bank is None:
        loader = DataLoader(data, batch_size=config.batch_size, shuffle=False)
        bank = activation_bank(model.head, model.tail, loader, progress)
        if bank_cache is not None:
            bank_cache[key] = bank
    result = fit_noise(model.head, model.tail, None, config, progress=progress, bank=bank, distortion=distortion)
    meta = {
        "alpha": config.alpha,
        "weights_sha256": weights_sha256,
        "fit": dict(vars(config)),
        "fit_seconds": round(result.seconds, 1),
        "data": described,
        "activation_stats": result.activation_stats,
        "loss_log": result.log,
    }
    save_obfuscator(result.obfuscator, out, meta, model)
    return result, meta

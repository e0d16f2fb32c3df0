"""Fit noise on whole images at a model's fixed input size (classifiers), and save it.

The detector's recipe (:mod:`veil.obfuscate.recipe`) fits on random zoomed crops of photo folders,
because a detector sees any size. A model with a fixed input size (``InputSpec.size``, e.g. the
``digits`` classifier) sees each whole image resized to that size, so its fitting data is simply
its training images, prepared by the model's own input spec (:class:`veil.pipeline.SplitPipeline`).
The distortion is the model's (``config.distortion``: KL of the class probabilities for a
classifier); the noise file records model, split point, weights SHA-256 and what the data was —
and data marked as a test split is refused: noise is never fitted on what it is measured on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from veil.models import SplitModel
from veil.obfuscate.fit import FitConfig, FitResult
from veil.obfuscate.recipe import fit_and_save
from veil.pipeline import SplitPipeline

#: Split names that are never fitted on.
EVALUATION_SPLITS = ("test",)


class EvaluationSplitError(ValueError):
    """Fitting data is an evaluation (test) split."""


class PreparedImages(Dataset):
    """Whole images prepared once as the model's input spec says; ``describe()`` is what the noise file records."""

    def __init__(self, model: SplitModel, images: Sequence[np.ndarray], description: dict[str, Any]) -> None:
        pipe = SplitPipeline(model, model.weights_sha256)
        self.inputs = torch.cat([pipe.preprocess(img).tensor for img in images])
        self.description = {**description, "images": len(images), "input_size": list(model.config.input.size or ())}

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.inputs[i]

    def describe(self) -> dict[str, Any]:
        return dict(self.description)


def fit_whole_images(
    model: SplitModel,
    images: Sequence[np.ndarray],
    out: str | Path,
    config: FitConfig,
    data: dict[str, Any],
    progress: bool = True,
) -> tuple[FitResult, dict[str, Any]]:
    """Fit ``config.alpha`` for ``model`` on uint8 ``images`` (each prepared whole, as its input spec
    says) with the standard recipe (:func:`veil.obfuscate.recipe.fit_and_save`) and write the noise
    file ``out``; return the fit and the metadata written.

    ``data`` describes the images and is recorded (e.g. ``{"dataset": "digits", "split": "train",
    ...}``); a ``split`` in :data:`EVALUATION_SPLITS` raises :class:`EvaluationSplitError`.
    """
    if str(data.get("split", "")).lower() in EVALUATION_SPLITS:
        raise EvaluationSplitError(
            f"refusing to fit noise on the {data['split']!r} split of {data.get('dataset', 'the data')}: noise is "
            "fitted on training data only and measured on the test split"
        )
    if model.config.input.size is None:
        raise ValueError(
            f"model {model.name!r} takes any input size: fit it on zoomed crops (veil.obfuscate.recipe), "
            "not on whole images"
        )
    if not len(images):
        raise ValueError("no fitting images")
    dataset = PreparedImages(model, images, data)
    return fit_and_save(model, model.weights_sha256, None, out, config, progress=progress, data=dataset)

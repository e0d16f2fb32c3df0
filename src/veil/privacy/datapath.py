"""The deployed data path as the audit sees it: one object per model, scale and noise.

The audit never re-implements preprocess → head → obfuscate: it asks the library's data path for
any split model (:class:`veil.pipeline.SplitPipeline` — ``preprocess`` as the model's input spec
says, ``head_activation`` for the clean activation and the network input it came from,
``obfuscator`` for the noise on top), exactly what ``veil detect --noisy`` and the evaluation
runners run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from veil.models import SplitModel

if TYPE_CHECKING:
    from veil.pipeline import SplitPipeline


def data_path(model: SplitModel, scale: float | None = None, obfuscator: nn.Module | None = None) -> SplitPipeline:
    """The library's data path for ``model`` at ×``scale`` (default: the model's input scale) with
    ``obfuscator`` (None: clean)."""
    from veil.pipeline import SplitPipeline

    s = model.config.input.scale if scale is None else float(scale)
    return SplitPipeline(model, model.weights_sha256, scale=s, obfuscator=obfuscator)


def mean_colour(model: SplitModel) -> np.ndarray:
    """The model's input mean as a uint8 pixel (one value per input channel): the 'nothing known' image."""
    spec = model.config.input
    return np.asarray(np.clip(np.rint(spec.mean[: spec.channels]), 0, 255), np.uint8)

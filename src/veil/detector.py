"""The face-detection data path in one object: image → preprocess → head → [obfuscate] → tail → boxes.

Every front end (CLI, notebook, Triton client, evaluation) goes through :class:`Detector`, so the
path is defined once: it is :class:`veil.pipeline.SplitPipeline` (the path for any split model)
for a ``face-detection`` model, with the names its callers use (``detect``, ``boxes_from_*``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from veil.models import DEFAULT_MODEL
from veil.pipeline import SplitPipeline
from veil.preprocess import Prepared

__all__ = ["Detector"]


@dataclass
class Detector(SplitPipeline):
    """A split face detector (FaceBoxes by default, at any of its splits) with an optional obfuscation
    step between head and tail. ``Detector(model, weights_sha256, scale, post, obfuscator, backend, max_pixels)``."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.config.task != "face-detection":
            raise ValueError(
                f"Detector is the face-detection path; model {self.config.name!r} does {self.config.task!r}: "
                "use veil.pipeline.SplitPipeline (or veil.make_private)"
            )

    @classmethod
    def from_weights(
        cls, path: str | Path | None = None, *, model: str = DEFAULT_MODEL, split: str | None = None, **kwargs: Any
    ) -> Detector:
        """Load verified weights (see :func:`veil.models.create`): FaceBoxes at its default split unless told."""
        return cls.from_model(model, split, weights=path, **kwargs)

    @torch.inference_mode()
    def boxes_from_activation(self, a: torch.Tensor, prep: Prepared) -> np.ndarray:
        """Server side plus local post-processing: activation → ``[K,5]`` boxes in original pixels."""
        loc, conf = self.server_side(a)[:2]
        return self.boxes_from_outputs(loc, conf, prep)

    def boxes_from_outputs(self, loc: torch.Tensor, conf: torch.Tensor, prep: Prepared) -> np.ndarray:
        """Post-process tail outputs (e.g. returned by a remote server) for one image."""
        boxes = self.predict_from_outputs((torch.as_tensor(loc), torch.as_tensor(conf)), prep)
        assert isinstance(boxes, np.ndarray)  # face-detection (checked at construction)
        return boxes

    def detect(self, image: np.ndarray | Prepared, obfuscate: bool = True) -> np.ndarray:
        """Detect faces in a uint8 BGR image (or its :meth:`preprocess` result): ``[K,5]`` rows of
        ``x1,y1,x2,y2,score``."""
        a, prep = self.client_side(image, obfuscate=obfuscate)
        return self.boxes_from_activation(a, prep)

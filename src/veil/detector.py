"""The whole data path in one object: image → preprocess → head → [obfuscate] → tail → boxes.

Every front end (CLI, notebook, Triton client, evaluation) goes through
:class:`Detector`, so the path is defined once. The obfuscation step is any
``nn.Module`` mapping an activation to an activation of the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from veil.models.faceboxes import FaceBoxes
from veil.postprocess import PostprocessConfig, postprocess
from veil.preprocess import FDDB_SCALE, MAX_INPUT_PIXELS, Prepared, prepare
from veil.weights import load_faceboxes


@dataclass
class Detector:
    """A split FaceBoxes detector with an optional obfuscation step between head and tail."""

    model: FaceBoxes
    weights_sha256: str = ""
    scale: float = FDDB_SCALE
    post: PostprocessConfig = field(default_factory=PostprocessConfig)
    obfuscator: nn.Module | None = None
    #: Largest network input in pixels (after ``scale``); larger images raise ImageTooLargeError. None: no limit.
    max_pixels: int | None = MAX_INPUT_PIXELS

    @classmethod
    def from_weights(cls, path: str | Path | None = None, **kwargs) -> "Detector":
        """Load verified weights (see :func:`veil.weights.resolve_weights`)."""
        model, digest = load_faceboxes(path)
        return cls(model=model, weights_sha256=digest, **kwargs)

    @property
    def head(self) -> nn.Module:
        return self.model.head

    @property
    def tail(self) -> nn.Module:
        return self.model.tail

    @torch.inference_mode()
    def client_side(self, image: np.ndarray, obfuscate: bool = True) -> tuple[torch.Tensor, Prepared]:
        """Everything that runs in the trust zone: the (obfuscated) activation that may leave it."""
        prep = prepare(image, self.scale, self.max_pixels)
        a = self.model.head(prep.tensor)
        if obfuscate and self.obfuscator is not None:
            a = self.obfuscator(a)
        return a, prep

    @torch.inference_mode()
    def boxes_from_activation(self, a: torch.Tensor, prep: Prepared) -> np.ndarray:
        """Server side plus local post-processing: activation → ``[K,5]`` boxes in original pixels."""
        loc, conf = self.model.tail(a)
        return self.boxes_from_outputs(loc, conf, prep)

    def boxes_from_outputs(self, loc: torch.Tensor, conf: torch.Tensor, prep: Prepared) -> np.ndarray:
        """Post-process tail outputs (e.g. returned by a remote server) for one image."""
        input_hw = (prep.tensor.shape[2], prep.tensor.shape[3])
        return postprocess(torch.as_tensor(loc)[0], torch.as_tensor(conf)[0], input_hw, prep.scale, self.post)

    def detect(self, image: np.ndarray, obfuscate: bool = True) -> np.ndarray:
        """Detect faces in a uint8 BGR image: ``[K,5]`` rows of ``x1,y1,x2,y2,score``."""
        a, prep = self.client_side(image, obfuscate=obfuscate)
        return self.boxes_from_activation(a, prep)

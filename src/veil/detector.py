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

from veil.backends import Backend, make_backend, resolve
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
    #: How head and tail are computed (:mod:`veil.backends`): ``fp32`` (reference), ``bf16``, ``onnx``, ``auto``.
    backend: str = "fp32"
    #: Largest network input in pixels (after ``scale``); larger images raise ImageTooLargeError. None: no limit.
    max_pixels: int | None = MAX_INPUT_PIXELS
    _runner: Backend | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.backend = resolve(self.backend)  # an unknown or unsupported backend fails here, clearly

    def __getstate__(self) -> dict:
        # Worker processes rebuild the backend (onnxruntime sessions do not pickle).
        return {**self.__dict__, "_runner": None}

    @property
    def runner(self) -> Backend:
        """The backend computing head and tail, built on first use (an ONNX export happens once per weights)."""
        if self._runner is None:
            self._runner = make_backend(self.backend, self.model, self.weights_sha256)
        return self._runner

    @classmethod
    def from_weights(cls, path: str | Path | None = None, **kwargs) -> Detector:
        """Load verified weights (see :func:`veil.weights.resolve_weights`)."""
        model, digest = load_faceboxes(path)
        return cls(model=model, weights_sha256=digest, **kwargs)

    @property
    def head(self) -> nn.Module:
        return self.model.head

    @property
    def tail(self) -> nn.Module:
        return self.model.tail

    def preprocess(self, image: np.ndarray) -> Prepared:
        """The network input for ``image`` (at this detector's scale and pixel limit).

        Separate so a pipeline can prepare the next image while the network runs on this one;
        :meth:`client_side` and :meth:`detect` accept its result in place of the image.
        """
        return prepare(image, self.scale, self.max_pixels)

    @torch.inference_mode()
    def head_activation(self, image: np.ndarray | Prepared) -> tuple[torch.Tensor, Prepared]:
        """The clean head activation and the network input it came from.

        The head is deterministic, so this is the step a subclass may cache (the ALPHA sweep
        reuses each image's activation for every noise); the noise is added after it, fresh.
        """
        prep = image if isinstance(image, Prepared) else self.preprocess(image)
        return self.runner.head(prep.tensor), prep

    @torch.inference_mode()
    def client_side(self, image: np.ndarray | Prepared, obfuscate: bool = True) -> tuple[torch.Tensor, Prepared]:
        """Everything that runs in the trust zone: the (obfuscated) activation that may leave it."""
        a, prep = self.head_activation(image)
        if obfuscate and self.obfuscator is not None:
            a = self.obfuscator(a)
        return a, prep

    @torch.inference_mode()
    def boxes_from_activation(self, a: torch.Tensor, prep: Prepared) -> np.ndarray:
        """Server side plus local post-processing: activation → ``[K,5]`` boxes in original pixels."""
        loc, conf = self.runner.tail(a)
        return self.boxes_from_outputs(loc, conf, prep)

    def boxes_from_outputs(self, loc: torch.Tensor, conf: torch.Tensor, prep: Prepared) -> np.ndarray:
        """Post-process tail outputs (e.g. returned by a remote server) for one image."""
        input_hw = (prep.tensor.shape[2], prep.tensor.shape[3])
        return postprocess(torch.as_tensor(loc)[0], torch.as_tensor(conf)[0], input_hw, prep.scale, self.post)

    def detect(self, image: np.ndarray | Prepared, obfuscate: bool = True) -> np.ndarray:
        """Detect faces in a uint8 BGR image (or its :meth:`preprocess` result): ``[K,5]`` rows of
        ``x1,y1,x2,y2,score``."""
        a, prep = self.client_side(image, obfuscate=obfuscate)
        return self.boxes_from_activation(a, prep)

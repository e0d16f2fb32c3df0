"""The data path for any split model: image → preprocess → head → [obfuscate] → tail → task answer.

:class:`SplitPipeline` is defined once for every registered model (:mod:`veil.models`): the
image becomes the network input as the model's ``config.input`` says (mean, std, scale or fixed
size, colour or grey), the head runs in the trust zone, the optional obfuscator (any
``nn.Module`` mapping an activation to one of the same shape) changes what leaves it, the tail
runs locally (a backend, :mod:`veil.backends`) or on a server, and its outputs become the task's
answer (:func:`predict_from_outputs`): face boxes for ``face-detection``, class probabilities and
the top label for ``classification``. :class:`veil.detector.Detector` is the face-detection
pipeline with its historical names (``detect``, ``boxes_from_outputs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from veil.backends import Backend, make_backend, resolve
from veil.models import DEFAULT_MODEL, ModelConfig, Outputs, SplitModel, as_split_model, create
from veil.postprocess import Classification, PostprocessConfig, classify, postprocess
from veil.preprocess import MAX_INPUT_PIXELS, Prepared, prepare

#: The tasks whose outputs the pipeline turns into answers.
TASKS = ("face-detection", "classification")
#: What a prediction is, per task: ``[K,5]`` boxes (x1,y1,x2,y2,score) or a :class:`Classification` (or
#: whatever a model's own ``config.postprocess`` returns).
Prediction = np.ndarray | Classification


def predict_from_outputs(
    config: ModelConfig, outputs: Outputs, prep: Prepared, post: PostprocessConfig | None = None
) -> Prediction:
    """One image's tail outputs (batch of one; from a local tail or a server) → the task's answer.

    ``face-detection``: ``(loc, conf)`` → ``[K,5]`` boxes in the original image's pixels (``post``
    thresholds); ``classification``: the first output's logits → :class:`Classification`; any task: the
    config's own ``postprocess`` when it names one (it comes first).
    """
    if config.postprocess is not None:
        return config.postprocess(outputs, prep)
    if config.task == "face-detection":
        loc, conf = outputs[0], outputs[1]
        input_hw = (prep.tensor.shape[2], prep.tensor.shape[3])
        return postprocess(
            torch.as_tensor(loc)[0], torch.as_tensor(conf)[0], input_hw, prep.scale, post or PostprocessConfig()
        )
    if config.task == "classification":
        return classify(torch.as_tensor(outputs[0])[0], config.labels)
    raise ValueError(f"model {config.name!r} has task {config.task!r}; the pipeline knows {', '.join(TASKS)}")


@dataclass
class SplitPipeline:
    """A split model with an optional obfuscation step between head and tail.

    ``scale`` defaults to the model's ``config.input.scale`` (FaceBoxes: ×3, the FDDB protocol);
    ``weights_sha256`` to the model's (it keys noise files and caches). Assigning ``model`` a bare
    FaceBoxes network (older code) wraps it (:func:`veil.models.as_split_model`) and drops the
    backend built for the previous one.
    """

    model: SplitModel
    weights_sha256: str = ""
    #: Resize factor before the network; None (the default) → the model's ``config.input.scale``.
    scale: float = None  # type: ignore[assignment]  # always a float after __post_init__
    #: Thresholds of the face-detection post-processing (unused by other tasks).
    post: PostprocessConfig = field(default_factory=PostprocessConfig)
    obfuscator: nn.Module | None = None
    #: How head and tail are computed (:mod:`veil.backends`): ``fp32`` (reference), ``bf16``, ``onnx``, ``auto``.
    backend: str = "fp32"
    #: Largest network input in pixels (after ``scale``); larger images raise ImageTooLargeError. None: no limit.
    max_pixels: int | None = MAX_INPUT_PIXELS
    _runner: Backend | None = field(default=None, init=False, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "model":
            value = as_split_model(value)
            self.__dict__["_runner"] = None  # a backend computes one model: rebuilt for the new one
        super().__setattr__(name, value)

    def __post_init__(self) -> None:
        self.backend = resolve(self.backend)  # an unknown or unsupported backend fails here, clearly
        if self.config.task not in TASKS and self.config.postprocess is None:
            raise ValueError(
                f"model {self.config.name!r} has task {self.config.task!r} and no postprocess in its config; "
                f"the pipeline knows {', '.join(TASKS)}"
            )
        if self.scale is None:
            self.scale = self.config.input.scale
        if not self.weights_sha256:
            self.weights_sha256 = self.model.weights_sha256

    def __getstate__(self) -> dict:
        # Worker processes rebuild the backend (onnxruntime sessions do not pickle).
        return {**self.__dict__, "_runner": None}

    @classmethod
    def from_model(
        cls,
        name: str = DEFAULT_MODEL,
        split: str | None = None,
        weights: str | Path | None = None,
        verify_sha: bool = True,
        **kwargs: Any,
    ) -> Any:
        """The pipeline of a registered model with verified weights (:func:`veil.models.create`)."""
        model = create(name, split, weights=weights, verify_sha=verify_sha)
        return cls(model=model, weights_sha256=model.weights_sha256, **kwargs)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def task(self) -> str:
        return self.model.config.task

    @property
    def runner(self) -> Backend:
        """The backend computing head and tail, built on first use (an ONNX export happens once per weights)."""
        if self._runner is None:
            self._runner = make_backend(self.backend, self.model, self.model.weights_sha256)
        return self._runner

    @property
    def head(self) -> nn.Module:
        return self.model.head

    @property
    def tail(self) -> nn.Module:
        return self.model.tail

    def preprocess(self, image: np.ndarray) -> Prepared:
        """The network input for ``image``, as the model's input spec says (at this pipeline's scale and
        pixel limit).

        Separate so a pipeline can prepare the next image while the network runs on this one;
        :meth:`client_side` and :meth:`predict` accept its result in place of the image.
        """
        spec = self.config.input
        return prepare(
            image,
            self.scale,
            self.max_pixels,
            mean=spec.mean,
            std=spec.std,
            size=spec.size,
            channels=spec.channels,
        )

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

    def observe(self, x: torch.Tensor, obfuscate: bool = True) -> torch.Tensor:
        """The client side on a batch of already prepared network inputs (an attacker's training
        crops): what would leave the trust zone for each, as an ordinary tensor (not an
        inference-mode one), so a decoder can be trained on it."""
        with torch.inference_mode():
            a = self.runner.head(x)
            if obfuscate and self.obfuscator is not None:
                a = self.obfuscator(a)
        return a.clone()

    @torch.inference_mode()
    def server_side(self, a: torch.Tensor) -> Outputs:
        """What the server computes: the tail's outputs on an activation (here, in this process)."""
        return self.runner.tail(a)

    def predict_from_outputs(self, outputs: Outputs, prep: Prepared) -> Prediction:
        """Post-process one image's tail outputs (e.g. returned by a remote server) into the task's answer."""
        return predict_from_outputs(self.config, outputs, prep, self.post)

    def predict_from_activation(self, a: torch.Tensor, prep: Prepared) -> Prediction:
        """Server side plus local post-processing."""
        return self.predict_from_outputs(self.server_side(a), prep)

    def predict(self, image: np.ndarray | Prepared, obfuscate: bool = True) -> Prediction:
        """The task's answer for a uint8 image (BGR, or grey for a grey model) or its :meth:`preprocess` result."""
        a, prep = self.client_side(image, obfuscate=obfuscate)
        return self.predict_from_activation(a, prep)

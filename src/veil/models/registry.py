"""Split models by name: what a model is (config) and how to build it (one decorator).

In the manner of timm's ``create_model``/``PretrainedCfg``: a :class:`ModelConfig` says everything
downstream needs to know about a model — where its weights come from and their SHA-256, how an
image becomes its input, where it can be split (each split's activation channels and stride), its
task (which evaluator and post-processing apply) and how to compare its outputs when fitting
noise — so that decoders, white-box attacks, export, Triton repositories, caches and noise-file
metadata read the config instead of one model's constants.

Registering a model::

    @register_model(ModelConfig(name="mynet", task="classification", splits=(SplitSpec("block1", 32, 2),), ...))
    def mynet(split: str) -> SplitNetwork:
        net = MyNet()
        return SplitNetwork(net, head=net.head_for(split), tail=net.tail_for(split))

and ``veil.models.create("mynet", split="block1", pretrained=True)`` returns a :class:`SplitModel`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Tail outputs (a tuple of tensors, batch first).
Outputs = tuple[torch.Tensor, ...]
#: How far a tail's outputs on an obfuscated activation moved from its outputs on the clean one
#: (no labels): the distortion term of the noise-fitting pass.
Distortion = Callable[[Outputs, Outputs], torch.Tensor]


class UnknownModelError(KeyError):
    """No model (or split) registered under that name."""

    def __str__(self) -> str:  # KeyError quotes its message; this reads as a sentence
        return str(self.args[0])


@dataclass(frozen=True)
class SplitSpec:
    """One place a model can be cut: the head ends here, the tail starts here."""

    name: str
    #: Channels of the activation at this split (the wire's second dimension).
    channels: int
    #: Input pixels per activation cell along each side (the head's total stride).
    stride: int
    #: One line for ``--help`` and docs.
    description: str = ""


@dataclass(frozen=True)
class WeightsSpec:
    """Where a model's weights come from, and the SHA-256 that proves they are the right ones."""

    filename: str
    sha256: str
    #: Original public source (``veil weights fetch``), or None where the weights only ship with veil.
    url: str | None = None
    #: A copy inside an installed package (used when nothing else is given), or None.
    shipped: Path | None = None
    license: str = ""
    #: How the weights were made, for weights veil trained itself (a script and its settings).
    provenance: str = ""


@dataclass(frozen=True)
class InputSpec:
    """How an image (uint8, BGR as OpenCV reads it) becomes the network input."""

    #: Subtracted per channel (BGR order), in 0..255 units.
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    #: Divides per channel after the mean (BGR order), in 0..255 units.
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    #: Default resize factor applied to the image before the network (FaceBoxes FDDB protocol: ×3).
    scale: float = 1.0
    #: A fixed network input ``(height, width)`` (classifiers), or None for any size (detectors).
    size: tuple[int, int] | None = None
    #: Grey-scale models read one channel (the BGR image is converted), colour models three.
    channels: int = 3


@dataclass(frozen=True)
class ModelConfig:
    """Everything downstream needs to know about one registered model."""

    name: str
    #: The task decides the evaluator and post-processing: ``"face-detection"``, ``"classification"``, …
    task: str
    #: Every split point, the default first.
    splits: tuple[SplitSpec, ...]
    weights: WeightsSpec
    input: InputSpec = field(default_factory=InputSpec)
    #: Names of the tail's outputs, in order (Triton output names).
    outputs: tuple[str, ...] = ("output",)
    #: Distortion used when fitting noise for this model (see :data:`Distortion`).
    distortion: Distortion | None = None
    #: Class names, for classifiers.
    labels: tuple[str, ...] = ()
    description: str = ""
    #: (ALPHA, NSR dB) that noise fitted at the defaults gives on the model's evaluation data, measured: noise
    #: files are refused far from it (:func:`veil.obfuscate.artifact.check_noise`). Empty: not measured, only
    #: the per-channel bounds apply.
    noise_nsr_db: tuple[tuple[float, float], ...] = ()
    #: How much lower a noise file's NSR reads on its own recorded (fitting-data) statistics than on the
    #: evaluation data (their activations carry more power).
    noise_own_offset_db: float = 0.0
    #: ``postprocess(outputs, prepared) -> answer`` for one image (batch of one): a task of your own. None:
    #: the pipeline's for the built-in tasks (``face-detection`` → boxes, ``classification`` → probabilities).
    postprocess: Callable[[Outputs, Any], Any] | None = None

    @property
    def default_split(self) -> str:
        return self.splits[0].name

    def split(self, name: str | None = None) -> SplitSpec:
        """The split called ``name`` (default: the first), or :class:`UnknownModelError` naming the known ones."""
        name = name or self.default_split
        for s in self.splits:
            if s.name == name:
                return s
        raise UnknownModelError(
            f"model {self.name!r} has no split {name!r}; its splits are: {', '.join(s.name for s in self.splits)}"
        )


@dataclass
class SplitNetwork:
    """What a model's builder returns: the whole network and views of its two halves (shared weights)."""

    network: nn.Module
    head: nn.Module
    tail: nn.Module


class SplitModel(nn.Module):
    """A registered model cut at one split: ``head`` (trust zone) and ``tail`` (server), plus its config.

    ``forward(x) == tail(head(x))``. ``weights_sha256`` is the SHA-256 of the file the weights came
    from ("" for random weights); :attr:`key` names model, split and weights together, so caches and
    noise files made for one never serve another.
    """

    def __init__(self, config: ModelConfig, split: str, parts: SplitNetwork, weights_sha256: str = "") -> None:
        super().__init__()
        self.config = config
        self.split_spec = config.split(split)
        self.network = parts.network
        # Views onto self.network's weights: not registered (their keys would duplicate the network's).
        object.__setattr__(self, "head", parts.head)
        object.__setattr__(self, "tail", parts.tail)
        self.weights_sha256 = weights_sha256

    head: nn.Module
    tail: nn.Module

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def split(self) -> str:
        return self.split_spec.name

    @property
    def split_point(self) -> str:
        """``model.split`` — recorded in noise files, decoders and defense files."""
        return f"{self.config.name}.{self.split_spec.name}"

    @property
    def channels(self) -> int:
        return self.split_spec.channels

    @property
    def stride(self) -> int:
        return self.split_spec.stride

    @property
    def key(self) -> str:
        """``model-split-<first 12 hex of the weights' SHA-256>``: the cache and noise-directory key."""
        return model_key(self.config.name, self.split_spec.name, self.weights_sha256)

    def train(self, mode: bool = True) -> SplitModel:
        """Also flip the unregistered ``head``/``tail`` views (shared BatchNorm must follow)."""
        super().train(mode)
        self.head.train(mode)
        self.tail.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> Outputs:
        out = self.tail(self.head(x))
        return out if isinstance(out, tuple) else (out,)


def model_key(name: str, split: str, weights_sha256: str) -> str:
    """:attr:`SplitModel.key` from its parts (e.g. what a file's metadata records): ``model-split-<sha12>``."""
    return f"{name}-{split}-{(weights_sha256 or 'random')[:12]}"


Builder = Callable[[str], SplitNetwork]
_REGISTRY: dict[str, tuple[ModelConfig, Builder]] = {}


def register_model(config: ModelConfig) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(split) -> SplitNetwork`` under ``config.name``."""

    def wrap(builder: Builder) -> Builder:
        if config.name in _REGISTRY and _REGISTRY[config.name][1] is not builder:
            raise ValueError(f"a model named {config.name!r} is already registered")
        _REGISTRY[config.name] = (config, builder)
        return builder

    return wrap


def list_models() -> list[str]:
    """Every registered model's name: veil's own, and those installed packages add (:mod:`veil.models.plugins`)."""
    from veil.models.plugins import load_plugins

    load_plugins()
    return sorted(_REGISTRY)


def get_config(name: str) -> ModelConfig:
    """The config registered under ``name``, or :class:`UnknownModelError` listing the known names."""
    if name not in _REGISTRY:
        from veil.models.plugins import load_plugins

        load_plugins()  # an installed package's model, not imported yet
    try:
        return _REGISTRY[name][0]
    except KeyError:
        raise UnknownModelError(f"no model named {name!r}; known models: {', '.join(sorted(_REGISTRY))}") from None


def build(name: str, split: str | None = None) -> SplitModel:
    """The model with random (untrained) weights, in eval mode."""
    config = get_config(name)
    spec = config.split(split)
    return SplitModel(config, spec.name, _REGISTRY[name][1](spec.name)).eval()

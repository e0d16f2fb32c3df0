"""The tiny classifier that tests register as a split model: grey square input, one stride-2 conv (the head),
a linear layer (the tail). Each test gives its own config (channels, input size, labels); the network is
read from it, so the registry sees the same kind of model everywhere."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from veil.models import ModelConfig, SplitNetwork, SplitSpec, WeightsSpec, registry

NO_WEIGHTS = WeightsSpec(filename="none.pth", sha256="0" * 64)


class TinyClassifier(nn.Module):
    """``size``×``size`` grey → ``classes`` logits, cut after a stride-2 conv with ``channels`` outputs."""

    def __init__(self, channels: int, size: int, classes: int, gain: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.fc = nn.Linear(channels * (size // 2) ** 2, classes)
        if gain != 1.0:
            with torch.no_grad():  # confident logits that the activation moves: a classifier worth obfuscating
                self.fc.weight.mul_(gain)
        # Views onto the same weights (not registered: their keys would duplicate the network's).
        object.__setattr__(self, "head", nn.Sequential(self.conv, nn.ReLU()))
        object.__setattr__(self, "tail", nn.Sequential(nn.Flatten(), self.fc))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.head(x))


def tiny_config(name: str, channels: int, **fields) -> ModelConfig:
    """A classification config cut at ``conv`` (``channels`` at stride 2); ``fields``: the others (``input`` first)."""
    fields.setdefault("weights", NO_WEIGHTS)
    return ModelConfig(
        name=name, task="classification", splits=(SplitSpec("conv", channels, 2),), outputs=("logits",), **fields
    )


def network(config: ModelConfig, classes: int | None = None, gain: float = 1.0) -> TinyClassifier:
    """The config's network (``classes``: default one per label), with the global generator's current weights."""
    assert config.input.size is not None
    return TinyClassifier(config.splits[0].channels, config.input.size[0], classes or len(config.labels), gain)


def register_tiny(
    mp: pytest.MonkeyPatch, config: ModelConfig, seed: int | None = None, classes: int | None = None, gain: float = 1.0
) -> None:
    """Register ``config`` until ``mp`` is undone; ``seed``: every build gets the same fixed weights (not noise)."""

    def make(split: str) -> SplitNetwork:
        if seed is not None:
            torch.manual_seed(seed)
        net = network(config, classes, gain)
        return SplitNetwork(net, net.head, net.tail)

    mp.setitem(registry._REGISTRY, config.name, (config, make))

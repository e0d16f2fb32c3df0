"""FaceBoxes (Zhang et al., 2017) split into a trust-zone *head* and a remote *tail*.

Module and parameter names match the public FaceBoxes.PyTorch checkpoint
(``FaceBoxesProd.pth``) so its ``state_dict`` loads with ``strict=True``.

The split point is the end of the Rapidly Digested Convolutional Layers (RDCL):
``conv1 → maxpool → conv2 → maxpool``, a 128-channel map at stride 32. It is the
cheapest point that already discards most spatial detail (32×32 for a 1024² input)
while the expensive multi-scale layers stay on the server.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from veil import assets
from veil.models.distortion import detection_distortion
from veil.models.registry import (
    InputSpec,
    ModelConfig,
    SplitModel,
    SplitNetwork,
    SplitSpec,
    WeightsSpec,
    register_model,
)

#: Name of the split point, recorded in noise artifacts so a mismatch is caught.
SPLIT_POINT = "faceboxes.rdcl"
#: Channels and stride of the head's activation.
HEAD_CHANNELS = 128
HEAD_STRIDE = 32


class BasicConv2d(nn.Module):
    """Conv → BatchNorm → ReLU, bias-free as in the reference implementation."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class CRelu(nn.Module):
    """Concatenated ReLU: doubles channels cheaply (``relu([x, -x])``)."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(torch.cat([x, -x], 1))


class Inception(nn.Module):
    """The four-branch Inception block of FaceBoxes (128 → 128 channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(128, 32, kernel_size=1, padding=0)
        self.branch1x1_2 = BasicConv2d(128, 32, kernel_size=1, padding=0)
        self.branch3x3_reduce = BasicConv2d(128, 24, kernel_size=1, padding=0)
        self.branch3x3 = BasicConv2d(24, 32, kernel_size=3, padding=1)
        self.branch3x3_reduce_2 = BasicConv2d(128, 24, kernel_size=1, padding=0)
        self.branch3x3_2 = BasicConv2d(24, 32, kernel_size=3, padding=1)
        self.branch3x3_3 = BasicConv2d(32, 32, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b2 = self.branch1x1_2(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        b3 = self.branch3x3(self.branch3x3_reduce(x))
        b4 = self.branch3x3_3(self.branch3x3_2(self.branch3x3_reduce_2(x)))
        return torch.cat([b1, b2, b3, b4], 1)


class FaceBoxesHead(nn.Module):
    """Runs in the trust zone: image tensor ``[N,3,H,W]`` → activation ``[N,128,⌈H/32⌉,⌈W/32⌉]``.

    The RDCL (``conv1 → maxpool → conv2 → maxpool``), then the first ``depth`` Inception blocks
    (0 for the default split ``rdcl``).
    """

    def __init__(self, parent: FaceBoxes, depth: int = 0) -> None:
        super().__init__()
        self.conv1 = parent.conv1
        self.conv2 = parent.conv2
        self.depth = depth
        for i in range(1, depth + 1):
            setattr(self, f"inception{i}", getattr(parent, f"inception{i}"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), kernel_size=3, stride=2, padding=1)
        x = F.max_pool2d(self.conv2(x), kernel_size=3, stride=2, padding=1)
        for i in range(1, self.depth + 1):
            x = getattr(self, f"inception{i}")(x)
        return x


class FaceBoxesTail(nn.Module):
    """Runs on the server: activation → ``(loc [N,P,4], conf [N,P,2] softmax scores)``.

    Starts after the head's ``depth`` Inception blocks.
    """

    # The parent's submodules, shared (set in __init__); declared so type checkers know them.
    conv3_1: BasicConv2d
    conv3_2: BasicConv2d
    conv4_1: BasicConv2d
    conv4_2: BasicConv2d
    loc: nn.ModuleList
    conf: nn.ModuleList

    def __init__(self, parent: FaceBoxes, depth: int = 0) -> None:
        super().__init__()
        self.depth = depth
        # Share the parent's submodules (no copies) so weights stay in one place; the names stay
        # the parent's, so a tail's state_dict keys are the checkpoint's.
        names = [f"inception{i}" for i in range(depth + 1, 4)]
        for name in (*names, "conv3_1", "conv3_2", "conv4_1", "conv4_2", "loc", "conf"):
            setattr(self, name, getattr(parent, name))

    def forward(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = a
        for i in range(self.depth + 1, 4):
            x = getattr(self, f"inception{i}")(x)
        sources = [x]
        x = self.conv3_2(self.conv3_1(x))
        sources.append(x)
        x = self.conv4_2(self.conv4_1(x))
        sources.append(x)
        n = a.shape[0]
        loc = torch.cat([lc(s).permute(0, 2, 3, 1).reshape(n, -1) for s, lc in zip(sources, self.loc, strict=True)], 1)
        conf = torch.cat([c(s).permute(0, 2, 3, 1).reshape(n, -1) for s, c in zip(sources, self.conf, strict=True)], 1)
        return loc.view(n, -1, 4), F.softmax(conf.view(n, -1, 2), dim=-1)


class FaceBoxes(nn.Module):
    """The full detector; ``self.head`` and ``self.tail`` are views onto the same weights.

    ``forward(x) == tail(head(x))`` exactly, by construction.
    """

    # Views onto this model's weights, set with object.__setattr__ in __init__ (not registered children).
    head: FaceBoxesHead
    tail: FaceBoxesTail

    def __init__(self, depth: int = 0) -> None:
        super().__init__()
        self.conv1 = CRelu(3, 24, kernel_size=7, stride=4, padding=3)
        self.conv2 = CRelu(48, 64, kernel_size=5, stride=2, padding=2)
        self.inception1 = Inception()
        self.inception2 = Inception()
        self.inception3 = Inception()
        self.conv3_1 = BasicConv2d(128, 128, kernel_size=1, stride=1, padding=0)
        self.conv3_2 = BasicConv2d(128, 256, kernel_size=3, stride=2, padding=1)
        self.conv4_1 = BasicConv2d(256, 128, kernel_size=1, stride=1, padding=0)
        self.conv4_2 = BasicConv2d(128, 256, kernel_size=3, stride=2, padding=1)
        # 21 anchors per cell on the first map (4x4 + 2x2 + 1 densified), 1 on the others.
        self.loc = nn.ModuleList(
            [nn.Conv2d(128, 21 * 4, 3, padding=1), nn.Conv2d(256, 4, 3, padding=1), nn.Conv2d(256, 4, 3, padding=1)]
        )
        self.conf = nn.ModuleList(
            [nn.Conv2d(128, 21 * 2, 3, padding=1), nn.Conv2d(256, 2, 3, padding=1), nn.Conv2d(256, 2, 3, padding=1)]
        )
        # Not registered as children (would duplicate state_dict keys).
        object.__setattr__(self, "head", FaceBoxesHead(self, depth))
        object.__setattr__(self, "tail", FaceBoxesTail(self, depth))

    def train(self, mode: bool = True) -> FaceBoxes:
        """Also flip the unregistered ``head``/``tail`` views, so code that saves and restores
        their mode (``torch.onnx.export(model.tail)``) never turns shared BatchNorm to training."""
        super().train(mode)
        self.head.training = mode
        self.tail.training = mode
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tail(self.head(x))


#: (split name, Inception blocks in the head, description). All are 128 channels at stride 32.
FACEBOXES_SPLITS = (
    ("rdcl", 0, "after the RDCL (conv1, conv2 and their max-pools): the cheapest split, the default"),
    ("inception1", 1, "after the first Inception block"),
    ("inception2", 2, "after the second Inception block"),
    ("inception3", 3, "after the third Inception block (the first detection layer's input)"),
)

FACEBOXES_CONFIG = ModelConfig(
    name="faceboxes",
    task="face-detection",
    splits=tuple(SplitSpec(name, HEAD_CHANNELS, HEAD_STRIDE, desc) for name, _, desc in FACEBOXES_SPLITS),
    weights=WeightsSpec(
        filename="FaceBoxesProd.pth",
        sha256="c0cb2b1e40710c0aa5fc32a8759b1496a0fe0a126c907ca0ffe35b4bd0709d09",
        # The same file as published in cleardusk/3DDFA_V2 (MIT), the original public source.
        url="https://github.com/cleardusk/3DDFA_V2/raw/master/FaceBoxes/weights/FaceBoxesProd.pth",
        shipped=assets.WEIGHTS,
        license="MIT (FaceBoxes.PyTorch); the text ships beside the checkpoint",
        provenance="the public FaceBoxes.PyTorch checkpoint, trained on WIDER FACE",
    ),
    # BGR means subtracted, no scaling; the FDDB test protocol upscales ×3.
    input=InputSpec(mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), scale=3.0),
    outputs=("loc", "conf"),
    distortion=detection_distortion,
    labels=("background", "face"),
    description="FaceBoxes (Zhang et al., 2017), a CPU real-time face detector",
    # Noise fitted at the defaults per ALPHA, NSR on FDDB's activations (docs/obfuscation.md, "The sweep"); a
    # file's own statistics (the fitting crops) read ≈ 1.8 dB lower: their activations carry that much more power.
    noise_nsr_db=(
        (0.05, -21.28),
        (0.1, -17.97),
        (0.2, -14.19),
        (0.4, -9.15),
        (0.6, -4.43),
        (0.8, 3.26),
        (0.9, 11.68),
        (0.95, 27.30),
    ),
    noise_own_offset_db=1.8,
)


@register_model(FACEBOXES_CONFIG)
def faceboxes(split: str) -> SplitNetwork:
    """FaceBoxes cut at ``split`` (one of :data:`FACEBOXES_SPLITS`)."""
    depth = {name: d for name, d, _ in FACEBOXES_SPLITS}[split]
    net = FaceBoxes(depth)
    return SplitNetwork(net, net.head, net.tail)


def as_split_model(model: nn.Module, weights_sha256: str = "") -> SplitModel:
    """``model`` as a :class:`SplitModel`: itself if it is one; a bare :class:`FaceBoxes` network (code
    that builds or edits the network directly, e.g. a distilled tail) cut where its head ends.

    ``weights_sha256`` is "" unless given: the network's tensors may no longer be any file's.
    """
    if isinstance(model, SplitModel):
        return model
    if isinstance(model, FaceBoxes):
        split = FACEBOXES_SPLITS[model.head.depth][0]
        return SplitModel(FACEBOXES_CONFIG, split, SplitNetwork(model, model.head, model.tail), weights_sha256)
    raise TypeError(f"expected a veil.models.SplitModel (veil.models.create), got {type(model).__name__}")

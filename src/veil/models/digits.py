"""``digits``: a small CNN classifier of handwritten digits, veil's second model (not FaceBoxes).

It exists to prove that noise fitting, evaluation, the privacy audit and Triton serving work for
any registered split model, not only the face detector (docs/models.md). Its weights are trained
by ``scripts/train_digits.py`` on the training split of scikit-learn's digits data
(:mod:`veil.data.digits`, offline, CC BY 4.0) and ship inside the package
(``veil/assets/digits/``) with their SHA-256, license and training settings.

The network: a 32×32 grey input (the 8×8 digits upscaled bilinearly), three conv blocks
(3×3 conv → BatchNorm → ReLU → 2×2 max-pool: 16, 32, 64 channels), global average pooling and a
linear layer to 10 logits. It can be cut after the first block (``block1``: 16 channels at stride
2, the default, the cheapest head) or after the second (``block2``: 32 channels at stride 4).
The tail returns the logits; class probabilities are their softmax.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from veil import assets
from veil.models.distortion import classification_distortion
from veil.models.registry import InputSpec, ModelConfig, SplitNetwork, SplitSpec, WeightsSpec, register_model

#: Channels of the three conv blocks.
WIDTHS = (16, 32, 64)
#: Network input side (pixels).
INPUT_SIZE = 32
#: Grey-level mean and standard deviation of the training split at 32×32 (0..255 units), measured by
#: scripts/train_digits.py (77.9 and 82.5) and rounded.
GREY_MEAN, GREY_STD = 78.0, 82.0
#: (split name, conv blocks in the head, description).
DIGITS_SPLITS = (
    ("block1", 1, "after the first conv block: 16 channels at stride 2 (16×16), the default"),
    ("block2", 2, "after the second conv block: 32 channels at stride 4 (8×8)"),
)
#: The weights file that ships (trained by scripts/train_digits.py; docs/models.md).
WEIGHTS_FILENAME = "digits_cnn.pth"
WEIGHTS_SHA256 = "305cfbd5fd5cbd5aa71631c683cbe93b9e8f42cfde6b0b2495cf44f3d31d0fea"


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """3×3 conv → BatchNorm → ReLU → 2×2 max-pool (halves the side)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)
    )


class Classifier(nn.Module):
    """The tail's last step: global average pooling and a linear layer to the class logits."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


class DigitsCNN(nn.Module):
    """``[N,1,32,32]`` → logits ``[N,10]``; ``blocks`` then ``classifier`` (state_dict keys of the shipped file)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        chans = (1, *WIDTHS)
        self.blocks = nn.ModuleList(conv_block(a, b) for a, b in itertools.pairwise(chans))
        self.classifier = Classifier(WIDTHS[-1], classes)

    def cut(self, depth: int) -> tuple[nn.Sequential, nn.Sequential]:
        """Head (the first ``depth`` blocks) and tail (the rest and the classifier): views on these weights."""
        return nn.Sequential(*self.blocks[:depth]), nn.Sequential(*self.blocks[depth:], self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.classifier(x)


DIGITS_CONFIG = ModelConfig(
    name="digits",
    task="classification",
    splits=tuple(SplitSpec(name, WIDTHS[depth - 1], 2**depth, desc) for name, depth, desc in DIGITS_SPLITS),
    weights=WeightsSpec(
        filename=WEIGHTS_FILENAME,
        sha256=WEIGHTS_SHA256,
        url=None,
        shipped=assets.ROOT / "digits" / WEIGHTS_FILENAME,
        license="CC BY 4.0 (trained on the UCI handwritten digits as shipped by scikit-learn); see assets/digits/",
        provenance="scripts/train_digits.py on the digits training split (veil.data.digits); "
        "settings in assets/digits/training.json",
    ),
    input=InputSpec(mean=(GREY_MEAN,) * 3, std=(GREY_STD,) * 3, scale=1.0, size=(INPUT_SIZE, INPUT_SIZE), channels=1),
    outputs=("logits",),
    distortion=classification_distortion,
    labels=tuple(str(d) for d in range(10)),
    # NSR of noise fitted at the defaults, on the test split's block1 activations: the mean of 3 fits
    # (python benchmarks/digits_alpha.py; benchmarks/results/digits_alpha.json). block2's fits lie within
    # 3 dB of these (results/digits_alpha_block2.json). On the training split a file reads the same (±0.5 dB).
    noise_nsr_db=((0.5, -8.30), (0.8, -4.36), (0.9, -1.92), (0.95, 0.73)),
    noise_own_offset_db=0.0,
    description="a small CNN classifier of 8×8 handwritten digits (upscaled to 32×32 grey)",
)


@register_model(DIGITS_CONFIG)
def digits(split: str) -> SplitNetwork:
    """The digits CNN cut at ``split`` (one of :data:`DIGITS_SPLITS`)."""
    depth = {name: d for name, d, _ in DIGITS_SPLITS}[split]
    net = DigitsCNN()
    head, tail = net.cut(depth)
    return SplitNetwork(net, head, tail)

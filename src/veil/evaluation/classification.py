"""Top-1 accuracy of a classification split model, clean and obfuscated (the classifier's evaluator).

The data path is the pipeline's (:class:`veil.pipeline.SplitPipeline`): each image is prepared as
the model's input spec says and runs through the pipeline's head once (in batches); the clean
activations are kept, and
the tail classifies them clean and then under ``draws`` independent draws of the pipeline's
obfuscator (fresh noise on every draw, as deployed). Accuracy under noise is random, so it is
reported as mean ± sample standard deviation over the draws, with min and max, beside the clean
accuracy of the same images and the noise-to-signal ratio of the noise on their activations.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from veil.obfuscate.nsr import nsr_report, nsr_sums

#: Noise draws averaged by default (each a full pass of the tail over the data set).
DEFAULT_DRAWS = 5


@dataclass
class ClassificationResult:
    """Top-1 accuracy on one labelled data set (``dataset``: e.g. ``digits-test``)."""

    dataset: str
    model: str
    split: str
    weights_sha256: str
    images: int
    clean_accuracy: float
    #: Per-class clean accuracy (class label → accuracy), for the classes present.
    per_class: dict[str, float] = field(default_factory=dict)
    alpha: float | None = None
    #: Top-1 accuracy under each noise draw (empty when clean).
    noisy_accuracies: list[float] = field(default_factory=list)
    #: :func:`veil.obfuscate.nsr.nsr_report` of the noise on these images' clean activations.
    nsr: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def mode(self) -> str:
        return "noisy" if self.noisy_accuracies else "clean"

    @property
    def noisy_mean(self) -> float | None:
        return statistics.fmean(self.noisy_accuracies) if self.noisy_accuracies else None

    @property
    def noisy_sd(self) -> float | None:
        """Sample standard deviation over the draws (0 for a single draw)."""
        n = self.noisy_accuracies
        return statistics.stdev(n) if len(n) > 1 else 0.0 if n else None

    def table(self) -> str:
        """The summary, in the style of the FDDB table (``digits-test Acc: 0.9805``)."""
        lines = [f"{self.dataset} Acc: {self.clean_accuracy:.4f}"]
        if self.noisy_accuracies:
            mean, sd = self.noisy_mean or 0.0, self.noisy_sd or 0.0
            n = len(self.noisy_accuracies)
            lines.append(
                f"{self.dataset} Acc (ALPHA {self.alpha:g}, obfuscated): {mean:.4f} ± {sd:.4f} "
                f"over {n} noise draw{'s' if n > 1 else ''} "
                f"(min {min(self.noisy_accuracies):.4f}, max {max(self.noisy_accuracies):.4f}); "
                f"drop {100 * (self.clean_accuracy - mean):.2f} ± {100 * sd:.2f} points"
            )
            if self.nsr is not None:
                ch = self.nsr["channels"]
                lines.append(
                    f"NSR {self.nsr['nsr_db']:+.2f} dB (per channel min {ch['min']:+.2f}, median "
                    f"{ch['median']:+.2f}, max {ch['max']:+.2f} dB)"
                )
        lines.append(f"{self.images} images, model {self.model} split {self.split}, weights {self.weights_sha256[:12]}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "mode": self.mode,
            "noisy_mean": self.noisy_mean,
            "noisy_sd": self.noisy_sd,
        }


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).double().mean())


def evaluate_classification(
    pipeline: Any,
    images: Sequence[np.ndarray],
    labels: Sequence[int] | np.ndarray,
    dataset: str = "",
    draws: int = DEFAULT_DRAWS,
    batch_size: int = 256,
    progress: bool = True,
    settings: dict[str, Any] | None = None,
) -> ClassificationResult:
    """Top-1 accuracy of ``pipeline`` (a :class:`veil.pipeline.SplitPipeline` of a classifier) on
    uint8 ``images`` with integer ``labels``: clean, and — when ``pipeline.obfuscator`` is set — under
    ``draws`` fresh noise draws.

    Only the first tail output (the logits) is read; the model's ``config.labels`` name the classes.
    """
    if pipeline.config.task != "classification":
        raise ValueError(f"model {pipeline.config.name!r} is a {pipeline.config.task} model, not a classifier")
    if len(images) != len(labels) or not len(images):
        raise ValueError(
            f"need as many labels as images, and at least one ({len(images)} images, {len(labels)} labels)"
        )
    if draws < 1:
        raise ValueError(f"draws must be ≥ 1, got {draws}")
    t0 = time.perf_counter()
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    classes = len(pipeline.config.labels) or None
    if classes is not None and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"labels must be class indices 0..{classes - 1}, got {int(y.min())}..{int(y.max())}")
    # Each image prepared as the model's input spec says, then the head on batches (one image at a time
    # would spend most of its time starting small convolutions).
    x = torch.cat([pipeline.preprocess(img).tensor for img in images])
    with torch.inference_mode():
        acts = torch.cat(
            [
                pipeline.runner.head(x[i : i + batch_size])
                for i in tqdm(
                    range(0, len(x), batch_size), desc="head", unit="batch", disable=not progress, leave=False
                )
            ]
        )

    def logits(noise: torch.nn.Module | None) -> torch.Tensor:
        out = []
        with torch.inference_mode():
            for i in range(0, len(acts), batch_size):
                a = acts[i : i + batch_size]
                out.append(pipeline.server_side(noise(a) if noise is not None else a)[0].float())
        return torch.cat(out)

    clean = logits(None)
    names = pipeline.config.labels or tuple(str(i) for i in range(clean.shape[1]))
    pred = clean.argmax(1)
    per_class = {names[c]: round(float((pred[y == c] == c).double().mean()), 6) for c in sorted(set(y.tolist()))}
    result = ClassificationResult(
        dataset=dataset or pipeline.config.name,
        model=pipeline.config.name,
        split=pipeline.model.split,
        weights_sha256=pipeline.weights_sha256,
        images=len(images),
        clean_accuracy=_accuracy(clean, y),
        per_class=per_class,
        settings=dict(settings or {}),
    )
    obf = pipeline.obfuscator
    if obf is not None:
        result.alpha = (settings or {}).get("alpha")
        result.nsr = nsr_report(nsr_sums(acts, obf))
        for _ in tqdm(range(draws), desc="noise draws", unit="draw", disable=not progress, leave=False):
            result.noisy_accuracies.append(_accuracy(logits(obf), y))
    result.wall_s = time.perf_counter() - t0
    return result

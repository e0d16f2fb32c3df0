"""Label leak: does a reconstruction still say what the input was? For any classification split model.

Pixel scores (L1, PSNR, SSIM; :mod:`veil.privacy.reconstruction`) say how close a reconstruction is;
a classifier's task says what matters: the *class* of the input. Each attacker's reconstruction of
the network input is turned back into an image (the model's pixels, 0..255) and given to the
clean classifier — the same public model, run whole and without noise, as an attacker would. Its
top-1 accuracy against the true labels is the label leak: at chance (``1/classes``) the
reconstructions carry no class information the classifier can read; near the clean accuracy they
carry all of it. References: the classifier on the original inputs, and chance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from veil.privacy.audit import Attacks
from veil.privacy.datapath import data_path
from veil.privacy.decoders import decode, decoder_arch, to_pixels


def label_leak(
    attacks: Attacks,
    images: Sequence[np.ndarray],
    labels: Sequence[int] | np.ndarray,
    progress: bool = True,
) -> dict[str, Any]:
    """Top-1 accuracy of the clean classifier on each attacker's reconstruction of ``images``.

    ``clean``: the naive decoder on clean activations; ``obfuscated`` (when ``attacks.obfuscator`` is
    set): the naive and adaptive decoders on one fresh obfuscation of each activation. Returns those
    accuracies, the classifier's accuracy on the original inputs, chance, and each as × chance.
    """
    model = attacks.model
    if model.config.task != "classification":
        raise ValueError(f"the label leak needs a classifier; model {model.name!r} is a {model.config.task} model")
    if len(images) != len(labels) or not len(images):
        raise ValueError(f"need as many labels as images, and at least one ({len(images)}, {len(labels)})")
    y = np.asarray(labels, dtype=np.int64)
    classes = len(model.config.labels)
    if classes < 2:
        raise ValueError(f"model {model.name!r} lists {classes} class labels; the label leak needs them")
    arch = decoder_arch(model)
    pipe = data_path(model)
    decoders: dict[str, tuple[nn.Module, bool]] = {"clean/naive": (attacks.naive, False)}
    if attacks.obfuscator is not None:
        decoders["obfuscated/naive"] = (attacks.naive, True)
        decoders["obfuscated/adaptive"] = (attacks.adaptive or attacks.naive, True)
    predicted: dict[str, list[int]] = {"original": [], **{k: [] for k in decoders}}

    def classify(x: torch.Tensor) -> int:
        with torch.inference_mode():
            return int(model.network(x).argmax(1)[0])

    for img in tqdm(images, desc="label leak", unit="image", disable=not progress):
        a, prep = pipe.head_activation(img)
        predicted["original"].append(classify(prep.tensor))
        with torch.no_grad():
            obs = attacks.obfuscator(a) if attacks.obfuscator is not None else a
        for name, (dec, noisy) in decoders.items():
            rec = to_pixels(decode(dec, obs if noisy else a), arch["mean"], arch["std"])
            h, w = prep.tensor.shape[2:]
            predicted[name].append(classify(pipe.preprocess(np.ascontiguousarray(rec[:h, :w])).tensor))
    chance = 1.0 / classes
    acc = {k: float((np.asarray(v) == y).mean()) for k, v in predicted.items()}
    return {
        "measure": "top-1 accuracy of the clean classifier on each reconstruction of the network input",
        "images": len(y),
        "chance": round(chance, 4),
        "accuracy": {k: round(v, 4) for k, v in acc.items()},
        "times_chance": {k: round(v / chance, 2) for k, v in acc.items()},
    }

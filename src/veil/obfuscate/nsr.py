"""Noise-to-signal ratio, defined once: ``10·log10(E[(σ⊙ε)²] / E[a²])``.

Signal is the clean activation ``a`` of the images being evaluated; noise is the random
part ``σ⊙ε`` only — the shift μ is deterministic, hides nothing, and is not counted.
Sums (not means) are kept per channel so that images, batches and shards of different
sizes add up exactly; :func:`nsr_report` turns them into decibels overall and as the
per-channel spread, since an average can hide channels left almost clean.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def nsr_sums(a: torch.Tensor, obfuscator: nn.Module) -> np.ndarray:
    """Per-channel ``[2, C]`` sums over ``a [N,C,*]``: row 0 noise power, row 1 signal power Σa².

    Uses the transform's exact expected noise power when it exposes ``noise_variance()``
    (σ_c² per element); otherwise estimates it from one call as the per-channel variance
    of ``obfuscator(a) - a`` (which removes any constant shift).
    """
    a = a.detach().float()
    per_channel = a.numel() // a.shape[1]
    signal = a.transpose(0, 1).reshape(a.shape[1], -1).pow(2).sum(1).double()
    noise_variance = getattr(obfuscator, "noise_variance", None)  # an Obfuscator knows its noise exactly
    of_input = getattr(obfuscator, "noise_variance_of", None)  # input-conditioned noise: σ depends on a
    if callable(of_input):
        var = of_input(a).double().to(signal.device)
    elif callable(noise_variance):
        var = noise_variance().double().to(signal.device)
    else:
        d = (obfuscator(a) - a).transpose(0, 1).reshape(a.shape[1], -1).double()
        var = d.var(1, unbiased=False)
    return torch.stack([var * per_channel, signal]).cpu().numpy()


def detect_with_nsr(detector: Any, image: Any) -> tuple[np.ndarray, np.ndarray]:
    """Noisy detection and its NSR sums from one head pass: ``(boxes [K,5], sums [2, C])``.

    The clean activation gives the signal power, ``detector.obfuscator`` goes on top of it, and the
    tail sees only the obfuscated activation: the boxes are those :meth:`Detector.detect` gives with
    the same noise. ``detector`` is a :class:`veil.detector.Detector` (or anything with its
    ``client_side``/``boxes_from_activation``/``obfuscator``); ``image`` a BGR array or its ``Prepared``.
    """
    obfuscator = detector.obfuscator
    if obfuscator is None:
        raise ValueError("detect_with_nsr needs a detector with an obfuscator (noisy mode)")
    a, prep = detector.client_side(image, obfuscate=False)
    sums = nsr_sums(a, obfuscator)
    # The task's answer (boxes for a detector); a remote client names it boxes_from_activation.
    answer = getattr(detector, "predict_from_activation", None) or detector.boxes_from_activation
    with torch.inference_mode():
        boxes = answer(obfuscator(a), prep)
    return boxes, sums


def nsr_report(sums: np.ndarray) -> dict:
    """``{"nsr_db", "channels": {"min","median","max"}, "dead_channels"}`` from summed ``[2, C]``.

    Channels whose clean signal is exactly zero on these images (dead ReLUs) have no
    defined ratio; they are counted in ``dead_channels`` and left out of the spread.
    """
    sums = np.asarray(sums, dtype=np.float64)
    if sums.ndim != 2 or sums.shape[0] != 2:
        raise ValueError(f"NSR sums must have shape [2, C], got {sums.shape}")
    noise, signal = sums
    if signal.sum() <= 0:
        raise ValueError("NSR undefined: the activations carry no signal (all zero)")
    live = signal > 0
    per = 10 * np.log10(np.maximum(noise[live], 1e-300) / signal[live])
    return {
        "nsr_db": round(10 * math.log10(max(noise.sum(), 1e-300) / signal.sum()), 3),
        "channels": {
            "min": round(float(per.min()), 3),
            "median": round(float(np.median(per)), 3),
            "max": round(float(per.max()), 3),
        },
        "dead_channels": int((~live).sum()),
    }

"""Distortions: how far a split model's outputs moved when its activation was obfuscated (no labels).

A model's config names its distortion (:attr:`veil.models.registry.ModelConfig.distortion`); the
noise-fitting pass (:mod:`veil.obfuscate.fit`) and the tail distillation (:mod:`veil.defenses`)
minimise it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from veil.models.registry import Outputs

__all__ = ["Outputs", "classification_distortion", "detection_distortion"]


def detection_distortion(clean: Outputs, noisy: Outputs) -> torch.Tensor:
    """How far a detector's outputs moved: ``(loc [N,P,4], conf [N,P,K] softmax)``; no labels needed.

    Face scores: binary cross-entropy of the noisy score against the clean score, averaged
    over all anchors (keeps background quiet) plus the same weighted by the clean score
    (keeps the confident anchors — the detections — confident). Boxes: smooth-L1 between
    noisy and clean regression, weighted by the clean score (only detections' boxes matter).
    """
    loc_c, conf_c = clean
    loc_n, conf_n = noisy
    p_c = conf_c[..., 1].detach()
    p_n = conf_n[..., 1].clamp(1e-6, 1 - 1e-6)
    bce = F.binary_cross_entropy(p_n, p_c, reduction="none")
    w = p_c / p_c.sum().clamp_min(1e-6)
    box = F.smooth_l1_loss(loc_n, loc_c.detach(), reduction="none").sum(-1)
    return bce.mean() + (w * bce).sum() + (w * box).sum()


def classification_distortion(clean: Outputs, noisy: Outputs) -> torch.Tensor:
    """How far a classifier's class probabilities moved: KL(clean ‖ noisy) of the first output (logits)."""
    log_p_clean = F.log_softmax(clean[0].detach(), dim=-1)
    log_p_noisy = F.log_softmax(noisy[0], dim=-1)
    return F.kl_div(log_p_noisy, log_p_clean, log_target=True, reduction="batchmean")

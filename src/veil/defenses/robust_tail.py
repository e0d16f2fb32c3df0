"""Server side: a noise-robust tail — a copy of the FaceBoxes tail distilled to read obfuscated activations.

Issue 9 §2c. The obfuscation noise costs accuracy mostly because the tail was trained on clean
activations; a copy adapted (label-free: the clean detector is the teacher, the data are
non-FDDB photos) recovers much of it at the same noise, so a stronger ALPHA fits in the same mAP
budget. It changes nothing the client sends: privacy at a given noise is what the noise gives.

The file stores only the tail's tensors (head weights stay those of the base model) and records
the base weights' SHA-256, the noise file's SHA-256 and ALPHA: :func:`load_robust_tail` refuses
it for other weights or other noise.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from veil.defenses import files
from veil.defenses.distill import (
    Bank,
    DistillConfig,
    Transform,
    config_dict,
    distill,
    teacher_and_bank,
    training_noise,
)
from veil.models.faceboxes import FaceBoxes
from veil.obfuscate.noise import Obfuscator

FORMAT = "veil-robust-tail/1"
#: Parameters and buffers of the full model that belong to the tail (everything but the head's).
_HEAD_PREFIXES = ("conv1.", "conv2.")


def tail_state(model: FaceBoxes) -> dict[str, torch.Tensor]:
    """The tail's parameters and BatchNorm statistics, keyed as in the full model's ``state_dict``."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(_HEAD_PREFIXES)}


def student_model(model: FaceBoxes) -> FaceBoxes:
    """A full copy of ``model`` whose tail can be trained; its head is frozen (the client's stays as is)."""
    student = copy.deepcopy(model)
    for p in student.head.parameters():
        p.requires_grad_(False)
    for p in student.tail.parameters():
        p.requires_grad_(True)
    return student


def with_tail(model: FaceBoxes, state: dict[str, torch.Tensor]) -> FaceBoxes:
    """A copy of ``model`` (same head) with the robust tail's tensors loaded.

    It plugs into :class:`~veil.detector.Detector` like the original model."""
    out = copy.deepcopy(model)
    missing = set(tail_state(out)) - set(state)
    extra = set(state) - set(tail_state(out))
    if missing or extra:
        raise files.DefenseFileError(
            f"robust tail tensors do not fit FaceBoxes: missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}"
        )
    out.load_state_dict({**out.state_dict(), **state}, strict=True)
    return out.eval()


def distill_tail(
    model: FaceBoxes,
    transform: Transform,
    dirs: Sequence[str | Path],
    cfg: DistillConfig,
    *,
    crop: int = 640,
    crops_per_image: int = 2,
    bank: tuple[Bank, Bank] | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[FaceBoxes, list[dict], dict]:
    """Distil a copy of ``model``'s tail to read ``transform(a)`` (fresh noise per call); return it, log, data.

    ``model`` (the teacher) is not modified. ``bank`` (from :func:`build_bank`) skips the teacher pass.
    An :class:`~veil.obfuscate.noise.Obfuscator` transform is trained through a seeded copy
    (:func:`~veil.defenses.distill.training_noise`): fresh ε every step. The student is returned on CPU.
    """
    teacher, bank = teacher_and_bank(
        model,
        dirs,
        bank,
        seed=cfg.seed,
        crop=crop,
        crops_per_image=crops_per_image,
        progress=progress,
        device=device,
    )
    if isinstance(transform, Obfuscator):
        transform = training_noise(transform, device, cfg.seed)
    train, held = bank
    student = student_model(teacher)
    log = distill(
        student.tail, transform, train, cfg, params=list(student.tail.parameters()), held_out=held, progress=progress
    )
    return student.cpu().eval(), log, train.describe


def save_robust_tail(
    student: FaceBoxes,
    path: str | Path,
    *,
    weights_sha256: str,
    noise_sha256: str | None,
    alpha: float | None,
    cfg: DistillConfig,
    log: list[dict],
    data: dict,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the tail's tensors with what they were trained for (weights, noise, ALPHA, steps, data, log)."""
    meta = {
        "weights_sha256": weights_sha256,
        "noise_sha256": noise_sha256,
        "alpha": alpha,
        "distill": config_dict(cfg),
        "data": data,
        "log": log,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    return files.save(path, FORMAT, tail_state(student), meta)


def load_robust_tail(
    path: str | Path,
    model: FaceBoxes,
    *,
    weights_sha256: str,
    noise_sha256: str | None = None,
    alpha: float | None = None,
) -> tuple[FaceBoxes, dict[str, Any]]:
    """``model`` with the robust tail of ``path`` swapped in, after the file's checks; and its metadata."""
    state, meta = files.load(path, FORMAT, weights_sha256=weights_sha256, noise_sha256=noise_sha256, alpha=alpha)
    return with_tail(model, state), meta


def undistilled(model: FaceBoxes) -> nn.Module:
    """The original tail (the baseline a robust tail is compared with)."""
    return model.tail


def attach(detector, path: str | Path, noise: str | Path, alpha: float) -> dict[str, Any]:
    """Make ``detector`` (a :class:`~veil.detector.Detector`) obfuscate with ``noise`` and read it with the
    robust tail at ``path``: the one way front ends select this defense. Returns the tail's metadata.

    The tail file must have been trained for these weights, this noise file (by SHA-256) and ALPHA.
    """
    from veil.obfuscate import load_obfuscator

    obf, _ = load_obfuscator(alpha, noise=noise, weights_sha256=detector.weights_sha256)
    model, meta = load_robust_tail(
        path, detector.model, weights_sha256=detector.weights_sha256, noise_sha256=files.file_sha256(noise), alpha=alpha
    )
    detector.model, detector.obfuscator = model, obf
    return meta

"""Server side: a noise-robust tail — a copy of the FaceBoxes tail distilled to read obfuscated activations.

Issue 9 §2c. The obfuscation noise costs accuracy mostly because the tail was trained on clean
activations; a copy adapted (label-free: the clean detector is the teacher, the data are
non-FDDB photos) recovers much of it at the same noise, so a stronger ALPHA fits in the same mAP
budget. It changes nothing the client sends: privacy at a given noise is what the noise gives.

The file stores only the tail's tensors (head weights stay those of the base model) and records
the base weights' SHA-256, the noise file's SHA-256 and ALPHA: :func:`load_robust_tail` refuses
it for other weights or other noise. :func:`export_triton` serves it as its own Triton model,
``face_detection_robust``, beside the repository's other models, its weights' SHA-256 in its config.
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
#: The Triton model serving a robust tail (obfuscated activations in, the detector's outputs out).
ROBUST_MODEL = "face_detection_robust"
#: Written beside the model's ``config.pbtxt``: what the served tail is (file, hashes, noise, ALPHA).
SERVED_META = "veil-robust-tail.json"


def tail_state(model: FaceBoxes) -> dict[str, torch.Tensor]:
    """The tail's parameters and BatchNorm statistics, keyed as in the full model's ``state_dict``: those of
    ``model.tail``, which starts where the head ends at the model's split (at ``rdcl``: all but conv1, conv2)."""
    return dict(model.tail.state_dict())


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
    scale_range: tuple[float, float] = (2.0, 6.0),
    bank: tuple[Bank, Bank] | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[FaceBoxes, list[dict], dict]:
    """Distil a copy of ``model``'s tail to read ``transform(a)`` (fresh noise per call); return it, log, data.

    ``model`` (the teacher) is not modified. ``bank`` (from :func:`build_bank`) skips the teacher pass.
    An :class:`~veil.obfuscate.noise.Obfuscator` transform (per-channel or input-conditioned) is trained
    through a seeded copy (:func:`~veil.defenses.distill.training_noise`): fresh ε every step. The
    student is returned on CPU. ``scale_range``: the photos' zoom (default for ×3; ×s: ``(2s/3, 2s)``).
    """
    teacher, bank = teacher_and_bank(
        model,
        dirs,
        bank,
        seed=cfg.seed,
        crop=crop,
        crops_per_image=crops_per_image,
        scale_range=scale_range,
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
    return files.save(path, FORMAT, tail_state(student), meta, model=student)


def load_robust_tail(
    path: str | Path,
    model: FaceBoxes,
    *,
    weights_sha256: str,
    noise_sha256: str | None = None,
    alpha: float | None = None,
) -> tuple[FaceBoxes, dict[str, Any]]:
    """``model`` with the robust tail of ``path`` swapped in, after the file's checks; and its metadata."""
    state, meta = files.load(
        path, FORMAT, weights_sha256=weights_sha256, model=model, noise_sha256=noise_sha256, alpha=alpha
    )
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

    obf, _ = load_obfuscator(alpha, noise=noise, model=detector.model, weights_sha256=detector.weights_sha256)
    model, meta = load_robust_tail(
        path,
        detector.model.network,  # the bare FaceBoxes network (its state_dict keys are the tail file's)
        weights_sha256=detector.weights_sha256,
        noise_sha256=files.file_sha256(noise),
        alpha=alpha,
    )
    detector.model, detector.obfuscator = model, obf
    return meta


def export_triton(
    tail_file: str | Path,
    noise: str | Path,
    alpha: float,
    out: str | Path,
    model: FaceBoxes,
    *,
    weights_sha256: str,
    formats: Sequence[str] = ("python", "onnx"),
    max_batch_size: int = 8,
) -> dict[str, Any]:
    """Write the robust tail of ``tail_file`` as the Triton model :data:`ROBUST_MODEL` under ``out/<form>/``.

    ``out`` is a repository root as ``veil export-triton`` writes it (its other models are left as
    they are). The tail file is checked first (weights, noise file, ALPHA, its tensors' hash), each
    exported file is compared with the in-process robust tail (max abs error ≤ 1e-4, else
    ``RuntimeError``), and the config carries ``robust_tail_sha256`` (the tail tensors' SHA-256),
    ``robust_tail_file_sha256``, ``weights_sha256``, ``noise_sha256`` and ``alpha`` as parameters; the
    same, with the export check, goes to ``SERVED_META`` and the root's ``veil-export.json``.
    Returns that description.
    """
    import json
    import shutil

    from veil import export
    from veil.jsonio import write_json
    from veil.models import as_split_model
    from veil.serving import repository
    from veil.serving.pbtxt import dumps, map_entries

    unknown = set(formats) - set(repository.FORMATS)
    if unknown:
        raise ValueError(f"unknown export format(s) {sorted(unknown)}; choose from {list(repository.FORMATS)}")
    noise_sha256 = files.file_sha256(noise)
    robust, meta = load_robust_tail(
        tail_file, model, weights_sha256=weights_sha256, noise_sha256=noise_sha256, alpha=alpha
    )
    # The served tail's input/output dims and activation bound come from the model (its split's config).
    signature, stride = export.signature(robust), as_split_model(robust).stride
    root = Path(out)
    stage = root / ".stage-robust"
    shutil.rmtree(stage, ignore_errors=True)
    desc: dict[str, Any] = {
        "model": ROBUST_MODEL,
        "robust_tail_sha256": meta["tensors_sha256"],
        "robust_tail_file_sha256": files.file_sha256(tail_file),
        "weights_sha256": weights_sha256,
        "noise_sha256": noise_sha256,
        "alpha": float(alpha),
        "max_abs_error_vs_in_process": {},
        "forms": {},
    }
    params = {
        k: {"string_value": str(desc[k])} for k in desc if k not in ("model", "max_abs_error_vs_in_process", "forms")
    }
    try:
        built: dict[str, Path] = {}
        if {"onnx", "python"} & set(formats):
            built["onnx"] = built["python"] = export.export_onnx(robust, stage / "tail.onnx")
            desc["max_abs_error_vs_in_process"]["onnx"] = export.check_onnx(robust, built["onnx"])
        if "torchscript" in formats:
            built["torchscript"] = export.export_torchscript(robust, stage / "tail.pt")
            desc["max_abs_error_vs_in_process"]["torchscript"] = export.check_torchscript(robust, built["torchscript"])
        for fmt in formats:
            mdir = root / fmt / ROBUST_MODEL
            shutil.rmtree(mdir, ignore_errors=True)
            (mdir / "1").mkdir(parents=True)
            config = repository.model_config(ROBUST_MODEL, fmt, False, max_batch_size, 1, signature, stride)
            config["parameters"] = [e for e in config.get("parameters", []) if e["key"] not in params] + map_entries(
                params
            )
            (mdir / "config.pbtxt").write_text(dumps(config))
            if fmt == "python":
                shutil.copyfile(Path(repository.__file__).with_name("triton_model.py"), mdir / "1" / "model.py")
            shutil.copyfile(built[fmt], mdir / "1" / ("model.pt" if fmt == "torchscript" else "model.onnx"))
            desc["forms"][fmt] = str(mdir.relative_to(root))
            write_json(mdir / SERVED_META, desc)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    manifest_path = root / repository.MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest["models"] = [m for m in manifest.get("models", []) if m != ROBUST_MODEL] + [ROBUST_MODEL]
    manifest["robust_tail"] = desc
    write_json(manifest_path, manifest)
    return desc

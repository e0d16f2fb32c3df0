"""Defense files: safetensors tensors + one JSON metadata entry, bound to what they were trained for.

Same conventions as noise files (:mod:`veil.obfuscate.artifact`): a ``format`` tag, the base
model weights' SHA-256, the model's name, split point and activation channels (from the
:class:`~veil.models.SplitModel` the defense was trained on, :func:`identity`; a file for another
model, split or weights is refused with the reason), and here also a SHA-256 over the file's own tensors
(``tensors_sha256``), so a file edited after training is refused rather than silently used, and
the SHA-256 of the noise file the defense was trained against (a robust tail fitted for one noise
is refused with another).

A defense that trains an adversary inside its fitting records it as ``adversary: {seed,
data_order_seed, weights_sha256}`` (:func:`adversary_record`); :func:`save` refuses metadata that
names an adversary (or a non-zero ``adversary_weight``) without all three, so the audit and the
frontier can refuse a scoring attacker that shares any of them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import veil
from veil import jsonio
from veil.digest import tensors_sha256  # defined once, below every layer
from veil.models import as_split_model


class DefenseFileError(ValueError):
    """A defense file is missing, corrupt, tampered with, or made for other weights/noise/ALPHA."""


#: What identifies an in-loop adversary: its initial weights' seed, its data order's seed, its final weights.
ADVERSARY_KEYS = ("seed", "data_order_seed", "weights_sha256")


def adversary_record(seed: int, data_order_seed: int, module: torch.nn.Module) -> dict[str, Any]:
    """``{seed, data_order_seed, weights_sha256}`` of an adversary trained inside a defense's fitting."""
    return {
        "seed": int(seed),
        "data_order_seed": int(data_order_seed),
        "weights_sha256": tensors_sha256(module.state_dict()),
    }


def identity(model: torch.nn.Module) -> dict[str, Any]:
    """What a defense is for, besides the weights: ``{model, split_point, channels}`` from the model's config.

    ``model`` is a :class:`~veil.models.SplitModel` or a bare FaceBoxes network (cut where its head ends).
    """
    m = as_split_model(model)
    return {"model": m.name, "split_point": m.split_point, "channels": m.channels}


def _check_adversary(metadata: dict[str, Any]) -> None:
    adv = metadata.get("adversary")
    if adv is None and float(metadata.get("adversary_weight") or 0.0) > 0:
        raise ValueError(
            "defense metadata has adversary_weight > 0 but no 'adversary' record (seed, data order, weights)"
        )
    if adv is not None:
        missing = [k for k in ADVERSARY_KEYS if not isinstance(adv, dict) or adv.get(k) is None]
        if missing:
            raise ValueError(
                f"defense metadata 'adversary' lacks {missing}: record seed, data_order_seed, weights_sha256"
            )


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (how a noise file is named in a defense's metadata)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(
    path: str | Path,
    fmt: str,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, Any],
    model: torch.nn.Module | None = None,
) -> Path:
    """Write atomically; ``metadata`` must name ``weights_sha256``, and the model the defense was trained on
    (``model``, whose :func:`identity` is recorded, or ``model``/``split_point`` in ``metadata``: no default).
    Returns the path."""
    if "weights_sha256" not in metadata:
        raise ValueError("defense metadata needs 'weights_sha256' (the base model's weights)")
    _check_adversary(metadata)
    ident = identity(model) if model is not None else {}
    clash = {k: (metadata[k], v) for k, v in ident.items() if k in metadata and metadata[k] != v}
    if clash:
        raise ValueError(f"defense metadata disagrees with the model it is saved for: {clash}")
    metadata = {**ident, **metadata}
    for key in ("model", "split_point"):
        if key not in metadata:
            raise ValueError(f"defense metadata needs {key!r} (pass the model the defense was trained on)")
    tensors = {
        k: v.detach().float().cpu().contiguous() if v.is_floating_point() else v.detach().cpu().contiguous()
        for k, v in tensors.items()
    }
    meta = {
        "format": fmt,
        "veil_version": veil.__version__,
        **metadata,
        "tensors_sha256": tensors_sha256(tensors),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    save_file(tensors, str(tmp), metadata={"veil": jsonio.dumps(meta, indent=None)})  # standard JSON
    tmp.replace(path)
    return path


def _metadata(path: str | Path) -> dict[str, Any]:
    """A defense file's ``veil`` metadata, parsed; :class:`DefenseFileError` (with the reason) when the
    file is unreadable, has none or holds invalid JSON."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("veil")
    except (SafetensorError, OSError, ValueError) as exc:
        raise DefenseFileError(f"{path} is not a readable defense file (corrupt or truncated?): {exc}") from exc
    if raw is None:
        raise DefenseFileError(f"{path} is a safetensors file without veil metadata")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DefenseFileError(f"{path}: metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise DefenseFileError(f"{path}: metadata is not a JSON object")
    return meta


def recorded_split(path: str | Path) -> str | None:
    """The split point a defense file says it was made for (``"faceboxes.inception3"``), before any check:
    lets a tool pick the model to load it with; :func:`load` still checks everything."""
    split = _metadata(path).get("split_point")
    return split if isinstance(split, str) else None


def load(
    path: str | Path,
    fmt: str,
    *,
    weights_sha256: str,
    model: torch.nn.Module | None = None,
    split_point: str | None = None,
    noise_sha256: str | None = None,
    alpha: float | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a defense file after every check; raise :class:`DefenseFileError` saying which failed.

    What it must be for: ``model`` (its :func:`identity`) or, without one, ``split_point``; there is no
    default. ``noise_sha256``/``alpha`` (when given) must match what the file records.
    """
    if model is None and split_point is None:
        raise ValueError("which model is the defense for? pass model= (a veil.models.SplitModel) or split_point=")
    want = identity(model) if model is not None else {"model": str(split_point).split(".")[0]}
    want_split = split_point or want["split_point"]
    path = Path(path)
    if not path.is_file():
        raise DefenseFileError(f"defense file not found: {path}")
    meta = _metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DefenseFileError(f"{path} is not a readable defense file (corrupt or truncated?): {exc}") from exc
    if meta.get("format") != fmt:
        raise DefenseFileError(f"{path} holds {meta.get('format')!r}, not {fmt!r}")
    file_split = meta.get("split_point")
    file_model = meta.get("model") or (file_split.split(".")[0] if isinstance(file_split, str) else None)
    if file_model != want["model"]:
        raise DefenseFileError(
            f"{path} was trained for model {file_model!r} (split point {file_split!r}), not {want['model']!r} "
            f"({want_split!r}); train it for this model"
        )
    if file_split != want_split:
        raise DefenseFileError(
            f"{path} was trained at split point {file_split!r}, not {want_split!r}; train it at this split"
        )
    if "channels" in want and meta.get("channels", want["channels"]) != want["channels"]:
        raise DefenseFileError(
            f"{path} was trained on a {meta.get('channels')}-channel activation, but {want_split} has "
            f"{want['channels']}"
        )
    if meta.get("weights_sha256") != weights_sha256:
        raise DefenseFileError(
            f"{path} was trained for model weights with SHA-256 {meta.get('weights_sha256')}, "
            f"but the detector uses {weights_sha256}; retrain it for these weights"
        )
    if noise_sha256 is not None and meta.get("noise_sha256") != noise_sha256:
        raise DefenseFileError(
            f"{path} was trained against the noise file with SHA-256 {meta.get('noise_sha256')}, "
            f"not the given one ({noise_sha256}); retrain it against this noise"
        )
    if alpha is not None and (meta.get("alpha") is None or abs(float(meta["alpha"]) - float(alpha)) > 1e-9):
        raise DefenseFileError(f"{path} was trained for ALPHA {meta.get('alpha')}, not the requested {alpha:g}")
    digest = tensors_sha256(tensors)
    if digest != meta.get("tensors_sha256"):
        raise DefenseFileError(
            f"{path}: its tensors' SHA-256 {digest} differs from the recorded "
            f"{meta.get('tensors_sha256')} (the file was modified after training)"
        )
    if not all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()):
        raise DefenseFileError(f"{path} holds non-finite weights")
    return tensors, meta

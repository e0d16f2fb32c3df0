"""Fitted noise on disk: a safetensors file (μ, log σ, activation statistics) plus JSON metadata.

The metadata binds the noise to what it was fitted for — the model weights' SHA-256 and
the split point — so noise fitted for other weights or another split is refused rather
than silently producing a wrong privacy/accuracy trade-off.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import veil
from veil.models.faceboxes import SPLIT_POINT
from veil.obfuscate.keystream import NoiseKey, read_key_file
from veil.obfuscate.noise import FAMILIES, Obfuscator
from veil.weights import REFERENCE_SHA256, cache_dir

FORMAT = "veil-noise/1"
_TENSORS = ("mu", "log_sigma", "signal_power")


class NoiseFileError(ValueError):
    """A noise file is missing, corrupt, or fitted for another model or split point."""


def noise_dir() -> Path:
    """Default home of fitted noise: ``veil.weights.cache_dir()/"noise"``."""
    return cache_dir() / "noise"


def noise_filename(alpha: float) -> str:
    """``alpha-0.8.safetensors``: one file per ALPHA in a noise directory."""
    return f"alpha-{float(alpha):g}.safetensors"


def save_obfuscator(obf: Obfuscator, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``obf`` with ``metadata`` (must hold ``alpha`` and ``weights_sha256``); return the path."""
    for key in ("alpha", "weights_sha256"):
        if key not in metadata:
            raise ValueError(f"noise metadata needs {key!r}")
    meta = {"format": FORMAT, "veil_version": veil.__version__, "split_point": SPLIT_POINT,
            "family": obf.family, "channels": obf.channels, **metadata}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: getattr(obf, k).detach().float().cpu().contiguous() for k in _TENSORS}
    tmp = path.with_suffix(path.suffix + ".part")
    save_file(tensors, str(tmp), metadata={"veil": json.dumps(meta)})
    tmp.replace(path)  # never leave a half-written artifact under the final name
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a noise file, or :class:`NoiseFileError` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise NoiseFileError(f"noise file not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("veil")
    except (SafetensorError, OSError, ValueError) as exc:
        raise NoiseFileError(f"{path} is not a readable noise file (corrupt or truncated?): {exc}") from exc
    if raw is None:
        raise NoiseFileError(f"{path} is a safetensors file without veil noise metadata")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise NoiseFileError(f"{path}: noise metadata is not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise NoiseFileError(f"{path}: unknown noise format {meta.get('format')!r} (expected {FORMAT})")
    return meta


def load_noise_file(path: str | Path, *, weights_sha256: str = REFERENCE_SHA256,
                    split_point: str = SPLIT_POINT, seed: int | None = None,
                    generator: torch.Generator | None = None) -> tuple[Obfuscator, dict[str, Any]]:
    """Load one noise file after checking it was fitted for these weights and this split point."""
    path = Path(path)
    meta = read_metadata(path)
    if meta.get("weights_sha256") != weights_sha256:
        raise NoiseFileError(
            f"{path} was fitted for model weights with SHA-256 {meta.get('weights_sha256')}, but the "
            f"detector uses {weights_sha256}; refit it with `veil fit-noise` for these weights")
    if meta.get("split_point") != split_point:
        raise NoiseFileError(f"{path} was fitted at split point {meta.get('split_point')!r}, but the model "
                             f"splits at {split_point!r}; refit it with `veil fit-noise`")
    if meta.get("family") not in FAMILIES:
        raise NoiseFileError(f"{path}: unknown noise family {meta.get('family')!r}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise NoiseFileError(f"{path} is corrupt (cannot read its tensors): {exc}") from exc
    missing = [k for k in _TENSORS if k not in tensors]
    if missing:
        raise NoiseFileError(f"{path} lacks tensors {missing}")
    c = int(meta.get("channels", tensors["mu"].numel()))
    if any(tensors[k].shape != (c,) for k in _TENSORS):
        raise NoiseFileError(f"{path}: tensor shapes {[tuple(tensors[k].shape) for k in _TENSORS]} "
                             f"do not match {c} channels")
    if not all(torch.isfinite(tensors[k]).all() for k in _TENSORS):
        raise NoiseFileError(f"{path} holds non-finite parameters")
    obf = Obfuscator(c, meta["family"], seed=seed, generator=generator)
    with torch.no_grad():
        for k in _TENSORS:
            getattr(obf, k).copy_(tensors[k])
    obf.requires_grad_(False)
    return obf.eval(), meta


def load_obfuscator(alpha: float | None, noise: str | Path | None = None,
                    noise_dir: str | Path | None = None, weights_sha256: str = REFERENCE_SHA256, *,
                    split_point: str = SPLIT_POINT, seed: int | None = None,
                    generator: torch.Generator | None = None,
                    key: bytes | NoiseKey | os.PathLike | None = None) -> tuple[Obfuscator, dict[str, Any]]:
    """Find and load the noise fitted for ALPHA: ``noise`` (a file) or ``noise_dir/alpha-<A>.safetensors``.

    Refuses a file fitted for other weights, another split point, or another ALPHA than
    asked. Noise is fresh and unpredictable unless ``seed``/``generator`` is given (experiments
    only); ``key`` (bytes ≥ 32, a :class:`NoiseKey`, or a key file's path) makes it *keyed*: the
    same activation always gets the same noise (see :mod:`veil.obfuscate.keystream`).
    """
    if noise is None:
        if alpha is None:
            raise ValueError("give ALPHA or an explicit noise file")
        d = Path(noise_dir) if noise_dir is not None else globals()["noise_dir"]()
        noise = d / noise_filename(alpha)
        if not noise.is_file() and noise_dir is None:
            from veil import assets  # noise that ships for the reference weights (the user's own comes first)

            shipped = assets.noise_file(alpha)
            if shipped is not None and read_metadata(shipped).get("weights_sha256") == weights_sha256:
                noise = shipped
        if not noise.is_file():
            raise NoiseFileError(
                f"no noise fitted for ALPHA {alpha:g} in {d} (looked for {noise.name}); fit it with "
                f"`veil fit-noise --alpha {alpha:g} --images DIR --out {noise}` or pass --noise FILE")
    obf, meta = load_noise_file(noise, weights_sha256=weights_sha256, split_point=split_point,
                                seed=seed, generator=generator)
    if key is not None:
        obf.set_key(read_key_file(key) if isinstance(key, (str, os.PathLike)) else key)
    if alpha is not None and abs(float(meta["alpha"]) - float(alpha)) > 1e-9:
        raise NoiseFileError(f"{noise} was fitted for ALPHA {meta['alpha']:g}, not the requested {alpha:g}")
    return obf, meta



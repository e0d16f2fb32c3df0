"""Where the FaceBoxes weights come from, and proof that they are the right ones.

Resolution order: an explicit path (``--weights``), then ``$VEIL_WEIGHTS``, then the
cache directory (``$VEIL_CACHE_DIR`` or ``~/.cache/veil``, filled by ``veil weights
fetch/import``), then the checkpoint that ships inside the package (``veil.assets``, MIT).
Every file, the shipped one included, is checked against the reference checkpoint's
SHA-256 before use, unless the caller opts out (``verify_sha=False``) for weights of their own.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import torch

from veil import assets
from veil.digest import sha256_file
from veil.models.faceboxes import FaceBoxes
from veil.settings import settings

#: SHA-256 of the public FaceBoxes checkpoint (FaceBoxes.PyTorch, MIT).
REFERENCE_SHA256 = "c0cb2b1e40710c0aa5fc32a8759b1496a0fe0a126c907ca0ffe35b4bd0709d09"
WEIGHTS_FILENAME = "FaceBoxesProd.pth"
#: The same file as published in cleardusk/3DDFA_V2 (MIT), the original public source.
REFERENCE_URL = "https://github.com/cleardusk/3DDFA_V2/raw/master/FaceBoxes/weights/FaceBoxesProd.pth"


class WeightsError(RuntimeError):
    """Weights are missing, corrupt, or not the expected checkpoint."""


def cache_dir() -> Path:
    """The cache directory (``$VEIL_CACHE_DIR`` or ``~/.cache/veil``)."""
    return settings().cache_dir


def resolve_weights(path: str | Path | None = None) -> Path:
    """Find the weights file: ``path``, then ``$VEIL_WEIGHTS``, then the cache, then the shipped checkpoint."""
    for candidate, origin in ((path, ""), (settings().weights, " (given by $VEIL_WEIGHTS)")):
        if candidate:
            p = Path(candidate).expanduser()
            if not p.is_file():
                raise WeightsError(f"weights file does not exist{origin}: {p}")
            return p
    cached = cache_dir() / WEIGHTS_FILENAME
    if cached.is_file():
        return cached
    if assets.WEIGHTS.is_file():
        return assets.WEIGHTS
    raise WeightsError(
        f"no FaceBoxes weights found (none given; looked at $VEIL_WEIGHTS, {cached} and the package's "
        f"{assets.WEIGHTS}, which this installation lacks). Run `veil weights fetch` to download them, "
        "or `veil weights import PATH` for a local copy."
    )


def verify(path: str | Path, expected: str = REFERENCE_SHA256) -> str:
    """Check a file's SHA-256; return it, or raise :class:`WeightsError` saying what differs."""
    digest = sha256_file(path)
    if digest != expected:
        raise WeightsError(
            f"{path} is not the reference FaceBoxes checkpoint: SHA-256 {digest} != expected {expected}. "
            "The file is corrupt, truncated or a different model; fetch it again with `veil weights fetch`."
        )
    return digest


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint safely (tensors only) and strip a ``module.`` prefix if present."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files; re-raised as WeightsError
        raise WeightsError(f"cannot read weights {path}: {exc.__class__.__name__}: {exc}") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path} does not hold a PyTorch state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_faceboxes(path: str | Path | None = None, verify_sha: bool = True) -> tuple[FaceBoxes, str]:
    """Build FaceBoxes with resolved, verified weights, in eval mode; return it and the weights' SHA-256."""
    p = resolve_weights(path)
    digest = verify(p) if verify_sha else sha256_file(p)
    model = FaceBoxes()
    try:
        model.load_state_dict(load_state_dict(p), strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{p} does not fit the FaceBoxes architecture: {exc}") from exc
    return model.eval(), digest


def install(src: str | Path) -> Path:
    """Verify a local checkpoint and copy it into the cache; return the installed path."""
    verify(src)
    dest = cache_dir() / WEIGHTS_FILENAME
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest


def fetch(url: str = REFERENCE_URL, timeout: float = 30.0) -> Path:
    """Download the reference checkpoint from its original source, verify it, and install it."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_dir(), suffix=".part", delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - fixed https URL
                shutil.copyfileobj(resp, tmp)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            Path(tmp.name).unlink(missing_ok=True)
            raise WeightsError(
                f"could not download the weights from {url} ({exc}). Offline? Copy FaceBoxesProd.pth "
                "here by other means and run `veil weights import PATH`."
            ) from exc
    try:
        return install(tmp.name)
    finally:
        Path(tmp.name).unlink(missing_ok=True)

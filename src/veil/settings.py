"""The one reader of veil's ``VEIL_*`` environment variables.

Why one place: the same variables are set by Kubernetes manifests, the notebook pod, CI and
users' shells, and each command falls back to them when a flag is absent. Reading them here
(fresh on every call, so tests and long-lived processes see changes) keeps their names,
meaning and parsing identical everywhere. Nothing here names a path outside the user's own:
unset variables are ``None`` (or empty), and the command that needs one says which flag or
variable to set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

#: Variable name → what it holds: every variable settings() reads, and only those (tests/test_settings.py).
VARIABLES: dict[str, str] = {
    "VEIL_CACHE_DIR": "cache for weights, noise files and attackers (default ~/.cache/veil)",
    "VEIL_WEIGHTS": "model weights file used when --weights is absent",
    "VEIL_DATASET": "FDDB root (FDDB-folds/, originalPics/) used when --dataset is absent",
    "VEIL_FIT_IMAGES": "non-FDDB photo folders, separated by ':' (os.pathsep), for noise fitting and attacker training",
    "VEIL_NOISE_DIR": "directory of fitted noise files used when --noise-dir is absent",
    "VEIL_NOISE_KEY_FILE": "client secret key for keyed noise (stays in the trust zone)",
    "VEIL_NOISE_SHA256": "expected SHA-256 of the noise file; a mismatch is refused",
    "VEIL_DECODER": "decoder used to picture what leaves the trust zone",
    "VEIL_TRITON_URL": "Triton server address, e.g. 127.0.0.1:8001",
}


def _path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


@dataclass(frozen=True)
class Settings:
    """A snapshot of the ``VEIL_*`` variables (see :data:`VARIABLES`)."""

    cache_dir: Path
    weights: Path | None
    dataset: Path | None
    fit_images: tuple[Path, ...]
    noise_dir: Path | None
    noise_key_file: Path | None
    noise_sha256: str | None
    decoder: Path | None
    triton_url: str | None


def settings() -> Settings:
    """Read the environment now (not at import), so a changed variable is always seen."""
    fit = os.environ.get("VEIL_FIT_IMAGES", "")
    sha = os.environ.get("VEIL_NOISE_SHA256", "").strip().lower()
    return Settings(
        cache_dir=_path("VEIL_CACHE_DIR") or Path.home() / ".cache" / "veil",
        weights=_path("VEIL_WEIGHTS"),
        dataset=_path("VEIL_DATASET"),
        fit_images=tuple(Path(p).expanduser() for p in fit.split(os.pathsep) if p.strip()),
        noise_dir=_path("VEIL_NOISE_DIR"),
        noise_key_file=_path("VEIL_NOISE_KEY_FILE"),
        noise_sha256=sha or None,
        decoder=_path("VEIL_DECODER"),
        triton_url=os.environ.get("VEIL_TRITON_URL", "").strip() or None,
    )

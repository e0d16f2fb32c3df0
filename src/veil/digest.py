"""The one streamed SHA-256 of a file: weights, noise files, dataset files are all verified with it.

At the bottom of the layers (it imports nothing of veil) so every layer, ``veil.data`` included, can use it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, streamed (1 MiB at a time)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

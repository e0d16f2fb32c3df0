"""The one streamed SHA-256 of a file: weights, noise files, dataset files are all verified with it.

At the bottom of the layers (it imports nothing of veil) so every layer, ``veil.data`` included, can use it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, streamed (1 MiB at a time)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensors_sha256(tensors: dict[str, Any]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of torch ``tensors`` (sorted by name): the identity of a
    set of weights, independent of how the file holding them was written."""
    import torch  # only callers that hold tensors pay for it

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()

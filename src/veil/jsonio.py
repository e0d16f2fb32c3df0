"""Results on disk: standard JSON, written atomically, one writer at a time.

Why: a result file is read by other tools (``jq``, browsers, the merge of shards) while runs may
still be going. So every JSON veil writes is standard (no ``NaN``/``Infinity``: an undefined
number is ``null``), appears whole or not at all (written to a unique temporary file in the same
directory, flushed, then renamed over the target), and a second run that would write the same
path while the first is still running is refused instead of silently overwriting it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


class ResultBusyError(RuntimeError):
    """Another process is writing the same result file."""


def strict(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays made plain and non-finite floats turned into ``None``."""
    if isinstance(obj, dict):
        return {str(k): strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(obj: Any, indent: int | None = 1) -> str:
    """Standard JSON text (``allow_nan=False`` after :func:`strict`, so it can never emit NaN)."""
    return json.dumps(strict(obj), indent=indent, allow_nan=False)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a part.

    The temporary file is unique (``mkstemp`` in the target's directory, so the rename stays on
    one filesystem): two writers never share it. It gets the mode a plain ``open()`` would give.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    """Standard JSON, atomically (see :func:`dumps` and :func:`atomic_write_text`)."""
    return atomic_write_text(path, dumps(obj, indent))


class WriteLock:
    """An exclusive claim on a result path for the length of a run (``with WriteLock(path): …``).

    A lock file ``.<name>.lock`` beside the result is held with ``flock``; the kernel releases it
    when the process ends, however it ends, so a crashed run never blocks the next one. A second
    run asking for the same path is refused at once (``ResultBusyError``), before it computes
    anything, instead of both "succeeding" and the last writer winning.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._fd: int | None = None

    def acquire(self) -> WriteLock:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise ResultBusyError(
                    f"another run{_holder(self.lock_path)} is writing {self.path}; wait for it, or write elsewhere"
                ) from None
            # The previous holder may have removed the lock file between our open and flock:
            # then we hold a lock on an unlinked file, so start over on the new one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.lock_path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> WriteLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(lock_path: Path) -> str:
    try:
        pid = lock_path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""

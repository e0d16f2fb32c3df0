"""Standard JSON out of veil: non-finite floats become ``null`` instead of ``NaN``/``Infinity``.

Python's :func:`json.dumps` writes ``NaN`` and ``Infinity`` by default, which strict parsers
(browsers, ``jq``, Go, Rust) reject. An undefined number (an NSR of a silent channel, a rank
of no faces) is written as ``null``; ``allow_nan=False`` then guarantees nothing slips through.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (also numpy/torch scalars) replaced by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return finite(obj.item())
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """:func:`json.dumps` of :func:`finite` ``(obj)`` with ``allow_nan=False``."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)

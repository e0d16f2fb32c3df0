"""ALPHA, the obfuscation strength: the one check of its value, used by every entry point.

ALPHA in [0, 1) weighs privacy against the task's loss when noise is fitted (0: no privacy term;
towards 1: all privacy). It names a noise file (``alpha-<A>.safetensors``), a fit, a defense and a
Kubernetes Job, so a value outside the range is refused where it enters, with the reason.
"""

from __future__ import annotations

import math
from typing import Any


def check_alpha(alpha: Any, what: str = "ALPHA") -> float:
    """``alpha`` as a float if it is a number in [0, 1); else ``ValueError`` naming ``what``."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"{what} must be a number in [0, 1), got {alpha!r}")
    if not 0.0 <= float(alpha) < 1.0:
        raise ValueError(f"{what} must be in [0, 1) (0: no privacy term, towards 1: all privacy), got {alpha:g}")
    return float(alpha)

"""veil: confidential inference by learned, stochastic obfuscation of a split model's activation.

``veil.make_private(model, alpha)`` is the one-call entry point (:mod:`veil.private`); importing
``veil`` itself stays light (torch loads on first use of it).
"""

from typing import Any

from veil.version import __version__

__all__ = ["__version__", "make_private"]


def __getattr__(name: str) -> Any:
    if name == "make_private":
        from veil.private import make_private

        return make_private
    raise AttributeError(f"module 'veil' has no attribute {name!r}")

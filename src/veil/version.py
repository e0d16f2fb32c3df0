"""veil's version, in the bottom layer: every layer records it (noise files, defense files, manifests)."""

__version__ = "0.1.0"

"""veil: confidential inference by learned, stochastic obfuscation of a split model's activation."""

__version__ = "0.1.0"

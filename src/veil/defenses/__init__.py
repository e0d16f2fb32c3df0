"""Defenses beyond additive noise (issue 9 §2), named by where they sit on the data path.

* :mod:`veil.defenses.bottleneck` — **client side** (trust zone): a learned deterministic,
  many-to-one map of the head's activation (few channels, quantised) with fresh noise on top.
* :mod:`veil.defenses.robust_tail` — **server side**: a copy of the tail distilled, label-free,
  to read obfuscated (or bottlenecked) activations; the clean detector is its teacher.
* :mod:`veil.defenses.distill` — the one label-free distillation loop both use.
* :mod:`veil.defenses.files` — their files: safetensors + JSON metadata, a SHA-256 of the
  weights, and refusals for other base weights, noise or ALPHA.
* :mod:`veil.defenses.measure` — the common footing: scoring decoder trained on the defense's
  output, identity rank-1 (single and averaged draws) with Wilson intervals.
"""

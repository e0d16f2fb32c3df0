"""The defense scoring helpers: Wilson intervals (reference values) and the observed-head wrapper."""

from __future__ import annotations

import pytest
import torch

from veil.defenses.measure import ObservedHead, wilson


def test_wilson_matches_reference_values():
    # statsmodels.stats.proportion.proportion_confint(34, 100, method="wilson") = (0.25461, 0.43722)
    lo, hi = wilson(34, 100)
    assert lo == pytest.approx(0.25461, abs=1e-4) and hi == pytest.approx(0.43722, abs=1e-4)
    lo, hi = wilson(0, 100)
    assert lo == 0.0 and hi == pytest.approx(0.03699, abs=1e-4)  # zero hits still leave an upper bound
    assert wilson(0, 0) == (0.0, 1.0)


def test_observed_head_applies_the_defense_after_the_head(detector):
    head = detector.model.head
    x = torch.zeros(1, 3, 64, 64)
    wrapped = ObservedHead(head, lambda a: a * 0 + 1)
    with torch.no_grad():
        assert torch.equal(wrapped(x), torch.ones_like(head(x)))

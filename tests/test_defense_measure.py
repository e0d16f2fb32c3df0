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


class _Exact(torch.nn.Module):
    """A 'decoder' that returns its input image (the head is the identity): a perfect reconstruction."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        from veil.privacy.decoders import PIXEL_SCALE

        return a / PIXEL_SCALE


class _Grey(torch.nn.Module):
    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(a)  # mean-subtracted zero = the mean colour everywhere


def test_identity_leak_scores_perfect_and_blank_reconstructions(fddb_dir):
    pytest.importorskip("dlib")
    from veil.defenses.measure import grey_reference, identity_leak
    from veil.privacy.audit import select_fddb_faces

    faces = select_fddb_faces(fddb_dir, max_faces=8)
    head = torch.nn.Identity()
    exact = identity_leak(faces, head, lambda a: a, _Exact(), scale=1.0, ks=(1, 2), progress=False)
    assert exact["n_faces"] == 8 and exact["k1"]["rank1"] == 1.0 and exact["k2"]["rank1"] == 1.0
    lo, hi = exact["k1"]["rank1_ci95"]
    assert lo < 1.0 <= hi + 1e-9
    blank = identity_leak(faces, head, lambda a: a, _Grey(), scale=1.0, ks=(1,), progress=False)
    grey = grey_reference(faces)
    assert blank["k1"]["rank1"] <= 0.5 and blank["k1"]["rank1"] == grey["rank1"]


def test_large_face_bin_scores_every_face_once_enlarged_where_small(fddb_dir):
    """At ×1 every face is below 192 px at the network: each is scored once, as its enlarged copy."""
    pytest.importorskip("dlib")
    from veil.defenses.measure import identity_leak
    from veil.privacy.audit import select_fddb_faces

    faces = select_fddb_faces(fddb_dir, max_faces=6)
    head = torch.nn.Identity()
    exact = identity_leak(faces, head, lambda a: a, _Exact(), scale=1.0, ks=(1,), progress=False, large_faces=True)
    large = exact["large_k1"]
    assert large["n_probes"] == 6 and large["n_enlarged"] == 6 and large["rank1"] == 1.0
    blank = identity_leak(faces, head, lambda a: a, _Grey(), scale=1.0, ks=(1,), progress=False, large_faces=True)
    assert blank["large_k1"]["rank1"] <= 0.5

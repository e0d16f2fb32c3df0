"""The defenses' footing scores near-duplicate averaging too (issue 9 §1): re-sent copies, each with fresh noise."""

from __future__ import annotations

import torch

from veil.defenses.measure import identity_leak
from veil.privacy.audit import select_fddb_faces
from veil.privacy.decoders import Decoder


def test_identity_leak_scores_near_duplicates(detector, fddb_dir):
    faces = select_fddb_faces(fddb_dir, max_faces=3)
    calls = []

    def observe(a: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(a.shape))
        return a + torch.randn_like(a)

    torch.manual_seed(0)
    out = identity_leak(faces, detector.model.head, observe, Decoder(), ks=(1,), dup_ks=(3,), progress=False)
    assert set(out) >= {"k1", "dup3"} and out["dup3"]["rank1_ci95"][0] <= out["dup3"]["rank1"]
    # per image: one query for k=1, then one of the image and two of its near-duplicates (same shape)
    assert len(calls) == 4 * out["n_images"] and len(set(calls)) == out["n_images"]

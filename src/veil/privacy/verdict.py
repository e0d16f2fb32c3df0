"""The audit's verdict from its scores: face-size bins, the worst attacker, competence.

Shared by :mod:`veil.privacy.audit` (which writes it into the report) and
:mod:`veil.privacy.report` (which reads it back into tables), so neither imports the other's internals.
"""

from __future__ import annotations

import math
from typing import Any

#: Attackers whose worst case is the privacy column of the sweep.
WORST_OF = (
    "naive",
    "adaptive",
    "perceptual",
    "whitebox",
    "adaptive_avg4",
    "adaptive_avg16",
    "adaptive_dup4",
    "adaptive_dup16",
    # the identity regressor (veil.privacy.regressor), when the audit runs it
    "regressor",
    "regressor_avg4",
    "regressor_avg16",
    "regressor_dup4",
    "regressor_dup16",
    # the layer-wise chain (veil.privacy.layerwise), when the audit runs it at a deep split
    "layerwise",
    "layerwise_avg4",
    "layerwise_avg16",
    "layerwise_dup4",
    "layerwise_dup16",
)
#: The recipe is competent when its best clean attacker reaches this multiple of chance in the large-face bin.
COMPETENCE_FACTOR = 10.0
#: Face-size bins: face box side at the network input, px, ``[lo, hi)``.
BINS: dict[str, tuple[float, float]] = {"48-96": (48.0, 96.0), "96-192": (96.0, 192.0), ">=192": (192.0, math.inf)}
LARGE_BIN = ">=192"
#: The issue's TAR goal: the worst attacker's TAR at 1 % FAR at most this multiple of :func:`tar_reference`.
TAR_GOAL_FACTOR = 2.0
#: The false-accept rate the TAR is measured at (the threshold is set on pairs of different originals).
FAR = 0.01


def tar_reference(grey_tar: float | None, far: float = FAR) -> float:
    """The TAR a private observation may reach half of: the constant-grey picture's, never below the FAR.

    A grey picture is no face, so its TAR is 0 and "2× grey" would fail an attacker for one lucky match.
    A probe that looks like a face but carries nobody's identity passes the threshold at the FAR, by the
    threshold's construction: that is the floor which still means "no identity".
    """
    return max(float(grey_tar or 0.0), far)


def competence(report: dict[str, Any]) -> dict[str, Any]:
    """The recipe is competent when its best clean attacker reaches ≥ 10× chance in the large-face bin."""
    chance = report["chance_rank1"]
    best = max(
        (
            (v["bins"][LARGE_BIN]["rank1"] or 0.0, k)
            for k, v in report["clean_baseline"].items()
            if v["bins"][LARGE_BIN]["n"]
        ),
        default=(0.0, None),
    )
    return {
        "competent": bool(best[0] >= COMPETENCE_FACTOR * chance),
        "competence_attacker": best[1],
        "competence_rank1_large": best[0],
    }


def privacy_columns(report: dict[str, Any]) -> dict[str, Any]:
    """Columns for the ALPHA sweep table: worst-attacker rank-1 (and who) over all faces and per bin,
    ratios to chance, competence, and whether every bin is at most 2× chance."""
    atk = {k: v for k, v in report["attackers"].items() if k in WORST_OF}
    worst = max(atk, key=lambda k: (atk[k]["rank1"], atk[k]["tar_at_far1"]))
    chance = report["chance_rank1"]
    cols = {
        "worst_attacker": worst,
        "worst_rank1": atk[worst]["rank1"],
        "worst_rank1_ci95": atk[worst].get("rank1_ci95"),
        "worst_rank1_x_chance": round(atk[worst]["rank1"] / chance, 2),
        "worst_tar_at_far1": max(v["tar_at_far1"] for v in atk.values()),
    }
    if "competent" in report:
        cols["attacker_competent"] = report["competent"]
    else:
        cols["attacker_competent"] = bool(report["clean_baseline"]["naive"]["rank1"] >= COMPETENCE_FACTOR * chance)
    per_bin = {}
    for b in BINS:
        vals = [(v["bins"][b]["rank1"], k) for k, v in atk.items() if "bins" in v and v["bins"][b]["n"]]
        if vals:
            r, k = max(vals)
            per_bin[b] = {
                "worst_attacker": k,
                "rank1": r,
                "x_chance": round(r / chance, 2),
                "rank1_ci95": atk[k]["bins"][b]["rank1_ci95"],
                "n": atk[k]["bins"][b]["n"],
            }
    if per_bin:
        cols["worst_per_bin"] = per_bin
        cols["passes_every_bin"] = bool(all(v["x_chance"] <= 2.0 for v in per_bin.values()))
    grey = report.get("references", {}).get("constant", {}).get("tar_at_far1")
    ref = tar_reference(grey)
    cols["tar_reference"] = ref
    cols["worst_tar_x_reference"] = round(cols["worst_tar_at_far1"] / ref, 2)
    cols["passes_tar"] = bool(cols["worst_tar_at_far1"] <= TAR_GOAL_FACTOR * ref)
    return cols

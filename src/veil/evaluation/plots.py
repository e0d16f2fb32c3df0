"""Pictures of an FDDB evaluation: the discrete ROC."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from veil.evaluation.metrics import discrete_roc
from veil.evaluation.result import EvalResult
from veil.viz import save_figure


def roc_points(result: EvalResult) -> tuple[np.ndarray, np.ndarray]:
    """The pooled discrete ROC of a result (false positives, true-positive rate)."""
    recs = result.records
    scores = np.concatenate([r.detections[:, 4] for r in recs]) if recs else np.zeros(0)
    tp = np.concatenate([r.tp for r in recs]) if recs else np.zeros(0, dtype=bool)
    fp, tpr, _ = discrete_roc(scores, tp, result.faces)
    return fp, tpr


def plot_roc(results: dict[str, EvalResult], path: str | Path) -> Path:
    """Write the discrete ROC of one or more results (e.g. clean and noisy) with the 1000-FP operating point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.5), dpi=100)
    for i, (label, res) in enumerate(results.items()):
        fp, tpr = roc_points(res)
        ax.step(fp, tpr, where="post", color=f"C{i}", label=f"{label}: mAP {res.mAP:.4f}, TPR {res.tpr_at_1000fp:.4f}")
        ax.plot([res.fp_budget], [res.tpr_at_1000fp], "o", color=f"C{i}", ms=4)
    first = next(iter(results.values()))
    ax.axvline(first.fp_budget, color="grey", ls="--", lw=1)
    ax.text(first.fp_budget * 1.1, 0.45, f"1000 FP × {first.images}/2845\n= {first.fp_budget:.1f} FP", fontsize=8)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=0)
    ax.set_xlabel("false positives")
    ax.set_ylabel("true-positive rate")
    ax.set_ylim(0, 1.01)
    ax.set_title(f"FDDB discrete ROC ({first.images} images, {first.faces} faces)", fontsize=10)
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)

"""Pictures for people: boxes drawn on images, side-by-side panels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np


def draw_boxes(
    image: np.ndarray, boxes: np.ndarray, min_score: float = 0.5, color: tuple[int, int, int] = (0, 255, 0)
) -> np.ndarray:
    """Return a copy of a BGR image with ``[K,5]`` boxes at or above ``min_score`` drawn and labelled."""
    out = image.copy()
    thick = max(1, round(max(out.shape[:2]) / 400))
    for x1, y1, x2, y2, s in boxes:
        if s < min_score:
            continue
        cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), color, thick)
        cv2.putText(
            out, f"{s:.2f}", (int(x1), max(int(y1) - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, color, thick
        )
    return out


def side_by_side(panels: list[np.ndarray], labels: list[str] | None = None, height: int = 320) -> np.ndarray:
    """Resize BGR (or gray) panels to a common height and join them left to right, with optional labels."""
    row = []
    for i, p in enumerate(panels):
        if p.ndim == 2:
            p = cv2.cvtColor(p, cv2.COLOR_GRAY2BGR)
        w = max(1, round(p.shape[1] * height / p.shape[0]))
        q = cv2.resize(p, (w, height), interpolation=cv2.INTER_AREA)
        if labels:
            cv2.putText(q, labels[i], (5, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3)
            cv2.putText(q, labels[i], (5, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1)
        row.append(q)
    return np.hstack(row)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out, write and close a matplotlib figure (closed, so long runs drawing many plots do not leak)."""
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out

"""Matching detections to faces, average precision (VOC) and FDDB's discrete ROC.

Matching is the VOC procedure with FDDB's overlap: detections of an image in descending score
order; each takes the face it overlaps most (intersection over union with the ellipse region);
it is a true positive when that overlap is ≥ the threshold and the face is not taken yet,
otherwise a false positive. A face is matched by one detection at most.
"""

from __future__ import annotations

import numpy as np

from veil.evaluation.geometry import ellipse_rect_iou

#: FDDB's overlap-ratio threshold for a detection to count as the face.
IOU_THRESHOLD = 0.5
#: FDDB's discrete-ROC operating point, in false positives over the full 2845-image benchmark.
ROC_FALSE_POSITIVES = 1000


def match_image(detections: np.ndarray, ellipses: np.ndarray, iou_threshold: float = IOU_THRESHOLD) -> np.ndarray:
    """True-positive flags ``[K]`` (bool) for one image's ``[K,5]`` detections against ``[F,5]`` ellipses.

    Flags follow the detections' row order; ties in score keep that order (stable sort).
    """
    detections = np.asarray(detections, dtype=np.float64).reshape(-1, 5)
    tp = np.zeros(detections.shape[0], dtype=bool)
    if detections.shape[0] == 0 or np.size(ellipses) == 0:
        return tp
    iou = ellipse_rect_iou(detections[:, :4], ellipses)
    taken = np.zeros(iou.shape[1], dtype=bool)
    for d in np.argsort(-detections[:, 4], kind="stable"):
        f = int(np.argmax(iou[d]))
        if iou[d, f] >= iou_threshold and not taken[f]:
            tp[d] = taken[f] = True
    return tp


def _ranked(scores: np.ndarray, tp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return np.asarray(scores, dtype=np.float64)[order], np.asarray(tp, dtype=bool)[order]


def average_precision(scores: np.ndarray, tp: np.ndarray, n_positives: int) -> float:
    """All-point interpolated AP (VOC 2010+): area under the precision envelope over recall.

    ``scores`` and ``tp`` are pooled over a set of images (a fold); ``n_positives`` is its face count.
    """
    if n_positives <= 0:
        return float("nan")
    _, tp_sorted = _ranked(scores, tp)
    if tp_sorted.size == 0:
        return 0.0
    ctp = np.cumsum(tp_sorted)
    cfp = np.cumsum(~tp_sorted)
    rec = ctp / n_positives
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def discrete_roc(scores: np.ndarray, tp: np.ndarray, n_positives: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FDDB discrete ROC: for each distinct score threshold, (false positives, true-positive rate, threshold)."""
    s, t = _ranked(scores, tp)
    if s.size == 0:
        return np.zeros(1), np.zeros(1), np.asarray([np.inf])
    ctp, cfp = np.cumsum(t), np.cumsum(~t)
    last = np.r_[s[1:] != s[:-1], True]  # a threshold admits every detection with that score
    fp = np.r_[0, cfp[last]].astype(np.float64)
    tpr = np.r_[0, ctp[last]] / max(n_positives, 1)
    return fp, tpr, np.r_[np.inf, s[last]]


def tpr_at_fp(scores: np.ndarray, tp: np.ndarray, n_positives: int, fp_budget: float) -> float:
    """Highest true-positive rate of the discrete ROC with at most ``fp_budget`` false positives."""
    fp, tpr, _ = discrete_roc(scores, tp, n_positives)
    ok = fp <= fp_budget + 1e-9
    return float(tpr[ok].max()) if ok.any() else 0.0


def fp_budget(n_images: int, total_images: int, false_positives: int = ROC_FALSE_POSITIVES) -> float:
    """FDDB's 1000-FP operating point scaled to the images evaluated (1000 × n / 2845)."""
    return false_positives * n_images / total_images

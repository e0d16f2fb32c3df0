"""FDDB evaluation: ellipse overlap, VOC matching and AP, discrete ROC, runner, shard merge."""

from veil.evaluation.geometry import ellipse_rect_intersection, ellipse_rect_iou
from veil.evaluation.merge import MergeError, merge_results, partial_json, write_partial
from veil.evaluation.metrics import IOU_THRESHOLD, average_precision, discrete_roc, match_image, tpr_at_fp
from veil.evaluation.result import EvalResult, FoldResult, ImageRecord, summarise
from veil.evaluation.runner import Shard, evaluate_fddb, evaluate_image

__all__ = [
    "IOU_THRESHOLD",
    "EvalResult",
    "FoldResult",
    "ImageRecord",
    "MergeError",
    "Shard",
    "average_precision",
    "discrete_roc",
    "ellipse_rect_intersection",
    "ellipse_rect_iou",
    "evaluate_fddb",
    "evaluate_image",
    "match_image",
    "merge_results",
    "partial_json",
    "summarise",
    "tpr_at_fp",
    "write_partial",
]

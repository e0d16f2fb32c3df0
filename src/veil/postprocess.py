"""Tail outputs → the task's answer: face boxes (priors, box decoding, NMS) or class probabilities.

Written without torchvision. Face-detection settings default to the FaceBoxes FDDB test
protocol: confidence ≥ 0.05, top 5000 before NMS, NMS IoU 0.3, at most 750 kept. A classifier's
logits become probabilities and the top class (:func:`classify`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

#: Anchor sizes per detection layer, and the layers' strides (FaceBoxes paper, Table 1).
MIN_SIZES = ((32, 64, 128), (256,), (512,))
STEPS = (32, 64, 128)
#: Box-encoding variances of the SSD family.
VARIANCE = (0.1, 0.2)


@dataclass(frozen=True)
class PostprocessConfig:
    """Thresholds applied after the tail."""

    confidence: float = 0.05
    top_k: int = 5000
    nms_iou: float = 0.3
    keep_top_k: int = 750


@lru_cache(maxsize=64)
def _priors_np(height: int, width: int) -> np.ndarray:
    layers = []
    for k, step in enumerate(STEPS):
        fh, fw = math.ceil(height / step), math.ceil(width / step)
        ii, jj = np.meshgrid(np.arange(fh), np.arange(fw), indexing="ij")  # [fh,fw], row-major cells
        per_cell = []
        for size in MIN_SIZES[k]:
            # Small anchors are densified (4x4, 2x2) so they tile the image as densely as large ones.
            n = {32: 4, 64: 2}.get(size, 1)
            offs = np.arange(n) / n if n > 1 else np.array([0.5])
            oy, ox = np.meshgrid(offs, offs, indexing="ij")  # cy outer, cx inner
            cx = (jj[..., None] + ox.ravel()) * step / width
            cy = (ii[..., None] + oy.ravel()) * step / height
            wh = np.broadcast_to([size / width, size / height], cx.shape + (2,))
            per_cell.append(np.concatenate([cx[..., None], cy[..., None], wh], -1))  # [fh,fw,n*n,4]
        layers.append(np.concatenate(per_cell, 2).reshape(-1, 4))
    return np.concatenate(layers, 0).astype(np.float32)


def prior_boxes(height: int, width: int) -> torch.Tensor:
    """Anchors ``[P,4]`` as ``(cx, cy, w, h)`` relative to the input size, in the tail's output order."""
    return torch.from_numpy(_priors_np(height, width))


def decode(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Regression offsets ``[P,4]`` → corner boxes ``(x1, y1, x2, y2)`` relative to the input size."""
    centers = priors[:, :2] + loc[:, :2] * VARIANCE[0] * priors[:, 2:]
    sizes = priors[:, 2:] * torch.exp(loc[:, 2:] * VARIANCE[1])
    return torch.cat([centers - sizes / 2, centers + sizes / 2], 1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices in descending score order."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)  # +1: pixel-inclusive, as the reference implementation
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[1:][ovr <= iou]
    return np.asarray(keep, dtype=np.int64)


def postprocess(
    loc: torch.Tensor,
    conf: torch.Tensor,
    input_hw: tuple[int, int],
    scale: float,
    config: PostprocessConfig = PostprocessConfig(),
) -> np.ndarray:
    """One image's tail outputs (``loc [P,4]``, ``conf [P,2]``) → ``[K,5]`` ``x1,y1,x2,y2,score``.

    Boxes are in the *original* image's pixels: the network input of size ``input_hw``
    was the original resized by ``scale``.
    """
    h, w = input_hw
    priors = prior_boxes(h, w)
    if priors.shape[0] != loc.shape[0]:
        raise ValueError(f"tail produced {loc.shape[0]} boxes but a {h}x{w} input has {priors.shape[0]} priors")
    boxes = decode(loc.detach().float().cpu(), priors).numpy()
    boxes *= np.asarray([w, h, w, h], dtype=np.float32) / scale
    scores = conf.detach().float().cpu()[:, 1].numpy()
    idx = np.where(scores > config.confidence)[0]
    idx = idx[np.argsort(-scores[idx], kind="stable")][: config.top_k]
    boxes, scores = boxes[idx], scores[idx]
    keep = nms(boxes, scores, config.nms_iou)[: config.keep_top_k]
    return np.hstack([boxes[keep], scores[keep, None]]).astype(np.float32)


@dataclass(frozen=True)
class Classification:
    """One image's class probabilities (softmax of the logits) and the most probable class."""

    probabilities: np.ndarray  # [K] float32, sums to 1
    index: int
    label: str

    @property
    def score(self) -> float:
        return float(self.probabilities[self.index])


def classify(logits: torch.Tensor, labels: Sequence[str] = ()) -> Classification:
    """One image's logits (``[K]`` or ``[1,K]``) → probabilities, the top class and its label
    (``labels[index]``, else the index as text)."""
    z = torch.as_tensor(logits).detach().float().cpu()
    if z.ndim == 2 and z.shape[0] == 1:
        z = z[0]
    if z.ndim != 1 or z.numel() == 0:
        raise ValueError(f"expected one image's logits [K] or [1,K], got shape {tuple(z.shape)}")
    if labels and len(labels) != z.numel():
        raise ValueError(f"{z.numel()} logits but {len(labels)} labels")
    p = torch.softmax(z, dim=0).numpy()
    i = int(p.argmax())
    return Classification(probabilities=p, index=i, label=labels[i] if labels else str(i))

"""Exact overlap of detection rectangles with FDDB's annotated face ellipses.

FDDB matches a detection to a face by the overlap ratio (intersection over union) of the
detection *rectangle* with the annotated *ellipse region*. We compute the intersection area
in closed form, not by rasterising: an affine map turns the ellipse into the unit circle and
the rectangle into a parallelogram; the area of a disc ∩ convex polygon is the sum, over the
polygon's edges, of the signed area of the disc ∩ the triangle (origin, edge) — a circular
sector where the edge runs outside the disc, a triangle where it runs inside. All of it is
vectorised over detections × faces.

Coordinates are continuous pixels: a box ``x1,y1,x2,y2`` spans ``x2 - x1`` by ``y2 - y1``.
"""

from __future__ import annotations

import numpy as np


def _cross(ax, ay, bx, by):
    return ax * by - ay * bx


def _disc_triangle_area(ax, ay, bx, by):
    """Signed area of unit disc ∩ triangle (0, A, B), elementwise."""
    dx, dy = bx - ax, by - ay
    a = dx * dx + dy * dy
    b = ax * dx + ay * dy
    c = ax * ax + ay * ay - 1.0
    disc = b * b - a * c
    safe_a = np.where(a > 0, a, 1.0)
    root = np.sqrt(np.maximum(disc, 0.0))
    hit = (disc > 0) & (a > 0)
    # The segment's parameters where it crosses the circle, clipped to the segment; with no
    # crossing both collapse onto one end, so the whole edge counts as a sector.
    t1 = np.where(hit, np.clip((-b - root) / safe_a, 0.0, 1.0), 0.0)
    t2 = np.where(hit, np.clip((-b + root) / safe_a, 0.0, 1.0), 0.0)
    p1x, p1y = ax + t1 * dx, ay + t1 * dy
    p2x, p2y = ax + t2 * dx, ay + t2 * dy

    def sector(px, py, qx, qy):
        return 0.5 * np.arctan2(_cross(px, py, qx, qy), px * qx + py * qy)

    return sector(ax, ay, p1x, p1y) + 0.5 * _cross(p1x, p1y, p2x, p2y) + sector(p2x, p2y, bx, by)


def ellipse_rect_intersection(boxes: np.ndarray, ellipses: np.ndarray) -> np.ndarray:
    """Area of each box ∩ each ellipse: ``boxes [D,4+]`` (x1,y1,x2,y2), ``ellipses [F,5]`` → ``[D,F]``.

    Ellipses are FDDB rows ``major_r, minor_r, angle, cx, cy`` (major axis along ``angle``).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, np.shape(boxes)[-1] if np.size(boxes) else 4)[:, :4]
    ellipses = np.asarray(ellipses, dtype=np.float64).reshape(-1, 5)
    if boxes.shape[0] == 0 or ellipses.shape[0] == 0:
        return np.zeros((boxes.shape[0], ellipses.shape[0]))
    ra, rb, th, cx, cy = (ellipses[:, k][None, :] for k in range(5))
    ra, rb = np.maximum(ra, 1e-12), np.maximum(rb, 1e-12)
    x1, y1, x2, y2 = (boxes[:, k][:, None] for k in range(4))
    # Corners counter-clockwise in (x right, y down) coordinates, mapped into the ellipse's frame.
    cos, sin = np.cos(th), np.sin(th)
    corners = [(x1, y1), (x1, y2), (x2, y2), (x2, y1)]
    mapped = []
    for px, py in corners:
        dx, dy = px - cx, py - cy
        mapped.append(((dx * cos + dy * sin) / ra, (-dx * sin + dy * cos) / rb))
    total = np.zeros(np.broadcast_shapes(x1.shape, ra.shape))
    for k in range(4):
        (ax, ay), (bx, by) = mapped[k], mapped[(k + 1) % 4]
        total = total + _disc_triangle_area(ax, ay, bx, by)
    degenerate = (x2 <= x1) | (y2 <= y1)
    return np.where(degenerate, 0.0, np.abs(total) * ra * rb)


def ellipse_rect_iou(boxes: np.ndarray, ellipses: np.ndarray) -> np.ndarray:
    """Intersection over union of each box with each ellipse region, ``[D,F]``."""
    boxes = np.asarray(boxes, dtype=np.float64)
    ellipses = np.asarray(ellipses, dtype=np.float64).reshape(-1, 5)
    inter = ellipse_rect_intersection(boxes, ellipses)
    if inter.size == 0:
        return inter
    b = boxes.reshape(-1, boxes.shape[-1])
    box_area = (np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0))[:, None]
    ell_area = (np.pi * ellipses[:, 0] * ellipses[:, 1])[None, :]
    union = box_area + ell_area - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)

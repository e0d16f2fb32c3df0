"""FDDB evaluation maths on synthetic ground truth, with values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from veil.evaluation import (
    ImageRecord,
    Shard,
    average_precision,
    discrete_roc,
    ellipse_rect_intersection,
    ellipse_rect_iou,
    match_image,
    summarise,
    tpr_at_fp,
)
from veil.evaluation.metrics import fp_budget


def circle(r: float, cx: float = 50.0, cy: float = 50.0, angle: float = math.pi / 2) -> np.ndarray:
    return np.array([r, r, angle, cx, cy])


def _raster_area(box, e, n=800) -> float:
    """Brute force: count fine grid points inside both shapes (independent of the closed form)."""
    ra, rb, th, cx, cy = e
    r = max(ra, rb)
    step = 2 * r / n
    xs = cx - r + step * (np.arange(n) + 0.5)
    ys = cy - r + step * (np.arange(n) + 0.5)
    x, y = np.meshgrid(xs, ys)
    u = ((x - cx) * np.cos(th) + (y - cy) * np.sin(th)) / ra
    v = (-(x - cx) * np.sin(th) + (y - cy) * np.cos(th)) / rb
    inside = (u * u + v * v <= 1) & (x >= box[0]) & (x <= box[2]) & (y >= box[1]) & (y <= box[3])
    return float(inside.sum() * step * step)


# -- geometry -----------------------------------------------------------------------------------
def test_box_containing_the_ellipse_intersects_its_whole_area():
    e = np.array([[30.0, 20.0, 0.7, 100.0, 80.0]])
    assert ellipse_rect_intersection(np.array([[0, 0, 300, 300]]), e)[0, 0] == pytest.approx(math.pi * 600, rel=1e-12)


def test_bounding_box_of_axis_aligned_ellipse_has_iou_pi_over_4():
    # Major axis along angle π/2: the ellipse stands upright, 2·20 wide and 2·30 tall.
    e = np.array([[30.0, 20.0, math.pi / 2, 50.0, 60.0]])
    assert ellipse_rect_iou(np.array([[30, 30, 70, 90]]), e)[0, 0] == pytest.approx(math.pi / 4, rel=1e-12)
    # The same box lying down does not fit the upright ellipse: the convention matters.
    lying = ellipse_rect_iou(np.array([[20, 40, 80, 80]]), e)[0, 0]
    assert lying < 0.7


@pytest.mark.parametrize("angle", [0.0, 0.4, -1.1, math.pi / 2, 2.9])
def test_any_line_through_the_centre_halves_the_ellipse(angle):
    e = np.array([[40.0, 15.0, angle, 100.0, 100.0]])
    left = ellipse_rect_intersection(np.array([[0, 0, 100, 300]]), e)[0, 0]
    top = ellipse_rect_intersection(np.array([[0, 0, 300, 100]]), e)[0, 0]
    assert left == pytest.approx(math.pi * 600 / 2, rel=1e-12)
    assert top == pytest.approx(math.pi * 600 / 2, rel=1e-12)


def test_circle_cut_by_a_centred_square_matches_the_closed_form():
    r, s = 10.0, 8.0  # s < r < s·√2: each side cuts off a circular segment
    expected = math.pi * r * r - 4 * (r * r * math.acos(s / r) - s * math.sqrt(r * r - s * s))
    box = np.array([[50 - s, 50 - s, 50 + s, 50 + s]])
    assert ellipse_rect_intersection(box, circle(r)[None])[0, 0] == pytest.approx(expected, rel=1e-12)


def test_random_boxes_and_ellipses_agree_with_brute_force_rasterisation():
    rng = np.random.default_rng(7)
    for _ in range(15):
        ra = rng.uniform(10, 60)
        e = np.array(
            [ra, ra * rng.uniform(0.4, 1.0), rng.uniform(-math.pi, math.pi), rng.uniform(60, 140), rng.uniform(60, 140)]
        )
        xs, ys = np.sort(rng.uniform(30, 170, 2)), np.sort(rng.uniform(30, 170, 2))
        box = np.array([xs[0], ys[0], xs[1], ys[1]])
        exact = ellipse_rect_intersection(box[None], e[None])[0, 0]
        assert exact == pytest.approx(_raster_area(box, e), abs=0.002 * math.pi * e[0] * e[1])


def test_disjoint_and_degenerate_boxes_have_zero_overlap():
    e = circle(10)[None]
    boxes = np.array([[100, 100, 120, 130], [45, 45, 45, 60], [60.0, 40, 80, 60]])  # far, empty, tangent
    inter = ellipse_rect_intersection(boxes, e)[:, 0]
    assert inter == pytest.approx([0, 0, 0], abs=1e-9)


# -- matching -----------------------------------------------------------------------------------
FACES = np.array([circle(10, 50, 50), circle(10, 150, 50)])
HIT_A = [40, 40, 60, 60]  # bounding square of face A: IoU π/4 ≈ 0.785
HIT_B = [140, 40, 160, 60]
SHIFTED_A = [50, 40, 70, 60]  # half of A: inter 50π, union 400 + 50π → IoU ≈ 0.282


def test_shifted_box_iou_is_computed_exactly():
    iou = ellipse_rect_iou(np.array([SHIFTED_A]), FACES[:1])[0, 0]
    assert iou == pytest.approx(50 * math.pi / (400 + 50 * math.pi), rel=1e-12)


def test_matching_is_one_detection_per_face_by_descending_score():
    dets = np.array([HIT_A + [0.6], HIT_A + [0.9], HIT_B + [0.8], SHIFTED_A + [0.95]])
    tp = match_image(dets, FACES)
    # 0.95 shifted: FP (IoU < 0.5); 0.9 takes A; 0.8 takes B; 0.6 duplicate of A: FP.
    assert tp.tolist() == [False, True, True, False]


def test_a_detection_whose_best_face_is_taken_is_a_false_positive_voc_rule():
    faces = np.array([circle(10, 50, 50), circle(10, 54, 50)])  # two heavily overlapping faces
    dets = np.array([[41, 40, 61, 60, 0.9], [41.5, 40, 61.5, 60, 0.8]])  # both closer to the first face
    iou = ellipse_rect_iou(dets[:, :4], faces)
    assert iou[0, 0] > iou[0, 1] and iou[1, 0] > iou[1, 1] >= 0.5
    # The second detection's best face is taken: VOC counts it false, even though it overlaps the other ≥ 0.5.
    assert match_image(dets, faces).tolist() == [True, False]


def test_no_faces_or_no_detections():
    assert match_image(np.zeros((0, 5)), FACES).shape == (0,)
    assert match_image(np.array([HIT_A + [0.5]]), np.zeros((0, 5))).tolist() == [False]


# -- AP and ROC ---------------------------------------------------------------------------------
def test_perfect_detections_give_ap_one():
    assert average_precision(np.array([0.9, 0.8]), np.array([True, True]), 2) == 1.0


def test_ap_hand_computed_cases():
    # TP, FP, TP over 2 faces: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 → AP = ½·1 + ½·⅔ = 5/6.
    assert average_precision(np.array([0.9, 0.8, 0.7]), np.array([True, False, True]), 2) == pytest.approx(5 / 6)
    # Half the faces never found: AP = ½.
    assert average_precision(np.array([0.9, 0.8]), np.array([True, True]), 4) == pytest.approx(0.5)
    # A false positive ranked first: precision ½ at full recall → AP = ½.
    assert average_precision(np.array([0.9, 0.8]), np.array([False, True]), 1) == pytest.approx(0.5)
    # Precision envelope: TP FP FP TP TP over 3 faces → ⅓·1 + ⅔·(3/5) = 11/15.
    assert average_precision(np.arange(5)[::-1] / 5, np.array([1, 0, 0, 1, 1], bool), 3) == pytest.approx(11 / 15)
    assert average_precision(np.zeros(0), np.zeros(0, bool), 3) == 0.0


def test_tpr_at_fp_budget_and_scaling():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    tp = np.array([True, False, True, False, True])
    assert tpr_at_fp(scores, tp, 4, 0) == pytest.approx(1 / 4)
    assert tpr_at_fp(scores, tp, 4, 1) == pytest.approx(2 / 4)
    assert tpr_at_fp(scores, tp, 4, 2.5) == pytest.approx(3 / 4)
    # Tied scores form one threshold: both enter, or neither.
    assert tpr_at_fp(np.array([0.9, 0.9]), np.array([True, False]), 1, 0) == 0.0
    fp, tpr, thr = discrete_roc(scores, tp, 4)
    assert fp.tolist() == [0, 0, 1, 1, 2, 2] and tpr[-1] == pytest.approx(3 / 4) and thr[0] == np.inf
    assert fp_budget(2845, 2845) == 1000
    assert fp_budget(225, 2845) == pytest.approx(1000 * 225 / 2845)


def _record(index, fold, faces, dets):
    dets = np.asarray(dets, dtype=np.float64).reshape(-1, 5)
    return ImageRecord(
        index=index,
        fold=fold,
        name=f"img{index}",
        faces=len(faces),
        detections=dets,
        tp=match_image(dets, np.asarray(faces)),
    )


def test_summary_per_fold_ap_map_and_counts_from_synthetic_ground_truth():
    face_a, face_b = FACES
    records = [
        _record(0, 1, [face_a, face_b], [HIT_A + [0.9], HIT_B + [0.8]]),  # fold 1: perfect
        # fold 2: A found at 0.9, a shifted box at 0.8 (FP), B found at 0.7 → AP 5/6
        _record(1, 2, [face_a], [HIT_A + [0.9], SHIFTED_A + [0.8]]),
        _record(2, 2, [face_b], [HIT_B + [0.7]]),
        # fold 3: two faces, one never found → AP ½
        _record(3, 3, [face_a, face_b], [HIT_A + [0.95]]),
    ]
    counts = {
        k: {"annotated_images": 5, "annotated_faces": 9, "present": p, "missing": 5 - p}
        for k, p in ((1, 1), (2, 2), (3, 1), (4, 0))
    }
    res = summarise(records[::-1], counts, {"mode": "clean"}, skipped=[])
    assert res.folds_present == [1, 2, 3]
    assert res.folds[1].ap == 1.0
    assert res.folds[2].ap == pytest.approx(5 / 6)
    assert res.folds[3].ap == pytest.approx(0.5)
    assert res.mAP == pytest.approx((1 + 5 / 6 + 0.5) / 3)
    assert (res.images, res.faces, res.missing) == (4, 6, 16)
    # Pooled ROC: 5 TPs and 1 FP overall; budget 1000·4/2845 ≈ 1.4 FP allows everything.
    assert res.tpr_at_1000fp == pytest.approx(5 / 6)
    table = res.table()
    assert "FDDB-fold-2 Val AP: 0.8333" in table and "mAP: 0.7778" in table and "FDDB-fold-4" not in table
    js = res.to_json()
    assert js["folds"] == {"1": 1.0, "2": pytest.approx(5 / 6), "3": 0.5} and js["mode"] == "clean"
    assert js["fold_details"]["4"]["missing"] == 5 and js["fold_details"]["4"]["ap"] is None


def test_image_record_json_round_trip_keeps_scores_exact():
    dets = np.array([[1.234, 2.5, 30.25, 40.75, np.float32(0.123456789)]], dtype=np.float32)
    rec = ImageRecord(0, 1, "a", 1, dets, np.array([True]))
    back = ImageRecord.from_json(rec.to_json())
    assert back.detections[0, 4] == dets[0, 4] and back.tp.tolist() == [True]


# -- shards -------------------------------------------------------------------------------------
def test_shard_parse_select_and_errors(monkeypatch):
    assert Shard.parse("1/3") == Shard(1, 3)
    items = list(range(10))
    parts = [Shard(i, 3).select(items) for i in range(3)]
    assert sorted(x for p in parts for x in p) == items and parts[0] == [0, 3, 6, 9]
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    assert Shard.parse("auto/4") == Shard(2, 4)
    monkeypatch.delenv("JOB_COMPLETION_INDEX")
    with pytest.raises(ValueError, match="JOB_COMPLETION_INDEX"):
        Shard.parse("auto/4")
    for bad in ("3/3", "-1/2", "x/2", "2", "1/0"):
        with pytest.raises(ValueError):
            Shard.parse(bad)


def test_pipelined_run_equals_the_sequential_one(detector, fddb_dir):
    """Decoding/preprocessing ahead in a thread changes only the timing, never a detection."""
    import cv2

    from veil.detector import Detector
    from veil.evaluation import evaluate_fddb

    small = Detector(detector.model, detector.weights_sha256, scale=1.0)
    cv_threads = cv2.getNumThreads()
    seq = evaluate_fddb(small, fddb_dir, shard="0/20", progress=False, prefetch=False)
    pipe = evaluate_fddb(small, fddb_dir, shard="0/20", progress=False, prefetch=True)
    assert cv2.getNumThreads() == cv_threads  # OpenCV runs on one thread only while the pipeline runs
    assert seq.images == pipe.images >= 10
    assert [r.name for r in seq.records] == [r.name for r in pipe.records]
    for a, b in zip(seq.records, pipe.records):
        assert np.array_equal(a.detections, b.detections) and np.array_equal(a.tp, b.tp)
    assert seq.mAP == pipe.mAP and seq.settings == pipe.settings
    assert pipe.settings["backend"] == "fp32"

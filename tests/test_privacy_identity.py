"""The identity pipeline (dlib ResNet at annotated boxes) on real faces: the dlib photos' test boxes."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

pytest.importorskip("dlib", reason="the identity metric needs the privacy extra (dlib-bin)")

from veil.preprocess import load_image
from veil.privacy import identity, metrics


@pytest.fixture(scope="module")
def dlib_faces(dlib_dir):
    images, boxes = [], []
    for im in ET.parse(dlib_dir / "testing.xml").getroot().iter("image"):
        bx = [
            [
                int(b.get("left")),
                int(b.get("top")),
                int(b.get("left")) + int(b.get("width")),
                int(b.get("top")) + int(b.get("height")),
            ]
            for b in im.iter("box")
        ]
        images.append(load_image(dlib_dir / im.get("file")))
        boxes.append(np.asarray(bx, float))
    emb = np.concatenate([identity.embed_faces(i, b) for i, b in zip(images, boxes)])
    return images, boxes, emb


def test_a_face_identifies_itself(dlib_faces):
    images, boxes, orig = dlib_faces
    assert len(orig) == 25
    # A degraded copy (JPEG quality 40, slight blur) must still find its own face among all 25.
    probes = []
    for img, bx in zip(images, boxes):
        _, buf = cv2.imencode(".jpg", cv2.GaussianBlur(img, (3, 3), 0.8), [cv2.IMWRITE_JPEG_QUALITY, 40])
        probes.append(identity.embed_faces(cv2.imdecode(buf, cv2.IMREAD_COLOR), bx))
    probes = np.concatenate(probes)
    assert metrics.rank1_rate(orig, probes) >= 0.9
    assert metrics.tar_at_far(orig, probes, metrics.far_threshold(orig)) >= 0.8


def test_a_constant_image_does_not(dlib_faces):
    images, boxes, orig = dlib_faces
    probes = np.concatenate([identity.embed_faces(np.full_like(img, 120), bx) for img, bx in zip(images, boxes)])
    assert metrics.rank1_rate(orig, probes) <= 2 / len(orig)
    assert metrics.tar_at_far(orig, probes, metrics.far_threshold(orig)) <= 2 / len(orig)


def test_ellipse_to_box_is_a_square_below_centre():
    b = identity.ellipse_to_box(np.array([60.0, 40.0, 1.5, 100.0, 80.0]))
    assert b[2] - b[0] == pytest.approx(80.0) and b[3] - b[1] == pytest.approx(80.0)
    assert (b[1] + b[3]) / 2 > 80.0

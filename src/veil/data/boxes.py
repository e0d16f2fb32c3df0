"""Face boxes of non-evaluation photo folders, from the annotation files beside them.

Fitting and attacker training weight or target faces (the adversarial objective's face-weighted
terms, the identity regressor's samples); the folders carry their own annotations: WIDER-style
``*gt*.txt`` files and dlib/imglab ``*.xml``. One reader for every user.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _wider_boxes(txt: Path) -> dict[str, np.ndarray]:
    """A WIDER-style ground-truth file: ``name``, ``count``, then ``count`` lines ``x y w h ...``."""
    out: dict[str, np.ndarray] = {}
    lines = [ln.strip() for ln in txt.read_text().splitlines()]
    i = 0
    while i < len(lines):
        name = lines[i]
        if not re.search(r"\.(jpe?g|png|bmp)$", name, re.I) or i + 1 >= len(lines):
            i += 1
            continue
        n = int(lines[i + 1])
        rows = [list(map(float, ln.split()[:4])) for ln in lines[i + 2 : i + 2 + max(n, 1)]][:n]
        b = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
        b[:, 2:] += b[:, :2]  # x y w h → x1 y1 x2 y2
        out[name] = b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])]
        i += 2 + max(n, 1)
    return out


def _xml_boxes(xml: Path) -> dict[str, np.ndarray]:
    """dlib/imglab XML: ``<image file=…><box top left width height/>``."""
    out: dict[str, np.ndarray] = {}
    for im in ET.parse(xml).getroot().iter("image"):
        rows = [
            [float(b.get(k, 0)) for k in ("left", "top", "width", "height")]
            for b in im.iter("box")
            if b.get("ignore") != "1"
        ]
        b = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
        b[:, 2:] += b[:, :2]
        out[str(im.get("file"))] = np.concatenate([out.get(str(im.get("file")), np.zeros((0, 4))), b])
    return out


def face_boxes(dirs: Sequence[str | Path]) -> dict[Path, np.ndarray]:
    """Face boxes ``[K,4]`` (x1, y1, x2, y2, original pixels) per photo under ``dirs``, from the annotation
    files found in each folder (and its parent): WIDER-style ``*gt*.txt`` and imglab ``*.xml``. Photos
    without annotations are absent (their crops are weighted uniformly)."""
    found: dict[Path, np.ndarray] = {}
    for d in map(Path, dirs):
        roots = list(dict.fromkeys([d, d.parent, d.parent.parent] if d.is_dir() else [d.parent, d.parent.parent]))
        for root in roots:
            for f in sorted(root.glob("*gt*.txt")):
                for name, b in _wider_boxes(f).items():
                    for base in (root / "images", root, d):
                        p = (base / name).resolve()
                        if p.is_file():
                            found[p] = b
                            break
            for f in sorted(root.glob("*.xml")):
                if "landmark" in f.name:
                    continue
                try:
                    boxes = _xml_boxes(f)
                except ET.ParseError:
                    continue
                for name, b in boxes.items():
                    p = (root / name).resolve()
                    if p.is_file():
                        found[p] = np.concatenate([found[p], b]) if p in found else b
    return found

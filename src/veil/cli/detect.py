"""``veil detect IMAGE… --out DIR``: boxes drawn on each image plus a JSON of boxes and scores."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

from veil.detector import Detector
from veil.preprocess import FDDB_SCALE, ImageReadError, load_image
from veil.viz import draw_boxes


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by every command that runs the detector."""
    p.add_argument("--weights", help="FaceBoxes weights (default: $VEIL_WEIGHTS, then the cache)")
    p.add_argument("--scale", type=float, default=FDDB_SCALE,
                   help="resize factor before the network (default: %(default)s, the FDDB test protocol)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="detect faces in images and draw the boxes",
                       description="Detect faces; write IMAGE_NAME.jpg with boxes drawn and "
                                   "IMAGE_NAME.json with all boxes and scores into --out.")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--min-score", type=float, default=0.5, help="draw boxes at or above this score (default: %(default)s)")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    det = Detector.from_weights(args.weights, scale=args.scale)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in tqdm(args.images, desc="detect", unit="img", disable=len(args.images) < 2):
        try:
            image = load_image(path)
        except ImageReadError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            failed += 1
            continue
        boxes = det.detect(image)
        stem = Path(path).stem
        cv2.imwrite(str(out / f"{stem}.jpg"), draw_boxes(image, boxes, args.min_score))
        rows = [{"box": [round(float(v), 2) for v in b[:4]], "score": round(float(b[4]), 4)} for b in boxes]
        (out / f"{stem}.json").write_text(json.dumps({"image": str(path), "detections": rows}, indent=1))
        print(f"{path}: {int((boxes[:, 4] >= args.min_score).sum())} faces (score ≥ {args.min_score})")
    return 1 if failed else 0

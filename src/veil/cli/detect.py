"""``veil detect IMAGE… --out DIR [--noisy --alpha A]``: boxes drawn on each image plus a JSON of boxes and scores
(for a classifier, ``--model NAME``: the label and class probabilities in the JSON)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
from tqdm import tqdm

from veil.cli.options import (
    add_model_args,
    add_model_choice,
    add_noise_args,
    attach_noise,
    check_noise_args,
    check_unique_stems,
    pipeline_from_args,
)
from veil.jsonio import write_json
from veil.postprocess import Classification
from veil.preprocess import ImageReadError, load_image
from veil.viz import draw_boxes


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "detect",
        help="detect faces in images and draw the boxes (or classify, --model NAME), all locally",
        description="Detect faces; write IMAGE_NAME.jpg with boxes drawn and "
        "IMAGE_NAME.json with all boxes and scores into --out. With a classifier (--model NAME), "
        "IMAGE_NAME.json holds the predicted label and the class probabilities.",
    )
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--min-score", type=float, default=0.5, help="draw boxes at or above this score (default: %(default)s)"
    )
    add_model_choice(p, weights=False)
    add_model_args(p)
    add_noise_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_noise_args(args)
    check_unique_stems(args.images)
    det = pipeline_from_args(args)
    mode: dict = {"mode": "clean"}
    if args.noisy:
        from veil.obfuscate.nsr import detect_with_nsr, nsr_report

        meta, _ = attach_noise(args, det)
        mode = {
            "mode": "noisy",
            "alpha": meta["alpha"],
            "noise_family": meta["family"],
            "seed": args.seed,
            "noise_mode": meta.get("noise_mode", "fresh"),
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in tqdm(args.images, desc="detect", unit="img", disable=len(args.images) < 2):
        try:
            image = load_image(path, max_pixels=args.max_pixels)
            if args.noisy:
                boxes, sums = detect_with_nsr(det, image)
                extra = {**mode, **nsr_report(sums)}
            else:
                extra = mode
                boxes = det.predict(image)
        except ImageReadError as exc:
            print(f"skipped: {exc}", file=sys.stderr)
            failed += 1
            continue
        except Exception as exc:  # noqa: BLE001 - MemoryError included: one image fails, the rest run
            print(f"skipped: {path}: {exc.__class__.__name__}: {exc}", file=sys.stderr)
            failed += 1
            continue
        stem = Path(path).stem
        nsr = f", NSR {extra['nsr_db']:+.2f} dB" if args.noisy else ""
        if isinstance(boxes, Classification):
            c = boxes
            labels = det.config.labels or [str(i) for i in range(len(c.probabilities))]
            probs = {lab: round(float(p), 4) for lab, p in zip(labels, c.probabilities, strict=True)}
            write_json(out / f"{stem}.json", {"image": str(path), **extra, "label": c.label, "probabilities": probs})
            print(f"{path}: {c.label} (p = {c.score:.3f}){nsr}")
            continue
        cv2.imwrite(str(out / f"{stem}.jpg"), draw_boxes(image, boxes, args.min_score))
        rows = [{"box": [round(float(v), 2) for v in b[:4]], "score": round(float(b[4]), 4)} for b in boxes]
        write_json(out / f"{stem}.json", {"image": str(path), **extra, "detections": rows})
        n = int((boxes[:, 4] >= args.min_score).sum())
        print(f"{path}: {n} face{'' if n == 1 else 's'} (score ≥ {args.min_score}){nsr}")
    return 1 if failed else 0

"""``veil detect IMAGE… --out DIR [--noisy --alpha A]``: boxes drawn on each image plus a JSON of boxes and scores."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import torch
from tqdm import tqdm

from veil.cli.main import CLIError
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
    g = p.add_argument_group("obfuscation (as in the reference design: --noisy --alpha A)")
    g.add_argument("--noisy", action="store_true", help="obfuscate the head's activation with the fitted noise")
    g.add_argument("--alpha", type=float, metavar="A", help="obfuscation strength ALPHA of the fitted noise")
    g.add_argument("--noise", metavar="FILE", help="fitted noise file (default: NOISE_DIR/alpha-A.safetensors)")
    g.add_argument("--noise-dir", metavar="DIR", help="where fitted noise lives (default: the veil cache)")
    g.add_argument("--seed", type=int, help="reproducible noise (experiments only; default: fresh OS randomness)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.noisy and args.alpha is None and args.noise is None:
        raise CLIError("--noisy needs --alpha A (or --noise FILE): which fitted noise to use")
    if not args.noisy and (args.alpha is not None or args.noise or args.noise_dir or args.seed is not None):
        raise CLIError("--alpha/--noise/--noise-dir/--seed only apply with --noisy")
    det = Detector.from_weights(args.weights, scale=args.scale)
    mode: dict = {"mode": "clean"}
    if args.noisy:
        from veil.obfuscate import load_obfuscator, nsr_report, nsr_sums

        det.obfuscator, meta = load_obfuscator(args.alpha, noise=args.noise, noise_dir=args.noise_dir,
                                               weights_sha256=det.weights_sha256, seed=args.seed)
        mode = {"mode": "noisy", "alpha": meta["alpha"], "noise_family": meta["family"], "seed": args.seed}
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
        if args.noisy:
            # One head pass: the clean activation gives the NSR, the noise goes on top of it.
            a, prep = det.client_side(image, obfuscate=False)
            extra = {**mode, **nsr_report(nsr_sums(a, det.obfuscator))}
            with torch.inference_mode():
                boxes = det.boxes_from_activation(det.obfuscator(a), prep)
        else:
            extra = mode
            boxes = det.detect(image)
        stem = Path(path).stem
        cv2.imwrite(str(out / f"{stem}.jpg"), draw_boxes(image, boxes, args.min_score))
        rows = [{"box": [round(float(v), 2) for v in b[:4]], "score": round(float(b[4]), 4)} for b in boxes]
        (out / f"{stem}.json").write_text(json.dumps({"image": str(path), **extra, "detections": rows}, indent=1))
        nsr = f", NSR {extra['nsr_db']:+.2f} dB" if args.noisy else ""
        print(f"{path}: {int((boxes[:, 4] >= args.min_score).sum())} faces (score ≥ {args.min_score}){nsr}")
    return 1 if failed else 0

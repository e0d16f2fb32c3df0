"""The privacy audit: run every attacker on FDDB faces and measure what leaks.

Everything is scored at the deployed path's scale and preprocessing: the image is
resized ×``scale`` (3, the FDDB protocol) bilinearly, BGR means subtracted, passed
through the head; reconstructions (at ×scale) are resized back to the original size
(area) and compared with the original there, at the annotated face boxes.

Attackers (``attackers`` in the report; on clean activations in ``clean_baseline``):
``naive`` (decoder trained on clean activations), ``adaptive`` (decoder trained on
activations obfuscated with the ALPHA's fitted noise), ``adaptive_avg4/16`` (the
adaptive decoder on the mean of K obfuscations of the same image) and ``whitebox``
(likelihood-weighted inversion of the public head, around each face).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from veil.preprocess import BGR_MEAN, FDDB_SCALE, ImageReadError, load_image, prepare
from veil.privacy import identity, metrics
from veil.privacy.decoders import decode
from veil.privacy.whitebox import cell_window, channel_weights, invert_window
from veil.preprocess import to_image

#: Attackers whose worst case is the privacy column of the sweep.
WORST_OF = ("naive", "adaptive", "whitebox", "adaptive_avg4", "adaptive_avg16")
COMPETENCE_FACTOR = 10.0


@dataclass
class FaceSet:
    """The evaluated faces: per image, its path and dlib-style boxes in original pixels."""

    images: list[Path]
    boxes: list[np.ndarray]  # per image [F,4]
    names: list[str] = field(default_factory=list)

    @property
    def n_faces(self) -> int:
        return int(sum(len(b) for b in self.boxes))

    def digest(self) -> str:
        h = hashlib.sha256()
        for p, b in zip(self.images, self.boxes):
            h.update(str(p.name).encode())
            h.update(np.round(b, 1).tobytes())
        return h.hexdigest()[:16]


def select_fddb_faces(root: str | Path, max_faces: int = 100, min_side: float = 48.0) -> FaceSet:
    """FDDB faces (in fold order) whose dlib-style box is ≥ ``min_side`` px and inside the image.

    Faces smaller than that are too small for the recogniser to identify even in the original.
    """
    from veil.data import read_fddb

    ds = read_fddb(root)
    images, boxes, names = [], [], []
    n = 0
    for im in ds.available():
        if n >= max_faces:
            break
        try:
            h, w = load_image(im.path).shape[:2]
        except ImageReadError as exc:
            print(f"skipped: {exc}")
            continue
        keep = []
        for e in im.ellipses:
            b = identity.ellipse_to_box(e)
            if b[2] - b[0] >= min_side and b[0] >= 0 and b[1] >= 0 and b[2] < w and b[3] < h and n < max_faces:
                keep.append(b)
                n += 1
        if keep:
            images.append(im.path)
            boxes.append(np.stack(keep))
            names.append(im.name)
    if n < 2:
        raise ValueError(f"only {n} usable faces in {root}; the audit needs at least 2")
    return FaceSet(images, boxes, names)


def blur_reference(image: np.ndarray, scale: float) -> np.ndarray:
    """The original reduced to the activation's resolution (×scale/32) and back: what a 1-px-per-cell image shows."""
    h, w = image.shape[:2]
    sh, sw = max(1, math.ceil(h * scale / 32)), max(1, math.ceil(w * scale / 32))
    small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _to_orig(rec: np.ndarray, prep_hw: tuple[int, int], orig_hw: tuple[int, int]) -> np.ndarray:
    rec = rec[: prep_hw[0], : prep_hw[1]]
    return cv2.resize(rec, (orig_hw[1], orig_hw[0]), interpolation=cv2.INTER_AREA)


def _clip_box(b: np.ndarray, hw: tuple[int, int], margin: float = 0.0) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = b[:4]
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    return (max(0, int(x1 - mx)), max(0, int(y1 - my)), min(hw[1], int(math.ceil(x2 + mx))),
            min(hw[0], int(math.ceil(y2 + my))))


@dataclass
class Attacks:
    """What an adversary has: the public head, decoders, the public obfuscator (if any)."""

    head: nn.Module
    naive: nn.Module
    adaptive: nn.Module | None = None
    obfuscator: nn.Module | None = None
    whitebox_steps: int = 100
    tv_weight: float = 0.05
    ks: tuple[int, ...] = (4, 16)
    #: Faces (the first ones, in order) that the white-box attacker inverts; it is ~100× costlier per face.
    whitebox_faces: int = 30


def _reconstruct_image(att: Attacks, image: np.ndarray, boxes: np.ndarray, wb_boxes: np.ndarray, scale: float,
                       noisy: bool) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """All reconstructions of one image, resized to the original: name → (image, mask of valid pixels or None)."""
    prep = prepare(image, scale)
    hw = (prep.tensor.shape[2], prep.tensor.shape[3])
    orig_hw = image.shape[:2]
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    with torch.no_grad():
        a = att.head(prep.tensor)
    obs = a
    if noisy:
        with torch.no_grad():
            obs = att.obfuscator(a)
    act_hw = (a.shape[2], a.shape[3])

    def dec(model: nn.Module, act: torch.Tensor) -> np.ndarray:
        return _to_orig(to_image(decode(model, act)), hw, orig_hw)

    out["naive"] = (dec(att.naive, obs), None)
    if noisy:
        adaptive = att.adaptive if att.adaptive is not None else att.naive
        out["adaptive"] = (dec(adaptive, obs), None)
        for k in att.ks:
            with torch.no_grad():
                avg = torch.stack([att.obfuscator(a) for _ in range(k)]).mean(0)
            out[f"adaptive_avg{k}"] = (dec(adaptive, avg), None)
    if len(wb_boxes):
        mu, wt = channel_weights(att.obfuscator if noisy else None)
        canvas = torch.zeros(1, 3, act_hw[0] * 32, act_hw[1] * 32)
        mask = np.zeros(canvas.shape[2:], np.uint8)
        for b in wb_boxes:
            win = cell_window(b * scale, act_hw)
            patch = invert_window(att.head, obs, win, act_hw, steps=att.whitebox_steps, tv_weight=att.tv_weight,
                                  mu=mu, weight=wt, upscale=scale)
            r0, r1, c0, c1 = win
            canvas[:, :, r0 * 32:r1 * 32, c0 * 32:c1 * 32] = patch
            mask[r0 * 32:r1 * 32, c0 * 32:c1 * 32] = 1
        out["whitebox"] = (_to_orig(to_image(canvas), hw, orig_hw),
                           _to_orig(mask[..., None].repeat(3, 2) * 255, hw, orig_hw)[..., 0] > 127)
    return out


def _score(originals: list[np.ndarray], recs: list, boxes: list[np.ndarray],
           orig_emb: np.ndarray, threshold: float) -> dict:
    """SSIM/PSNR (whole image, or the inverted regions for masked attackers), face SSIM, rank-1, TAR.

    ``recs[i]`` is ``(image, mask)`` or ``None`` (image not attacked); masked attackers (white-box)
    are scored only on the faces whose box lies in the mask, against the gallery of all originals.
    """
    ssims, psnrs, fssims, embs, labels = [], [], [], [], []
    first = np.cumsum([0] + [len(b) for b in boxes])
    for i, (img, r, bx) in enumerate(zip(originals, recs, boxes)):
        if r is None:
            continue
        rec, mask = r
        if mask is not None:
            sel = [j for j, b in enumerate(bx) if mask[tuple(np.clip(((b[1] + b[3]) // 2, (b[0] + b[2]) // 2),
                                                                    0, np.array(mask.shape) - 1).astype(int))]]
            bx = bx[sel]
        else:
            sel = list(range(len(bx)))
        if not len(sel):
            continue
        labels.extend(first[i] + np.asarray(sel))
        if mask is None:
            ssims.append(metrics.ssim(img, rec))
            psnrs.append(metrics.psnr(img, rec))
        else:
            ys, xs = np.nonzero(mask)
            sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
            ssims.append(metrics.ssim(img[sl], rec[sl]))
            psnrs.append(metrics.psnr(img[sl], rec[sl]))
        for b in bx:
            x1, y1, x2, y2 = _clip_box(b, img.shape[:2])
            fssims.append(metrics.ssim(img[y1:y2, x1:x2], rec[y1:y2, x1:x2]))
        embs.append(identity.embed_faces(rec, bx))
    emb = np.concatenate(embs)
    lab = np.asarray(labels)
    finite = [p for p in psnrs if math.isfinite(p)]
    return {"ssim": round(float(np.mean(ssims)), 4),
            "psnr": round(float(np.mean(finite)), 2) if finite else None,
            "face_ssim": round(float(np.mean(fssims)), 4),
            "rank1": round(metrics.rank1_rate(orig_emb, emb, labels=lab), 4),
            "tar_at_far1": round(metrics.tar_at_far(orig_emb, emb, threshold, labels=lab), 4),
            "n_probes": int(len(lab))}


def reconstruct_all(faces: FaceSet, attacks: Attacks, scale: float, noisy: bool, progress: bool = True,
                    desc: str = "") -> dict[str, list]:
    """Every attacker's reconstruction of every image (clean or obfuscated activations)."""
    recs: dict[str, list] = {}
    done = 0
    for i, path in enumerate(tqdm(faces.images, desc=desc or ("attack obfuscated" if noisy else "attack clean"),
                                  unit="img", disable=not progress)):
        img, bx = load_image(path), faces.boxes[i]
        wb = bx[: max(0, attacks.whitebox_faces - done)]
        done += len(bx)
        for name, r in _reconstruct_image(attacks, img, bx, wb, scale, noisy=noisy).items():
            recs.setdefault(name, [None] * len(faces.images))[i] = r
    return recs


def audit(faces: FaceSet, attacks: Attacks, alpha: float, scale: float = FDDB_SCALE, grid_faces: int = 6,
          out_dir: str | Path | None = None, progress: bool = True, meta: dict | None = None,
          clean_recs: dict[str, list] | None = None) -> dict:
    """Run every attacker on ``faces``, clean and (if an obfuscator is given) obfuscated; return the report.

    ``clean_recs`` (from :func:`reconstruct_all` with ``noisy=False``) lets several ALPHAs share
    one clean pass; it must come from the same faces, naive decoder and white-box settings.
    """
    t0 = time.monotonic()
    originals = [load_image(p) for p in faces.images]
    orig_emb = np.concatenate([identity.embed_faces(im, b) for im, b in zip(originals, faces.boxes)])
    threshold = metrics.far_threshold(orig_emb, 0.01)
    noisy = attacks.obfuscator is not None
    if clean_recs is None:
        clean_recs = reconstruct_all(faces, attacks, scale, noisy=False, progress=progress)
    noisy_recs = reconstruct_all(faces, attacks, scale, noisy=True, progress=progress,
                                 desc=f"attack α={alpha:g}") if noisy else {}

    def score(recs: list) -> dict:
        return _score(originals, recs, faces.boxes, orig_emb, threshold)

    clean = {name: score(recs) for name, recs in clean_recs.items()}
    attackers = {name: score(recs) for name, recs in noisy_recs.items()} if noisy else dict(clean)
    # Without noise the adaptive decoder *is* the naive one and averaging changes nothing.
    for extra in ("adaptive", *(f"adaptive_avg{k}" for k in attacks.ks)):
        clean.setdefault(extra, clean["naive"])
        attackers.setdefault(extra, clean["naive"])
    refs = {
        "original": score([(im, None) for im in originals]),
        "constant": score([(np.full_like(im, BGR_MEAN, dtype=np.uint8), None) for im in originals]),
        "blur_to_activation": score([(blur_reference(im, scale), None) for im in originals]),
    }
    n = faces.n_faces
    chance = 1.0 / n
    naive_clean = clean["naive"]["rank1"]
    report = {
        "alpha": alpha, "scale": scale,
        "preprocessing": f"bilinear resize ×{scale:g}, BGR minus mean {BGR_MEAN}; scored at original size",
        "n_faces": n, "n_images": len(faces.images), "faces_digest": faces.digest(),
        "chance_rank1": round(chance, 5), "far": 0.01, "far_threshold": round(threshold, 4),
        "attackers": attackers, "clean_baseline": clean, "references": refs,
        "competent": bool(naive_clean >= COMPETENCE_FACTOR * chance),
        "whitebox_steps": attacks.whitebox_steps, "whitebox_faces": min(attacks.whitebox_faces, n),
        "averaging_k": [1, *attacks.ks],
        "seconds": round(time.monotonic() - t0, 1), **(meta or {}),
    }
    report.update(privacy_columns(report))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        from veil.privacy.report import face_grid, image_grid, write_markdown

        cv2.imwrite(str(out / "grid_faces.png"), face_grid(originals, faces.boxes, clean_recs, noisy_recs, grid_faces))
        cv2.imwrite(str(out / "grid_image.png"), image_grid(originals[0], clean_recs, noisy_recs))
        (out / "report.json").write_text(json.dumps(report, indent=1))
        (out / "report.md").write_text(write_markdown(report))
    return report


def privacy_columns(report: dict) -> dict:
    """Columns for the ALPHA sweep table: worst-attacker rank-1 (and who), its ratio to chance, competence."""
    atk = {k: v for k, v in report["attackers"].items() if k in WORST_OF}
    worst = max(atk, key=lambda k: (atk[k]["rank1"], atk[k]["tar_at_far1"]))
    chance = report["chance_rank1"]
    return {"worst_attacker": worst, "worst_rank1": atk[worst]["rank1"],
            "worst_rank1_x_chance": round(atk[worst]["rank1"] / chance, 2),
            "worst_tar_at_far1": max(v["tar_at_far1"] for v in atk.values()),
            "attacker_competent": bool(report["clean_baseline"]["naive"]["rank1"] >= COMPETENCE_FACTOR * chance)}


def blur_leak_by_scale(faces: FaceSet, scales: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)) -> dict[float, dict]:
    """Identity left in the activation *grid* alone, per input scale: the original reduced to the
    stride-32 grid's resolution at that scale and back, scored like an attacker (no attack needed).

    Shows how the deployed input scale sets how much a perfect decoder could recover.
    """
    originals = [load_image(p) for p in faces.images]
    emb = np.concatenate([identity.embed_faces(im, b) for im, b in zip(originals, faces.boxes)])
    thr = metrics.far_threshold(emb, 0.01)
    return {s: _score(originals, [(blur_reference(im, s), None) for im in originals], faces.boxes, emb, thr)
            for s in scales}

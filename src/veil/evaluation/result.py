"""Per-image outcomes → the FDDB report, and its JSON (whole runs and shard partials).

A run — whole or one shard — produces one :class:`ImageRecord` per evaluated image. The
report (per-fold AP, mAP, TPR@1000FP, counts) is computed from records only, in the
dataset's canonical order, so concatenating shards' records gives exactly the single-run
report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from veil.data.fddb import FDDB_TOTAL_IMAGES
from veil.evaluation.metrics import ROC_FALSE_POSITIVES, average_precision, fp_budget, tpr_at_fp


@dataclass
class ImageRecord:
    """One evaluated image: detections ``[K,5]`` and which of them are true positives."""

    index: int  # position in the dataset's canonical order (fold, list line)
    fold: int
    name: str
    faces: int
    detections: np.ndarray  # [K,5] x1,y1,x2,y2,score in original pixels
    tp: np.ndarray  # [K] bool

    def to_json(self) -> dict[str, Any]:
        # Scores are float32 from the network; float() of them round-trips JSON exactly.
        return {
            "index": self.index,
            "fold": self.fold,
            "name": self.name,
            "faces": self.faces,
            "boxes": [[round(float(v), 2) for v in row[:4]] for row in self.detections],
            "scores": [float(s) for s in self.detections[:, 4]],
            "tp": [int(t) for t in self.tp],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageRecord:
        boxes = np.asarray(d["boxes"], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(d["scores"], dtype=np.float64).reshape(-1, 1)
        return cls(
            index=int(d["index"]),
            fold=int(d["fold"]),
            name=str(d["name"]),
            faces=int(d["faces"]),
            detections=np.hstack([boxes, scores]),
            tp=np.asarray(d["tp"], dtype=bool),
        )


@dataclass
class FoldResult:
    """One fold: its AP over the images evaluated, and what was evaluated, missing or skipped."""

    fold: int
    ap: float
    images: int
    faces: int
    missing: int
    skipped: int
    annotated_images: int
    annotated_faces: int


@dataclass
class EvalResult:
    """The FDDB report of one run or of merged shards."""

    folds: dict[int, FoldResult]
    mAP: float
    images: int
    faces: int
    missing: int
    tpr_at_1000fp: float
    fp_budget: float
    settings: dict[str, Any]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    nsr: dict[str, Any] | None = None
    nsr_sums: np.ndarray | None = None
    wall_s: float = 0.0
    shards: int = 1
    shard: tuple[int, int] | None = None  # (index, count) when this is one shard's partial result
    records: list[ImageRecord] = field(default_factory=list, repr=False)

    @property
    def mode(self) -> str:
        return str(self.settings.get("mode", "clean"))

    @property
    def noisy_nsr(self) -> dict[str, Any]:
        """The noise-to-signal report of a noisy run (``nsr=True``); a clean run has none: ``ValueError``."""
        if self.nsr is None:
            raise ValueError("this result has no noise-to-signal ratio (a clean run, or one without nsr=True)")
        return self.nsr

    @property
    def folds_present(self) -> list[int]:
        """Folds with at least one evaluated face: the ones that get an AP."""
        return [k for k, f in sorted(self.folds.items()) if f.faces > 0]

    def table(self) -> str:
        """The report as the reference design prints it, plus counts and the ROC point."""
        lines = [f"FDDB-fold-{k} Val AP: {self.folds[k].ap:.4f}" for k in self.folds_present]
        lines += [f"FDDB Dataset Average AP: {self.mAP:.4f}", f"mAP: {self.mAP:.4f}"]
        absent = [k for k, f in sorted(self.folds.items()) if f.images == 0]
        lines.append(
            f"Evaluated {self.images} images, {self.faces} faces in {len(self.folds_present)} folds; "
            f"{self.missing} annotated images not found"
            + (f" (folds {', '.join(map(str, absent))} have none)" if absent else "")
            + f"; {len(self.skipped)} skipped (unreadable, over the pixel limit or failed)"
        )
        lines.append(
            f"TPR@1000FP: {self.tpr_at_1000fp:.4f} (discrete ROC, at most {self.fp_budget:.1f} false "
            f"positives = {ROC_FALSE_POSITIVES} x {self.images}/{FDDB_TOTAL_IMAGES} images)"
        )
        if self.nsr is not None:
            ch = self.nsr["channels"]
            lines.append(
                f"Noise-to-signal ratio: {self.nsr['nsr_db']:.2f} dB (per channel: min {ch['min']:.2f}, "
                f"median {ch['median']:.2f}, max {ch['max']:.2f} dB) at ALPHA {self.settings.get('alpha')}"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The report as JSON: headline numbers first, then per-fold detail, settings, skipped images."""
        out: dict[str, Any] = {
            "mAP": _num(self.mAP),
            "folds": {str(k): self.folds[k].ap for k in self.folds_present},
            "images": self.images,
            "faces": self.faces,
            "missing": self.missing,
            "tpr_at_1000fp": _num(self.tpr_at_1000fp),
            "fp_budget": self.fp_budget,
            "mode": self.mode,
        }
        if self.mode == "noisy":
            out["alpha"] = self.settings.get("alpha")
            if self.nsr is not None:
                out["nsr_db"] = self.nsr["nsr_db"]
                out["nsr"] = self.nsr
        out["fold_details"] = {
            str(k): {
                "ap": _num(f.ap),
                "images": f.images,
                "faces": f.faces,
                "missing": f.missing,
                "skipped": f.skipped,
                "annotated_images": f.annotated_images,
                "annotated_faces": f.annotated_faces,
            }
            for k, f in sorted(self.folds.items())
        }
        out["skipped"] = self.skipped
        out["settings"] = self.settings
        out["shards"] = self.shards
        out["wall_s"] = round(self.wall_s, 3)
        out["images_per_s"] = round(self.images / self.wall_s, 3) if self.wall_s > 0 else None
        return out


def _num(x: float) -> float | None:
    """JSON has no NaN: an undefined number (no faces evaluated) is null."""
    return None if math.isnan(x) else x


def summarise(
    records: list[ImageRecord],
    fold_counts: dict[int, dict[str, int]],
    settings: dict[str, Any],
    skipped: list[dict[str, Any]],
    nsr_sums: np.ndarray | None = None,
    wall_s: float = 0.0,
    shards: int = 1,
    shard: tuple[int, int] | None = None,
) -> EvalResult:
    """Compute the report from per-image records (any order) and the dataset's per-fold counts."""
    records = sorted(records, key=lambda r: r.index)
    skipped = sorted(skipped, key=lambda s: s["index"])
    folds: dict[int, FoldResult] = {}
    for k, c in sorted(fold_counts.items()):
        recs = [r for r in records if r.fold == k]
        faces = sum(r.faces for r in recs)
        scores = np.concatenate([r.detections[:, 4] for r in recs]) if recs else np.zeros(0)
        tp = np.concatenate([r.tp for r in recs]) if recs else np.zeros(0, dtype=bool)
        ap = average_precision(scores, tp, faces) if faces else float("nan")
        folds[k] = FoldResult(
            fold=k,
            ap=ap,
            images=len(recs),
            faces=faces,
            missing=c["missing"],
            skipped=sum(1 for s in skipped if s["fold"] == k),
            annotated_images=c["annotated_images"],
            annotated_faces=c["annotated_faces"],
        )
    present = [f for f in folds.values() if f.faces > 0]
    m_ap = float(np.mean([f.ap for f in present])) if present else float("nan")
    n_images = len(records)
    n_faces = sum(r.faces for r in records)
    budget = fp_budget(n_images, FDDB_TOTAL_IMAGES)
    all_scores = np.concatenate([r.detections[:, 4] for r in records]) if records else np.zeros(0)
    all_tp = np.concatenate([r.tp for r in records]) if records else np.zeros(0, dtype=bool)
    tpr = tpr_at_fp(all_scores, all_tp, n_faces, budget) if n_faces else float("nan")
    nsr = None
    if nsr_sums is not None:
        from veil.obfuscate.nsr import nsr_report  # noisy runs only: the obfuscation package

        nsr = nsr_report(nsr_sums)
    return EvalResult(
        folds=folds,
        mAP=m_ap,
        images=n_images,
        faces=n_faces,
        missing=sum(c["missing"] for c in fold_counts.values()),
        tpr_at_1000fp=tpr,
        fp_budget=budget,
        settings=settings,
        skipped=skipped,
        nsr=nsr,
        nsr_sums=nsr_sums,
        wall_s=wall_s,
        shards=shard[1] if shard else shards,
        shard=shard,
        records=records,
    )

"""The ALPHA sweep: fit or reuse noise per ALPHA (:func:`sweep_noise`), evaluate on FDDB, compare with isotropic
noise.

For each ALPHA the table holds the learned noise's mAP and noise-to-signal ratio, and
plain isotropic Gaussian noise (one σ for all channels, μ = 0) of the *same total noise
power*, so the gain from learning is visible, beside the reference design's published mAP.

The head is deterministic, so each image's clean activation is computed once and reused
by every row (:class:`CachedHeadDetector`); only the noise and the tail run per row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from veil.detector import Detector
from veil.evaluation.runner import evaluate_fddb
from veil.jsonio import write_json
from veil.models import as_split_model
from veil.obfuscate.artifact import NoiseFileError, find_noise_file, load_obfuscator, noise_path
from veil.obfuscate.crops import DEFAULT_CROP, DEFAULT_SCALE_RANGE
from veil.obfuscate.fit import FitConfig
from veil.obfuscate.noise import isotropic_like
from veil.obfuscate.recipe import DEFAULT_CROPS_PER_IMAGE, fit_and_save
from veil.preprocess import Prepared
from veil.viz import save_figure

#: The reference design's (NetApp/Protopia) published FDDB mAP per ALPHA, and clean.
REFERENCE_CLEAN_MAP = 0.9337
REFERENCE_MAP = {
    0.05: 0.9029,
    0.1: 0.9024,
    0.2: 0.9082,
    0.4: 0.9073,
    0.6: 0.8848,
    0.8: 0.8841,
    0.9: 0.8455,
    0.95: 0.8455,
}
DEFAULT_ALPHAS = (0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95)


@dataclass
class CachedHeadDetector(Detector):
    """A :class:`Detector` that remembers each image's clean head activation (keyed by pixel hash).

    Only :meth:`~veil.detector.Detector.head_activation` changes: the clean activation comes from the
    cache when the same pixels were seen before; the obfuscator (drawn fresh per call) is applied on
    top by the stock ``client_side``. An already :class:`Prepared` input is not cached (its pixels are
    gone): it takes the stock path.
    """

    _cache: dict[str, tuple[torch.Tensor, Prepared]] = field(default_factory=dict, repr=False)

    def head_activation(self, image: np.ndarray | Prepared) -> tuple[torch.Tensor, Prepared]:
        if isinstance(image, Prepared):
            return super().head_activation(image)
        key = hashlib.sha1(image.tobytes() + str(image.shape).encode()).hexdigest()
        hit = self._cache.get(key)
        if hit is None:
            a, prep = super().head_activation(image)
            # Keep the activation, not the ×3 network input (25× larger): post-processing only
            # needs the input's shape, so a zero-stride view of one element stands in for it.
            hit = (a, replace(prep, tensor=prep.tensor.new_zeros(1).expand(prep.tensor.shape)))
            self._cache[key] = hit
        return hit


class MissingNoiseError(ValueError):
    """ALPHAs of a sweep have no fitted noise and no photos were given to fit it."""


def sweep_noise(
    model: Any,
    weights_sha256: str,
    alphas: Sequence[float],
    config: FitConfig,
    images: Sequence[str | Path] = (),
    noise_dir: str | Path | None = None,
    refit: bool = False,
    crop: int = DEFAULT_CROP,
    scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
    crops_per_image: int = DEFAULT_CROPS_PER_IMAGE,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Callable[[float], tuple[Any, dict, Path]]:
    """The sweep's fit-or-reuse policy: ``get_noise(alpha) -> (obfuscator, metadata, path)`` for :func:`run_sweep`.

    Each ALPHA reuses the file :func:`~veil.obfuscate.find_noise_file` finds (``noise_dir``, else the
    default directory and then the noise shipped for the reference weights), unless ``refit``; the others
    are fitted on ``images`` with ``config`` (its ALPHA replaced) and saved at
    :func:`~veil.obfuscate.noise_path`. Decided up front: with ALPHAs to fit and no ``images``,
    :class:`MissingNoiseError` before anything runs. The clean activations of the fitting crops are
    computed once for all fits.
    """
    model = as_split_model(model, weights_sha256)
    found: dict[float, Path] = {}
    for alpha in [] if refit else alphas:
        try:
            found[alpha] = find_noise_file(alpha, None, noise_dir, model)
        except NoiseFileError:
            pass  # not fitted yet: fitted below
    missing = [a for a in alphas if a not in found]
    if missing and not images:
        raise MissingNoiseError(
            f"no fitted noise in {noise_path(missing[0], noise_dir, model).parent} for ALPHA "
            f"{', '.join(f'{a:g}' for a in missing)}, and no photos (unlabeled, not FDDB) to fit it on"
        )
    bank_cache: dict = {}

    def get_noise(alpha: float) -> tuple[Any, dict, Path]:
        path = found.get(alpha) or noise_path(alpha, noise_dir, model)
        if alpha in missing:
            fit_and_save(
                model,
                weights_sha256,
                list(images),
                path,
                replace(config, alpha=alpha),
                crop=crop,
                scale_range=scale_range,
                crops_per_image=crops_per_image,
                progress=progress,
                bank_cache=bank_cache,
            )
            log(f"fitted {path}")
        else:
            log(f"reusing {path}")
        obf, meta = load_obfuscator(alpha, noise=path, model=model)
        return obf, meta, path

    return get_noise


@dataclass
class SweepRow:
    alpha: float
    mAP: float
    nsr_db: float
    nsr_min_db: float
    nsr_median_db: float
    iso_mAP: float
    iso_nsr_min_db: float
    reference_mAP: float | None
    noise_file: str


def run_sweep(
    detector: CachedHeadDetector,
    dataset: Any,
    alphas: Sequence[float],
    get_noise: Callable[[float], tuple[Any, dict, str]],
    seed: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_row: Callable[[dict[str, Any]], object] | None = None,
) -> dict[str, Any]:
    """Evaluate clean, then learned and isotropic noise per ALPHA; return the sweep's JSON document.

    ALPHAs run in the order given; the document's rows are sorted by ALPHA. ``on_row`` gets the
    document so far after each ALPHA (the CLI writes its files then, so a long sweep that is
    stopped keeps its finished rows).
    """
    detector.obfuscator = None
    clean = evaluate_fddb(detector, dataset, progress=progress)
    log(f"clean: mAP {clean.mAP:.4f} on {clean.images} images, {clean.faces} faces")
    rows: list[SweepRow] = []
    for alpha in alphas:
        obf, _meta, path = get_noise(alpha)
        detector.obfuscator = obf
        learned = evaluate_fddb(detector, dataset, progress=progress, nsr=True, seed=seed)
        detector.obfuscator = isotropic_like(obf)
        iso = evaluate_fddb(detector, dataset, progress=progress, nsr=True, seed=seed)
        detector.obfuscator = None
        nsr = learned.noisy_nsr
        row = SweepRow(
            alpha=alpha,
            mAP=learned.mAP,
            nsr_db=nsr["nsr_db"],
            nsr_min_db=nsr["channels"]["min"],
            nsr_median_db=nsr["channels"]["median"],
            iso_mAP=iso.mAP,
            iso_nsr_min_db=iso.noisy_nsr["channels"]["min"],
            reference_mAP=REFERENCE_MAP.get(round(alpha, 6)),
            noise_file=str(path),
        )
        rows.append(row)
        log(
            f"ALPHA {alpha:g}: mAP {row.mAP:.4f} (drop {100 * (clean.mAP - row.mAP):.2f} points), "
            f"NSR {row.nsr_db:+.2f} dB (min channel {row.nsr_min_db:+.2f}); "
            f"isotropic same power: mAP {row.iso_mAP:.4f}"
        )
        if on_row is not None:
            on_row(_document(clean, rows, seed))
    return _document(clean, rows, seed)


def _document(clean: Any, rows: list[SweepRow], seed: int | None) -> dict[str, Any]:
    rows = sorted(rows, key=lambda r: r.alpha)
    return {
        "clean_mAP": clean.mAP,
        "images": clean.images,
        "faces": clean.faces,
        "reference_clean_mAP": REFERENCE_CLEAN_MAP,
        "noise": "fresh OS randomness per call" if seed is None else f"seeded (reproducible experiment), seed {seed}",
        "settings": {k: v for k, v in clean.settings.items() if k != "mode"},
        "rows": [
            {
                **vars(r),
                "drop_points": round(100 * (clean.mAP - r.mAP), 2),
                "iso_drop_points": round(100 * (clean.mAP - r.iso_mAP), 2),
            }
            for r in rows
        ],
    }


def markdown_table(doc: dict[str, Any]) -> str:
    """The reference design's table (obfuscation, ALPHA, mAP) with our extra columns."""
    lines = [
        "| obfuscation | ALPHA | mAP | mAP drop (points) | NSR dB (overall / min channel) | "
        "isotropic noise, same power: mAP | reference design mAP |",
        "|---|---|---|---|---|---|---|",
        f"| no | – | {doc['clean_mAP']:.4f} | – | – | – | {doc['reference_clean_mAP']:.4f} |",
    ]
    for r in doc["rows"]:
        ref = f"{r['reference_mAP']:.4f}" if r["reference_mAP"] is not None else "–"
        lines.append(
            f"| yes | {r['alpha']:g} | {r['mAP']:.4f} | {r['drop_points']:.2f} | "
            f"{r['nsr_db']:+.2f} / {r['nsr_min_db']:+.2f} | {r['iso_mAP']:.4f} | {ref} |"
        )
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: str | Path) -> Path:
    """mAP against ALPHA (learned, isotropic of the same power, reference design) and against NSR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    a = [r["alpha"] for r in rows]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=90)
    ax.plot(a, [r["mAP"] for r in rows], "o-", label="veil: learned noise")
    ax.plot(a, [r["iso_mAP"] for r in rows], "s--", label="isotropic Gaussian, same noise power")
    ref = [(r["alpha"], r["reference_mAP"]) for r in rows if r["reference_mAP"] is not None]
    if ref:
        ax.plot(*zip(*ref), "^:", label="reference design (published)")
    ax.axhline(doc["clean_mAP"], color="gray", lw=0.8, label=f"clean ({doc['clean_mAP']:.3f})")
    ax.set_xlabel("ALPHA (higher = more obfuscation)")
    ax.set_ylabel(f"FDDB mAP ({doc['images']} images)")
    ax.set_title("mAP vs ALPHA", fontsize=10)
    # Right: the trade-off itself — accuracy against noise power, learned vs isotropic.
    nsr = [r["nsr_db"] for r in rows]
    bx.plot(nsr, [r["mAP"] for r in rows], "o-", label="learned (per-channel μ, σ)")
    bx.plot(nsr, [r["iso_mAP"] for r in rows], "s--", label="isotropic, same power")
    for r in rows:
        bx.annotate(f"α={r['alpha']:g}", (r["nsr_db"], r["mAP"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    bx.axvline(0.0, color="gray", lw=0.8, ls=":")
    bx.set_xlabel("noise-to-signal ratio, dB (noise power / activation power)")
    bx.set_title("mAP vs noise-to-signal ratio", fontsize=10)
    for axis in (ax, bx):
        axis.set_ylim(0, 1.0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower left")
    return save_figure(fig, path)


def write_outputs(doc: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """``sweep.json``, ``sweep.md`` and ``sweep.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "sweep.json", "md": out / "sweep.md", "png": out / "sweep.png"}
    write_json(paths["json"], doc)  # standard JSON: an undefined NSR is null, never NaN
    paths["md"].write_text(markdown_table(doc))
    plot(doc, paths["png"])
    return paths

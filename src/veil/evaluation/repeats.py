"""Headline numbers that vary, reported as they vary: N fresh fits × M fresh noise draws per ALPHA.

One fit and one draw of noise give one sample of a random quantity (the fitted σ depends on the
fitting crops and on the noise drawn while fitting; the mAP on the noise drawn at evaluation). This
runs ``fits`` independent fits (fit seeds ``fit_seed, fit_seed+1, …``) and evaluates each with
``draws`` independent noise draws whose seeds are taken from the operating system and recorded, so
every number can be reproduced, and reports mean, sample standard deviation and range.
"""

from __future__ import annotations

import secrets
import statistics
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from veil.evaluation.runner import evaluate_fddb
from veil.jsonio import write_json
from veil.obfuscate.artifact import noise_path
from veil.obfuscate.fit import FitConfig
from veil.obfuscate.noise import isotropic_like


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min, max and count."""
    v = [float(x) for x in values]
    return {
        "mean": statistics.fmean(v),
        "sd": statistics.stdev(v) if len(v) > 1 else 0.0,
        "min": min(v),
        "max": max(v),
        "n": len(v),
    }


def run_repeats(
    detector: Any,
    dataset: Any,
    alphas: Sequence[float],
    fit: Callable[[FitConfig, Path], Any],
    config: FitConfig,
    fits: int,
    draws: int,
    noise_out: str | Path,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """For each ALPHA: ``fits`` fits (``fit(config, path)`` writes a noise file and returns the
    obfuscator) × ``draws`` evaluations with recorded OS seeds; plus one isotropic baseline per fit.

    ``detector`` should cache clean head activations (:class:`veil.evaluation.sweep.CachedHeadDetector`):
    only noise and tail then run per draw.
    """
    if fits < 1 or draws < 1:
        raise ValueError(f"fits and draws must be ≥ 1, got {fits} and {draws}")
    detector.obfuscator = None
    clean = evaluate_fddb(detector, dataset, progress=progress)
    log(f"clean: mAP {clean.mAP:.4f} on {clean.images} images, {clean.faces} faces")
    rows = []
    for alpha in alphas:
        runs = []
        for i in range(fits):
            cfg = replace(config, alpha=alpha, seed=config.seed + i)
            path = noise_path(alpha, Path(noise_out) / f"fit{cfg.seed}")  # each fit<seed>/ is a noise directory
            obf = fit(cfg, path)
            for _ in range(draws):
                seed = secrets.randbits(31)  # unpredictable, recorded: the draw can be replayed
                detector.obfuscator = obf
                r = evaluate_fddb(detector, dataset, progress=progress, nsr=True, seed=seed)
                runs.append(
                    {
                        "fit_seed": cfg.seed,
                        "draw_seed": seed,
                        "mAP": r.mAP,
                        "nsr_db": r.noisy_nsr["nsr_db"],
                        "noise_file": str(path),
                    }
                )
                log(
                    f"ALPHA {alpha:g} fit {cfg.seed} draw {seed}: mAP {r.mAP:.4f} "
                    f"(drop {100 * (clean.mAP - r.mAP):.2f} points), NSR {r.noisy_nsr['nsr_db']:+.2f} dB"
                )
            detector.obfuscator = isotropic_like(obf)
            iso_seed = secrets.randbits(31)
            iso = evaluate_fddb(detector, dataset, progress=progress, nsr=True, seed=iso_seed)
            runs[-1]["iso_mAP"], runs[-1]["iso_seed"] = iso.mAP, iso_seed
            detector.obfuscator = None
        maps = [r["mAP"] for r in runs]
        rows.append(
            {
                "alpha": alpha,
                "fits": fits,
                "draws": draws,
                "runs": runs,
                "mAP": spread(maps),
                "drop_points": spread([100 * (clean.mAP - m) for m in maps]),
                "nsr_db": spread([r["nsr_db"] for r in runs]),
                "iso_mAP": spread([r["iso_mAP"] for r in runs if "iso_mAP" in r]),
            }
        )
    return {
        "clean_mAP": clean.mAP,
        "images": clean.images,
        "faces": clean.faces,
        "fit": {k: v for k, v in vars(config).items() if k not in ("alpha", "seed")},
        "fit_seeds": [config.seed + i for i in range(fits)],
        "rows": rows,
    }


def markdown(doc: dict[str, Any]) -> str:
    """One row per ALPHA: mean ± sd (min–max) over fits × draws."""
    lines = [
        f"Clean mAP {doc['clean_mAP']:.4f} ({doc['images']} images, {doc['faces']} faces). "
        f"Fit seeds {doc['fit_seeds']}; draw seeds from the OS, recorded in repeats.json.",
        "",
        "| ALPHA | fits × draws | mAP mean ± sd (min–max) | drop, points, mean ± sd | NSR dB mean ± sd | "
        "isotropic, same power: mAP mean |",
        "|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        m, d, n, i = r["mAP"], r["drop_points"], r["nsr_db"], r["iso_mAP"]
        lines.append(
            f"| {r['alpha']:g} | {r['fits']} × {r['draws']} | {m['mean']:.4f} ± {m['sd']:.4f} "
            f"({m['min']:.4f}–{m['max']:.4f}) | {d['mean']:.2f} ± {d['sd']:.2f} | "
            f"{n['mean']:+.2f} ± {n['sd']:.2f} | {i['mean']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def write(doc: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """``repeats.json`` and ``repeats.md`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "repeats.json", "md": out / "repeats.md"}
    write_json(paths["json"], doc)  # standard JSON: an undefined NSR is null
    paths["md"].write_text(markdown(doc))
    return paths

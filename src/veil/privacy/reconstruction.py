"""The reconstruction audit: for any registered split model, how much of the network input an attacker
recovers from the (obfuscated) activation.

Identity needs faces (:mod:`veil.privacy.audit`); this audit needs nothing but images the model
reads, so it serves every model — a face detector, a fixed-size grey classifier. Each image goes
through the deployed data path (:func:`veil.privacy.datapath.data_path`: the model's own
preprocessing, its head, the obfuscator); every attacker reconstructs the network input from what
leaves the trust zone, and is scored against that input in the model's pixels (0..255): mean
absolute error (L1), PSNR and SSIM. Attackers: ``naive`` (decoder trained on clean activations),
``adaptive`` (trained on obfuscated ones), ``adaptive_avgK`` (the adaptive decoder on the mean of K
obfuscations of the same image) and ``whitebox`` (likelihood-weighted inversion of the public head on
the first ``whitebox_faces`` images). References: a constant image of the model's mean colour (what
knowing nothing gives) and the input reduced to the activation's grid and back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from veil import jsonio
from veil.privacy import metrics
from veil.privacy.audit import Attacks
from veil.privacy.datapath import data_path, mean_colour
from veil.privacy.decoders import decode, decoder_arch, to_pixels
from veil.privacy.whitebox import channel_weights, input_args, invert_windows

#: Attackers whose best reconstruction (highest SSIM) is the audit's verdict.
RECONSTRUCTION_ATTACKERS = ("naive", "adaptive", "whitebox", "adaptive_avg4", "adaptive_avg16")


def scores(original: np.ndarray, rec: np.ndarray) -> dict[str, float]:
    """L1 (mean absolute difference, 0..255 levels), PSNR (dB) and SSIM of a reconstruction."""
    a, b = original.astype(np.float64), rec.astype(np.float64)
    out = {"l1": float(np.abs(a - b).mean()), "psnr": metrics.psnr(original, rec)}
    out["ssim"] = metrics.ssim(original, rec) if min(original.shape[:2]) >= 7 else math.nan
    return out


def _summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(rows)}
    for k in ("l1", "psnr", "ssim"):
        v = np.asarray([r[k] for r in rows], float)
        v = v[np.isfinite(v)]
        out[k] = round(float(v.mean()), 4) if len(v) else None
        out[f"{k}_sd"] = round(float(v.std()), 4) if len(v) else None
    return out


def grid_reference(original: np.ndarray, stride: int) -> np.ndarray:
    """The input reduced to the activation's grid (one pixel per cell) and back: what the grid alone shows."""
    h, w = original.shape[:2]
    grid = (max(1, math.ceil(w / stride)), max(1, math.ceil(h / stride)))
    small = cv2.resize(original, grid, interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def reconstruction_audit(
    images: Sequence[np.ndarray],
    attacks: Attacks,
    alpha: float,
    scale: float | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    meta: dict | None = None,
) -> dict[str, Any]:
    """Score every attacker's reconstruction of the network input of each image (uint8, as the model's
    data path reads them), on clean activations and — if ``attacks.obfuscator`` is set — obfuscated ones.

    Returns the report (``attackers``: obfuscated pass, ``clean_baseline``, ``references``, each with mean
    and sd of L1/PSNR/SSIM; ``worst_attacker``: the highest SSIM of the obfuscated pass, or of the clean
    one without noise); writes ``report.json`` and ``report.md`` into ``out_dir`` if given.
    """
    if not len(images):
        raise ValueError("the reconstruction audit needs at least one image")
    model = attacks.model
    scale = model.config.input.scale if scale is None else float(scale)
    arch = decoder_arch(model)
    t0 = time.monotonic()
    clean_path = data_path(model, scale)
    noisy = attacks.obfuscator is not None
    obf = attacks.obfuscator
    adaptive = attacks.adaptive if attacks.adaptive is not None else attacks.naive
    rows: dict[str, dict[str, list[dict[str, float]]]] = {"clean": {}, "noisy": {}, "ref": {}}
    wb: dict[str, list[tuple[torch.Tensor, np.ndarray]]] = {"clean": [], "noisy": []}
    grey = mean_colour(model)

    def add(group: str, name: str, original: np.ndarray, rec: np.ndarray) -> None:
        rows[group].setdefault(name, []).append(scores(original, rec[: original.shape[0], : original.shape[1]]))

    def rec_of(dec: torch.nn.Module, act: torch.Tensor) -> np.ndarray:
        return to_pixels(decode(dec, act), arch["mean"], arch["std"])

    for i, img in enumerate(tqdm(images, desc=f"reconstruct α={alpha:g}", unit="image", disable=not progress)):
        a, prep = clean_path.head_activation(img)
        original = to_pixels(prep.tensor, arch["mean"], arch["std"])
        const = np.empty_like(original)
        const[:] = grey if original.ndim == 3 else grey[0]
        add("ref", "constant", original, const)
        add("ref", "grid", original, grid_reference(original, model.stride))
        add("clean", "naive", original, rec_of(attacks.naive, a))
        if i < attacks.whitebox_faces:
            wb["clean"].append((a, original))
        if not noisy or obf is None:
            continue
        with torch.no_grad():
            obs = obf(a)
            add("noisy", "naive", original, rec_of(attacks.naive, obs))
            add("noisy", "adaptive", original, rec_of(adaptive, obs))
            for k in attacks.ks:
                avg = torch.stack([obs] + [obf(a) for _ in range(k - 1)]).mean(0)
                add("noisy", f"adaptive_avg{k}", original, rec_of(adaptive, avg))
        if i < attacks.whitebox_faces:
            wb["noisy"].append((obs, original))
    for group, items in wb.items():
        if not items:
            continue
        mu, wt = channel_weights(obf if group == "noisy" else None)
        inputs = input_args(model)
        bs = max(1, attacks.whitebox_batch)
        for start in tqdm(range(0, len(items), bs), desc=f"white-box ({group})", unit="batch", disable=not progress):
            chunk = items[start : start + bs]
            patches = invert_windows(
                model.head,
                [t for t, _ in chunk],
                [(0, t.shape[2], 0, t.shape[3]) for t, _ in chunk],
                [(t.shape[2], t.shape[3]) for t, _ in chunk],
                steps=attacks.whitebox_steps,
                tv_weight=attacks.tv_weight,
                upscale=scale,
                mu=mu,
                weight=wt,
                **inputs,
            )
            for p, (_, original) in zip(patches, chunk):
                add(group, "whitebox", original, to_pixels(p, arch["mean"], arch["std"]))
    clean_s = {k: _summary(v) for k, v in rows["clean"].items()}
    attackers = {k: _summary(v) for k, v in rows["noisy"].items()} if noisy else dict(clean_s)
    refs = {k: _summary(v) for k, v in rows["ref"].items()}
    scored = {k: v for k, v in attackers.items() if k in RECONSTRUCTION_ATTACKERS and v["ssim"] is not None}
    worst = max(scored, key=lambda k: scored[k]["ssim"]) if scored else None
    report: dict[str, Any] = {
        "audit": "reconstruction",
        "alpha": alpha,
        "scale": scale,
        "model": model.name,
        "task": model.config.task,
        "split_point": model.split_point,
        "model_key": model.key,
        "n_images": len(images),
        "input": {"channels": arch["out_channels"], "mean": arch["mean"], "std": arch["std"]},
        "measures": "on the network input in the model's pixels (0..255): L1 = mean |rec - input|, PSNR (dB), SSIM",
        "attackers": attackers,
        "clean_baseline": clean_s,
        "references": refs,
        "whitebox_images": min(attacks.whitebox_faces, len(images)),
        "whitebox_steps": attacks.whitebox_steps,
        "averaging_k": [1, *attacks.ks],
        "worst_attacker": worst,
        "worst_ssim": scored[worst]["ssim"] if worst else None,
        "worst_psnr": scored[worst]["psnr"] if worst else None,
        # the recipe is competent when its clean decoder beats knowing nothing (the mean colour)
        "competent": bool(
            clean_s["naive"]["ssim"] is not None
            and refs["constant"]["ssim"] is not None
            and clean_s["naive"]["ssim"] > refs["constant"]["ssim"]
            and clean_s["naive"]["l1"] < refs["constant"]["l1"]
        ),
        "seconds": round(time.monotonic() - t0, 1),
        **(meta or {}),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        jsonio.write_json(out / "report.json", report)
        (out / "report.md").write_text(reconstruction_markdown(report))
    return report


def reconstruction_markdown(report: dict[str, Any]) -> str:
    """report.md of a reconstruction audit: settings, one table per pass, references, the verdict."""

    def f(v: Any, nd: int = 3) -> str:
        return "–" if v is None else f"{v:.{nd}f}"

    def table(title: str, group: dict[str, dict]) -> list[str]:
        lines = [f"## {title}", "", "| attacker | n | L1 (levels) | PSNR (dB) | SSIM |", "|---|---|---|---|---|"]
        for name, m in group.items():
            lines.append(
                f"| {name} | {m['n']} | {f(m['l1'], 2)} ± {f(m['l1_sd'], 2)} "
                f"| {f(m['psnr'], 2)} ± {f(m['psnr_sd'], 2)} | {f(m['ssim'])} ± {f(m['ssim_sd'])} |"
            )
        return [*lines, ""]

    lines = [
        f"# Reconstruction audit, {report['model']} at {report['split_point']}, ALPHA = {report['alpha']:g}",
        "",
        f"- images: {report['n_images']}; input ×{report['scale']:g}; {report['measures']}",
        f"- white-box: {report['whitebox_images']} images, {report['whitebox_steps']} steps; averaging K: "
        f"{report['averaging_k']}",
        "",
        *table("Attackers" + (" (obfuscated)" if report["alpha"] else " (clean activations)"), report["attackers"]),
        *table("Clean activations", report["clean_baseline"]),
        *table("References", report["references"]),
        f"Worst attacker: {report['worst_attacker']} (SSIM {f(report['worst_ssim'])}, "
        f"PSNR {f(report['worst_psnr'], 2)} dB); "
        f"the recipe is {'competent' if report['competent'] else 'NOT competent'} (its clean decoder "
        f"{'beats' if report['competent'] else 'does not beat'} the mean-colour image).",
        "",
    ]
    leak = report.get("label_leak")  # a classifier audited on labelled images (veil.privacy.label_leak)
    if leak:
        lines += ["## Label leak", "", f"{leak['measure']}; chance {leak['chance']:g}.", ""]
        lines += ["| reconstruction | top-1 accuracy | × chance |", "|---|---|---|"]
        lines += [f"| {k} | {v:.4f} | {leak['times_chance'][k]:g} |" for k, v in leak["accuracy"].items()]
        lines.append("")
    return "\n".join(lines)

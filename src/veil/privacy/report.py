"""Human-readable audit output: image grids, report.md, and the privacy–utility frontier plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from veil import jsonio
from veil.privacy.verdict import BINS, privacy_columns
from veil.viz import save_figure

#: Side of one cell of the face grid, px.
GRID_CELL = 112
_ORDER = ("naive", "perceptual", "adaptive", "adaptive_avg4", "adaptive_avg16", "adaptive_dup16", "whitebox")


def _label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 14), (0, 0, 0), -1)
    cv2.putText(out, text, (2, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def clip_box(b: np.ndarray, hw: tuple[int, int], margin: float = 0.0) -> tuple[int, int, int, int]:
    """Box ``b`` (x1, y1, x2, y2) grown by ``margin`` face sides, as integer pixels inside an image of size ``hw``."""
    x1, y1, x2, y2 = (float(v) for v in b[:4])
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    return (max(0, int(x1 - mx)), max(0, int(y1 - my)), min(hw[1], math.ceil(x2 + mx)), min(hw[0], math.ceil(y2 + my)))


def crop_cell(img: np.ndarray, box: np.ndarray, margin: float = 0.25) -> np.ndarray:
    """One grid cell: the face with ``margin`` context, resized (area) to ``GRID_CELL`` px square."""
    x1, y1, x2, y2 = clip_box(box, (img.shape[0], img.shape[1]), margin)
    return cv2.resize(img[y1:y2, x1:x2], (GRID_CELL, GRID_CELL), interpolation=cv2.INTER_AREA)


def face_grid(faces, clean: dict, noisy: dict, n: int = 6) -> np.ndarray | None:
    """Rows = the first faces; columns = original, then each attacker on the clean and on the obfuscated
    activation (a grey cell where an attacker did not attack that face). ``clean``/``noisy``: name → Leak;
    the audit's attackers come in their usual order, any other with pictures (e.g. ``layerwise``) after them."""
    from veil.preprocess import load_image

    cols = []
    pictured = {k for d in (clean, noisy) for k, lk in d.items() if lk.grid and not k.startswith("ref:")}
    extra = [k for k in dict.fromkeys([*clean, *noisy]) if k in pictured and k not in _ORDER]
    for name in (*_ORDER, *extra):
        if name in clean:
            cols.append((f"{name} clean", clean[name]))
        if name in noisy:
            cols.append((f"{name} obf", noisy[name]))
    rows: list[np.ndarray] = []
    first = faces.first_index()
    for i, bx in enumerate(faces.boxes):
        img = None
        for j, b in enumerate(bx):
            f = int(first[i] + j)
            if len(rows) >= n:
                break
            img = load_image(faces.images[i]) if img is None else img
            cells = [_label(crop_cell(img, b), "original" if not rows else "")]
            for title, lk in cols:
                cell = lk.grid.get(f, np.full((GRID_CELL, GRID_CELL, 3), 128, np.uint8))
                cells.append(_label(cell, title if not rows else ""))
            rows.append(np.hstack(cells))
        if len(rows) >= n:
            break
    return np.vstack(rows) if rows else None


def learning_curves_plot(curves: dict[str, list[float]], out: str | Path, smooth: int = 20) -> Path:
    """Each decoder's training L1 (px) per step, raw (faint) and as a running mean of ``smooth`` steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for name, c in curves.items():
        y = np.asarray(c, float)
        if not len(y):
            continue
        (line,) = ax.plot(y, alpha=0.2)
        k = max(1, min(smooth, len(y)))
        ax.plot(
            np.arange(k - 1, len(y)),
            np.convolve(y, np.ones(k) / k, mode="valid"),
            color=line.get_color(),
            label=f"{name} ({len(y)} steps)",
        )
    ax.set_xlabel("training step")
    ax.set_ylabel("L1 per pixel (0-255 units)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, out)


def _fmt(v) -> str:
    return "–" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def _ci(m: dict, key: str = "rank1_ci95") -> str:
    ci = m.get(key)
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def write_markdown(report: dict) -> str:
    """report.md: settings, the leak table (obfuscated and clean) with 95 % intervals, per-bin rank-1,
    references, competence and the verdict."""
    chance = report["chance_rank1"]
    lines = [
        f"# Privacy audit, ALPHA = {report['alpha']:g}"
        + (f" ({report['noise_mode']} noise)" if report.get("noise_mode") else ""),
        "",
        f"- faces: {report['n_faces']} in {report['n_images']} FDDB images (digest {report['faces_digest']}); "
        f"{report.get('n_enlarged', 0)} enlarged copies reach the network at "
        f"{report.get('enlarge_target_px')} px; chance rank-1 = 1/N = {chance:.4f} overall and in every bin",
        f"- preprocessing: {report['preprocessing']}",
        f"- identity: dlib ResNet embedding at the annotated boxes; TAR at FAR {report['far']:.0%} "
        f"(distance < {report['far_threshold']}, set on pairs of different original faces)",
        f"- white-box: {report['whitebox_steps']} Adam steps per face window, first {report['whitebox_faces']} "
        f"faces; averaging K = {report['averaging_k']}, near-duplicates K = {report.get('near_duplicate_k')}",
        f"- intervals: Wilson 95 %; timing (s): {report.get('timing_s')}",
        "",
        "| attacker | activation | SSIM | PSNR | face SSIM | rank-1 [95 % CI] | × chance "
        "| TAR@FAR1% [95 % CI] | " + " | ".join(f"rank-1 {b} px (n)" for b in BINS) + " |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(BINS),
    ]

    def row(name: str, label: str, m: dict) -> str:
        bins = " | ".join(
            f"{_fmt(m['bins'][b]['rank1'])}{_ci(m['bins'][b])} ({m['bins'][b]['n']})"
            if m.get("bins") and m["bins"][b]["n"]
            else "–"
            for b in BINS
        )
        return (
            f"| {name} | {label} | {_fmt(m['ssim'])} | {_fmt(m['psnr'])} | {_fmt(m['face_ssim'])} | "
            f"{_fmt(m['rank1'])}{_ci(m)} | {m['rank1'] / chance:.1f} | {_fmt(m['tar_at_far1'])}"
            f"{_ci(m, 'tar_ci95')} | {bins} |"
        )

    for label, group in (
        ("obfuscated" if report["alpha"] else "clean", report["attackers"]),
        ("clean", report["clean_baseline"] if report["alpha"] else {}),
    ):
        for name, m in group.items():
            lines.append(row(name, label, m))
    for name, m in report["references"].items():
        lines.append(row(f"*{name}*", "reference", m))
    lines += [
        "",
        f"Worst attacker: **{report['worst_attacker']}**, rank-1 {report['worst_rank1']:.4f} "
        f"({report['worst_rank1_x_chance']}× chance).",
    ]
    for b, w in report.get("worst_per_bin", {}).items():
        lines.append(
            f"- bin {b} px: worst {w['worst_attacker']} {w['rank1']:.3f} "
            f"[{w['rank1_ci95'][0]:.3f}, {w['rank1_ci95'][1]:.3f}] = {w['x_chance']}× chance (n = {w['n']})"
        )
    if "passes_every_bin" in report:
        lines.append(f"- at most 2× chance in every bin: **{'yes' if report['passes_every_bin'] else 'no'}**")
    if "passes_tar" in report:
        lines.append(
            f"- worst TAR@1%FAR {report['worst_tar_at_far1']:.3f} = {report['worst_tar_x_reference']}× the reference "
            f"{report['tar_reference']:.3f} (the grey picture's TAR, at least the FAR); at most 2×: "
            f"**{'yes' if report['passes_tar'] else 'no'}**"
        )
    lines.append(
        f"- competence (best clean attacker in the ≥ 192 px bin ≥ 10× chance): "
        f"{report.get('competence_attacker')} {report.get('competence_rank1_large', 0):.3f} → "
        f"{'competent' if report['competent'] else 'FAILED'}"
    )
    if not report["competent"]:
        lines.append(
            "\n**The attacker recipe failed** (clean rank-1 in the large-face bin below 10× chance): "
            "no privacy claim is made."
        )
    for n in report.get("independence_notes", []):
        lines.append(f"- independence: {n}")
    lines += ["", "![faces](grid_faces.png)", "", "![learning curves](learning_curves.png)", ""]
    return "\n".join(lines)


def frontier_plot(rows: list[dict], out: str | Path, chance: float | None = None) -> Path:
    """mAP against worst-attacker rank-1, one point per ALPHA (rows: ``alpha``, ``map``, ``worst_rank1``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=110)
    xs = [r["worst_rank1"] for r in rows]
    ys = [r["map"] for r in rows]
    ax.plot(xs, ys, "o-")
    for r in rows:
        ax.annotate(
            f"α={r['alpha']:g}", (r["worst_rank1"], r["map"]), textcoords="offset points", xytext=(4, 4), fontsize=8
        )
    if chance:
        ax.axvline(chance, ls=":", c="gray", label="chance")
        ax.axvline(2 * chance, ls="--", c="gray", label="2× chance")
        ax.legend(fontsize=8)
    ax.set_xlabel("worst-attacker rank-1 identification (lower = more private)")
    ax.set_ylabel("FDDB mAP (higher = more useful)")
    ax.grid(alpha=0.3)
    return save_figure(fig, out)


def frontier_rows(sweep: dict, reports: list[dict]) -> list[dict]:
    """Join ``veil sweep``'s JSON (mAP per ALPHA) with audit reports (leakage per ALPHA) on ALPHA.

    ALPHA 0 takes the sweep's clean mAP. Audits without a sweep row are kept with ``map`` None.
    """
    maps = {round(float(r["alpha"]), 6): (r["mAP"], r.get("drop_points")) for r in sweep.get("rows", [])}
    maps[0.0] = (sweep.get("clean_mAP"), 0.0)
    rows: list[dict[str, Any]] = []
    for rep in sorted(reports, key=lambda r: r["alpha"]):
        m, drop = maps.get(round(float(rep["alpha"]), 6), (None, None))
        rows.append(
            {
                "alpha": rep["alpha"],
                "map": m,
                "drop_points": drop,
                "chance_rank1": rep["chance_rank1"],
                **privacy_columns(rep),
                **{f"rank1_{k}": v["rank1"] for k, v in rep["attackers"].items()},
            }
        )
    return rows


def frontier_markdown(rows: list[dict]) -> str:
    """The privacy–utility table: mAP (drop) beside every attacker's rank-1 and the worst one."""
    names = [k.removeprefix("rank1_") for k in rows[0] if k.startswith("rank1_")] if rows else []
    head = (
        "| ALPHA | mAP | drop (points) | "
        + " | ".join(f"rank-1 {n}" for n in names)
        + " | worst rank-1 (× chance) | done-when (≤ 2× chance, drop ≤ 2) |"
    )
    lines = [head, "|" + "---|" * (5 + len(names))]
    for r in rows:
        ok = (
            r["map"] is not None
            and r["drop_points"] is not None
            and r["drop_points"] <= 2.0
            and r["worst_rank1_x_chance"] <= 2.0
            and r["attacker_competent"]
        )
        lines.append(
            f"| {r['alpha']:g} | {_fmt(r['map'])} | {_fmt(r['drop_points'])} | "
            + " | ".join(f"{r['rank1_' + n]:.3f}" for n in names)
            + f" | {r['worst_rank1']:.3f} ({r['worst_rank1_x_chance']}×) | {'yes' if ok else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def load_reports(paths: list[str | Path]) -> list[dict]:
    """Audit reports from ``report.json`` files or folders holding them; one per ALPHA (the last wins)."""
    import json

    files: list[Path] = []
    for a in map(Path, paths):
        if not a.exists():
            raise FileNotFoundError(f"audit report {a} does not exist (run `veil audit --alpha A --out DIR` first)")
        files += sorted(a.rglob("report.json")) if a.is_dir() else [a]
    if not files:
        raise FileNotFoundError(f"no audit report.json under {', '.join(map(str, paths))} (run `veil audit` first)")
    reports: dict[float, dict] = {}
    for f in files:
        rep = json.loads(f.read_text())
        if rep.get("audit") == "reconstruction":
            raise ValueError(
                f"{f} is a reconstruction audit of {rep.get('model')!r} (no faces): the frontier joins a face "
                "detector's identity audits with its mAP"
            )
        reports[rep["alpha"]] = rep
    return list(reports.values())


def write_frontier(sweep: dict, reports: list[dict], out: str | Path) -> tuple[list[dict], str]:
    """Join a sweep with audit reports (see :func:`load_reports`); write ``frontier.json``,
    ``frontier.md`` and ``frontier.png`` in ``out``.

    Returns the rows and the Markdown table (utility and leakage side by side per ALPHA).
    """

    rows = frontier_rows(sweep, reports)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = frontier_markdown(rows)
    jsonio.write_json(out / "frontier.json", rows)
    (out / "frontier.md").write_text(md)
    plotted = [r for r in rows if r["map"] is not None]
    if plotted:
        frontier_plot(plotted, out / "frontier.png", chance=rows[0]["chance_rank1"])
    return rows, md

"""Human-readable audit output: image grids, report.md, and the privacy–utility frontier plot."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

_CELL = 112
_ORDER = ("naive", "adaptive", "adaptive_avg4", "adaptive_avg16", "whitebox")


def _label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 14), (0, 0, 0), -1)
    cv2.putText(out, text, (2, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def _crop(img: np.ndarray, box: np.ndarray, margin: float = 0.25) -> np.ndarray:
    x1, y1, x2, y2 = box[:4]
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    h, w = img.shape[:2]
    a, b = max(0, int(x1 - mx)), max(0, int(y1 - my))
    c, d = min(w, int(x2 + mx)), min(h, int(y2 + my))
    return cv2.resize(img[b:d, a:c], (_CELL, _CELL), interpolation=cv2.INTER_AREA)


def face_grid(originals: list[np.ndarray], boxes: list[np.ndarray], clean: dict, noisy: dict, n: int = 6) -> np.ndarray:
    """Rows = faces; columns = original, then each attacker on the clean and on the obfuscated activation."""
    cols = [("original", None, None)]
    for name in _ORDER:
        if name in clean:
            cols.append((f"{name} clean", clean, name))
        if name in noisy:
            cols.append((f"{name} obf", noisy, name))
    rows = []
    for i, (img, bx) in enumerate(zip(originals, boxes)):
        for b in bx:
            if len(rows) >= n:
                break
            if any(s[nm][i] is None for _, s, nm in cols if s is not None):
                continue
            cells = []
            for title, src, name in cols:
                r = None if src is None else src[name][i]
                im = img if src is None else (r[0] if r is not None else np.full_like(img, 128))
                cells.append(_label(_crop(im, b), title if not rows else ""))
            rows.append(np.hstack(cells))
    return np.vstack(rows)


def image_grid(original: np.ndarray, clean: dict, noisy: dict, width: int = 360) -> np.ndarray:
    """One whole image: original | naive decoder on clean | adaptive decoder on obfuscated (if any)."""
    panels = [("original", original), ("naive, clean activation", clean["naive"][0][0])]
    if "adaptive" in noisy:
        panels.append(("adaptive, obfuscated", noisy["adaptive"][0][0]))
    if "adaptive_avg16" in noisy:
        panels.append(("adaptive, avg of 16", noisy["adaptive_avg16"][0][0]))
    h, w = original.shape[:2]
    size = (width, int(round(h * width / w)))
    return np.hstack([_label(cv2.resize(im, size, interpolation=cv2.INTER_AREA), t) for t, im in panels])


def _fmt(v) -> str:
    return "–" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def write_markdown(report: dict) -> str:
    """report.md: settings, the leak table (obfuscated and clean), references, verdict."""
    chance = report["chance_rank1"]
    lines = [f"# Privacy audit, ALPHA = {report['alpha']:g}", "",
             f"- faces: {report['n_faces']} in {report['n_images']} FDDB images; chance rank-1 = {chance:.4f}",
             f"- preprocessing: {report['preprocessing']}",
             f"- identity: dlib ResNet embedding at the annotated boxes; TAR at FAR {report['far']:.0%} "
             f"(distance < {report['far_threshold']}, set on pairs of different original faces)",
             f"- white-box: {report['whitebox_steps']} Adam steps per face window; averaging K = {report['averaging_k']}",
             "", "| attacker | activation | SSIM | PSNR | face SSIM | rank-1 | × chance | TAR@FAR1% |",
             "|---|---|---|---|---|---|---|---|"]
    for label, group in (("obfuscated" if report["alpha"] else "clean", report["attackers"]),
                         ("clean", report["clean_baseline"] if report["alpha"] else {})):
        for name, m in group.items():
            lines.append(f"| {name} | {label} | {_fmt(m['ssim'])} | {_fmt(m['psnr'])} | {_fmt(m['face_ssim'])} | "
                         f"{_fmt(m['rank1'])} | {m['rank1'] / chance:.1f} | {_fmt(m['tar_at_far1'])} |")
    for name, m in report["references"].items():
        lines.append(f"| *{name}* | reference | {_fmt(m['ssim'])} | {_fmt(m['psnr'])} | {_fmt(m['face_ssim'])} | "
                     f"{_fmt(m['rank1'])} | {m['rank1'] / chance:.1f} | {_fmt(m['tar_at_far1'])} |")
    lines += ["", f"Worst attacker: **{report['worst_attacker']}**, rank-1 {report['worst_rank1']:.4f} "
              f"({report['worst_rank1_x_chance']}× chance)."]
    if not report["competent"]:
        lines.append("\n**The naive attacker failed** (clean rank-1 below 10× chance): no privacy claim is made.")
    lines += ["", "![faces](grid_faces.png)", "", "![image](grid_image.png)", ""]
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
        ax.annotate(f"α={r['alpha']:g}", (r["worst_rank1"], r["map"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    if chance:
        ax.axvline(chance, ls=":", c="gray", label="chance")
        ax.axvline(2 * chance, ls="--", c="gray", label="2× chance")
        ax.legend(fontsize=8)
    ax.set_xlabel("worst-attacker rank-1 identification (lower = more private)")
    ax.set_ylabel("FDDB mAP (higher = more useful)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def frontier_rows(sweep: dict, reports: list[dict]) -> list[dict]:
    """Join ``veil sweep``'s JSON (mAP per ALPHA) with audit reports (leakage per ALPHA) on ALPHA.

    ALPHA 0 takes the sweep's clean mAP. Audits without a sweep row are kept with ``map`` None.
    """
    from veil.privacy.audit import privacy_columns

    maps = {round(float(r["alpha"]), 6): (r["mAP"], r.get("drop_points")) for r in sweep.get("rows", [])}
    maps[0.0] = (sweep.get("clean_mAP"), 0.0)
    rows = []
    for rep in sorted(reports, key=lambda r: r["alpha"]):
        m, drop = maps.get(round(float(rep["alpha"]), 6), (None, None))
        rows.append({"alpha": rep["alpha"], "map": m, "drop_points": drop, "chance_rank1": rep["chance_rank1"],
                     **privacy_columns(rep),
                     **{f"rank1_{k}": v["rank1"] for k, v in rep["attackers"].items()}})
    return rows


def frontier_markdown(rows: list[dict]) -> str:
    """The privacy–utility table: mAP (drop) beside every attacker's rank-1 and the worst one."""
    names = [k.removeprefix("rank1_") for k in rows[0] if k.startswith("rank1_")] if rows else []
    head = "| ALPHA | mAP | drop (points) | " + " | ".join(f"rank-1 {n}" for n in names) + \
           " | worst rank-1 (× chance) | done-when (≤ 2× chance, drop ≤ 2) |"
    lines = [head, "|" + "---|" * (5 + len(names))]
    for r in rows:
        ok = (r["map"] is not None and r["drop_points"] is not None and r["drop_points"] <= 2.0
              and r["worst_rank1_x_chance"] <= 2.0 and r["attacker_competent"])
        lines.append(f"| {r['alpha']:g} | {_fmt(r['map'])} | {_fmt(r['drop_points'])} | "
                     + " | ".join(f"{r['rank1_' + n]:.3f}" for n in names)
                     + f" | {r['worst_rank1']:.3f} ({r['worst_rank1_x_chance']}×) | {'yes' if ok else 'no'} |")
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
        reports[rep["alpha"]] = rep
    return list(reports.values())


def write_frontier(sweep: dict, reports: list[dict], out: str | Path) -> tuple[list[dict], str]:
    """Join a sweep with audit reports (see :func:`load_reports`); write ``frontier.json``, ``frontier.md`` and ``frontier.png`` in ``out``.

    Returns the rows and the Markdown table (utility and leakage side by side per ALPHA).
    """
    import json

    rows = frontier_rows(sweep, reports)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = frontier_markdown(rows)
    (out / "frontier.json").write_text(json.dumps(rows, indent=1))
    (out / "frontier.md").write_text(md)
    plotted = [r for r in rows if r["map"] is not None]
    if plotted:
        frontier_plot(plotted, out / "frontier.png", chance=rows[0]["chance_rank1"])
    return rows, md

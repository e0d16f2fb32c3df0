"""What every benchmark of issue 13 shares: data paths, the machine's load, medians and ratios, JSON out."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VEIL_SHARED", ROOT.parent / "shared"))
DATASET = SHARED / "data" / "fddb"
WEIGHTS = SHARED / "models" / "faceboxes" / "FaceBoxesProd.pth"
RESULTS = ROOT / "benchmarks" / "results"


def uptime() -> str:
    """``uptime``'s line (load averages): every result records how busy the machine was."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def git_commit() -> str:
    """The checkout's short commit hash ("" outside a git checkout): every result records the code it ran."""
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False, cwd=ROOT
    ).stdout.strip()


class Stages:
    """Wall seconds of a run's consecutive stages: ``stage("fit")`` closes the stage that began at the last
    call (or at creation), prints it, and records it in :attr:`seconds` (the result's ``stage_seconds``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.monotonic()

    def __call__(self, name: str) -> None:
        self.seconds[name] = round(time.monotonic() - self._t, 1)
        self._t = time.monotonic()
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {self.seconds[name]} s", flush=True)


def machine() -> dict[str, Any]:
    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln for ln in fh if ln.startswith("flags")), "")
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "avx512_bf16": " avx512_bf16" in flags,
        "amx_bf16": " amx_bf16" in flags,
    }


def summary(samples: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """Median (ms) and ratio to ``baseline``'s median of each alternative's per-item seconds."""
    base = statistics.median(samples[baseline])
    return {
        k: {
            "median_ms": round(1000 * statistics.median(v), 2),
            "ratio": round(statistics.median(v) / base, 3),
            "min_ms": round(1000 * min(v), 2),
            "n": len(v),
        }
        for k, v in samples.items()
    }


def print_table(title: str, table: dict[str, dict[str, float]], baseline: str) -> None:
    print(title)
    print(f"{'alternative':<44} {'median ms':>10} {'min ms':>9} {'ratio':>7}")
    for k, r in table.items():
        print(
            f"{k:<44} {r['median_ms']:>10.2f} {r['min_ms']:>9.2f} {r['ratio']:>7.3f}"
            + ("  (baseline)" if k == baseline else "")
        )


def write(name: str, result: dict[str, Any], out: str | None = None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return path


def defense_observation(
    model: Any, digest: str, noise: str | None = None, bottleneck: str | None = None, label: str | None = None
):
    """What a defense file (``--noise`` or ``--bottleneck``) sends for a split's clean activation:
    ``(observe, fitted, defense)`` — the observation (the noise module itself, or the bottleneck's wire code
    zero-padded to the split's channels; None: clean), the loaded bottleneck (else None) and the result's
    ``defense`` record (with ``label``, the frontier row's name before ``@ split ×scale``, when given). Files
    are refused for another split or weights by their loaders."""
    observe, fitted, record = _observation(model, digest, noise, bottleneck)
    return observe, fitted, {**record, "label": label} if label else record


#: ``--label`` of the attacker-cell scripts: a variant of a defense gets its own frontier row.
LABEL_HELP = (
    "the frontier row's defense name before ' @ SPLIT ×SCALE' (default: clean, noise or bottleneck): give a "
    "variant its own row, e.g. 'bottleneck, identity adversary', the same as benchmarks/defenses.py --label"
)


def _observation(model: Any, digest: str, noise: str | None, bottleneck: str | None):
    if noise:
        from veil.obfuscate import load_obfuscator

        obf, meta = load_obfuscator(None, noise=noise, model=model)
        return obf, None, {"kind": "noise", "file": noise, "alpha": meta.get("alpha")}
    if bottleneck:
        from veil.defenses import bottleneck as bn

        fitted, _meta = bn.load_bottleneck(bottleneck, model.network, weights_sha256=digest)
        return fitted.observe, fitted, {"kind": "bottleneck", "file": bottleneck, "alpha": fitted.spec.alpha}
    return None, None, {"kind": "clean"}


def run_record(argv: list[str] | None, threads: int) -> dict[str, Any]:
    """The head of a result: the load at start, torch threads, the commit and the command line as run."""
    import sys

    return {
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
        "threads": threads,
        "commit": git_commit(),
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
    }

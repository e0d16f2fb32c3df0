"""`make demo` / `make test`: the steps they take, and that a second run installs nothing (idempotent, offline)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _dry_run(tree: Path, target: str) -> list[str]:
    proc = subprocess.run(
        ["make", "-n", "-C", str(tree), target], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return [ln for ln in proc.stdout.splitlines() if ln.strip() and not ln.startswith("make")]


@pytest.fixture()
def tree(tmp_path) -> Path:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_fresh_clone_installs_torch_first_then_the_package(tree):
    steps = _dry_run(tree, "demo")
    assert steps[0].endswith("-m venv .venv")
    torch_at = next(i for i, s in enumerate(steps) if '"torch==2.13.0"' in s)
    pkg_at = next(i for i, s in enumerate(steps) if 'install -q -e ".[serve,privacy]"' in s)
    assert torch_at < pkg_at and steps[-1] == ".venv/bin/veil demo --out runs/demo"
    steps = _dry_run(tree, "test")
    text = "\n".join(steps)
    assert '".[serve,privacy,k8s,notebook,dev]"' in text and "kubernetes-validate==1.28.0" in text
    assert "--target build/netapp-dataops-k8s netapp-dataops-k8s==3.1.0" in text
    assert steps[-1] == ". .venv/bin/activate && python -m pytest -q"  # the README's test command


def test_second_run_installs_nothing_until_pyproject_changes(tree):
    venv = tree / ".venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    for d in ("build/kubernetes-validate-1.28/kubernetes_validate", "build/netapp-dataops-k8s/netapp_dataops"):
        (tree / d).mkdir(parents=True)
    past = time.time() - 60
    os.utime(tree / "pyproject.toml", (past, past))
    for stamp in (".stamp-torch", ".stamp-demo", ".stamp-all"):
        (venv / stamp).touch()
    assert _dry_run(tree, "demo") == [".venv/bin/veil demo --out runs/demo"]
    assert _dry_run(tree, "test") == [". .venv/bin/activate && python -m pytest -q"]
    (tree / "pyproject.toml").touch()  # a dependency changed: reinstall the package, not torch
    steps = _dry_run(tree, "demo")
    assert 'install -q -e ".[serve,privacy]"' in steps[0] and not any("torch==" in s for s in steps)
    assert steps[-1] == ".venv/bin/veil demo --out runs/demo"


def test_ci_runs_make_lint_then_make_test():
    text = (ROOT / ".ci" / "run").read_text()
    assert "pip install" not in text
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[-2:] == ["make lint", "exec make test"]

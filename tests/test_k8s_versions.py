"""`veil k8s validate --k8s-version 1.21.0` as documented: a clear refusal with the current validator,
and a pass with the older release installed the documented way (`make test` does the same)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from veil.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "build" / "kubernetes-validate-1.28"
CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: veil-test\ndata:\n  a: b\n"


def test_a_release_without_schemas_is_refused_with_the_versions_that_work(tmp_path, capsys):
    kvu = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate is not installed (veil[k8s])")
    if any(v.startswith("1.21.") for v in kvu.all_versions()):
        pytest.skip("this kubernetes-validate still carries 1.21")
    f = tmp_path / "cm.yaml"
    f.write_text(CONFIGMAP)
    assert main(["k8s", "validate", str(f), "--k8s-version", "1.21.0"]) == 2
    err = capsys.readouterr().err
    assert (
        "1.25.0–" in err and "kubernetes-validate==1.28.0" in err and "PYTHONPATH=build/kubernetes-validate-1.28" in err
    )
    assert "IndexError" not in err


def test_the_documented_legacy_validator_validates_1_21(tmp_path):
    if not (LEGACY / "kubernetes_validate").is_dir():
        pytest.skip(
            f"kubernetes-validate 1.28.0 is not installed at {LEGACY} (make test installs it: "
            "pip install --no-deps --target build/kubernetes-validate-1.28 kubernetes-validate==1.28.0 "
            "'setuptools<81')"
        )
    f = tmp_path / "cm.yaml"
    f.write_text(CONFIGMAP)
    env = {**os.environ, "PYTHONPATH": str(LEGACY), "PYTHONWARNINGS": "ignore"}
    ok = subprocess.run(
        [sys.executable, "-m", "veil", "k8s", "validate", str(f), "--k8s-version", "1.21.0"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ok.returncode == 0 and "valid for Kubernetes 1.21.0" in ok.stdout, ok.stderr[-2000:]

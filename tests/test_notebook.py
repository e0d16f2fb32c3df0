"""Scenario 1: the notebook executes headless on what ships with veil, with a real Triton server, and draws its
figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "on_demand_inference.ipynb"


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_notebook_is_clean_and_uses_the_library():
    """Committed without outputs; parameters first (tagged); library calls, no shell-outs."""
    nb = json.loads(NOTEBOOK.read_text())
    cells = _code_cells(nb)
    assert all(not c["outputs"] and c["execution_count"] is None for c in cells), "strip outputs before committing"
    assert "parameters" in cells[0]["metadata"].get("tags", [])
    for name in ("IMAGE", "WEIGHTS", "ALPHA", "NOISE_DIR", "DECODER", "TRITON_URL"):
        assert f"\n{name} = " in "\n" + "".join(cells[0]["source"]), name
    code = "\n".join("".join(c["source"]) for c in cells)
    for forbidden in ("subprocess", "os.system", "\n!", "%%bash", "%%sh", "os.environ", "shared", "../"):
        assert forbidden not in "\n" + code, forbidden  # settings() reads VEIL_*; no path outside the user's own
    for api in (
        "settings()",
        "assets.sample_images",
        "Detector.from_weights",
        "load_obfuscator",
        "load_decoder",
        "reconstruct",
        "TritonDetector",
    ):
        assert api in code, api


@pytest.fixture()
def triton_url(detector, tmp_path):
    """A real Triton server (nvidia-pytriton's tritonserver) on loopback, serving the exported tail."""
    from veil.serving.repository import BASE_MODEL, NOISY_MODEL, write_repository
    from veil.serving.server import TritonServer, unsupported_reason

    why = unsupported_reason()
    if why:
        yield None, why
        return
    write_repository(detector.model, tmp_path / "repo", detector.weights_sha256, formats=("python",))
    server = TritonServer(tmp_path / "repo" / "python", models=[BASE_MODEL, NOISY_MODEL])
    server.start(timeout=180)
    try:
        yield server.url("http"), None
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_notebook_executes_and_draws(detector, triton_url, tmp_path, monkeypatch):
    """A fresh user: empty cache, no VEIL_* file variables; weights, noise, decoder and photo ship with veil."""
    import nbformat
    from nbclient import NotebookClient

    url, why_no_server = triton_url
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("VEIL_WEIGHTS", "VEIL_NOISE_DIR", "VEIL_DECODER", "VEIL_DATASET"):
        monkeypatch.delenv(name, raising=False)
    if url:
        monkeypatch.setenv("VEIL_TRITON_URL", url)
    else:
        monkeypatch.delenv("VEIL_TRITON_URL", raising=False)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    work = tmp_path / "work" / "notebooks"
    work.mkdir(parents=True)
    # Errors in any cell raise CellExecutionError with the traceback.
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()

    text = "\n".join(o.get("text", "") for c in _code_cells(nb) for o in c["outputs"] if o["output_type"] == "stream")
    figures = [o for c in _code_cells(nb) for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert "grace_hopper" in text and "clean: 1 face with score" in text  # one face, and "1 face", not "1 faces"
    assert "clean: " in text and "obfuscated (ALPHA 0.8): " in text
    assert "fitted noise for ALPHA 0.8: 100 steps on 209 photos (WIDER FACE" in text  # the shipped noise
    assert "noise-to-signal ratio" in text and "NOTE: this installation has no decoder" not in text
    expected = 3 if url else 2  # boxes clean|obfuscated, decoder reconstructions, [Triton clean|obfuscated]
    assert len(figures) == expected, text
    if url:
        assert f"Triton at {url}: clean boxes identical to local ones: True" in text
    else:
        assert "VEIL_TRITON_URL is not set" in text, why_no_server

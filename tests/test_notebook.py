"""Scenario 1: the notebook executes headless on ../shared images, with a real Triton server, and draws its figures."""

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
    for forbidden in ("subprocess", "os.system", "\n!", "%%bash", "%%sh"):
        assert forbidden not in "\n" + code, forbidden
    for api in ("Detector.from_weights", "load_obfuscator", "load_decoder", "reconstruct", "TritonDetector"):
        assert api in code, api


@pytest.fixture()
def decoder_file(detector, dlib_dir, tmp_path) -> Path:
    """A decoder trained for two steps with the real training code: enough to exercise the notebook's path."""
    from veil.privacy.train import CropSampler, train_decoder, training_images

    out = tmp_path / "decoder.safetensors"
    sampler = CropSampler(training_images([dlib_dir]), crop=128)
    train_decoder(detector.head, sampler, max_steps=2, batch=2, out=out,
                  meta={"kind": "naive", "weights_sha256": detector.weights_sha256}, progress=False)
    return out


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
def test_notebook_executes_and_draws(weights_path, fddb_dir, decoder_file, triton_url, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    url, why_no_server = triton_url
    # No fitted noise anywhere (an empty cache): the notebook must make its quick demonstration fit.
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VEIL_SHARED", str(weights_path.parents[2]))  # the ../shared the fixtures found
    monkeypatch.setenv("VEIL_WEIGHTS", str(weights_path))
    monkeypatch.setenv("VEIL_DECODER", str(decoder_file))
    monkeypatch.delenv("VEIL_NOISE_DIR", raising=False)
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
    assert "clean: " in text and "obfuscated (ALPHA 0.8): " in text
    assert "quick demonstration fit" in text and (tmp_path / "work" / "runs" / "notebook").is_dir()
    assert "noise-to-signal ratio" in text
    expected = 3 if url else 2  # boxes clean|obfuscated, decoder reconstructions, [Triton clean|obfuscated]
    assert len(figures) == expected, text
    if url:
        assert f"Triton at {url}: clean boxes identical to local ones: True" in text
    else:
        assert "VEIL_TRITON_URL is not set" in text, why_no_server

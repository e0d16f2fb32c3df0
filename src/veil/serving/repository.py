"""Write Triton model repositories for the FaceBoxes tail.

A Triton repository holds one model per name, so each *form* gets its own repository under
``REPO``::

    REPO/python/       python backend (model.py + the ONNX tail, run by onnxruntime): the PyPI
                       nvidia-pytriton server here
    REPO/onnx/         onnxruntime backend (model.onnx): stock Triton containers
    REPO/torchscript/  pytorch backend (model.pt): stock Triton containers
    REPO/veil-export.json   weights SHA-256, forms, models and the export check's max error

Each repository holds the reference design's two names, ``face_detection_base`` (clean
activations) and ``face_detection_noisy`` (obfuscated ones), with the same tail weights, plus
``*_fp16`` twins whose ``INPUT_0`` is FP16 (half the bytes on the wire).
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil import export
from veil.jsonio import write_json
from veil.models.faceboxes import HEAD_CHANNELS, FaceBoxes
from veil.serving.pbtxt import Enum, dumps, map_entries

BASE_MODEL = "face_detection_base"
NOISY_MODEL = "face_detection_noisy"
FORMATS = ("python", "onnx", "torchscript")
MANIFEST = "veil-export.json"
_TEMPLATE = Path(__file__).with_name("triton_model.py")


def model_name(noisy: bool, fp16: bool = False) -> str:
    """The served model for clean/obfuscated activations, FP32 or FP16 on the wire."""
    return (NOISY_MODEL if noisy else BASE_MODEL) + ("_fp16" if fp16 else "")


ALL_MODELS = tuple(model_name(n, h) for n in (False, True) for h in (False, True))

#: Largest activation the served tail accepts, per side and in area (positions h×w), matching the
#: client's default pixel limit (veil.preprocess: network input ≤ 8192 px a side, ≤ 4096² px;
#: the head's stride is 32). A maximal request is 128×128 positions × 128 channels × 4 bytes =
#: 8 MiB in FP32; without the bound, one [1,128,1024,1024] request (512 MiB) held ~7 GB of the
#: server's memory for 38 s.
MAX_ACTIVATION_SIDE = 8192 // 32
MAX_ACTIVATION_AREA = 4096 * 4096 // (32 * 32)


@dataclass(frozen=True)
class ExportReport:
    """What was written and how closely each exported file matches the in-process tail."""

    root: Path
    repositories: dict[str, Path]
    max_error: dict[str, float]


def model_config(name: str, fmt: str, fp16: bool, max_batch_size: int = 8, instances: int = 1) -> dict[str, Any]:
    """Triton's ``ModelConfig`` for one model, as data: variable batch and spatial size, dynamic
    batching, CPU instances."""
    backend = {"python": "python", "onnx": "onnxruntime", "torchscript": "pytorch"}[fmt]
    dtype = Enum("TYPE_FP16" if fp16 else "TYPE_FP32")
    fp32 = Enum("TYPE_FP32")
    config: dict[str, Any] = {
        "name": name,
        "backend": backend,
        "max_batch_size": max_batch_size,
        "input": [{"name": export.INPUT_NAME, "data_type": dtype, "dims": [HEAD_CHANNELS, -1, -1]}],
        # The pytorch backend maps outputs by the "<name>__<index>" convention, or by their order
        # here when names do not follow it; OUTPUT_0 then OUTPUT_1 keeps the order of the tail's outputs.
        "output": [
            {"name": export.OUTPUT_NAMES[0], "data_type": fp32, "dims": [-1, 4]},
            {"name": export.OUTPUT_NAMES[1], "data_type": fp32, "dims": [-1, 2]},
        ],
        "dynamic_batching": {"max_queue_delay_microseconds": 2000},
        "instance_group": [{"kind": Enum("KIND_CPU"), "count": instances}],
    }
    if fmt == "python":  # the python-backend model reads these and refuses larger activations
        params = {
            "tail_file": "model.onnx",
            "max_height": MAX_ACTIVATION_SIDE,
            "max_width": MAX_ACTIVATION_SIDE,
            "max_area": MAX_ACTIVATION_AREA,
        }
        config["parameters"] = map_entries({k: {"string_value": str(v)} for k, v in params.items()})
    return config


def config_pbtxt(name: str, fmt: str, fp16: bool, max_batch_size: int = 8, instances: int = 1) -> str:
    """``config.pbtxt`` for one model: :func:`model_config` in protobuf text format."""
    return dumps(model_config(name, fmt, fp16, max_batch_size, instances))


def write_repository(
    model: FaceBoxes,
    out: str | Path,
    weights_sha256: str = "",
    formats: tuple[str, ...] = FORMATS,
    max_batch_size: int = 8,
    check: bool = True,
) -> ExportReport:
    """Export the tail into ``out/<form>/<model>/`` for every form and model; verify each file.

    Files are exported once per input precision and copied under each model name, so the clean and
    noisy models provably share the same weights.
    """
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown export format(s) {sorted(unknown)}; choose from {list(FORMATS)}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    stage = root / ".stage"
    shutil.rmtree(stage, ignore_errors=True)
    repos: dict[str, Path] = {}
    errors: dict[str, float] = {}
    try:
        for fp16 in (False, True):
            prec = "fp16" if fp16 else "fp32"
            files = {}
            if "torchscript" in formats:
                files["torchscript"] = export.export_torchscript(model, stage / f"tail-{prec}.pt", fp16)
                if check:
                    errors[f"torchscript-{prec}"] = export.check_torchscript(model, files["torchscript"], fp16)
            if {"onnx", "python"} & set(formats):
                files["onnx"] = files["python"] = export.export_onnx(model, stage / f"tail-{prec}.onnx", fp16)
                if check:
                    errors[f"onnx-{prec}"] = export.check_onnx(model, files["onnx"], fp16)
            for fmt in formats:
                repo = repos.setdefault(fmt, root / fmt)
                for noisy in (False, True):
                    name = model_name(noisy, fp16)
                    mdir = repo / name
                    shutil.rmtree(mdir, ignore_errors=True)
                    (mdir / "1").mkdir(parents=True)
                    (mdir / "config.pbtxt").write_text(config_pbtxt(name, fmt, fp16, max_batch_size))
                    if fmt == "python":
                        shutil.copyfile(_TEMPLATE, mdir / "1" / "model.py")
                        shutil.copyfile(files[fmt], mdir / "1" / "model.onnx")
                    elif fmt == "onnx":
                        shutil.copyfile(files[fmt], mdir / "1" / "model.onnx")
                    else:
                        shutil.copyfile(files[fmt], mdir / "1" / "model.pt")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    manifest = {
        "weights_sha256": weights_sha256,
        "forms": {f: str(p.relative_to(root)) for f, p in repos.items()},
        "models": list(ALL_MODELS),
        "input": export.INPUT_NAME,
        "outputs": list(export.OUTPUT_NAMES),
        "max_abs_error_vs_in_process": errors,
    }
    write_json(root / MANIFEST, manifest)
    return ExportReport(root=root, repositories=repos, max_error=errors)


def resolve_repository(path: str | Path, fmt: str = "python") -> Path:
    """A directory Triton can serve: ``path`` itself if it holds models, else ``path/<fmt>``.

    Raises ``FileNotFoundError`` with the command that creates one.
    """
    p = Path(path)
    for cand in (p, p / fmt):
        if cand.is_dir() and any((d / "config.pbtxt").is_file() for d in cand.iterdir() if d.is_dir()):
            return cand
    raise FileNotFoundError(
        f"no Triton model repository at {p} (nor {p / fmt}); "
        f"create one with `veil export-triton --out {shlex.quote(str(p))}`"
    )

"""Write Triton model repositories for a split model's tail (any registered model, at any split).

A Triton repository holds one model per name, so each *form* gets its own repository under
``REPO``::

    REPO/python/       python backend (model.py + the ONNX tail, run by onnxruntime): the PyPI
                       nvidia-pytriton server here
    REPO/onnx/         onnxruntime backend (model.onnx): stock Triton containers
    REPO/torchscript/  pytorch backend (model.pt): stock Triton containers
    REPO/veil-export.json   weights SHA-256, forms, models and the export check's max error

Each repository holds two names, ``<prefix>_base`` (clean activations) and ``<prefix>_noisy``
(obfuscated ones), with the same tail weights, plus ``*_fp16`` twins whose ``INPUT_0`` is FP16
(half the bytes on the wire). The prefix is the reference design's ``face_detection`` for FaceBoxes
at its default split, else ``<model>_<split>`` (:func:`served_prefix`), so a client never sends one
split's activation to another split's tail. Everything else comes from the model's config: the
input's channels (and fixed size, if any), the outputs (``OUTPUT_<i>``, dims measured on the eager
tail), and the activation bound (from the split's stride).
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from veil import export
from veil.jsonio import write_json
from veil.models import DEFAULT_MODEL, SplitModel, as_split_model
from veil.preprocess import MAX_INPUT_PIXELS, MAX_INPUT_SIDE
from veil.serving.pbtxt import Enum, dumps, map_entries

#: The reference design's prefix: FaceBoxes at its default split.
REFERENCE_PREFIX = "face_detection"
BASE_MODEL = f"{REFERENCE_PREFIX}_base"
NOISY_MODEL = f"{REFERENCE_PREFIX}_noisy"
FORMATS = ("python", "onnx", "torchscript")
MANIFEST = "veil-export.json"
_TEMPLATE = Path(__file__).with_name("triton_model.py")


def served_prefix(model: SplitModel | nn.Module | None = None) -> str:
    """``face_detection`` for FaceBoxes at its default split (the reference design's names), else
    ``<model>_<split>`` (e.g. ``faceboxes_inception2``, ``digits_block1``)."""
    if model is None:
        return REFERENCE_PREFIX
    m = as_split_model(model)
    if m.name == DEFAULT_MODEL and m.split == m.config.default_split:
        return REFERENCE_PREFIX
    return f"{m.name}_{m.split}".replace("-", "_")


def model_name(noisy: bool, fp16: bool = False, prefix: str = REFERENCE_PREFIX) -> str:
    """The served model for clean/obfuscated activations, FP32 or FP16 on the wire."""
    return f"{prefix}_{'noisy' if noisy else 'base'}" + ("_fp16" if fp16 else "")


def all_models(prefix: str = REFERENCE_PREFIX) -> tuple[str, ...]:
    """Every model a repository written for ``prefix`` serves."""
    return tuple(model_name(n, h, prefix) for n in (False, True) for h in (False, True))


ALL_MODELS = all_models()


def activation_bounds(stride: int) -> tuple[int, int]:
    """Largest activation the served tail accepts, per side and in area (positions h×w), matching the
    client's default pixel limit (veil.preprocess: network input ≤ 8192 px a side, ≤ 4096² px) at the
    split's ``stride``. FaceBoxes (stride 32): 256 a side, 16384 positions; a maximal request is then
    128×128 positions × 128 channels × 4 bytes = 8 MiB in FP32, where without the bound one
    [1,128,1024,1024] request (512 MiB) held ~7 GB of the server's memory for 38 s."""
    return MAX_INPUT_SIDE // stride, MAX_INPUT_PIXELS // (stride * stride)


#: FaceBoxes' bounds (stride 32); other splits: :func:`activation_bounds`.
MAX_ACTIVATION_SIDE, MAX_ACTIVATION_AREA = activation_bounds(32)


@dataclass(frozen=True)
class ExportReport:
    """What was written and how closely each exported file matches the in-process tail."""

    root: Path
    repositories: dict[str, Path]
    max_error: dict[str, float]


#: FaceBoxes' tail signature (128 channels at any size; loc [P,4], conf [P,2]): :func:`model_config`'s default.
FACEBOXES_SIGNATURE = export.TailSignature((128, -1, -1), (("OUTPUT_0", (-1, 4)), ("OUTPUT_1", (-1, 2))))


def model_config(
    name: str,
    fmt: str,
    fp16: bool,
    max_batch_size: int = 8,
    instances: int = 1,
    signature: export.TailSignature = FACEBOXES_SIGNATURE,
    stride: int = 32,
) -> dict[str, Any]:
    """Triton's ``ModelConfig`` for one model, as data: the tail's ``signature`` (input dims, each
    output's dims; −1 where they vary), variable batch, dynamic batching, CPU instances."""
    backend = {"python": "python", "onnx": "onnxruntime", "torchscript": "pytorch"}[fmt]
    dtype = Enum("TYPE_FP16" if fp16 else "TYPE_FP32")
    fp32 = Enum("TYPE_FP32")
    config: dict[str, Any] = {
        "name": name,
        "backend": backend,
        "max_batch_size": max_batch_size,
        "input": [{"name": export.INPUT_NAME, "data_type": dtype, "dims": list(signature.input_dims)}],
        # The pytorch backend maps outputs by the "<name>__<index>" convention, or by their order
        # here when names do not follow it; OUTPUT_0, OUTPUT_1, … keeps the order of the tail's outputs.
        "output": [{"name": n, "data_type": fp32, "dims": list(dims)} for n, dims in signature.outputs],
        "dynamic_batching": {"max_queue_delay_microseconds": 2000},
        "instance_group": [{"kind": Enum("KIND_CPU"), "count": instances}],
    }
    if fmt == "python":  # the python-backend model reads these and refuses larger activations
        side, area = activation_bounds(stride)
        params = {"tail_file": "model.onnx", "max_height": side, "max_width": side, "max_area": area, "stride": stride}
        config["parameters"] = map_entries({k: {"string_value": str(v)} for k, v in params.items()})
    return config


def config_pbtxt(
    name: str,
    fmt: str,
    fp16: bool,
    max_batch_size: int = 8,
    instances: int = 1,
    signature: export.TailSignature = FACEBOXES_SIGNATURE,
    stride: int = 32,
) -> str:
    """``config.pbtxt`` for one model: :func:`model_config` in protobuf text format."""
    return dumps(model_config(name, fmt, fp16, max_batch_size, instances, signature, stride))


def write_repository(
    model: SplitModel | nn.Module,
    out: str | Path,
    weights_sha256: str = "",
    formats: tuple[str, ...] = FORMATS,
    max_batch_size: int = 8,
    check: bool = True,
) -> ExportReport:
    """Export the tail into ``out/<form>/<model>/`` for every form and model; verify each file.

    Files are exported once per input precision and copied under each model name, so the clean and
    noisy models provably share the same weights. Names, input and outputs follow the model's config
    (:func:`served_prefix`, :func:`veil.export.signature`).
    """
    model = as_split_model(model)
    weights_sha256 = weights_sha256 or model.weights_sha256
    prefix = served_prefix(model)
    sig = export.signature(model)
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
                    name = model_name(noisy, fp16, prefix)
                    mdir = repo / name
                    shutil.rmtree(mdir, ignore_errors=True)
                    (mdir / "1").mkdir(parents=True)
                    config = config_pbtxt(name, fmt, fp16, max_batch_size, signature=sig, stride=model.stride)
                    (mdir / "config.pbtxt").write_text(config)
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
        "model": model.name,
        "split": model.split,
        "split_point": model.split_point,
        "weights_sha256": weights_sha256,
        "forms": {f: str(p.relative_to(root)) for f, p in repos.items()},
        "models": list(all_models(prefix)),
        "input": export.INPUT_NAME,
        "input_dims": list(sig.input_dims),
        "outputs": [n for n, _ in sig.outputs],
        "output_meaning": dict(zip((n for n, _ in sig.outputs), model.config.outputs, strict=True)),
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

"""The FaceBoxes tail as files an inference runtime loads (ONNX, TorchScript), each checked numerically.

Below :mod:`veil.backends` (whose ``onnx`` backend runs these exports in-process) and
:mod:`veil.serving` (whose Triton repositories hold them), so both use the one export and check.

Each file is exported from a private deep copy of the model in eval mode, so exporting never
changes the caller's model (``torch.onnx.export`` restores the *training* flag of the module
it is given, and the tail view is not a registered child of ``FaceBoxes``).
An FP16 variant takes a half-precision activation (half the bytes on the wire) and casts it
to FP32 before the tail, so the tail's arithmetic is unchanged.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from veil.models.faceboxes import HEAD_CHANNELS, FaceBoxes

INPUT_NAME = "INPUT_0"
OUTPUT_NAMES = ("OUTPUT_0", "OUTPUT_1")  # loc (box offsets) [N,P,4], conf (softmax scores) [N,P,2]
#: The head's ONNX graph (the ``onnx`` backend of :mod:`veil.backends` runs it): image → activation.
HEAD_INPUT, HEAD_OUTPUT = "image", "activation"


class ServedTail(nn.Module):
    """The tail as served: activation (FP32 or FP16) → ``(loc, conf)`` in FP32."""

    def __init__(self, model: FaceBoxes) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        self.tail = cast(nn.Module, self.model.tail).eval()

    # The argument is named like the Triton input: Triton's pytorch backend maps inputs by
    # forward()'s argument names (outputs by their order in config.pbtxt).
    def forward(self, INPUT_0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: N803
        return self.tail(INPUT_0.float())


def _example(fp16: bool) -> torch.Tensor:
    x = torch.rand(1, HEAD_CHANNELS, 12, 16)
    return x.half() if fp16 else x


def export_onnx(model: FaceBoxes, path: str | Path, fp16: bool = False, opset: int = 17) -> Path:
    """Write the tail as ONNX with dynamic batch, height and width (for Triton's onnxruntime backend)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dyn = {
        INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
        OUTPUT_NAMES[0]: {0: "batch", 1: "priors"},
        OUTPUT_NAMES[1]: {0: "batch", 1: "priors"},
    }
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ServedTail(model),
            (_example(fp16),),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=dyn,
            opset_version=opset,
        )
    return path


def export_torchscript(model: FaceBoxes, path: str | Path, fp16: bool = False) -> Path:
    """Write the tail as TorchScript (Triton's pytorch backend, and the python-backend model here)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(ServedTail(model), (_example(fp16),), check_trace=False)
    traced.save(str(path))
    return path


def reference_outputs(model: FaceBoxes, a: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The in-process tail on ``a`` (cast as the served model casts it): the export's ground truth."""
    with torch.inference_mode():
        loc, conf = ServedTail(model)(a)
    return loc.numpy(), conf.numpy()


def check_onnx(model: FaceBoxes, path: str | Path, fp16: bool = False, atol: float = 1e-4) -> float:
    """Run the ONNX file with onnxruntime on two spatial sizes and a batch of 2; return the max error.

    Raises ``RuntimeError`` if any output differs from the in-process tail by more than ``atol``.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return _check(model, lambda a: sess.run(list(OUTPUT_NAMES), {INPUT_NAME: a.numpy()}), fp16, atol, path)


def check_torchscript(model: FaceBoxes, path: str | Path, fp16: bool = False, atol: float = 1e-4) -> float:
    """Load the TorchScript file and compare it with the in-process tail; return the max error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what Triton's pytorch backend loads
        ts = torch.jit.load(str(path))

    def run(a: torch.Tensor) -> list[np.ndarray]:
        with torch.inference_mode():
            return [t.numpy() for t in ts(a)]

    return _check(model, run, fp16, atol, path)


def _check(model: FaceBoxes, run, fp16: bool, atol: float, path) -> float:
    gen = torch.Generator().manual_seed(0)  # a fixed test input, not noise: reproducibility is wanted here
    worst = 0.0
    for shape in ((1, HEAD_CHANNELS, 17, 23), (2, HEAD_CHANNELS, 9, 12)):
        a = torch.rand(shape, generator=gen) * 4
        a = a.half() if fp16 else a
        ref = reference_outputs(model, a)
        got = run(a)
        for r, g in zip(ref, got):
            if r.shape != g.shape:
                raise RuntimeError(f"{path}: output shape {g.shape} != in-process {r.shape} for input {shape}")
            worst = max(worst, float(np.abs(r - g).max()))
    if worst > atol:
        raise RuntimeError(f"{path}: outputs differ from the in-process tail by {worst:.3g} > {atol}")
    return worst


def export_head_onnx(model: FaceBoxes, path: str | Path, opset: int = 17) -> Path:
    """Write the head as ONNX with dynamic batch, height and width (pixel-range FP32 input)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = copy.deepcopy(model).eval().head.eval()  # a private copy: export never touches the caller's model
    dyn = {HEAD_INPUT: {0: "batch", 2: "height", 3: "width"}, HEAD_OUTPUT: {0: "batch", 2: "h32", 3: "w32"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            head,
            (torch.rand(1, 3, 96, 128) * 255 - 120,),
            str(path),
            dynamo=False,
            input_names=[HEAD_INPUT],
            output_names=[HEAD_OUTPUT],
            dynamic_axes=dyn,
            opset_version=opset,
        )
    return path


def check_head_onnx(model: FaceBoxes, path: str | Path, atol: float = 1e-3) -> float:
    """Compare the ONNX head with the eager head on two sizes (pixel-range input); return the max error.

    The error is relative to the activation's largest value; raises ``RuntimeError`` above ``atol``.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)  # a fixed test input, not noise
    worst = 0.0
    for shape in ((1, 3, 160, 224), (2, 3, 100, 70)):
        x = torch.rand(shape, generator=gen) * 255 - 120
        with torch.inference_mode():
            ref = model.head(x).numpy()
        got = sess.run([HEAD_OUTPUT], {HEAD_INPUT: x.numpy()})[0]
        if got.shape != ref.shape:
            raise RuntimeError(f"{path}: head output shape {got.shape} != eager {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max()))))
    if worst > atol:
        raise RuntimeError(f"{path}: ONNX head differs from the eager head by {worst:.3g} (relative) > {atol}")
    return worst

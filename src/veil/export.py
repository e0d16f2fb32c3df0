"""A split model's tail (and head) as files an inference runtime loads (ONNX, TorchScript), each checked numerically.

Below :mod:`veil.backends` (whose ``onnx`` backend runs these exports in-process) and
:mod:`veil.serving` (whose Triton repositories hold them), so both use the one export and check.
Everything model-specific comes from the model's config (:class:`veil.models.SplitModel`): the
activation's channels, a fixed input size (then the activation's spatial size is fixed too), and
the tail's outputs, however many (``OUTPUT_0``, ``OUTPUT_1``, … in the order of ``config.outputs``).

Each file is exported from a private deep copy of the model in eval mode, so exporting never
changes the caller's model (``torch.onnx.export`` restores the *training* flag of the module
it is given, and the tail view is not a registered child of the network).
An FP16 variant takes a half-precision activation (half the bytes on the wire) and casts it
to FP32 before the tail, so the tail's arithmetic is unchanged.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from veil.models import SplitModel, as_split_model

INPUT_NAME = "INPUT_0"
#: The head's ONNX graph (the ``onnx`` backend of :mod:`veil.backends` runs it): image → activation.
HEAD_INPUT, HEAD_OUTPUT = "image", "activation"


def output_names(model: SplitModel | nn.Module) -> tuple[str, ...]:
    """The served tail's output names: ``OUTPUT_<i>`` for each of ``config.outputs``, in order
    (FaceBoxes: ``OUTPUT_0`` = loc, ``OUTPUT_1`` = conf, the reference design's names)."""
    return tuple(f"OUTPUT_{i}" for i in range(len(as_split_model(model).config.outputs)))


#: FaceBoxes' output names (loc [N,P,4], conf [N,P,2]); other models: :func:`output_names`.
OUTPUT_NAMES = ("OUTPUT_0", "OUTPUT_1")


class ServedTail(nn.Module):
    """The tail as served: activation (FP32 or FP16) → the tail's outputs (a tuple) in FP32."""

    def __init__(self, model: SplitModel | nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(as_split_model(model)).eval()
        self.tail = self.model.tail.eval()

    # The argument is named like the Triton input: Triton's pytorch backend maps inputs by
    # forward()'s argument names (outputs by their order in config.pbtxt).
    def forward(self, INPUT_0: torch.Tensor) -> tuple[torch.Tensor, ...]:  # noqa: N803
        out = self.tail(INPUT_0.float())
        return tuple(t.float() for t in out) if isinstance(out, (tuple, list)) else (out.float(),)


@dataclass(frozen=True)
class TailSignature:
    """The served tail's tensors: input dims ``[C, h, w]`` and each output's dims, batch excluded;
    −1 where a size varies with the input (Triton's convention)."""

    input_dims: tuple[int, ...]
    outputs: tuple[tuple[str, tuple[int, ...]], ...]


def activation_hw(model: SplitModel | nn.Module) -> tuple[int, int] | None:
    """The activation's fixed ``(h, w)`` for a model with a fixed input size, else None (any size)."""
    m = as_split_model(model)
    size = m.config.input.size
    if size is None:
        return None
    x = torch.zeros(1, m.config.input.channels, *size)
    with torch.inference_mode():
        a = copy.deepcopy(m).eval().head(x)
    return int(a.shape[2]), int(a.shape[3])


def _example_shapes(model: SplitModel) -> list[tuple[int, int, int, int]]:
    """Activation shapes to export and check with: two spatial sizes and a batch of 2 (one size if fixed)."""
    fixed = activation_hw(model)
    c = model.channels
    if fixed is not None:
        return [(1, c, *fixed), (2, c, *fixed)]
    return [(1, c, 17, 23), (2, c, 9, 12)]


def _example(model: SplitModel, fp16: bool) -> torch.Tensor:
    fixed = activation_hw(model)
    x = torch.rand(1, model.channels, *(fixed or (12, 16)))
    return x.half() if fp16 else x


def signature(model: SplitModel | nn.Module) -> TailSignature:
    """Run the eager tail on the example shapes: which dims are fixed, which vary (→ −1)."""
    m = as_split_model(model)
    tail = ServedTail(m)
    shapes = _example_shapes(m)
    with torch.inference_mode():
        outs = [tail(torch.rand(s)) for s in shapes]
    dims = []
    for i, name in enumerate(output_names(m)):
        per = [tuple(o[i].shape[1:]) for o in outs]
        dims.append((name, tuple(d if all(p[k] == d for p in per) else -1 for k, d in enumerate(per[0]))))
    fixed = activation_hw(m)
    return TailSignature(input_dims=(m.channels, *(fixed or (-1, -1))), outputs=tuple(dims))


def _dynamic_axes(model: SplitModel) -> dict[str, dict[int, str]]:
    sig = signature(model)
    dyn: dict[str, dict[int, str]] = {
        INPUT_NAME: {0: "batch", **({2: "height", 3: "width"} if sig.input_dims[1] < 0 else {})}
    }
    for name, dims in sig.outputs:
        dyn[name] = {0: "batch", **{k + 1: f"{name}_d{k + 1}" for k, d in enumerate(dims) if d < 0}}
    return dyn


def export_onnx(model: SplitModel | nn.Module, path: str | Path, fp16: bool = False, opset: int = 17) -> Path:
    """Write the tail as ONNX with dynamic batch (and spatial size, unless the model's input size is fixed)."""
    m = as_split_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            ServedTail(m),
            (_example(m, fp16),),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=list(output_names(m)),
            dynamic_axes=_dynamic_axes(m),
            opset_version=opset,
        )
    return path


def export_torchscript(model: SplitModel | nn.Module, path: str | Path, fp16: bool = False) -> Path:
    """Write the tail as TorchScript (Triton's pytorch backend)."""
    m = as_split_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(ServedTail(m), (_example(m, fp16),), check_trace=False)
    traced.save(str(path))
    return path


def reference_outputs(model: SplitModel | nn.Module, a: torch.Tensor) -> tuple[np.ndarray, ...]:
    """The in-process tail on ``a`` (cast as the served model casts it): the export's ground truth."""
    with torch.inference_mode():
        return tuple(t.numpy() for t in ServedTail(model)(a))


def check_onnx(model: SplitModel | nn.Module, path: str | Path, fp16: bool = False, atol: float = 1e-4) -> float:
    """Run the ONNX file with onnxruntime on the example shapes (two sizes, a batch of 2); return the max error.

    Raises ``RuntimeError`` if any output differs from the in-process tail by more than ``atol``.
    """
    import onnxruntime as ort

    m = as_split_model(model)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = list(output_names(m))
    return _check(m, lambda a: sess.run(names, {INPUT_NAME: a.numpy()}), fp16, atol, path)


def check_torchscript(model: SplitModel | nn.Module, path: str | Path, fp16: bool = False, atol: float = 1e-4) -> float:
    """Load the TorchScript file and compare it with the in-process tail; return the max error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what Triton's pytorch backend loads
        ts = torch.jit.load(str(path))

    def run(a: torch.Tensor) -> list[np.ndarray]:
        with torch.inference_mode():
            return [t.numpy() for t in ts(a)]

    return _check(as_split_model(model), run, fp16, atol, path)


def _check(model: SplitModel, run, fp16: bool, atol: float, path) -> float:
    gen = torch.Generator().manual_seed(0)  # a fixed test input, not noise: reproducibility is wanted here
    worst = 0.0
    for shape in _example_shapes(model):
        a = torch.rand(shape, generator=gen) * 4
        a = a.half() if fp16 else a
        ref = reference_outputs(model, a)
        got = run(a)
        if len(got) != len(ref):
            raise RuntimeError(f"{path}: {len(got)} outputs, but the in-process tail has {len(ref)}")
        for r, g in zip(ref, got, strict=True):
            if r.shape != g.shape:
                raise RuntimeError(f"{path}: output shape {g.shape} != in-process {r.shape} for input {shape}")
            worst = max(worst, float(np.abs(r - g).max()))
    if worst > atol:
        raise RuntimeError(f"{path}: outputs differ from the in-process tail by {worst:.3g} > {atol}")
    return worst


def _head_inputs(model: SplitModel) -> list[tuple[int, ...]]:
    c, size = model.config.input.channels, model.config.input.size
    if size is not None:
        return [(1, c, *size), (2, c, *size)]
    return [(1, c, 160, 224), (2, c, 100, 70)]


def export_head_onnx(model: SplitModel | nn.Module, path: str | Path, opset: int = 17) -> Path:
    """Write the head as ONNX with dynamic batch (and spatial size unless fixed); pixel-range FP32 input."""
    m = as_split_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = copy.deepcopy(m).eval().head.eval()  # a private copy: export never touches the caller's model
    fixed = m.config.input.size is not None
    dyn = {
        HEAD_INPUT: {0: "batch", **({} if fixed else {2: "height", 3: "width"})},
        HEAD_OUTPUT: {0: "batch", **({} if fixed else {2: "act_h", 3: "act_w"})},
    }
    example = _head_inputs(m)[0]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            head,
            (torch.rand(example) * 255 - 120,),
            str(path),
            dynamo=False,
            input_names=[HEAD_INPUT],
            output_names=[HEAD_OUTPUT],
            dynamic_axes=dyn,
            opset_version=opset,
        )
    return path


def check_head_onnx(model: SplitModel | nn.Module, path: str | Path, atol: float = 1e-3) -> float:
    """Compare the ONNX head with the eager head on the example inputs; return the max error.

    The error is relative to the activation's largest value; raises ``RuntimeError`` above ``atol``.
    """
    import onnxruntime as ort

    m = as_split_model(model)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)  # a fixed test input, not noise
    worst = 0.0
    for shape in _head_inputs(m):
        x = torch.rand(shape, generator=gen) * 255 - 120
        with torch.inference_mode():
            ref = m.head(x).numpy()
        got = sess.run([HEAD_OUTPUT], {HEAD_INPUT: x.numpy()})[0]
        if got.shape != ref.shape:
            raise RuntimeError(f"{path}: head output shape {got.shape} != eager {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max() / max(1.0, float(np.abs(ref).max()))))
    if worst > atol:
        raise RuntimeError(f"{path}: ONNX head differs from the eager head by {worst:.3g} (relative) > {atol}")
    return worst

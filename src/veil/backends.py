"""How the head and the tail are computed: eager FP32 (the reference), BF16 autocast, onnxruntime.

A backend is chosen per call (``Detector(backend=...)``, ``veil evaluate/detect/infer --backend``);
every backend takes and returns FP32 tensors, so the obfuscation, the wire and post-processing
never see a difference in dtype.

- ``fp32``: the PyTorch modules as they are; every other backend is checked against it.
- ``bf16``: the same modules under ``torch.autocast("cpu", torch.bfloat16)``: convolutions run in
  BF16 on CPUs with native BF16 (AVX512-BF16 or AMX), accumulate in FP32. Refused, with the
  reason, on a CPU without it (emulated BF16 is slower than FP32 and no more accurate).
- ``onnx``: head and tail exported to ONNX once per weights file (cached under the veil cache,
  keyed by the weights' SHA-256), each export checked against eager FP32 before it is used
  (the tail with :func:`veil.export.check_onnx`, as ``veil export-triton`` checks it).
- ``auto``: :data:`AUTO_ORDER`'s first backend this machine runs: the fastest whose FDDB mAP is
  within 0.1 point of FP32 (measured in docs/evaluation.md, benchmarks/backends.py), falling back
  to the next when onnxruntime is missing or the CPU has no native BF16.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from veil.models import Outputs, SplitModel, as_split_model

#: Backends by name; ``auto`` picks the first of :data:`AUTO_ORDER` that this machine supports.
NAMES = ("fp32", "bf16", "onnx")
CHOICES = ("auto",) + NAMES
#: Fastest first, among the backends whose FDDB mAP is within 0.1 point of FP32 on the 225 FDDB
#: images present (fp32 0.970026, onnx 0.970026, bf16 0.969939; docs/evaluation.md has the
#: commands and timings). ``auto`` takes the first one this machine runs.
AUTO_ORDER = ("onnx", "bf16", "fp32")
#: Largest difference from eager FP32 that the tests accept on real FDDB images (tests/test_backends.py):
#: softmax face scores (absolute), and the head's activation relative to its largest value.
#: Measured on 6–9 FDDB images at ×3 (docs/evaluation.md): bf16 ≤ 0.018 and 0.0080 (BF16 keeps
#: 8 mantissa bits), onnx ≤ 2.3e-6 and 1.7e-6 (FP32, other kernels).
SCORE_TOLERANCE = {"fp32": 0.0, "bf16": 0.03, "onnx": 1e-4}
ACTIVATION_TOLERANCE = {"fp32": 0.0, "bf16": 0.02, "onnx": 1e-4}
#: Export format version: bump when the exported graphs change, so stale cached files are not reused.
ONNX_CACHE_VERSION = 1


class BackendError(ValueError):
    """A backend that does not exist, or that this machine cannot run."""


class Backend(Protocol):
    name: str

    def head(self, x: torch.Tensor) -> torch.Tensor: ...

    def tail(self, a: torch.Tensor) -> Outputs: ...


def bf16_unsupported_reason() -> str | None:
    """Why BF16 would not be fast here, or ``None`` if the CPU computes BF16 natively."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln for ln in fh if ln.startswith("flags")), "")
    except OSError:
        pass
    native = " avx512_bf16" in flags or " amx_bf16" in flags
    if not native:
        return (
            "this CPU has no native BF16 (no avx512_bf16 or amx_bf16 flag in /proc/cpuinfo); use --backend fp32 or onnx"
        )
    has_kernels = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    if not torch.backends.mkldnn.is_available() or not has_kernels():
        return "this PyTorch build has no oneDNN BF16 kernels; use --backend fp32 or onnx"
    return None


def resolve(name: str) -> str:
    """``auto`` → the concrete backend; a concrete name is checked (a clear :class:`BackendError`)."""
    if name not in CHOICES:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(CHOICES)}")
    if name == "auto":
        return next(n for n in AUTO_ORDER if _unsupported(n) is None)
    why = _unsupported(name)
    if why:
        raise BackendError(f"--backend {name}: {why}")
    return name


def _unsupported(name: str) -> str | None:
    """Why this machine cannot run backend ``name`` well, or ``None``."""
    if name == "bf16":
        return bf16_unsupported_reason()
    if name == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install 'veil[serve]')"
    return None


def _tuple(out: torch.Tensor | tuple[torch.Tensor, ...]) -> Outputs:
    """A tail's outputs as a tuple (a classifier's tail returns one tensor)."""
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class EagerFP32:
    """The PyTorch modules as they are: the reference every other backend is compared with."""

    name = "fp32"

    def __init__(self, model: SplitModel) -> None:
        self.model = model.eval()

    def head(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.head(x)

    def tail(self, a: torch.Tensor) -> Outputs:
        with torch.inference_mode():
            return _tuple(self.model.tail(a.float()))


class EagerBF16(EagerFP32):
    """Eager modules under BF16 autocast; outputs cast back to FP32."""

    name = "bf16"

    def head(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return self.model.head(x).float()

    def tail(self, a: torch.Tensor) -> Outputs:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = _tuple(self.model.tail(a.float()))
        return tuple(t.float() for t in out)


def weights_key(model: SplitModel, weights_sha256: str = "") -> str:
    """The cache key of a model's exports: ``model-split-`` and the first 16 hex of its weights file's
    SHA-256 (``weights_sha256``, else the model's), else of a hash of its tensors (edited weights)."""
    digest = weights_sha256 or model.weights_sha256
    if not digest:
        h = hashlib.sha256()
        for k, v in sorted(model.network.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        digest = h.hexdigest()
    return f"{model.name}-{model.split}-{digest[:16]}"


def onnx_dir(key: str) -> Path:
    from veil.models.pretrained import cache_dir

    return cache_dir() / "onnx" / f"{key}-v{ONNX_CACHE_VERSION}"


class OnnxRuntime:
    """Head and tail in onnxruntime, exported once per weights and checked against eager FP32."""

    name = "onnx"

    def __init__(self, model: SplitModel, weights_sha256: str = "", threads: int | None = None) -> None:
        import onnxruntime as ort

        from veil.export import (
            HEAD_INPUT,
            HEAD_OUTPUT,
            INPUT_NAME,
            check_head_onnx,
            check_onnx,
            export_head_onnx,
            export_onnx,
            output_names,
        )

        model = model.eval()
        d = onnx_dir(weights_key(model, weights_sha256))
        d.mkdir(parents=True, exist_ok=True)
        head_path, tail_path = d / "head.onnx", d / "tail.onnx"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

        def session(p: Path):
            return ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])

        fresh = not (head_path.is_file() and tail_path.is_file())
        if fresh:  # write to temporary names, check, then rename: a half-written export is never reused
            tmp_head, tmp_tail = d / f"head.{os.getpid()}.tmp", d / f"tail.{os.getpid()}.tmp"
            export_head_onnx(model, tmp_head)
            export_onnx(model, tmp_tail)
            check_head_onnx(model, tmp_head)
            check_onnx(model, tmp_tail)
            os.replace(tmp_head, head_path)
            os.replace(tmp_tail, tail_path)
        self._head, self._tail = session(head_path), session(tail_path)
        self._in, self._out = INPUT_NAME, list(output_names(model))
        self._head_in, self._head_out = HEAD_INPUT, [HEAD_OUTPUT]
        self.files = (head_path, tail_path)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self._head.run(self._head_out, {self._head_in: x.detach().numpy()})[0])

    def tail(self, a: torch.Tensor) -> Outputs:
        out = self._tail.run(self._out, {self._in: a.detach().float().contiguous().numpy()})
        return tuple(torch.from_numpy(o) for o in out)


def make_backend(name: str, model: SplitModel | nn.Module, weights_sha256: str = "") -> Backend:
    """Build the backend ``name`` (``auto`` resolved) for ``model``; raises :class:`BackendError`.

    The ``onnx`` backend's exports are cached per :func:`weights_key` (model, split and weights)."""
    name = resolve(name)
    model = as_split_model(model)
    if name == "fp32":
        return EagerFP32(model)
    if name == "bf16":
        return EagerBF16(model)
    return OnnxRuntime(model, weights_sha256)

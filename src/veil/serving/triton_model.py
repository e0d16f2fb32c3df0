"""Triton python-backend model: a split model's tail (copied into the repository as ``model.py``).

Self-contained on purpose: it needs only numpy and onnxruntime in the server's Python (not veil,
not torch: importing torch would make every model instance start seconds slower), and runs the
ONNX tail written beside it, the same file the stock containers' onnxruntime backend serves.
Requests of equal spatial size that the dynamic batcher groups are run as one batch; a failing
request gets an error response of its own, so a bad request never takes the model down.
Nothing here is model-specific: the input's channels (and fixed size, if any) and the output names
come from ``config.pbtxt`` (written from the model's config by ``veil export-triton``). Activations
larger than its bounds (``max_height``, ``max_width``, ``max_area``; ``stride`` converts them to
input pixels for the message) are refused from their shape alone, before their data is read or run.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("tail_file", "model.onnx"))
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        dims = [int(d) for d in config["input"][0]["dims"]]
        self.channels = dims[0]
        self.fixed_hw = (dims[1], dims[2]) if len(dims) == 3 and min(dims[1:]) > 0 else None
        self.outputs = [o["name"] for o in config["output"]]
        self.stride = int(params.get("stride", 1))
        self.max_height = int(params.get("max_height", 256))
        self.max_width = int(params.get("max_width", 256))
        self.max_area = int(params.get("max_area", self.max_height * self.max_width))

    def execute(self, requests):
        responses = [None] * len(requests)
        groups: dict = {}
        for i, request in enumerate(requests):
            # A view of the request's shared-memory buffer (no copy): only its shape is read first.
            a = pb_utils.get_input_tensor_by_name(request, "INPUT_0").as_numpy()
            shape = list(a.shape)
            if len(shape) != 4 or shape[1] != self.channels or min(shape[2:]) < 1:
                responses[i] = self._error(f"INPUT_0 must be [N,{self.channels},H,W], got {shape}")
                continue
            h, w = shape[2], shape[3]
            if self.fixed_hw is not None and (h, w) != self.fixed_hw:
                responses[i] = self._error(
                    f"INPUT_0 must be [N,{self.channels},{self.fixed_hw[0]},{self.fixed_hw[1]}], got {shape}"
                )
                continue
            if h > self.max_height or w > self.max_width or h * w > self.max_area:
                responses[i] = self._error(
                    f"INPUT_0 is {h}x{w} positions, over this server's bound of {self.max_height}x{self.max_width} "
                    f"and {self.max_area} positions (an input image of at most "
                    f"{self.max_height * self.stride}x{self.max_width * self.stride} px); refused"
                )
                continue
            if not np.isfinite(a).all():
                responses[i] = self._error("INPUT_0 holds NaN or infinite values")
                continue
            groups.setdefault(a.shape[1:], []).append((i, a))
        for items in groups.values():
            try:
                batch = np.concatenate([a for _, a in items])
                outputs = self.session.run(self.outputs, {"INPUT_0": batch})
            except Exception as exc:  # noqa: BLE001 - report any tail failure to the client
                for i, _ in items:
                    responses[i] = self._error(f"tail failed: {exc.__class__.__name__}: {exc}")
                continue
            start = 0
            for i, a in items:
                stop = start + a.shape[0]
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(name, np.ascontiguousarray(out[start:stop]))
                        for name, out in zip(self.outputs, outputs)
                    ]
                )
                start = stop
        return responses

    @staticmethod
    def _error(message):
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))

"""Serving the tail on Triton Inference Server, and the trust-zone client that sends only the activation.

The exported files come from :mod:`veil.export` (shared with the ``onnx`` backend).

- :mod:`veil.serving.repository`: Triton model repositories (python, onnx, torchscript forms);
- :mod:`veil.serving.server`: start/stop the real ``tritonserver`` bundled with nvidia-pytriton;
- :mod:`veil.serving.client`: :class:`~veil.serving.client.TritonDetector`, the trust-zone client;
- :mod:`veil.serving.wire`: how tensors are encoded, and a recording proxy that shows what is sent.
"""

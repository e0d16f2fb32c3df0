"""The trust-zone client: preprocess, head and obfuscation run here; only the activation is sent.

:class:`TritonDetector` has the same ``detect(image) -> [K,5]`` as :class:`veil.detector.Detector`,
so evaluation, the CLI and notebooks use a remote tail exactly as they use a local one. The image,
its pixels and the preprocessed input never leave this process: the request carries one tensor,
``INPUT_0`` = the (obfuscated) head activation, as binary data (FP32, or FP16 with ``fp16=True``).
The tail's outputs come back and are post-processed here.

Failures are explicit: :class:`ServerUnavailableError` (after bounded retries) names the URL and
the command that starts a server; :class:`InferenceError` carries the server's reason for
refusing a request (wrong shape, dtype or model), and the server keeps serving.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from veil.export import output_names
from veil.pipeline import Prediction, SplitPipeline
from veil.preprocess import ImageReadError, Prepared, load_image
from veil.serving.repository import all_models, model_name, served_prefix
from veil.serving.wire import encode_input, requested_outputs

PROTOCOLS = ("http", "grpc")
DEFAULT_URLS = {"http": "127.0.0.1:8000", "grpc": "127.0.0.1:8001"}
_UNAVAILABLE_HINTS = (
    "unavailable",
    "failed to connect",
    "connection refused",
    "not ready",
    "stopping",
    "socket closed",
    "connection reset",
    "broken pipe",
    "timed out",
    "deadline exceeded",
    "no available versions",
    "connection closed",
)  # the last: HTTP server killed mid-request


class ServerUnavailableError(ConnectionError):
    """No Triton server answered at the URL (not running, unreachable, or stopped mid-request)."""


class InferenceError(RuntimeError):
    """The server refused a request (e.g. wrong model name, shape or dtype); it keeps serving."""


@dataclass
class ImageResult:
    """One image's outcome in :meth:`TritonDetector.run_many`."""

    name: str
    #: The task's answer: ``[K,5]`` boxes for face detection, a Classification for a classifier.
    boxes: Any = None
    error: str | None = None
    unavailable: bool = False  # True when it failed because the server was unreachable
    image: np.ndarray | None = None
    activation: torch.Tensor | None = None  # exactly what was sent (for the reconstruction)

    @property
    def ok(self) -> bool:
        return self.error is None


def start_hint() -> str:
    """What to do when no server answers."""
    return (
        "start one with `veil serve --model-repository REPO` (create REPO with "
        "`veil export-triton --out REPO`), or point --url at a running server"
    )


class TritonDetector:
    """A pipeline whose tail runs on a Triton server; ``detect(image)`` like :class:`veil.detector.Detector`.

    ``detector`` (a :class:`~veil.pipeline.SplitPipeline`, e.g. a Detector) supplies the model, the
    head, the optional obfuscator (set → the ``<prefix>_noisy`` model, :func:`served_prefix`) and
    post-processing. Every request has a deadline of ``timeout`` seconds (HTTP and
    gRPC): a server that accepts the connection but never answers (hung, SIGSTOPped) counts as
    unreachable. ``retries`` bounds how often an unreachable server is retried (with doubling
    delays from ``retry_delay``); other errors are not retried.
    """

    def __init__(
        self,
        detector: SplitPipeline,
        url: str | None = None,
        protocol: str = "http",
        fp16: bool = False,
        model: str | None = None,
        retries: int = 3,
        retry_delay: float = 0.5,
        timeout: float = 30.0,
        binary: bool = True,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
        if not binary and (protocol != "http" or fp16):
            raise ValueError("JSON text (binary=False) exists only over HTTP with FP32, as in the reference design")
        self.detector = detector
        self.protocol = protocol
        self.url = (url or DEFAULT_URLS[protocol]).removeprefix("http://").removeprefix("grpc://")
        self.fp16 = fp16
        self.binary = binary
        self.noisy = detector.obfuscator is not None
        self.model = model or model_name(self.noisy, fp16, served_prefix(detector.model))
        self.outputs = output_names(detector.model)
        self.retries = max(0, int(retries))
        self.retry_delay = retry_delay
        self.timeout = timeout
        self._client = None

    # The same interface as Detector (settings, obfuscator, client_side, boxes_from_activation,
    # detect), so veil.evaluation runs through the server unchanged, seeded noise and NSR included.
    @property
    def obfuscator(self):
        return self.detector.obfuscator

    @property
    def weights_sha256(self) -> str:
        return self.detector.weights_sha256

    @property
    def scale(self) -> float:
        return self.detector.scale

    @property
    def post(self):
        return self.detector.post

    @property
    def max_pixels(self):
        return getattr(self.detector, "max_pixels", None)

    # -- connection ----------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            if self.protocol == "http":
                import tritonclient.http as httpclient

                self._client = httpclient.InferenceServerClient(
                    self.url, connection_timeout=self.timeout, network_timeout=self.timeout
                )
            else:
                import tritonclient.grpc as grpcclient

                self._client = grpcclient.InferenceServerClient(self.url)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001 - closing a dead connection may fail; nothing to do
                pass
            self._client = None

    def __enter__(self) -> TritonDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _unavailable(self, exc: BaseException | None) -> ServerUnavailableError:
        return ServerUnavailableError(
            f"no Triton server answered at {self.url} ({self.protocol}) after {self.retries + 1} tries "
            f"({_describe(exc)}); {start_hint()}"
        )

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        """Block until the server and this client's model are ready, or raise ServerUnavailableError."""
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            try:
                if self.protocol == "grpc":
                    ready = self.client.is_server_ready(client_timeout=self.timeout) and self.client.is_model_ready(
                        self.model, client_timeout=self.timeout
                    )
                else:
                    ready = self.client.is_server_ready() and self.client.is_model_ready(self.model)
                if ready:
                    return
            except Exception as exc:  # noqa: BLE001 - any failure here means "not ready yet"
                last = exc
                self.close()
            time.sleep(0.25)
        raise ServerUnavailableError(
            f"Triton server at {self.url} ({self.protocol}) with model {self.model!r} not ready after "
            f"{timeout:.0f} s ({_describe(last) if last else 'not ready'}); {start_hint()}"
        )

    # -- one request ---------------------------------------------------------------------------
    def infer_activation(self, activation: torch.Tensor | np.ndarray) -> tuple[np.ndarray, ...]:
        """Send one activation ``[N,C,h,w]``; return the tail's outputs as FP32 arrays (FaceBoxes: ``loc, conf``)."""
        a = activation.detach().cpu().numpy() if isinstance(activation, torch.Tensor) else np.asarray(activation)
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_delay * 2 ** (attempt - 1))
            try:
                inp = encode_input(self.protocol, a, self.fp16, self.binary)
                outputs = requested_outputs(self.protocol, self.binary, self.outputs)
                if self.protocol == "grpc":  # gRPC has no deadline unless given one per call
                    res = self.client.infer(self.model, [inp], outputs=outputs, client_timeout=self.timeout)
                else:  # HTTP: connection_timeout and network_timeout of the client
                    res = self.client.infer(self.model, [inp], outputs=outputs)
                # Copies: tritonclient returns read-only views of its receive buffer.
                return tuple(np.array(res.as_numpy(n)) for n in self.outputs)
            except Exception as exc:
                if not _is_unavailable(exc):
                    raise self._refused(exc) from exc
                last = exc
                self.close()  # reconnect on the next try
        raise self._unavailable(last) from last

    def _refused(self, exc: BaseException) -> InferenceError:
        msg = _describe(exc)
        if "unknown model" in msg.lower() or "not found" in msg.lower():
            try:
                names = sorted(
                    m["name"] if isinstance(m, dict) else m.name
                    for m in _index(self.client, self.protocol, self.timeout)
                )
                msg += f"; the server at {self.url} serves: {', '.join(names) or 'no models'}"
            except Exception:  # noqa: BLE001 - the listing is a courtesy (restricted on veil's servers)
                msg += (
                    f"; veil's servers for this model serve {', '.join(all_models(served_prefix(self.detector.model)))}"
                )
        return InferenceError(f"the Triton server at {self.url} refused the request for model {self.model!r}: {msg}")

    # -- whole images --------------------------------------------------------------------------
    def client_side(self, image: np.ndarray, obfuscate: bool = True) -> tuple[torch.Tensor, Prepared]:
        """Preprocess, head and (if configured) obfuscation: the activation that will be sent."""
        return self.detector.client_side(image, obfuscate=obfuscate)

    def boxes_from_activation(self, a: torch.Tensor, prep: Prepared) -> Any:
        """Send ``a`` (as FP16 if so configured), get the tail's outputs, post-process them here."""
        return self._send(a, prep)[0]

    def _send(self, a: torch.Tensor, prep: Prepared) -> tuple[Prediction, torch.Tensor]:
        if self.fp16:
            a = a.half()
        outputs = tuple(torch.from_numpy(o) for o in self.infer_activation(a))
        return self.detector.predict_from_outputs(outputs, prep), a

    def detect_with_activation(self, image: np.ndarray) -> tuple[Any, torch.Tensor]:
        """The answer for a uint8 image (boxes for a detector), and the exact activation that was sent for it."""
        return self._send(*self.client_side(image))

    def detect(self, image: np.ndarray) -> Any:
        """``[K,5]`` boxes ``x1,y1,x2,y2,score`` in the image's pixels (a detector's), with the tail on the server."""
        return self.detect_with_activation(image)[0]

    def predict(self, image: np.ndarray) -> Any:
        """The task's answer for a uint8 image (:meth:`veil.pipeline.SplitPipeline.predict`), tail on the server."""
        return self.detect_with_activation(image)[0]

    def run_many(
        self,
        items: Iterable[str | Path | tuple[str, np.ndarray]],
        on_result: Callable[[int, ImageResult], None] | None = None,
        keep: bool = False,
    ) -> list[ImageResult]:
        """Detect on many images; never stops at a bad image or an unreachable server.

        Each item is a path or ``(name, image)``. An image that cannot be read, or that fails
        because the server is down (after the bounded retries), is reported in its
        :class:`ImageResult` and the run goes on, so images after the server comes back are
        processed. ``keep=True`` keeps each image and the activation sent (for drawing).
        """
        results = []
        for i, item in enumerate(items):
            name, image = (str(item), None) if isinstance(item, (str, Path)) else (str(item[0]), item[1])
            r = ImageResult(name)
            try:
                if image is None:
                    image = load_image(name, max_pixels=self.max_pixels)
                r.boxes, a = self.detect_with_activation(image)
                if keep:
                    r.image, r.activation = image, a
            except ImageReadError as exc:
                r.error = str(exc)
            except ServerUnavailableError as exc:
                r.error, r.unavailable = str(exc), True
            except (InferenceError, ValueError) as exc:  # refused request, or an image the head cannot take
                r.error = str(exc)
            except MemoryError:
                r.error = f"{name}: out of memory while processing it (MemoryError)"
            except Exception as exc:  # noqa: BLE001 - any other failure is this image's, reported, never lost
                r.error = f"{name}: {exc.__class__.__name__}: {exc}"
            results.append(r)
            if on_result is not None:
                on_result(i, r)
        return results


def _index(client, protocol: str, timeout: float = 10.0):
    if protocol == "http":
        return client.get_model_repository_index()  # bounded by the client's network timeout
    return client.get_model_repository_index(client_timeout=timeout).models


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no error"
    msg = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return f"{exc.__class__.__name__}: {msg}".strip()


def _is_unavailable(exc: BaseException) -> bool:
    """Connection-level failures (retry, then report the server missing) vs. refused requests."""
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    status = getattr(exc, "status", None)
    status = status() if callable(status) else status
    if status is not None and ("UNAVAILABLE" in str(status) or str(status) in ("503", "502", "504")):
        return True
    text = _describe(exc).lower()
    if "unknown model" in text and "not found" in text:
        return False  # a wrong model name is the caller's error, not a missing server
    return any(h in text for h in _UNAVAILABLE_HINTS)

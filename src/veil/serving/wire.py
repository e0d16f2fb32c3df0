"""What crosses the wire: tensor encoding for tritonclient, and a recording proxy to prove it.

The trust-zone client sends one tensor, the (obfuscated) activation, as *binary* tensor data
(``binary_data=True`` over HTTP, ``raw_input_contents`` over gRPC), FP32 or FP16.
``binary=False`` reproduces the reference design's FP32-as-JSON-text request, kept for the
side-by-side benchmark.

:class:`RecordingProxy` is a loopback TCP proxy that forwards to a server and keeps every byte
the client sent, so a test or an auditor can read exactly what left the trust zone.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from veil.export import INPUT_NAME, OUTPUT_NAMES


def encode_input(protocol: str, activation: np.ndarray, fp16: bool = False, binary: bool = True):
    """The ``INPUT_0`` tensor for ``tritonclient.<protocol>``; FP16 halves the bytes sent."""
    a = np.ascontiguousarray(activation, dtype=np.float16 if fp16 else np.float32)
    dtype = "FP16" if fp16 else "FP32"
    if protocol == "http":
        import tritonclient.http as httpclient

        inp = httpclient.InferInput(INPUT_NAME, list(a.shape), dtype)
        inp.set_data_from_numpy(a, binary_data=binary)
        return inp
    if protocol == "grpc":
        if not binary:
            raise ValueError("gRPC always sends tensors as binary; JSON text exists only over HTTP")
        import tritonclient.grpc as grpcclient

        inp = grpcclient.InferInput(INPUT_NAME, list(a.shape), dtype)
        inp.set_data_from_numpy(a)
        return inp
    raise ValueError(f"unknown protocol {protocol!r}; use 'http' or 'grpc'")


def requested_outputs(protocol: str, binary: bool = True, names: Sequence[str] = OUTPUT_NAMES) -> list:
    """Ask for every output of the tail (``names``: :func:`veil.export.output_names` of the model;
    binary over HTTP unless reproducing the JSON reference)."""
    if protocol == "http":
        import tritonclient.http as httpclient

        return [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
    import tritonclient.grpc as grpcclient

    return [grpcclient.InferRequestedOutput(n) for n in names]


@dataclass
class Connection:
    """One client connection through the proxy: bytes each way."""

    sent: bytearray = field(default_factory=bytearray)  # client → server (when recording)
    sent_bytes: int = 0  # client → server
    received_bytes: int = 0  # server → client


class RecordingProxy:
    """A loopback TCP proxy ``127.0.0.1:<port> → target`` that records what the client sends.

    Use as a context manager; point the client at :attr:`url`. ``connections`` holds one
    :class:`Connection` per accepted connection, in order.
    """

    def __init__(self, target_host: str, target_port: int, record: bool = True) -> None:
        self.target = (target_host, int(target_port))
        self.record = record
        self.connections: list[Connection] = []
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sent(self) -> bytes:
        """Everything every client sent, concatenated."""
        with self._lock:
            return b"".join(bytes(c.sent) for c in self.connections)

    @property
    def bytes_sent(self) -> int:
        with self._lock:
            return sum(c.sent_bytes for c in self.connections)

    @property
    def bytes_received(self) -> int:
        with self._lock:
            return sum(c.received_bytes for c in self.connections)

    def clear(self) -> None:
        with self._lock:
            for c in self.connections:
                c.sent.clear()
                c.sent_bytes = c.received_bytes = 0

    def start(self) -> RecordingProxy:
        t = threading.Thread(target=self._accept, name="veil-proxy", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection()
            with self._lock:
                self.connections.append(conn)
                self._open += [client, upstream]
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                t = threading.Thread(target=self._pipe, args=(src, dst, conn, up), daemon=True)
                t.start()
                self._threads.append(t)

    def _pipe(self, src: socket.socket, dst: socket.socket, conn: Connection, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                with self._lock:
                    if upstream:
                        conn.sent_bytes += len(data)
                        if self.record:
                            conn.sent += data
                    else:
                        conn.received_bytes += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        try:
            self._sock.close()
        except OSError:
            pass
        with self._lock:
            socks, self._open = self._open, []
        for s in socks:
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self) -> RecordingProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


# -- reading recorded traffic --------------------------------------------------------------------


def http_requests(stream: bytes) -> list[tuple[bytes, dict[str, str], bytes]]:
    """Split a recorded HTTP/1.1 client stream into ``(request line, headers, body)``."""
    out = []
    pos = 0
    while pos < len(stream):
        end = stream.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        head = stream[pos:end].split(b"\r\n")
        headers = {}
        for line in head[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower().decode()] = v.strip().decode()
        n = int(headers.get("content-length", 0))
        body = stream[end + 4 : end + 4 + n]
        out.append((head[0], headers, body))
        pos = end + 4 + n
    return out


def http2_messages(stream: bytes) -> list[bytes]:
    """Reassemble the gRPC messages of a recorded HTTP/2 client stream (DATA frames per stream)."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    pos = len(preface) if stream.startswith(preface) else 0
    data: dict[int, bytearray] = {}
    while pos + 9 <= len(stream):
        length = int.from_bytes(stream[pos : pos + 3], "big")
        ftype, flags = stream[pos + 3], stream[pos + 4]
        sid = int.from_bytes(stream[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        payload = stream[pos + 9 : pos + 9 + length]
        pos += 9 + length
        if ftype == 0:  # DATA
            if flags & 0x8:  # PADDED
                pad = payload[0]
                payload = payload[1 : len(payload) - pad]
            data.setdefault(sid, bytearray()).extend(payload)
    messages = []
    for sid in sorted(data):
        buf = bytes(data[sid])
        i = 0
        while i + 5 <= len(buf):
            n = int.from_bytes(buf[i + 1 : i + 5], "big")
            messages.append(buf[i + 5 : i + 5 + n])
            i += 5 + n
    return messages

"""Where inference-time noise comes from: an AES-256-CTR keystream turned into unit-variance samples.

Why not torch's generator: it is MT19937, whose whole state follows from 624 consecutive
outputs. One request whose clean activation is known (an image the attacker chose or
recognises) hands the server ``σ ε`` for hundreds of thousands of elements, hence the state,
hence every later request's noise — which can then be subtracted. AES-CTR under a secret
256-bit key is a pseudo-random function: its outputs say nothing about other outputs.

Three ways to key a stream (:class:`Keystream`):

* **fresh** — a random key and nonce from the OS (:mod:`secrets`) per stream: the default;
* **seeded** — key = SHA-256 of the seed: reproducible, for experiments only;
* **keyed** — key = HMAC-SHA256(client key, activation content, noise parameters): the same
  image through the same noise file always gets the same ε, so averaging exact repeats gains
  nothing (:func:`keyed_stream`). The client key stays in the trust zone (:class:`NoiseKey`).

Uniforms take 24 bits of a 32-bit word (exactly representable in float32) at the cell
midpoints, so no sample is 0 or 1. Gaussians come from Box–Muller (exact zero mean by the
symmetry of cos/sin over a uniform angle grid, unit variance up to the 5.9σ tail cut of
24-bit uniforms); Laplace by inverting its CDF with scale 1/√2 (unit variance).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import secrets
import stat
import struct
import threading
from pathlib import Path

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

#: Shortest accepted client key (bytes): 256 bits.
MIN_KEY_BYTES = 32
_KEY_DOMAIN = b"veil-keyed-noise/1\0"
_SEED_DOMAIN = b"veil-seeded-noise/1\0"
_zeros = bytes(0)  # one shared all-zero plaintext, grown to the largest request seen
_BITS = 24
_SCALE = 2.0**-_BITS


class NoiseKeyError(ValueError):
    """A client noise key (or its file) that is missing, too short, guessable or readable by others."""


class NoiseKey:
    """A client secret for keyed noise. Its bytes never appear in ``repr``/``str`` (logs), only an id.

    ``id`` is HMAC(key, "id"), 8 hex digits: enough to tell keys apart in a log, useless for
    recovering the key.
    """

    __slots__ = ("_key",)
    _key: bytes

    def __init__(self, key: bytes | bytearray | NoiseKey) -> None:
        if isinstance(key, NoiseKey):
            key = key._key
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError(f"a noise key is bytes (≥ {MIN_KEY_BYTES}), not {type(key).__name__}")
        key = bytes(key)
        if len(key) < MIN_KEY_BYTES:
            raise NoiseKeyError(
                f"noise key too short: {len(key)} bytes, need at least {MIN_KEY_BYTES} "
                "(create one with `veil noise-key new FILE`)"
            )
        if len(set(key)) < 8:
            raise NoiseKeyError(
                "noise key is not random (fewer than 8 distinct byte values); create one with `veil noise-key new FILE`"
            )
        self._key = key

    @property
    def id(self) -> str:
        return hmac.new(self._key, b"veil-key-id", hashlib.sha256).hexdigest()[:8]

    def digest(self, *parts) -> bytes:
        """HMAC-SHA256 of the parts (each length-prefixed, so no two part lists collide)."""
        h = hmac.new(self._key, _KEY_DOMAIN, hashlib.sha256)
        for p in parts:
            h.update(struct.pack("<Q", memoryview(p).nbytes))
            h.update(p)
        return h.digest()

    def __repr__(self) -> str:
        return f"NoiseKey(id={self.id})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoiseKey) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(self.id)

    def __reduce__(self):  # worker processes (trust zone) need the key itself
        return (NoiseKey, (self._key,))


def read_key_file(path: str | os.PathLike) -> NoiseKey:
    """Load a client key: hex text (≥ 64 hex digits) or raw bytes (≥ 32), refusing others' access.

    Refused: a missing or non-regular file, an empty or too-short key, and a file that other
    users can read or write (mode ``o+rwx``; group access is allowed, as Kubernetes ``fsGroup``
    mounts need it).
    """
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise NoiseKeyError(f"noise key file not found: {p} (create one with `veil noise-key new {p}`)") from None
    if not stat.S_ISREG(st.st_mode):
        raise NoiseKeyError(f"noise key file {p} is not a regular file")
    if st.st_mode & 0o007:
        raise NoiseKeyError(
            f"noise key file {p} is accessible to other users (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"a secret key must not be: `chmod 600 {p}`"
        )
    raw = p.read_bytes()
    text = raw.strip()
    if not text:
        raise NoiseKeyError(f"noise key file {p} is empty")
    try:
        key = bytes.fromhex(text.decode("ascii")) if all(c in b"0123456789abcdefABCDEF" for c in text) else raw
    except ValueError:  # odd number of hex digits
        key = raw
    try:
        return NoiseKey(key)
    except NoiseKeyError as exc:
        raise NoiseKeyError(f"noise key file {p}: {exc}") from None


def new_key_file(path: str | os.PathLike, *, overwrite: bool = False) -> NoiseKey:
    """Create a key file (32 random bytes as hex, mode 0600, never replacing one unless asked)."""
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(MIN_KEY_BYTES)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(p, flags, 0o600)
    except FileExistsError:
        raise NoiseKeyError(f"{p} exists; refusing to replace a key (the noise it keyed would change)") from None
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)  # O_CREAT's mode is masked by umask; an existing file keeps its own
        fh.write(key.hex() + "\n")
    return NoiseKey(key)


class Keystream:
    """AES-256-CTR keystream; thread-safe; never reuses a (key, counter) pair within the stream."""

    def __init__(self, key: bytes, nonce: bytes = bytes(16)) -> None:
        if len(key) != 32 or len(nonce) != 16:
            raise ValueError("Keystream needs a 32-byte key and a 16-byte nonce")
        self._enc = Cipher(algorithms.AES(key), modes.CTR(nonce)).encryptor()
        self._lock = threading.Lock()

    @classmethod
    def fresh(cls) -> Keystream:
        """Random key and nonce from the OS: the default, unpredictable stream."""
        return cls(secrets.token_bytes(32), secrets.token_bytes(16))

    @classmethod
    def from_seed(cls, seed: int) -> Keystream:
        """Reproducible stream for experiments: key = SHA-256(domain ‖ seed)."""
        return cls(hashlib.sha256(_SEED_DOMAIN + str(int(seed)).encode()).digest())

    def words(self, n: int) -> np.ndarray:
        """``n`` keystream words as uint32."""
        global _zeros
        size = 4 * n
        if len(_zeros) < size:
            _zeros = bytes(size)
        buf = bytearray(size + 15)  # update_into wants room for one more block
        with self._lock:
            self._enc.update_into(memoryview(_zeros)[:size], buf)
        return np.frombuffer(buf, dtype=np.uint32, count=n)

    def sample(self, n: int, family: str) -> torch.Tensor:
        """``n`` float32 samples of zero mean and unit variance (``gaussian`` or ``laplace``), CPU.

        Computed with numpy's single-threaded loops: a few hundred thousand elements gain nothing
        from threads, and torch's parallel regions stall for milliseconds on a busy machine.
        """
        if family == "gaussian":
            return torch.from_numpy(_box_muller(self.words(n + (n & 1)))[:n])
        if family == "laplace":
            u = _uniform(self.words(n))
            u -= np.float32(0.5)  # in (-0.5, 0.5), never 0 or ±0.5
            out = np.abs(u)
            out *= np.float32(-2)
            np.log1p(out, out=out)
            out *= np.sign(u)
            out *= np.float32(-1 / math.sqrt(2))
            return torch.from_numpy(out)
        raise ValueError(f"unknown noise family {family!r}")


def _uniform(w: np.ndarray) -> np.ndarray:
    """Cell midpoints of 2^24 equal cells in (0, 1), float32."""
    u = (w & np.uint32(0xFFFFFF)).astype(np.float32)
    u += np.float32(0.5)
    u *= np.float32(_SCALE)
    return u


def _box_muller(w: np.ndarray) -> np.ndarray:
    h = w.size // 2
    r = _uniform(w[:h])
    np.log(r, out=r)
    r *= np.float32(-2)
    np.sqrt(r, out=r)
    theta = (w[h:] & np.uint32(0xFFFFFF)).astype(np.float32)
    theta *= np.float32(2 * math.pi * _SCALE)
    out = np.empty(2 * h, dtype=np.float32)
    np.cos(theta, out=out[:h])
    out[:h] *= r
    np.sin(theta, out=out[h:])
    out[h:] *= r
    return out


def keyed_stream(key: NoiseKey, item: torch.Tensor, params: bytes) -> Keystream:
    """The stream for one activation: key = HMAC(client key, shape, dtype, bytes, noise parameters).

    ``params`` identifies the noise file (μ, σ, family): the same image through two noise files
    gets independent ε, otherwise their difference would reveal ε and then the activation.
    """
    a = item.detach().to("cpu").contiguous()
    content = a.view(torch.uint8) if a.dtype != torch.bool else a.to(torch.uint8)
    return Keystream(
        key.digest(
            b"shape" + str(tuple(a.shape)).encode(),
            str(a.dtype).encode(),
            content.numpy().data.cast("B"),
            params,
        )
    )

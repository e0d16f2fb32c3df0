"""The obfuscation transform ``ã = a + μ + σ ⊙ ε``, with ε drawn fresh on every call.

Why per-channel parameters (μ, σ of shape ``[C]``, broadcast over batch and space):
the head is fully convolutional, so an activation's channels mean the same thing
at every position and for every input size, while its height and width change with
the image. Per-element parameters would tie the noise to one input size (and to
where faces happened to be in the fitting images); per-channel parameters work for
any size the detector accepts and still let the fit put much noise on channels the
tail barely uses and little on the ones it needs. That per-channel spread is what
buys noise power that isotropic noise of the same power cannot (see ``veil sweep``).

Where ε comes from (:attr:`Obfuscator.mode`):

* ``fresh`` (default) — an AES-256-CTR keystream under a random key from the OS
  (:mod:`veil.obfuscate.keystream`), not torch's MT19937, whose state one request with a
  known clean activation would reveal. Copies of a module never share a stream.
* ``keyed`` (``key=``) — ε from HMAC(client key, activation content, noise parameters): the
  same image always gets the same noise, so averaging repeated queries gains nothing.
* ``seeded`` (``seed=`` or an explicit torch ``generator=``) — reproducible, experiments only.
  ``seed=`` keys the AES stream with SHA-256 of the seed; ``generator=`` draws from that torch
  generator (MT19937 on CPU: predictable, kept for comparisons and benchmarks).

The fitting path (autograd through σ ε, :mod:`veil.obfuscate.fit`) draws from a torch
generator seeded with ``seed`` (or from the OS): fast on any device, and that noise is only
ever seen inside the trust zone. Only the inference path sends noise out, so only it must be
cryptographic.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets

import numpy as np
import torch
from torch import nn

from veil.obfuscate.keystream import Keystream, NoiseKey, keyed_stream

#: Noise families; ε has zero mean and unit variance in each, so σ² is the noise power.
FAMILIES = ("gaussian", "laplace")


class Obfuscator(nn.Module):
    """``a → a + μ + σ ⊙ ε`` over channel dimension 1 of ``[N, C, *spatial]`` activations.

    ``mu`` and ``log_sigma`` are the learned parameters (σ = exp(log σ) stays positive).
    ``signal_power`` (E[a_c²] on the fitting data) is a buffer kept for the loss's
    privacy term and for reporting; it does not change the transform.
    """

    def __init__(
        self,
        channels: int,
        family: str = "gaussian",
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        key: bytes | NoiseKey | None = None,
        init_sigma: float | torch.Tensor = 1e-3,
    ) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"unknown noise family {family!r}; choose one of {', '.join(FAMILIES)}")
        self.family = family
        self.channels = int(channels)
        self.mu = nn.Parameter(torch.zeros(channels))
        sigma = torch.as_tensor(init_sigma, dtype=torch.float32).expand(channels).clamp_min(1e-12)
        self.log_sigma = nn.Parameter(sigma.log().clone())
        self.signal_power: torch.Tensor
        self.register_buffer("signal_power", torch.ones(channels))
        self._seed = seed
        self._explicit = generator
        self._generators: dict[str, torch.Generator] = {}
        self._stream: Keystream | None = None
        self._stream_pid = 0
        self._key: NoiseKey | None = None
        self.set_key(key)

    # -- the noise source ---------------------------------------------------------------------
    @property
    def seeded(self) -> bool:
        """True when the noise is reproducible (an explicit seed or generator): experiments only."""
        return self._seed is not None or self._explicit is not None

    @property
    def mode(self) -> str:
        """``keyed``, ``seeded`` or ``fresh`` (see the module docstring)."""
        return "keyed" if self._key is not None else "seeded" if self.seeded else "fresh"

    @property
    def key_id(self) -> str | None:
        """A short, non-secret id of the client key (keyed mode), for logs; None otherwise."""
        return self._key.id if self._key is not None else None

    def set_key(self, key: bytes | NoiseKey | None) -> None:
        """Switch to keyed noise under ``key`` (≥ 32 bytes), or with None back to fresh/seeded noise."""
        if key is not None and self.seeded:
            raise ValueError(
                "keyed noise and a seed exclude each other: the key already makes the noise reproducible per image"
            )
        self._key = NoiseKey(key) if key is not None else None

    def reseed(self, seed: int | None = None) -> None:
        """Restart the noise stream: from ``seed`` (reproducible) or, with None, from the OS (or the key)."""
        if seed is not None and self._key is not None:
            raise ValueError("a keyed obfuscator cannot be seeded (its noise is already fixed per image)")
        self._seed, self._explicit, self._generators, self._stream = seed, None, {}, None

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._explicit is not None:
            return self._explicit
        key = str(device)
        g = self._generators.get(key)
        if g is None:
            g = torch.Generator(device=device)
            g.manual_seed(self._seed if self._seed is not None else secrets.randbits(63))
            self._generators[key] = g
        return g

    def _keystream(self) -> Keystream:
        # A forked child inherits the parent's stream object: it must not replay the parent's noise.
        if self._stream is None or (self._seed is None and self._stream_pid != os.getpid()):
            self._stream = Keystream.from_seed(self._seed) if self._seed is not None else Keystream.fresh()
            self._stream_pid = os.getpid()
        return self._stream

    def __getstate__(self) -> dict:
        # Streams neither pickle nor should be shared: a copy draws its own (a seeded copy restarts
        # its seed's stream). The client key travels: worker processes stay in the trust zone.
        state = self.__dict__.copy()
        state["_generators"] = {}
        state["_explicit"] = None
        state["_stream"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        for name, default in (("_stream", None), ("_stream_pid", 0), ("_key", None)):  # pickles from before them
            state.setdefault(name, default)
        super().__setstate__(state)

    def _params_digest(self) -> bytes:
        """Identifies the noise parameters, so keyed ε differs between noise files (see keyed_stream)."""
        h = hashlib.sha256(self.family.encode())
        for t in (self.mu, self.log_sigma):
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        return h.digest()

    def sample_eps(
        self,
        shape: torch.Size,
        device: torch.device,
        dtype: torch.dtype,
        a: torch.Tensor | None = None,
        *,
        fitting: bool = False,
    ) -> torch.Tensor:
        """Zero-mean, unit-variance noise of ``shape``, from the source :attr:`mode` names.

        Keyed mode needs the activation ``a`` (its content keys the stream, one per batch item).
        ``fitting=True`` (the autograd path) draws from a torch generator unless keyed.
        """
        if self._key is not None:
            if a is None or tuple(a.shape) != tuple(shape):
                raise ValueError("keyed noise is derived from the activation: pass a= of the same shape")
            params = self._params_digest()
            per = math.prod(shape[1:])
            buf = np.empty(math.prod(shape), dtype=np.float32)  # numpy: no torch parallel region (see keystream)
            for i in range(shape[0]):
                buf[i * per : (i + 1) * per] = keyed_stream(self._key, a[i], params).sample(per, self.family).numpy()
            return torch.from_numpy(buf).view(shape).to(device=device, dtype=dtype)
        if self._explicit is not None or fitting:
            return self._torch_eps(shape, device, dtype)
        eps = self._keystream().sample(math.prod(shape), self.family).view(shape)
        return eps.to(device=device, dtype=dtype)

    def _torch_eps(self, shape: torch.Size, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        g = self._generator(device)
        if self.family == "gaussian":
            return torch.randn(shape, generator=g, device=device, dtype=dtype)
        u = torch.rand(shape, generator=g, device=device, dtype=dtype) - 0.5  # in [-0.5, 0.5)
        return -(1 / math.sqrt(2)) * torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace, b = 1/√2

    # -- the transform ------------------------------------------------------------------------
    @property
    def sigma(self) -> torch.Tensor:
        return self.log_sigma.exp()

    def noise_variance(self) -> torch.Tensor:
        """Per-channel noise power E[(σ_c ε)²] = σ_c² (ε has unit variance), shape ``[C]``."""
        return self.log_sigma.detach().float().exp().pow(2)

    def _view(self, t: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return t.to(a.dtype).view(1, -1, *([1] * (a.ndim - 2)))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if a.ndim < 2 or a.shape[1] != self.channels:
            raise ValueError(
                f"obfuscator fitted for {self.channels} channels got an activation of shape "
                f"{tuple(a.shape)} (channels are dimension 1)"
            )
        if torch.is_grad_enabled() and (self.log_sigma.requires_grad or self.mu.requires_grad or a.requires_grad):
            eps = self.sample_eps(a.shape, a.device, a.dtype, a, fitting=True)
            return a + self._view(self.mu, a) + self._view(self.sigma, a) * eps  # fitting: autograd path
        eps = self.sample_eps(a.shape, a.device, a.dtype, a)  # a new tensor: safe to fill in place
        sigma, mu = self._view(self.sigma, a), self._view(self.mu, a)
        if a.device.type == "cpu" and a.dtype in (torch.float32, torch.float64):  # numpy has no bfloat16
            # Inference on CPU: in place on the fresh noise buffer, through numpy's single-threaded
            # loops. A few hundred thousand elements gain nothing from threads, and torch's parallel
            # region stalls on a busy machine (measured: 0.4 ms here vs 7–45 ms on 2 shared cores).
            n = eps.numpy()
            n *= sigma.numpy()
            n += mu.numpy()
            n += a.detach().numpy()
            return eps
        return eps.mul_(sigma).add_(mu).add_(a)

    def extra_repr(self) -> str:
        key = f", key_id={self.key_id}" if self._key is not None else ""
        return f"channels={self.channels}, family={self.family}, mode={self.mode}{key}"


def isotropic_like(obf: Obfuscator, *, seed: int | None = None) -> Obfuscator:
    """Plain noise of the same total power as ``obf``: one σ for every channel, μ = 0.

    The baseline that shows what learning buys: σ_iso² = mean_c σ_c², so the expected
    noise power per activation element is the same as the fitted transform's.
    """
    iso = Obfuscator(obf.channels, obf.family, seed=seed)
    with torch.no_grad():
        iso.log_sigma.fill_(0.5 * float(torch.log(obf.noise_variance().mean())))
        iso.signal_power.copy_(obf.signal_power)
    return iso.to(obf.mu.device)

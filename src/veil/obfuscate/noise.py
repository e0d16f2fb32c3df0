"""The obfuscation transform ``ã = a + μ + σ ⊙ ε``, with ε drawn fresh on every call.

Why per-channel parameters (μ, σ of shape ``[C]``, broadcast over batch and space):
the head is fully convolutional, so an activation's channels mean the same thing
at every position and for every input size, while its height and width change with
the image. Per-element parameters would tie the noise to one input size (and to
where faces happened to be in the fitting images); per-channel parameters work for
any size the detector accepts and still let the fit put much noise on channels the
tail barely uses and little on the ones it needs. That per-channel spread is what
buys noise power that isotropic noise of the same power cannot (see ``veil sweep``).

Unpredictable by default: each module draws from its own ``torch.Generator`` seeded
from the operating system (:mod:`secrets`), per device, so no seed is fixed or
guessable and copies of a module never share a stream. ``seed=`` (or an explicit
``generator=``) exists only for reproducible experiments.
"""

from __future__ import annotations

import math
import secrets

import torch
from torch import nn

#: Noise families; ε has zero mean and unit variance in each, so σ² is the noise power.
FAMILIES = ("gaussian", "laplace")


class Obfuscator(nn.Module):
    """``a → a + μ + σ ⊙ ε`` over channel dimension 1 of ``[N, C, *spatial]`` activations.

    ``mu`` and ``log_sigma`` are the learned parameters (σ = exp(log σ) stays positive).
    ``signal_power`` (E[a_c²] on the fitting data) is a buffer kept for the loss's
    privacy term and for reporting; it does not change the transform.
    """

    def __init__(self, channels: int, family: str = "gaussian", *, seed: int | None = None,
                 generator: torch.Generator | None = None, init_sigma: float | torch.Tensor = 1e-3) -> None:
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"unknown noise family {family!r}; choose one of {', '.join(FAMILIES)}")
        self.family = family
        self.channels = int(channels)
        self.mu = nn.Parameter(torch.zeros(channels))
        sigma = torch.as_tensor(init_sigma, dtype=torch.float32).expand(channels).clamp_min(1e-12)
        self.log_sigma = nn.Parameter(sigma.log().clone())
        self.register_buffer("signal_power", torch.ones(channels))
        self._seed = seed
        self._explicit = generator
        self._generators: dict[str, torch.Generator] = {}

    # -- the noise source ---------------------------------------------------------------------
    @property
    def seeded(self) -> bool:
        """True when the noise is reproducible (an explicit seed or generator): experiments only."""
        return self._seed is not None or self._explicit is not None

    def reseed(self, seed: int | None = None) -> None:
        """Restart the noise stream: from ``seed`` (reproducible) or, with None, from the OS."""
        self._seed, self._explicit, self._generators = seed, None, {}

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

    def __getstate__(self) -> dict:
        # Generators neither pickle nor should be shared: a copy draws its own stream.
        state = self.__dict__.copy()
        state["_generators"] = {}
        state["_explicit"] = None
        return state

    def sample_eps(self, shape: torch.Size, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Zero-mean, unit-variance noise of ``shape`` from this module's generator."""
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
            raise ValueError(f"obfuscator fitted for {self.channels} channels got an activation of shape "
                             f"{tuple(a.shape)} (channels are dimension 1)")
        eps = self.sample_eps(a.shape, a.device, a.dtype)
        if torch.is_grad_enabled() and (self.log_sigma.requires_grad or self.mu.requires_grad or a.requires_grad):
            return a + self._view(self.mu, a) + self._view(self.sigma, a) * eps  # fitting: autograd path
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
        return f"channels={self.channels}, family={self.family}, seeded={self.seeded}"


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

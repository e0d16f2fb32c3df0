"""Input-conditioned noise: per-element ``μ(a)``, ``σ(a)`` from a small conv net run in the trust zone.

The idea behind Protopia's Stained Glass Transform (issue 9 §2b): instead of one μ, σ per channel,
a few convolutions read the activation and say, for every element, how much noise it gets and how
it is shifted, so noise can concentrate where faces are and spare what the tail needs. ε is still
drawn fresh per call from the project's one noise source (:meth:`Obfuscator.sample_eps`: AES-CTR
keystream, or keyed per image), so everything said about the noise's source holds unchanged.

The network's output is a *correction* to a per-channel base (``mu``, ``log_sigma``, usually a
per-channel fit): its last layer starts at zero, so an untrained module is exactly the base noise.
``log σ`` corrections are bounded (±:data:`LOG_SIGMA_RANGE`), and μ corrections are in units of each
channel's RMS, so the module stays in the range the file checks judge.

Files: the same safetensors layout as per-channel noise (``mu``, ``log_sigma``, ``signal_power``) plus
the net's tensors, format :data:`FORMAT`, and a SHA-256 over all tensors in the metadata, so a file
edited after fitting is refused (:func:`veil.obfuscate.artifact.load_noise_file` reads both formats).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from veil.digest import tensors_sha256
from veil.obfuscate.noise import Obfuscator

FORMAT = "veil-conditioned-noise/1"
#: log σ(a) stays within log σ_c ± this (σ within e^±4 ≈ ×55 of the per-channel base).
LOG_SIGMA_RANGE = 4.0
#: μ(a) moves by at most this many channel RMS from the base μ_c.
MU_RANGE = 3.0
DEFAULT_HIDDEN = 32


class ConditionedObfuscator(Obfuscator):
    """``a → a + μ(a) + σ(a) ⊙ ε`` with ``μ(a), log σ(a)`` = base + a 3-layer conv net of ``a``."""

    def __init__(
        self,
        channels: int,
        family: str = "gaussian",
        hidden: int = DEFAULT_HIDDEN,
        **kwargs,
    ) -> None:
        super().__init__(channels, family, **kwargs)
        self.hidden = int(hidden)
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, 2 * channels, 1),
        )
        with torch.no_grad():  # start as the base noise exactly
            last = self.net[-1]
            assert isinstance(last, nn.Conv2d)
            last.weight.zero_()
            if last.bias is not None:
                last.bias.zero_()
        self.in_scale: torch.Tensor
        self.register_buffer("in_scale", torch.ones(channels))  # 1 / RMS per channel on the fitting data
        self.mean_variance: torch.Tensor
        self.register_buffer("mean_variance", torch.ones(channels))  # E[σ(a)²] per channel, fitting data
        #: log of the per-channel mean σ(a)² of the last forward with gradients (the fit's NSR term).
        self.batch_log_variance: torch.Tensor | None = None

    @classmethod
    def from_base(cls, base: Obfuscator, hidden: int = DEFAULT_HIDDEN) -> ConditionedObfuscator:
        """A conditioned module that starts exactly as ``base`` (per-channel noise, e.g. an NSR fit)."""
        obf = cls(base.channels, base.family, hidden=hidden)
        with torch.no_grad():
            obf.mu.copy_(base.mu)
            obf.log_sigma.copy_(base.log_sigma)
            obf.signal_power.copy_(base.signal_power)
            rms = base.signal_power.clamp_min(1e-6 * float(base.signal_power.mean())).sqrt()
            obf.in_scale.copy_(1.0 / rms)
            obf.mean_variance.copy_(base.noise_variance())
        return obf

    def noise_params(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-element ``(μ(a), log σ(a))``, each shaped like ``a`` ``[N,C,h,w]``."""
        if a.ndim != 4 or a.shape[1] != self.channels:
            raise ValueError(
                f"conditioned noise fitted for {self.channels} channels needs an activation [N,{self.channels},h,w], "
                f"got {tuple(a.shape)}"
            )
        scale = self.in_scale.to(a.dtype).view(1, -1, 1, 1)
        d_mu, d_ls = self.net(a * scale).chunk(2, dim=1)
        rms = 1.0 / scale
        mu = self._view(self.mu, a) + MU_RANGE * rms * torch.tanh(d_mu / MU_RANGE)
        ls = self._view(self.log_sigma, a) + LOG_SIGMA_RANGE * torch.tanh(d_ls / LOG_SIGMA_RANGE)
        return mu, ls

    def noise_variance_of(self, a: torch.Tensor) -> torch.Tensor:
        """Per-channel mean noise power ``E[σ(a)²]`` over ``a``'s batch and positions, shape ``[C]``."""
        with torch.no_grad():
            _, ls = self.noise_params(a.float())
        return (2 * ls).exp().mean(dim=(0, 2, 3))

    def noise_variance(self) -> torch.Tensor:
        """Per-channel mean noise power on the *fitting* data (σ varies with the input; see
        :meth:`noise_variance_of` for a given activation)."""
        return self.mean_variance.detach().float()

    def _params_digest(self) -> bytes:
        """Keyed ε differs between files: the digest covers the net too (see :func:`keyed_stream`)."""
        h = hashlib.sha256(super()._params_digest())
        h.update(bytes.fromhex(tensors_sha256(dict(self.net.state_dict()))))
        return h.digest()

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        mu, ls = self.noise_params(a)
        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        eps = self.sample_eps(a.shape, a.device, a.dtype, a, fitting=grad)
        if grad:
            self.batch_log_variance = (2 * ls).exp().mean(dim=(0, 2, 3)).log()
        return a + mu + ls.exp() * eps

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """Everything the file holds beyond the per-channel base: the net and its buffers."""
        out = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        out["in_scale"] = self.in_scale
        out["mean_variance"] = self.mean_variance
        return {k: v.detach().float().cpu().contiguous() for k, v in out.items()}

    def load_file_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`file_tensors` (raises ``RuntimeError``/``KeyError`` on a mismatch)."""
        self.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, strict=True)
        with torch.no_grad():
            self.in_scale.copy_(tensors["in_scale"])
            self.mean_variance.copy_(tensors["mean_variance"])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, hidden={self.hidden}"


def effective_log_sigma(obf: ConditionedObfuscator) -> torch.Tensor:
    """log √E[σ(a)²] per channel on the fitting data: what the file checks judge as its σ."""
    return 0.5 * obf.mean_variance.clamp_min(1e-300).log()


def macs_per_cell(channels: int, hidden: int) -> int:
    """Multiply-accumulates of the net per activation cell (the client-side cost's main term)."""
    return 9 * channels * hidden + 9 * hidden * hidden + hidden * 2 * channels

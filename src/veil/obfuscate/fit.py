"""The tuning pass: fit μ and σ of an :class:`Obfuscator` for a frozen head and tail.

Needs no labels. The *distortion* term keeps the tail's outputs on obfuscated
activations close to its outputs on clean ones; the *privacy* term rewards noise
power relative to the activation's own signal power: a blend (``channel_weight``) of
``-mean_c log(σ_c² / E[a_c²])`` — every channel gets noise — and ``-log(Σσ_c² / ΣE[a_c²])``
— the overall ratio, which lets the noise pile onto channels the tail barely uses
(both capped at ``max_nsr_db`` so the loss stays bounded below). ALPHA weighs the terms:

    loss = (1 - ALPHA) · distortion + ALPHA · privacy_weight · privacy

The model's weights are frozen; only μ and log σ receive gradients (through ε by the
reparameterisation ``a + μ + σ ε``). Because the head is frozen, its activations and
the tail's clean outputs are computed once (one pass over the loader) and each step
only runs the tail on a minibatch of freshly obfuscated activations.

The privacy term is pluggable (``objective``): ``nsr`` is the noise-power term above;
``adversarial`` adds what a reconstruction adversary trained alongside still recovers
(:mod:`veil.defenses.adversarial` supplies that term as a :data:`PrivacyTerm`, since the
adversary is a decoder from the privacy layer above this one):

    loss = (1 - ALPHA) · distortion + ALPHA · (privacy_weight · nsr_privacy + adversary_weight · term)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from veil.models.distortion import Outputs, detection_distortion
from veil.obfuscate.noise import Obfuscator

__all__ = [
    "OBJECTIVES",
    "FitConfig",
    "FitResult",
    "Outputs",
    "PrivacyTerm",
    "activation_bank",
    "detection_distortion",
    "fit_noise",
    "nsr_privacy",
]

#: ``nsr``: reward noise power (the default); ``adversarial``: also what an in-loop adversary recovers.
OBJECTIVES = ("nsr", "adversarial")
#: ``term(step, idx, noisy)`` → a scalar to *minimise* (e.g. minus an adversary's reconstruction error),
#: given the step, the bank indices of the minibatch and their obfuscated activations (with gradients).
PrivacyTerm = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FitConfig:
    """Settings of one tuning pass (recorded in the artifact's metadata)."""

    alpha: float
    steps: int = 100
    batch_size: int = 8
    lr: float = 0.05
    family: str = "gaussian"
    privacy_weight: float = 0.0625
    channel_weight: float = 0.5
    max_nsr_db: float = 30.0
    init_nsr_db: float = -10.0
    seed: int = 0
    objective: str = "nsr"
    adversary_weight: float = 0.0  # weight of the pluggable privacy term (objective "adversarial")

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"ALPHA must be in [0, 1), got {self.alpha}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.adversary_weight < 0:
            raise ValueError(f"adversary weight must be ≥ 0, got {self.adversary_weight}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch size must be positive")


@dataclass
class FitResult:
    obfuscator: Obfuscator
    config: FitConfig
    log: list[dict] = field(default_factory=list)  # one entry per logged step
    activation_stats: dict = field(default_factory=dict)
    seconds: float = 0.0


@torch.no_grad()
def activation_bank(
    head: nn.Module, tail: nn.Module, loader: Iterable[torch.Tensor], progress: bool = True
) -> tuple[torch.Tensor, Outputs]:
    """One pass over the loader: clean activations and the tail's clean outputs, on CPU."""
    acts: list[torch.Tensor] = []
    outs: list[Outputs] = []
    for x in tqdm(loader, desc="activations", unit="batch", disable=not progress):
        a = head(x)
        acts.append(a)
        o = tail(a)
        outs.append(tuple(o) if isinstance(o, (tuple, list)) else (o,))
    if not acts:
        raise ValueError("the data loader yielded no images")
    return torch.cat(acts), tuple(torch.cat(parts) for parts in zip(*outs))


def fit_noise(
    head: nn.Module,
    tail: nn.Module,
    loader: Iterable[torch.Tensor] | None,
    config: FitConfig,
    distortion: Callable[[Outputs, Outputs], torch.Tensor] = detection_distortion,
    progress: bool = True,
    log_every: int = 10,
    bank: tuple[torch.Tensor, Outputs] | None = None,
    privacy_term: PrivacyTerm | None = None,
    obfuscator: Obfuscator | None = None,
    net_lr: float = 1e-3,
) -> FitResult:
    """Fit μ and σ for ``config.alpha``; ``head``/``tail`` are frozen, ``loader`` yields image batches.

    ``obfuscator`` fits a given module instead of a new per-channel one: an input-conditioned
    :class:`~veil.obfuscate.conditioned.ConditionedObfuscator` (its net learns at ``net_lr``; its
    NSR term uses the per-channel mean σ(a)² of each minibatch).

    ``bank`` (from :func:`activation_bank`) skips the pass over ``loader``: a sweep computes
    it once and fits every ALPHA on it. ``privacy_term`` is required by (and only used with) the
    ``adversarial`` objective; its indices refer to the bank's rows.
    """
    if (config.objective == "adversarial") != (privacy_term is not None):
        raise ValueError("the adversarial objective needs a privacy_term (and only it uses one)")
    t0 = time.perf_counter()
    head.eval()
    tail.eval()
    frozen = [p for m in (head, tail) for p in m.parameters()]
    was = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    try:
        if bank is None:
            if loader is None:
                raise ValueError("give a data loader or a precomputed activation bank")
            bank = activation_bank(head, tail, loader, progress)
        acts, clean = bank
        return _fit(acts, clean, tail, config, distortion, progress, log_every, t0, privacy_term, obfuscator, net_lr)
    finally:
        for p, r in zip(frozen, was):
            p.requires_grad_(r)


def _fit(
    acts: torch.Tensor,
    clean: Outputs,
    tail: nn.Module,
    cfg: FitConfig,
    distortion: Callable[[Outputs, Outputs], torch.Tensor],
    progress: bool,
    log_every: int,
    t0: float,
    privacy_term: PrivacyTerm | None = None,
    given: Obfuscator | None = None,
    net_lr: float = 1e-3,
) -> FitResult:
    c = acts.shape[1]
    power = acts.transpose(0, 1).reshape(c, -1).pow(2).mean(1)
    floor = power.mean() * 1e-6  # dead channels: a tiny reference power instead of zero
    ref = power.clamp_min(floor)
    if given is None:
        obf = Obfuscator(c, cfg.family, seed=cfg.seed, init_sigma=(ref * 10 ** (cfg.init_nsr_db / 10)).sqrt())
    else:
        obf = given
        obf.reseed(cfg.seed)
        obf.requires_grad_(True)
        obf.train()
    obf.signal_power.copy_(power)
    groups: list[dict] = [
        {"params": [obf.log_sigma], "lr": cfg.lr},
        {"params": [obf.mu], "lr": cfg.lr * float(ref.mean().sqrt())},
    ]
    extra = [p for n, p in obf.named_parameters() if n not in ("mu", "log_sigma")]
    if extra:
        groups.append({"params": extra, "lr": net_lr})
    opt = torch.optim.Adam(groups)
    g = torch.Generator().manual_seed(cfg.seed)
    n = acts.shape[0]
    log: list[dict] = []
    bar = tqdm(range(cfg.steps), desc=f"fit α={cfg.alpha:g}", unit="step", disable=not progress)
    for step in bar:
        idx = torch.randint(0, n, (min(cfg.batch_size, n),), generator=g)
        obfuscated = obf(acts[idx])
        noisy = tail(obfuscated)
        noisy = tuple(noisy) if isinstance(noisy, (tuple, list)) else (noisy,)
        dist = distortion(tuple(o[idx] for o in clean), noisy)
        log_var = getattr(obf, "batch_log_variance", None)  # input-conditioned σ(a): this batch's mean σ²
        privacy = nsr_privacy(2 * obf.log_sigma if log_var is None else log_var, ref, cfg)
        priv = cfg.privacy_weight * privacy
        adv = None
        if privacy_term is not None:
            adv = privacy_term(step, idx, obfuscated)
            priv = priv + cfg.adversary_weight * adv
        loss = (1 - cfg.alpha) * dist + cfg.alpha * priv
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == cfg.steps - 1:
            with torch.no_grad():
                var = obf.noise_variance() if log_var is None else log_var.exp()
                nsr_db = 10 * math.log10(float(var.sum() / power.sum()))
            entry = {
                "step": step,
                "loss": round(loss.item(), 5),
                "distortion": round(dist.item(), 5),
                "privacy": round(privacy.item(), 4),
                "nsr_db": round(nsr_db, 3),
            }
            if adv is not None:
                entry["adversary_term"] = round(adv.item(), 5)
            log.append(entry)
            bar.set_postfix(loss=entry["loss"], dist=entry["distortion"], nsr_db=entry["nsr_db"])
    obf.requires_grad_(False)
    stats = {
        "samples": n,
        "shape": list(acts.shape[1:]),
        "channel_power": [round(float(v), 6) for v in power],
        "channel_mean": [round(float(v), 6) for v in acts.transpose(0, 1).reshape(c, -1).mean(1)],
        "dead_channels": int((power == 0).sum()),
    }
    obf.reseed(None)  # the fitted module draws unpredictable noise from here on
    return FitResult(obf.eval(), cfg, log, stats, time.perf_counter() - t0)


def nsr_privacy(log_var: torch.Tensor, ref: torch.Tensor, cfg: FitConfig) -> torch.Tensor:
    """The noise-power privacy term (to minimise): minus a blend of the mean per-channel log NSR and the
    overall log NSR, each capped at ``cfg.max_nsr_db``. ``log_var`` is log σ_c² ``[C]`` (for noise whose
    σ varies per element: log of its mean σ² per channel), ``ref`` the per-channel signal power."""
    cap = cfg.max_nsr_db / 10 * math.log(10)
    per_channel = (log_var - ref.log()).clamp(max=cap).mean()
    overall = torch.log(log_var.exp().sum() / ref.sum()).clamp(max=cap)
    return -(cfg.channel_weight * per_channel + (1 - cfg.channel_weight) * overall)


def config_dict(cfg: FitConfig) -> dict:
    return asdict(cfg)

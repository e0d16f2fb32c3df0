"""Client side: a learned deterministic, many-to-one bottleneck of the head's activation, noise on top.

Why (docs/defenses.md, and the feasibility note behind issue 9): fresh additive noise is averaged away by
repeated queries, so privacy has to come from information that is *removed* before anything leaves the
trust zone. The bottleneck maps the split's activation (its channels from the model's config: 128 for
FaceBoxes) to a few channels (1×1 conv), squashes them (tanh) and quantises each to a few levels: a
finite alphabet per cell, identical for every input that rounds the same way. Fresh noise
(:class:`~veil.obfuscate.noise.Obfuscator`, the project's one noise source) is added on top. On the
server a small *lift* (3×3 conv → the split's channels) and a distilled copy of the tail read it; both
are trained together, label-free, against the clean detector (:mod:`veil.defenses.distill`).

ALPHA stays the one knob (:meth:`BottleneckSpec.from_alpha`): higher ALPHA = fewer channels,
fewer levels, more noise.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from veil.defenses import files
from veil.defenses.adversarial import FaceBank, InLoopAdversary, build_face_bank
from veil.defenses.distill import Bank, DistillConfig, config_dict, distill, teacher_and_bank
from veil.defenses.robust_tail import student_model, tail_state, with_tail
from veil.models import as_split_model
from veil.models.faceboxes import FaceBoxes  # the network type the defenses distil (tail by checkpoint names)
from veil.obfuscate.noise import Obfuscator

FORMAT = "veil-bottleneck/1"
#: In-loop adversaries a bottleneck can be fitted against (one each; :mod:`veil.defenses.adversarial`'s terms
#: but ``identity+l1``, whose two adversaries the file's single ``adversary`` record cannot hold).
BOTTLENECK_TERMS = ("l1", "perceptual", "identity")


@dataclass(frozen=True)
class BottleneckSpec:
    """Width, quantisation and noise of a bottleneck; :meth:`from_alpha` is the ALPHA → settings map."""

    alpha: float
    channels: int
    levels: int
    noise_std: float  # noise standard deviation in quantisation steps (0 = deterministic)

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha < 1.0:
            raise ValueError(f"ALPHA must be in [0, 1), got {self.alpha}")
        if self.channels < 1:  # at most the activation's channels: checked by Bottleneck, which knows the model
            raise ValueError(f"channels must be ≥ 1, got {self.channels}")
        if self.levels < 2:
            raise ValueError(f"levels must be ≥ 2, got {self.levels}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be ≥ 0, got {self.noise_std}")

    @classmethod
    def from_alpha(
        cls, alpha: float, *, channels: int | None = None, levels: int | None = None, noise_std: float | None = None
    ) -> BottleneckSpec:
        """ALPHA 0 → 32 channels × 32 levels, no noise; 0.8 → 6 × 4, 0.4 steps; 0.9 → 3 × 3, 0.45 steps."""
        keep = 1.0 - float(alpha)
        return cls(
            alpha=float(alpha),
            channels=channels if channels is not None else max(1, round(32 * keep)),
            levels=levels if levels is not None else max(2, round(2 ** (1 + 5 * keep))),
            noise_std=noise_std if noise_std is not None else round(0.5 * float(alpha), 4),
        )

    @property
    def step(self) -> float:
        """Distance between quantisation levels in the code's [-1, 1] range."""
        return 2.0 / (self.levels - 1)

    @property
    def bits_per_cell(self) -> float:
        """Information ceiling of the deterministic code: channels × log2(levels) bits per activation cell."""
        import math

        return self.channels * math.log2(self.levels)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bits_per_cell": round(self.bits_per_cell, 3)}


def quantise(z: torch.Tensor, levels: int) -> torch.Tensor:
    """Round ``z`` ∈ [-1, 1] to ``levels`` evenly spaced values; gradients pass straight through."""
    q = torch.round((z + 1) * (levels - 1) / 2) * (2 / (levels - 1)) - 1
    return z + (q - z).detach()


class Bottleneck(nn.Module):
    """Trust zone: activation ``[N,in_channels,h,w]`` → wire code ``[N,channels,h,w]`` (quantised, plus fresh
    noise). ``in_channels`` is the split's (the model config's ``channels``)."""

    def __init__(self, spec: BottleneckSpec, in_channels: int) -> None:
        super().__init__()
        if spec.channels > in_channels:
            raise ValueError(f"a bottleneck keeps at most the activation's {in_channels} channels, not {spec.channels}")
        self.spec, self.in_channels = spec, int(in_channels)
        self.down = nn.Conv2d(in_channels, spec.channels, 1)
        self.in_scale: torch.Tensor
        self.register_buffer("in_scale", torch.ones(in_channels))  # 1/RMS per channel, from training data
        self.noise = Obfuscator(spec.channels, init_sigma=max(spec.noise_std * spec.step, 1e-12)).requires_grad_(False)

    def code(self, a: torch.Tensor) -> torch.Tensor:
        """The deterministic, many-to-one part: a finite alphabet of ``levels`` values per element."""
        if a.ndim != 4 or a.shape[1] != self.in_channels:
            raise ValueError(f"expected a head activation [N,{self.in_channels},h,w], got {tuple(a.shape)}")
        z = torch.tanh(self.down(a * self.in_scale.view(1, -1, 1, 1)))
        return quantise(z, self.spec.levels)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        q = self.code(a)
        return self.noise(q) if self.spec.noise_std > 0 else q


class Lift(nn.Module):
    """Server side: wire code ``[N,channels,h,w]`` → the split's ``out_channels`` map the (distilled) tail reads."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(z)))


class BottleneckPath(nn.Module):
    """``lift(bottleneck(a))``: plugs into :class:`~veil.detector.Detector` as its ``obfuscator`` (with the
    distilled tail as its model's tail), so the evaluator and every front end run it unchanged. What
    crosses the wire is :meth:`wire` — the few-channel code — never the lifted map."""

    def __init__(self, bottleneck: Bottleneck, lift: Lift) -> None:
        super().__init__()
        self.bottleneck, self.lift = bottleneck, lift

    def wire(self, a: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(a)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.lift(self.bottleneck(a))


def as_decoder_input(z: torch.Tensor, channels: int) -> torch.Tensor:
    """The wire code zero-padded to the split's ``channels`` (``bottleneck.in_channels``), so the project's
    :class:`~veil.privacy.decoders.Decoder` (an attacker) reads exactly what crosses the wire (not the
    server's lossy lift of it)."""
    return F.pad(z, (0, 0, 0, 0, 0, channels - z.shape[1]))


@dataclass
class FittedBottleneck:
    """The client's bottleneck, the server's lift and the model whose tail is the distilled one."""

    spec: BottleneckSpec
    path: BottleneckPath
    #: The network with the distilled tail (cut where the base model's head ends).
    model: FaceBoxes
    #: The in-loop adversary, when one was trained: ``{seed, data_order_seed, weights_sha256}``.
    adversary: dict | None = None

    @property
    def bottleneck(self) -> Bottleneck:
        return self.path.bottleneck

    def observe(self, a: torch.Tensor) -> torch.Tensor:
        """What an attacker built for the split's activation reads, given the *clean* activation ``a``: the
        wire code (fresh noise each call) zero-padded to the split's channels (:func:`as_decoder_input`).
        Hand it to any attacker (a pixel decoder, an identity regressor) as its observation function."""
        return as_decoder_input(self.path.wire(a), self.bottleneck.in_channels)


def fit_bottleneck(
    model: FaceBoxes,
    spec: BottleneckSpec,
    dirs: Sequence[str | Path],
    cfg: DistillConfig,
    *,
    adversary_weight: float = 0.0,
    adversary_lr: float = 2e-3,
    privacy_term: str = "l1",
    adversary_seed: int | None = None,
    face_bank: FaceBank | None = None,
    face_batch: int = 4,
    crop: int = 640,
    crops_per_image: int = 2,
    scale_range: tuple[float, float] = (2.0, 6.0),
    bank: tuple[Bank, Bank] | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[FittedBottleneck, list[dict], dict]:
    """Train bottleneck + lift + a copy of the tail so the detector's outputs survive (label-free).

    With ``adversary_weight > 0`` an in-loop adversary learns to read the wire code and the bottleneck is
    pushed to defeat it (min-max). ``privacy_term`` picks it: ``l1`` (default) a decoder reconstructing the
    whole crop, pixel L1; the terms of :mod:`veil.defenses.adversarial` (``identity``: a regressor predicting
    each face's dlib embedding, the identity-aware term; ``perceptual``) read the code of
    annotated face crops (``face_bank``, built from ``dirs`` unless given; ``face_batch`` of them per step,
    CPU only), seeded by ``adversary_seed`` (OS-drawn unless given). That adversary is part of the
    *defense*: the scoring attackers (:mod:`veil.defenses.measure`, the audit) have their own seeds and
    data order and are trained longer.
    """
    if privacy_term not in BOTTLENECK_TERMS:
        raise ValueError(
            f"unknown privacy term {privacy_term!r} for a bottleneck; choose one of {', '.join(BOTTLENECK_TERMS)}"
        )
    if privacy_term != "l1" and adversary_weight > 0 and torch.device(device).type != "cpu":
        raise ValueError(f"the {privacy_term} term's in-loop adversary trains on the CPU; use device='cpu'")
    teacher, bank = teacher_and_bank(
        model,
        dirs,
        bank,
        seed=cfg.seed,
        crop=crop,
        crops_per_image=crops_per_image,
        scale_range=scale_range,
        keep_images=adversary_weight > 0 and privacy_term == "l1",
        progress=progress,
        device=device,
    )
    train, held = bank
    student = student_model(teacher)
    split = as_split_model(model)  # the activation's channels and stride come from the model's config
    bott = Bottleneck(spec, split.channels)
    g = torch.Generator(device=device)
    g.manual_seed(cfg.seed)
    bott.noise = Obfuscator(
        spec.channels,
        generator=g,  # training draws: seeded torch stream on the device
        init_sigma=max(spec.noise_std * spec.step, 1e-12),
    ).requires_grad_(False)
    bott.to(device)
    with torch.no_grad():
        rms = train.acts.transpose(0, 1).reshape(split.channels, -1).pow(2).mean(1).sqrt()
        bott.in_scale.copy_(1.0 / rms.clamp_min(1e-3 * float(rms.mean())))
    lift = Lift(spec.channels, split.channels).to(device)
    path = BottleneckPath(bott, lift)
    params = [*bott.down.parameters(), *lift.parameters(), *student.tail.parameters()]
    extra = None
    in_loop: InLoopAdversary | None = None
    if adversary_weight > 0 and privacy_term != "l1":
        extra, in_loop = _face_term(
            model,
            bott,
            dirs,
            privacy_term,
            adversary_weight,
            face_bank,
            seed=adversary_seed,
            data_order_seed=cfg.seed,
            lr=adversary_lr,
            batch=face_batch,
            crop=crop,
            crops_per_image=crops_per_image,
            scale_range=scale_range,
            progress=progress,
        )
    elif adversary_weight > 0:
        if train.images is None:
            raise ValueError("an in-loop adversary needs the crops: build the bank with keep_images=True")
        from veil.privacy.decoders import PIXEL_SCALE, Decoder

        torch.manual_seed(cfg.seed)  # the adversary's initial weights: recorded with the file (independence)
        adv = Decoder.for_model(split).to(device)
        adv_opt = torch.optim.Adam(adv.parameters(), lr=adversary_lr)

        def extra(step: int, transformed: torch.Tensor, part: Bank) -> torch.Tensor:
            z = path.bottleneck(part.acts)  # the wire code of the same crops (fresh noise)
            if part.images is None:
                raise ValueError("an in-loop adversary needs the crops of every bank part (keep_images=True)")
            target = part.images / PIXEL_SCALE
            adv.train()
            adv_loss = F.l1_loss(adv(as_decoder_input(z.detach(), split.channels)), target)
            adv_opt.zero_grad(set_to_none=True)
            adv_loss.backward()
            adv_opt.step()
            adv.eval()  # the defense's gradient goes through a fixed adversary
            return -adversary_weight * F.l1_loss(adv(as_decoder_input(z, split.channels)), target)

    # The student reads the lifted code: transform = path (bottleneck + lift), trained jointly.
    log = distill(
        student.tail,
        path,
        train,
        cfg,
        params=params,
        held_out=held,
        extra_loss=extra,
        progress=progress,
        modules=(bott, lift),
    )
    path.cpu().eval()
    bott.noise = Obfuscator(spec.channels, init_sigma=max(spec.noise_std * spec.step, 1e-12)).requires_grad_(False)
    # Its minibatches are drawn by distill's generator, seeded with cfg.seed too.
    adversary = None
    if in_loop is not None:
        adversary = {**in_loop.record(), "weight": adversary_weight}
    elif adversary_weight > 0:
        adversary = files.adversary_record(cfg.seed, cfg.seed, adv)
    return FittedBottleneck(spec, path, student.cpu().eval(), adversary), log, train.describe


def _face_term(
    model: FaceBoxes,
    bott: Bottleneck,
    dirs: Sequence[str | Path],
    privacy_term: str,
    weight: float,
    bank: FaceBank | None,
    *,
    seed: int | None,
    data_order_seed: int,
    lr: float,
    batch: int,
    crop: int,
    crops_per_image: int,
    scale_range: tuple[float, float],
    progress: bool,
) -> tuple[Any, InLoopAdversary]:
    """The distillation's extra loss for an in-loop adversary of :mod:`veil.defenses.adversarial` reading the
    wire code (padded to the split's channels) of annotated face crops: each step it trains on ``batch`` crops
    with faces, then the bottleneck gets ``weight`` × its (negated, capped) privacy term."""
    if bank is None:
        bank = build_face_bank(
            model,
            dirs,
            crop=crop,
            scale_range=scale_range,
            crops_per_image=crops_per_image,
            seed=data_order_seed,
            progress=progress,
        )

    def read(a: torch.Tensor) -> torch.Tensor:
        return as_decoder_input(bott(a), bott.in_channels)

    adv = InLoopAdversary(
        bank,
        privacy_term,
        model=model,
        seed=seed,
        data_order_seed=data_order_seed,
        lr=lr,
        observe=read,
        progress=progress,
    )
    rows = (
        torch.unique(adv.targets.rois[:, 0]).long()
        if privacy_term.startswith("identity")
        else torch.arange(len(bank.acts))
    )
    g = torch.Generator().manual_seed(data_order_seed + 1)

    def extra(step: int, transformed: torch.Tensor, part: Bank) -> torch.Tensor:
        idx = rows[torch.randint(0, len(rows), (min(batch, len(rows)),), generator=g)]
        return weight * adv.term(step, idx, read(bank.acts[idx]))

    return extra, adv


def save_bottleneck(
    fitted: FittedBottleneck,
    path: str | Path,
    *,
    weights_sha256: str,
    cfg: DistillConfig,
    log: list[dict],
    data: dict,
    adversary_weight: float = 0.0,
) -> Path:
    """One file: client bottleneck (``client.*``), server lift (``lift.*``) and distilled tail (``tail.*``)."""
    tensors = {f"client.{k}": v for k, v in fitted.bottleneck.state_dict().items() if not k.startswith("noise.")}
    tensors.update({f"lift.{k}": v for k, v in fitted.path.lift.state_dict().items()})
    tensors.update({f"tail.{k}": v for k, v in tail_state(fitted.model).items()})
    meta = {
        "weights_sha256": weights_sha256,
        "alpha": fitted.spec.alpha,
        "spec": fitted.spec.as_dict(),
        "noise_sha256": None,
        "distill": config_dict(cfg),
        "adversary_weight": adversary_weight,
        "adversary": fitted.adversary,
        "data": data,
        "log": log,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return files.save(path, FORMAT, tensors, meta, model=fitted.model)


def load_bottleneck(
    path: str | Path, model: FaceBoxes, *, weights_sha256: str, alpha: float | None = None
) -> tuple[FittedBottleneck, dict[str, Any]]:
    """Read a bottleneck file (after the checks of :func:`veil.defenses.files.load`); noise is fresh from the OS."""
    tensors, meta = files.load(path, FORMAT, weights_sha256=weights_sha256, model=model, alpha=alpha)
    s = meta.get("spec") or {}
    try:
        spec = BottleneckSpec(
            alpha=float(s["alpha"]),
            channels=int(s["channels"]),
            levels=int(s["levels"]),
            noise_std=float(s["noise_std"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise files.DefenseFileError(f"{path}: bottleneck settings missing or invalid ({exc})") from exc
    channels = as_split_model(model).channels
    bott, lift = Bottleneck(spec, channels), Lift(spec.channels, channels)
    try:
        bott.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("client.")}, strict=False)
        missing = {k for k in bott.state_dict() if not k.startswith("noise.")} - {
            k[7:] for k in tensors if k.startswith("client.")
        }
        if missing:
            raise RuntimeError(f"missing {sorted(missing)}")
        lift.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("lift.")}, strict=True)
        tail = with_tail(model, {k[5:]: v for k, v in tensors.items() if k.startswith("tail.")})
    except RuntimeError as exc:
        raise files.DefenseFileError(f"{path}: tensors do not fit a {spec.channels}-channel bottleneck: {exc}") from exc
    path_mod = BottleneckPath(bott, lift).eval().requires_grad_(False)
    return FittedBottleneck(spec, path_mod, tail, meta.get("adversary")), meta


def deterministic_copy(fitted: FittedBottleneck) -> Bottleneck:
    """The bottleneck without its noise (for tests and for measuring what the code alone removes)."""
    b = copy.deepcopy(fitted.bottleneck)
    b.spec = BottleneckSpec(b.spec.alpha, b.spec.channels, b.spec.levels, 0.0)
    return b


def attach(detector, path: str | Path, alpha: float | None = None) -> tuple[FittedBottleneck, dict[str, Any]]:
    """Make ``detector`` (a :class:`~veil.detector.Detector`) run the bottleneck at ``path``: its
    ``obfuscator`` becomes ``lift ∘ bottleneck`` and its tail the distilled one, so the evaluator and
    every front end run the defense unchanged (what would cross the wire is ``fitted.path.wire(a)``)."""
    fitted, meta = load_bottleneck(path, detector.model.network, weights_sha256=detector.weights_sha256, alpha=alpha)
    detector.model, detector.obfuscator = fitted.model, fitted.path
    return fitted, meta

"""Label-free distillation: a student reads transformed activations, the clean detector is its teacher.

Why label-free: the clean tail's own outputs on clean activations are the target
(:func:`veil.obfuscate.fit.detection_distortion`, the loss the noise fit already uses), so any
unlabeled non-FDDB photos serve as training data and the student learns to *undo the
transform's damage*, not to beat the teacher on some labelled set. The transform draws fresh
noise on every step, so the student cannot memorise one draw.

The teacher side is computed once (:func:`build_bank`); each step runs the transform and the
student on a minibatch. Progress is measured on held-out crops of held-out *photos*.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from veil.models.faceboxes import FaceBoxes
from veil.obfuscate.crops import ImageCrops
from veil.obfuscate.fit import Outputs, detection_distortion
from veil.obfuscate.noise import Obfuscator

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Bank:
    """Clean activations and the clean tail's outputs on them (and, when kept, the crops themselves)."""

    acts: torch.Tensor
    outs: Outputs
    images: torch.Tensor | None = None
    describe: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.acts.shape[0])

    def subset(self, idx: torch.Tensor | slice) -> Bank:
        return Bank(
            self.acts[idx],
            tuple(o[idx] for o in self.outs),
            None if self.images is None else self.images[idx],
            self.describe,
        )


class _Flipped(Dataset):
    """Every crop twice: as is and mirrored left-right (augmentation the detector is symmetric to)."""

    def __init__(self, base: ImageCrops) -> None:
        self.base = base

    def __len__(self) -> int:
        return 2 * len(self.base)

    def __getitem__(self, i: int) -> torch.Tensor:
        t = self.base[i // 2]
        return t.flip(-1) if i % 2 else t


@torch.no_grad()
def build_bank(
    head: nn.Module,
    tail: nn.Module,
    dirs: Sequence[str | Path],
    *,
    crop: int = 640,
    crops_per_image: int = 2,
    scale_range: tuple[float, float] = (2.0, 6.0),
    seed: int = 0,
    held_out: float = 0.1,
    keep_images: bool = False,
    max_images: int | None = None,
    progress: bool = True,
    batch: int = 8,
    device: str | torch.device = "cpu",
) -> tuple[Bank, Bank]:
    """(train, held-out) banks of zoomed crops (and their mirror images) of the photos under ``dirs``.

    FDDB is refused by :class:`~veil.obfuscate.crops.ImageCrops`. The last ``held_out`` fraction of the
    *photos* (not crops) is held out, so the held-out distortion measures generalisation to new photos.
    """
    data = ImageCrops(dirs, crop=crop, scale_range=scale_range, crops_per_image=crops_per_image, seed=seed)
    if max_images is not None:
        data.files = data.files[:max_images]
    n_files = len(data.files)
    n_hold = max(1, round(n_files * held_out)) if n_files > 1 and held_out > 0 else 0
    loader = DataLoader(_Flipped(data), batch_size=batch, shuffle=False)
    head.eval()
    tail.eval()
    acts, outs, imgs = [], [], []
    for x in tqdm(loader, desc="teacher bank", unit="batch", disable=not progress):
        x = x.to(device)
        a = head(x)
        acts.append(a)
        o = tail(a)
        outs.append(tuple(o))
        if keep_images:
            imgs.append(x)
    bank = Bank(
        torch.cat(acts),
        tuple(torch.cat(p) for p in zip(*outs)),
        torch.cat(imgs) if keep_images else None,
        {
            **data.describe(),
            "images": n_files,
            "held_out_images": n_hold,
            "flipped": True,
            "dirs": [str(Path(d)) for d in dirs],
        },
    )
    split = 2 * crops_per_image * (n_files - n_hold)
    return bank.subset(slice(0, split)), bank.subset(slice(split, None))


def teacher_and_bank(
    model: FaceBoxes,
    dirs: Sequence[str | Path],
    bank: tuple[Bank, Bank] | None,
    *,
    seed: int,
    crop: int,
    crops_per_image: int,
    scale_range: tuple[float, float] = (2.0, 6.0),
    keep_images: bool = False,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[FaceBoxes, tuple[Bank, Bank]]:
    """The frozen teacher (a copy of ``model`` on ``device``) and its (train, held-out) banks.

    Every defense distils from the same two things; ``bank`` (from :func:`build_bank`) skips the
    teacher pass when given. ``model`` itself is not modified beyond ``eval()``. The teacher is cut
    where ``model``'s head ends (any split of the model), so a defense trains at that split.
    ``scale_range`` is the photos' zoom (the default suits the ×3 input scale; ×s: ``(2s/3, 2s)``).
    """
    torch.manual_seed(seed)
    model.eval()
    teacher = copy.deepcopy(model).to(device)
    if bank is None:
        bank = build_bank(
            teacher.head,
            teacher.tail,
            dirs,
            crop=crop,
            crops_per_image=crops_per_image,
            scale_range=scale_range,
            seed=seed,
            keep_images=keep_images,
            progress=progress,
            device=device,
        )
    return teacher, bank


@dataclass
class DistillConfig:
    """Settings of one distillation run (recorded in the defense file's metadata)."""

    steps: int = 2000
    minutes: float | None = None  # wall-time cap (whichever of steps/minutes comes first)
    batch_size: int = 16
    lr: float = 3e-4
    seed: int = 0
    bn_train: bool = True  # let BatchNorm statistics follow the transformed activations

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch size must be positive")


@torch.no_grad()
def held_out_distortion(student: nn.Module, transform: Transform, bank: Bank, draws: int = 2, batch: int = 32) -> float:
    """Mean student-vs-teacher distortion on ``bank`` over ``draws`` fresh transforms (eval mode)."""
    was = student.training
    student.eval()
    total, n = 0.0, 0
    for _ in range(draws):
        for s in range(0, len(bank), batch):
            part = bank.subset(slice(s, s + batch))
            out = tuple(student(transform(part.acts)))
            total += float(detection_distortion(part.outs, out)) * len(part)
            n += len(part)
    student.train(was)
    return total / max(n, 1)


def distill(
    student: nn.Module,
    transform: Transform,
    bank: Bank,
    cfg: DistillConfig,
    params: Iterable[nn.Parameter] | None = None,
    held_out: Bank | None = None,
    extra_loss: Callable[[int, torch.Tensor, Bank], torch.Tensor] | None = None,
    log_every: int = 50,
    progress: bool = True,
    modules: tuple[nn.Module, ...] = (),
) -> list[dict]:
    """Train ``params`` (default: the student's) so ``student(transform(a))`` matches the teacher outputs.

    ``extra_loss(step, transformed, batch)`` adds a term (e.g. an adversary's) to every step.
    ``modules`` (e.g. a trainable transform) are put in training mode while training and in
    evaluation mode for the held-out measurements and at the end.
    Returns the log (step, loss, held-out distortion at the start and end).
    """
    params = list(student.parameters()) if params is None else list(params)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    log: list[dict] = []
    if held_out is not None and len(held_out):
        log.append({"step": 0, "held_out_distortion": round(held_out_distortion(student, transform, held_out), 5)})
    student.train(cfg.bn_train)
    for m in modules:
        m.train()
    t0 = time.monotonic()
    budget = None if cfg.minutes is None else cfg.minutes * 60.0
    bar = tqdm(range(cfg.steps), desc="distill", unit="step", disable=not progress)
    ema = None
    step = 0
    for step in bar:
        if budget is not None and time.monotonic() - t0 >= budget:
            break
        frac = step / cfg.steps if budget is None else max(step / cfg.steps, (time.monotonic() - t0) / budget)
        for group in opt.param_groups:  # cosine decay to 5 %
            group["lr"] = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        idx = torch.randint(0, len(bank), (min(cfg.batch_size, len(bank)),), generator=g).to(bank.acts.device)
        part = bank.subset(idx)
        z = transform(part.acts)
        loss = detection_distortion(part.outs, tuple(student(z)))
        if extra_loss is not None:
            loss = loss + extra_loss(step, z, part)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % log_every == 0:
            log.append({"step": step, "loss": round(ema, 5), "seconds": round(time.monotonic() - t0, 1)})
            bar.set_postfix(loss=f"{ema:.4f}")
    bar.close()
    student.eval()
    for m in modules:
        m.eval()
    end = {"step": step + 1, "loss": round(ema or 0.0, 5), "seconds": round(time.monotonic() - t0, 1)}
    if held_out is not None and len(held_out):
        end["held_out_distortion"] = round(held_out_distortion(student, transform, held_out), 5)
    log.append(end)
    return log


def training_noise(obf: Obfuscator, device: str | torch.device, seed: int) -> Obfuscator:
    """A frozen copy of ``obf`` (any :class:`~veil.obfuscate.noise.Obfuscator`: per-channel μ, σ or an
    input-conditioned μ(a), σ(a) with its net) drawing ε from a seeded torch generator on ``device``:
    fresh ε every step, reproducible training, and fast on an accelerator. Only for training; served
    noise stays ``obf``'s (its fresh AES-CTR stream, or its key)."""
    out = copy.deepcopy(obf)  # the copy gets no stream of its own (Obfuscator.__getstate__)
    out.set_key(None)
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    out._seed, out._explicit, out._generators = None, g, {}
    return out.to(device).eval().requires_grad_(False)


def config_dict(cfg: DistillConfig) -> dict:
    return asdict(cfg)

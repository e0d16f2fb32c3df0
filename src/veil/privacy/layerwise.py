"""Layer-wise inversion: read a deep split through a shallower one whose decoder is competent.

Why: a pixel decoder trained from scratch on the activation after FaceBoxes' Inception blocks stays
near a flat guess within a CPU budget (the audit's decoders identify 2–3 % from the *clean*
inception2/3 activation), so a low leak there measures the attacker, not the split. The head is
public, so an attacker can split the problem: learn to map the deep activation back to the
shallow one (the RDCL output: same stride, same grid, a feature-to-feature regression that needs
no upsampling and no labels, on any photos), then reuse a decoder that already inverts the shallow
activation. :class:`FeatureInverter` is that map; :class:`ChainedDecoder` composes it with the
shallow decoder, so it is a decoder of the deep split for everything downstream (the audit, the
defenses' scoring). Trained on an obfuscated deep activation (``wire``, fresh noise every step) it
is the adaptive version.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from veil.privacy.decoders import PIXEL_SCALE

if TYPE_CHECKING:
    from veil.models import SplitModel
    from veil.privacy.train import Batches, Plateau

#: What is applied to the deep split's clean activation before the inverter reads it (None: clean).
Wire = Callable[[torch.Tensor], torch.Tensor]


class _Block(nn.Module):
    """A residual pair of 3×3 convolutions."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(width, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.c2(F.relu(self.c1(x))))


class FeatureInverter(nn.Module):
    """Deep activation ``[N,C_in,h,w]`` → the shallow split's activation ``[N,C_out,h,w]`` (same stride).

    Input BatchNorm (noisy inputs change scale), a 3×3 stem, ``depth`` residual blocks, a 1×1 out;
    the output is in the shallow activation's units (``out_scale`` per channel, set from data)."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 192, depth: int = 3) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.width, self.depth = in_channels, out_channels, width, depth
        self.inp = nn.Sequential(nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(*[_Block(width) for _ in range(depth)])
        self.out = nn.Conv2d(width, out_channels, 1)
        self.out_scale: torch.Tensor
        self.register_buffer("out_scale", torch.ones(1, out_channels, 1, 1))
        self.meta: dict[str, Any] = {}

    def arch(self) -> dict[str, int]:
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "width": self.width,
            "depth": self.depth,
        }

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.inp(a))) * self.out_scale


class ChainedDecoder(nn.Module):
    """``decoder(inverter(a))``: a decoder of the deep split, in the shallow decoder's output units."""

    def __init__(self, inverter: FeatureInverter, decoder: nn.Module) -> None:
        super().__init__()
        self.inverter, self.decoder = inverter, decoder
        self.unit = float(getattr(decoder, "unit", PIXEL_SCALE))
        self.channels = inverter.in_channels
        self.stride = int(getattr(decoder, "stride", 32))
        self.mean, self.std = list(getattr(decoder, "mean", [])), list(getattr(decoder, "std", []))
        self.meta: dict[str, Any] = {"inverter": inverter.meta, "decoder": dict(getattr(decoder, "meta", {}) or {})}

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.inverter(a))


def check_pair(deep: SplitModel, shallow: SplitModel) -> None:
    """Refuse a pair the inverter cannot map cell to cell: other model/weights, or another stride."""
    if deep.name != shallow.name or deep.weights_sha256 != shallow.weights_sha256:
        raise ValueError(
            f"the shallow split must be the same model and weights as the deep one "
            f"({deep.name}/{deep.weights_sha256[:12]} vs {shallow.name}/{shallow.weights_sha256[:12]})"
        )
    if deep.stride != shallow.stride:
        raise ValueError(
            f"a feature inverter maps cell to cell: {deep.split} has stride {deep.stride}, "
            f"{shallow.split} {shallow.stride}"
        )


def train_inverter(
    deep: nn.Module,
    shallow: nn.Module,
    sampler: Batches,
    *,
    in_channels: int,
    out_channels: int,
    wire: Wire | None = None,
    minutes: float = 10.0,
    max_steps: int | None = None,
    batch: int = 8,
    lr: float = 1e-3,
    width: int = 192,
    depth: int = 3,
    plateau: Plateau | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> FeatureInverter:
    """Train ``deep head (then wire) → shallow head`` on the sampler's crops (non-FDDB photos).

    ``deep`` and ``shallow`` are the two heads (network input → activation) of the same public model.
    The loss is the L1 between the inverter's output and the shallow activation, per channel in units
    of that channel's spread (measured on the first batch), so every channel counts. Stops at a
    plateau, ``minutes`` of wall time or ``max_steps``; the seed (OS-drawn unless given), the
    data-order seed, the stop reason and the learning curve go into ``.meta``.
    """
    from veil.privacy.train import budget_step

    seed = secrets.randbits(31) if seed is None else int(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        inv = FeatureInverter(in_channels, out_channels, width, depth)
    for m in (deep, shallow):
        m.eval()
    opt = torch.optim.Adam(inv.parameters(), lr=lr)
    budget, t0 = minutes * 60.0, time.monotonic()
    step, reason, ema = 0, "budget", None
    curve: list[float] = []
    bar = tqdm(
        total=max_steps or int(budget), desc="train inverter", unit="step" if max_steps else "s", disable=not progress
    )
    inv.train()
    while True:
        stop = budget_step(opt, lr, step, time.monotonic() - t0, budget, max_steps, plateau, curve)
        if stop is not None:
            reason = stop
            break
        x = sampler.batch(batch)
        with torch.no_grad():
            target = shallow(x)
            a = deep(x)
            if wire is not None:
                a = wire(a)
            if step == 0:
                spread = target.transpose(0, 1).reshape(out_channels, -1).std(1).clamp_min(1e-3)
                inv.out_scale.copy_(spread.view(1, -1, 1, 1))
        loss = ((inv(a) - target).abs() / inv.out_scale).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        curve.append(round(loss.item(), 4))
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if max_steps is None:
            bar.n = min(int(time.monotonic() - t0), int(budget))
            bar.refresh()
        else:
            bar.update(1)
        bar.set_postfix(step=step, l1=f"{ema:.3f}")
    bar.close()
    inv.eval()
    inv.meta = {
        "kind": "feature-inverter",
        "steps": step,
        "seconds": round(time.monotonic() - t0, 1),
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "data_order_seed": sampler.seed,
        "data": sampler.describe(),
        "stop_reason": reason,
        "budget_minutes": minutes,
        "final_l1_per_spread": round(float(ema or 0.0), 4),
        "curve_l1_per_spread": curve,
        "adaptive": wire is not None,
        **inv.arch(),
    }
    if plateau is not None:
        inv.meta["plateau"] = {"window": plateau.window, "tol": plateau.tol, "patience": plateau.patience}
    return inv


# -- the audit's layer-wise attackers (cached like its decoders) ------------------------------------------------


def shallow_sibling(model: SplitModel) -> SplitModel | None:
    """The same model and weights cut at its first split (None when ``model`` is cut there already)."""
    from veil.models import build

    first = model.config.default_split
    if model.split == first:
        return None
    sib = build(model.name, first)
    sib.network.load_state_dict(model.network.state_dict(), strict=True)
    sib.weights_sha256 = model.weights_sha256
    check_pair(model, sib)
    sib.network.eval()
    return sib


def inverter_path(model: SplitModel, scale: float, noise_sha256: str | None = None) -> Path:
    """Cache path of a layer-wise inverter, under the deep model's key, by scale and (adaptive) noise."""
    from veil.privacy.decoders import attackers_dir

    kind = "naive" if noise_sha256 is None else f"adaptive-{noise_sha256[:16]}"
    return attackers_dir(model) / f"layerwise-{kind}-x{scale:g}.safetensors"


def save_inverter(inv: nn.Module, path: str | Path, meta: dict[str, Any]) -> Path:
    """Weights (an inverter's, or a whole fine-tuned chain's) and metadata (JSON values), written atomically."""
    from safetensors.torch import save_file

    from veil import jsonio

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".part")
    md = {k: jsonio.dumps(v, indent=None) for k, v in meta.items()}
    save_file({k: v.contiguous() for k, v in inv.state_dict().items()}, str(tmp), metadata=md)
    tmp.replace(p)
    return p


def read_inverter(path: str | Path, model: SplitModel, chain: ChainedDecoder | None = None) -> nn.Module:
    """Load an inverter file (into a copy of ``chain`` when the file holds a fine-tuned chain); refused
    (with the reason) when made for another model, split or weights."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from veil.privacy.decoders import DecoderMismatchError

    with safe_open(str(path), "pt") as fh:
        meta = {k: json.loads(v) for k, v in (fh.metadata() or {}).items()}
    if meta.get("split_point") != model.split_point or (
        meta.get("weights_sha256") and model.weights_sha256 and meta["weights_sha256"] != model.weights_sha256
    ):
        raise DecoderMismatchError(
            f"{path} inverts {meta.get('split_point')!r} of weights {str(meta.get('weights_sha256'))[:12]}…, "
            f"not {model.split_point!r} of {model.weights_sha256[:12]}…"
        )
    if chain is not None:
        import copy

        tuned = copy.deepcopy(chain)
        tuned.load_state_dict(load_file(str(path)), strict=True)
        tuned.meta = {**chain.meta, "finetune": meta.get("finetune")}
        return tuned.eval()
    inv = FeatureInverter(int(meta["in_channels"]), int(meta["out_channels"]), int(meta["width"]), int(meta["depth"]))
    inv.load_state_dict(load_file(str(path)), strict=True)
    inv.meta = meta
    return inv.eval()


def read_chain(path: str | Path, model: SplitModel, decoder: nn.Module) -> ChainedDecoder:
    """The layer-wise attacker a file holds, ending in ``decoder`` (the shallow split's): a saved inverter
    chained with it, or a chain trained end to end (``benchmarks/layerwise.py --save-chain``, whose weights
    replace ``decoder``'s). ``meta["inverter"]`` is the file's metadata either way (e.g. ``adaptive``).
    Refused, with the reason, for another model, split or weights (:func:`read_inverter`)."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        meta = {k: json.loads(v) for k, v in (fh.metadata() or {}).items()}
    if "finetune" not in meta:
        inv = cast(FeatureInverter, read_inverter(path, model))
        return ChainedDecoder(inv, decoder)
    arch = {k: int(meta[k]) for k in ("in_channels", "out_channels", "width", "depth")}
    template = ChainedDecoder(FeatureInverter(**arch), decoder)
    chain = cast(ChainedDecoder, read_inverter(path, model, chain=template))
    chain.meta["inverter"] = meta
    return chain


def ensure_chain(
    model: SplitModel,
    minutes: float,
    data: Sequence[str | Path] | None,
    scale: float,
    *,
    obfuscator: nn.Module | None = None,
    noise_sha256: str | None = None,
    decoder_minutes: float | None = None,
    finetune_minutes: float = 0.0,
    progress: bool = True,
) -> ChainedDecoder | None:
    """The audit's layer-wise attacker for a deep split: a cached inverter (trained ``minutes`` on crops of
    ``data`` at ×``scale``, on ``obfuscator``'s output when given: adaptive) chained with the cached naive
    decoder of the model's first split (:func:`veil.privacy.train.ensure_decoder`, ``decoder_minutes``);
    with ``finetune_minutes`` the whole chain then trains end to end on pixel L1 (cached too: after
    inception2 that is what made it competent). None when ``model`` is cut at its first split (there the
    decoders read it directly)."""
    from veil.privacy.decoders import model_meta
    from veil.privacy.train import Plateau, ensure_decoder, photo_crops, require_training_dirs

    sib = shallow_sibling(model)
    if sib is None:
        return None
    dirs = require_training_dirs(data)
    dec = ensure_decoder(
        sib, minutes if decoder_minutes is None else decoder_minutes, dirs, scale=scale, progress=progress
    )
    path = inverter_path(model, scale, noise_sha256 if obfuscator is not None else None)
    if path.is_file():
        inv = cast(FeatureInverter, read_inverter(path, model))
    else:
        wire = None if obfuscator is None else obfuscator
        inv = train_inverter(
            model.head,
            sib.head,
            photo_crops(dirs, scale=scale, input=model.config.input),
            in_channels=model.channels,
            out_channels=sib.channels,
            wire=wire,
            minutes=minutes,
            plateau=Plateau(window=100, tol=0.01, patience=3),
            progress=progress,
        )
        meta = {**model_meta(model), **inv.meta, "scale": scale, "noise_sha256": noise_sha256}
        save_inverter(inv, path, meta)
        inv.meta = meta
    chain = ChainedDecoder(inv, dec)
    if finetune_minutes <= 0:
        return chain
    ft_path = path.with_name(path.stem + "-finetuned.safetensors")
    if ft_path.is_file():
        return cast(ChainedDecoder, read_inverter(ft_path, model, chain=chain))
    from veil.privacy.decoders import Decoder
    from veil.privacy.train import train_decoder

    trained = train_decoder(
        model.head,
        photo_crops(dirs, scale=scale, input=model.config.input),
        minutes=finetune_minutes,
        obfuscator=obfuscator,
        init=cast(Decoder, chain),  # a decoder-like module: deep-copied and trained whole
        lr=5e-4,
        progress=progress,
    )
    tuned = cast(ChainedDecoder, trained)
    info = {k: v for k, v in trained.meta.items() if k not in ("inverter", "decoder")}
    tuned.meta = {"inverter": inv.meta, "decoder": dict(dec.meta or {}), "finetune": info}
    save_inverter(tuned, ft_path, {**model_meta(model), **inv.arch(), "finetune": info, "scale": scale})
    return tuned

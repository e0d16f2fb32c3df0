"""Fitted noise on disk: a safetensors file (μ, log σ, activation statistics) plus JSON metadata.

The metadata binds the noise to what it was fitted for — the model, its split point and the
weights' SHA-256, all taken from the :class:`veil.models.SplitModel` the caller passes (there is
no default model) — so noise fitted for another model, split or weights is refused with the
reason rather than silently producing a wrong privacy/accuracy trade-off. The default noise
directory is per model (``CACHE/noise/<model.key>/``); the noise that ships with veil is found
for the default model with its reference weights. A file whose noise would turn the
obfuscation off, or is absurd (non-finite, σ or μ out of all proportion to the activation statistics
it records, a noise-to-signal ratio far outside its ALPHA's documented range), is refused with the
numbers (:func:`check_noise`); a pinned SHA-256 (``sha256=``, ``$VEIL_NOISE_SHA256`` on the CLI)
catches any other change to the file. The client key of keyed noise is never written here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file

from veil import jsonio
from veil.digest import tensors_sha256
from veil.models import DEFAULT_MODEL, ModelConfig, SplitModel, UnknownModelError, get_config
from veil.models.pretrained import cache_dir
from veil.models.registry import model_key
from veil.obfuscate import conditioned
from veil.obfuscate.alpha import check_alpha
from veil.obfuscate.conditioned import ConditionedObfuscator, effective_log_sigma
from veil.obfuscate.keystream import NoiseKey, read_key_file
from veil.obfuscate.noise import FAMILIES, Obfuscator
from veil.version import __version__

FORMAT = "veil-noise/1"
_TENSORS = ("mu", "log_sigma", "signal_power")
_MAX_BYTES = 64 << 20  # a 128-channel noise file is a few KB

# The NSR a fit at the defaults gives per ALPHA is the model's own measurement: ``ModelConfig.noise_nsr_db``
# (and ``noise_own_offset_db``), e.g. FaceBoxes' on FDDB. A model without one gets the per-channel bounds only.
#: Inside the accepted range but this far from the default fit's value: loaded with a warning.
WARN_DB = 6.0
#: Every fit starts at this NSR (``FitConfig.init_nsr_db``) and moves towards its ALPHA's value, so a
#: short fit lies between the two.
FIT_START_NSR_DB = -10.0
#: How far below / above that span a file may lie: room for other fitting settings, data and
#: families, while a file that turns the noise off (e.g. log σ = −80: −3048 dB) or is absurd is refused.
NSR_BELOW_DB, NSR_ABOVE_DB = 6.0, 15.0
#: Per-channel bounds against the recorded signal's RMS s = sqrt(mean_c E[a_c²]):
#: e^-20 ≤ σ_c / s ≤ e^12 and |μ_c| ≤ 1000 s; and no live channel's own NSR below −60 dB.
LOG_SIGMA_SPAN = (-20.0, 12.0)
#: Σ_c E[a_c²] of the reference head (FaceBoxes' reference weights, split faceboxes.rdcl) on natural images:
#: 91.6 on 40 fitting crops, 60.0 on 40 FDDB images at ×3 (docs/obfuscation.md). A file for these weights
#: must record a total within ±10 dB of 75: otherwise scaling σ and the recorded statistics down together
#: would pass every relative check while the noise vanishes against the real activation.
REFERENCE_POWER, REFERENCE_POWER_DB = 75.0, 10.0
REFERENCE_POWER_SPLIT = "faceboxes.rdcl"
MU_MAX = 1e3
CHANNEL_FLOOR_DB = -60.0


class NoiseFileError(ValueError):
    """A noise file is missing, corrupt, or fitted for another model or split point."""

    #: For a failed lookup: what old-layout noise files exist and how to move them (:func:`legacy_noise_hint`).
    legacy_hint: str = ""


class NoiseHashError(NoiseFileError):
    """A noise file's SHA-256 differs from the one pinned for it."""


class NoiseFileWarning(UserWarning):
    """A noise file whose NSR is accepted but far from what the default fit gives at its ALPHA."""


def _registered(name: Any) -> ModelConfig | None:
    """The registered config of the model named ``name`` (its noise calibration), or None."""
    try:
        return get_config(str(name))
    except UnknownModelError:
        return None


def _check_model(model: Any) -> SplitModel | None:
    if model is not None and not isinstance(model, SplitModel):
        raise TypeError(
            "model must be the veil.models.SplitModel the noise is for (veil.models.create), "
            f"not {type(model).__name__}"
        )
    return model


def noise_dir(model: SplitModel | None = None) -> Path:
    """Default home of fitted noise: ``$VEIL_NOISE_DIR``, else ``CACHE/noise/<model.key>`` (model, split and
    weights: noise for one never lands beside another's)."""
    from veil.settings import settings

    env = settings().noise_dir
    if env is not None:
        return env
    model = _check_model(model)
    if model is None:
        raise ValueError("the default noise directory is per model: pass the model (or a directory)")
    return cache_dir() / "noise" / model.key


def noise_filename(alpha: float) -> str:
    """``alpha-0.8.safetensors``: one file per ALPHA in a noise directory."""
    return f"alpha-{check_alpha(alpha):g}.safetensors"


def noise_path(alpha: float, directory: str | Path | None = None, model: SplitModel | None = None) -> Path:
    """Where the noise fitted for ALPHA lives: ``DIR/alpha-<A>.safetensors`` in ``directory``, default
    :func:`noise_dir` of ``model``. The one place that path is built (fit-noise writes there, everything
    else reads)."""
    return Path(directory if directory is not None else noise_dir(model)) / noise_filename(alpha)


def _shipped_for(model: SplitModel, alpha: float) -> Path | None:
    """The noise shipped with veil for ALPHA, if ``model`` is the default model with the weights it was fitted for."""
    from veil import assets  # noise that ships for the reference weights (the user's own comes first)

    if model.name != DEFAULT_MODEL:
        return None
    shipped = noise_path(alpha, assets.NOISE_DIR)
    if not shipped.is_file():
        return None
    meta = read_metadata(shipped)
    ok = meta.get("weights_sha256") == model.weights_sha256 and meta.get("split_point") == model.split_point
    return shipped if ok else None


def legacy_noise_dir() -> Path:
    """Where noise lived before per-model directories: ``CACHE/noise/alpha-<A>.safetensors`` (no model,
    split or weights in the path); nothing is looked up there any more."""
    return cache_dir() / "noise"


def _legacy_home(path: Path) -> tuple[Path | None, str]:
    """The per-model directory an old-layout file belongs in (from its metadata), or None; and what it is for."""
    try:
        meta = read_metadata(path)
    except (NoiseFileError, OSError) as exc:
        return None, f"unreadable: {exc}"
    split_point, sha = meta.get("split_point"), meta.get("weights_sha256")
    if not isinstance(split_point, str) or "." not in split_point or not isinstance(sha, str):
        return None, "its metadata names no split point and weights"
    name, split = split_point.split(".", 1)
    return legacy_noise_dir() / model_key(name, split, sha), f"for {split_point}, weights {sha[:12] or 'random'}"


def migrate_legacy_noise(model: SplitModel) -> tuple[list[Path], list[str]]:
    """Old-layout noise files (:func:`legacy_noise_dir`) whose metadata names ``model``'s split point and
    weights are moved into its directory (``CACHE/noise/<model.key>/``, same name); returns the moved files'
    new paths and, for every other old-layout file, a line saying what it is for and the command that moves it.
    """
    moved: list[Path] = []
    others: list[str] = []
    mine = legacy_noise_dir() / model.key
    for f in sorted(legacy_noise_dir().glob("alpha-*.safetensors")):
        home, what = _legacy_home(f)
        if home == mine and not (mine / f.name).exists():
            mine.mkdir(parents=True, exist_ok=True)
            os.replace(f, mine / f.name)  # same file system: atomic, nothing half-moved
            moved.append(mine / f.name)
        elif home is None:
            others.append(f"{f} ({what}; refit it)")
        else:
            q = shlex.quote
            others.append(f"{f} ({what}): `mkdir -p {q(str(home))} && mv {q(str(f))} {q(str(home))}/`")
    return moved, others


def legacy_noise_hint(others: list[str]) -> str:
    """The sentence a failed lookup adds about old-layout files (:func:`migrate_legacy_noise`'s ``others``)."""
    if not others:
        return ""
    return (
        f" Noise files in the layout before per-model directories ({legacy_noise_dir()}/alpha-*.safetensors) "
        "are not looked up; each belongs in its model's directory: " + "; ".join(others)
    )


def find_noise_file(
    alpha: float | None,
    noise: str | Path | None = None,
    noise_dir: str | Path | None = None,
    model: SplitModel | None = None,
) -> Path:
    """The noise file to load for ALPHA: ``noise`` if given; else :func:`noise_path` in ``noise_dir``
    (default: the model's own directory); else (default directory only) the noise shipped for the
    default model's reference weights. ``NoiseFileError`` with the command that fits it if there is none.

    Noise files in the old layout (:func:`legacy_noise_dir`) are moved into the model's directory when their
    metadata names its split point and weights (with a warning); the error names the others and how to move them.
    """
    from veil.settings import settings

    if noise is not None:
        return Path(noise)
    if alpha is None:
        raise ValueError("give ALPHA or an explicit noise file")
    path = noise_path(alpha, noise_dir, _check_model(model))
    others: list[str] = []
    if not path.is_file() and noise_dir is None and model is not None and settings().noise_dir is None:
        moved, others = migrate_legacy_noise(model)
        if moved:
            warnings.warn(
                f"moved {len(moved)} noise file(s) fitted for {model.split_point} (weights "
                f"{model.weights_sha256[:12] or 'random'}) from the old layout {legacy_noise_dir()} into "
                f"{path.parent}: {', '.join(p.name for p in moved)}",
                UserWarning,
                stacklevel=2,
            )
    if not path.is_file() and noise_dir is None and model is not None:
        shipped = _shipped_for(model, alpha)
        if shipped is not None:
            return shipped
    if not path.is_file():
        which = "" if model is None else f" for {model.split_point} (weights {model.weights_sha256[:12] or 'random'})"
        flags = "" if model is None or model.name == DEFAULT_MODEL else f" --model {model.name}"
        flags += "" if model is None or model.split == model.config.default_split else f" --split {model.split}"
        err = NoiseFileError(
            f"no noise fitted for ALPHA {alpha:g}{which} in {path.parent} (looked for {path.name}); fit it with "
            f"`veil fit-noise{flags} --alpha {alpha:g} --images DIR --out {path}` or give the noise file"
            + legacy_noise_hint(others)
        )
        err.legacy_hint = legacy_noise_hint(others)
        raise err
    return path


def save_obfuscator(
    obf: Obfuscator, path: str | Path, metadata: dict[str, Any], model: SplitModel | None = None
) -> Path:
    """Write ``obf`` with ``metadata``; return the path.

    The file records what the noise is for: ``model`` (its name), ``split_point`` and
    ``weights_sha256``, taken from ``model`` (or given in ``metadata``; they must agree), and
    ``alpha``. None of them has a default.
    """
    ident: dict[str, Any] = {}
    model = _check_model(model)
    if model is not None:
        ident = {"model": model.name, "split_point": model.split_point, "weights_sha256": model.weights_sha256}
        clash = {k: (metadata[k], v) for k, v in ident.items() if k in metadata and metadata[k] != v}
        if clash:
            raise ValueError(f"noise metadata disagrees with the model it is saved for: {clash}")
    meta = {**ident, **metadata}
    for key in ("alpha", "model", "split_point", "weights_sha256"):
        if key not in meta:
            raise ValueError(f"noise metadata needs {key!r} (pass the model the noise was fitted for)")
    meta = {
        "format": FORMAT,
        "veil_version": __version__,
        "family": obf.family,
        "channels": obf.channels,
        **meta,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: getattr(obf, k).detach().float().cpu().contiguous() for k in _TENSORS}
    if isinstance(obf, ConditionedObfuscator):  # input-conditioned noise: the net too, and its tensors' hash
        tensors.update(obf.file_tensors())
        meta.update(format=conditioned.FORMAT, hidden=obf.hidden, tensors_sha256=tensors_sha256(tensors))
    tmp = path.with_suffix(path.suffix + ".part")
    save_file(tensors, str(tmp), metadata={"veil": jsonio.dumps(meta, indent=None)})
    tmp.replace(path)  # never leave a half-written artifact under the final name
    return path


def _read(path: Path, sha256: str | None = None) -> bytes:
    if not path.is_file():
        raise NoiseFileError(f"noise file not found: {path}")
    size = path.stat().st_size
    if size > _MAX_BYTES:
        raise NoiseFileError(f"{path} is {size} bytes, too large for a noise file")
    data = path.read_bytes()
    if sha256 is not None:
        want = sha256.strip().lower()
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise NoiseHashError(
                f"{path} has SHA-256 {got}, but {want} is pinned: the noise file was changed or is another "
                "one; refusing it"
            )
    return data


def _metadata(path: Path, data: bytes) -> dict[str, Any]:
    try:  # safetensors: u64 little-endian header length, then a JSON header with __metadata__
        n = int.from_bytes(data[:8], "little")
        if len(data) < 8 or n > len(data) - 8:
            raise ValueError("header length beyond the end of the file")
        header = json.loads(data[8 : 8 + n])
        raw = (header.get("__metadata__") or {}).get("veil")
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise NoiseFileError(f"{path} is not a readable noise file (corrupt or truncated?): {exc}") from exc
    if raw is None:
        raise NoiseFileError(f"{path} is a safetensors file without veil noise metadata")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, TypeError) as exc:
        raise NoiseFileError(f"{path}: noise metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, conditioned.FORMAT):
        fmt = meta.get("format") if isinstance(meta, dict) else None
        raise NoiseFileError(f"{path}: unknown noise format {fmt!r} (expected {FORMAT} or {conditioned.FORMAT})")
    return meta


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a noise file, or :class:`NoiseFileError` if it is not one."""
    path = Path(path)
    return _metadata(path, _read(path))


def expected_nsr_db(alpha: float, config: ModelConfig | None) -> float | None:
    """NSR of the default fit at ALPHA on the model's evaluation data, interpolated in its measured
    ``config.noise_nsr_db``; None without a measurement or below the first measured ALPHA."""
    table = dict(config.noise_nsr_db) if config is not None else {}
    xs = sorted(table)
    if not xs or alpha < xs[0]:
        return None
    return float(np.interp(alpha, xs, [table[x] for x in xs]))


def nsr_range_db(alpha: float, config: ModelConfig | None) -> tuple[float, float]:
    """The NSR range (dB, on a file's own statistics) accepted for ALPHA: see :data:`NSR_BELOW_DB`."""
    if config is None or not config.noise_nsr_db:  # not measured for this model: per-channel bounds only
        return -math.inf, math.inf
    e = expected_nsr_db(alpha, config)
    if e is None:  # ALPHA below the measurements: little or no privacy asked for; only the per-channel bounds apply
        return -math.inf, FIT_START_NSR_DB + NSR_ABOVE_DB
    return min(e, FIT_START_NSR_DB) - NSR_BELOW_DB, max(e, FIT_START_NSR_DB) + NSR_ABOVE_DB


def check_noise(
    mu: torch.Tensor,
    log_sigma: torch.Tensor,
    signal_power: torch.Tensor,
    alpha: float,
    where: str = "noise file",
    config: ModelConfig | None = None,
) -> float:
    """Refuse parameters that would disable the obfuscation or are absurd; return the overall NSR (dB).

    Judged against the activation statistics the file records (``signal_power``, E[a_c²] on the
    fitting data), so the per-channel bounds hold for any model and split point; the overall NSR is
    also held to the range the model's ``config`` measured for ALPHA (``noise_nsr_db``), when it has one.
    """
    mu, ls, p = (t.detach().double().cpu() for t in (mu, log_sigma, signal_power))
    for name, t in (("μ", mu), ("log σ", ls), ("signal_power", p)):
        if not torch.isfinite(t).all():
            raise NoiseFileError(f"{where} holds non-finite {name} values (NaN or infinity)")
    if (p < 0).any() or float(p.sum()) <= 0:
        raise NoiseFileError(
            f"{where}: recorded activation power must be ≥ 0 and not all zero "
            f"(min {float(p.min()):.3g}, sum {float(p.sum()):.3g})"
        )
    s = math.sqrt(float(p.mean()))
    rel = ls - math.log(s)
    lo, hi = LOG_SIGMA_SPAN
    if float(rel.min()) < lo or float(rel.max()) > hi:
        c = int(rel.argmin()) if float(rel.min()) < lo else int(rel.argmax())
        raise NoiseFileError(
            f"{where}: channel {c} has log σ = {float(ls[c]):.4g}, i.e. σ = {math.exp(float(rel[c])):.3g} × the "
            f"recorded activation RMS {s:.4g}; accepted: e^{lo:g} … e^{hi:g} × RMS "
            f"({'the noise would vanish' if float(rel[c]) < lo else 'absurdly large noise'})"
        )
    if float(mu.abs().max()) > MU_MAX * s:
        c = int(mu.abs().argmax())
        raise NoiseFileError(
            f"{where}: channel {c} has μ = {float(mu[c]):.4g}, more than {MU_MAX:g} × the "
            f"recorded activation RMS {s:.4g}"
        )
    var = (2 * ls).exp()
    live = p > 1e-6 * float(p.mean())
    per = 10 * torch.log10(var[live] / p[live])
    if per.numel() and float(per.min()) < CHANNEL_FLOOR_DB:
        c = int(torch.nonzero(live)[int(per.argmin())])
        raise NoiseFileError(
            f"{where}: channel {c} would be left almost clean: NSR {float(per.min()):.1f} dB on "
            f"its recorded power (floor {CHANNEL_FLOOR_DB:g} dB)"
        )
    nsr = 10 * math.log10(float(var.sum()) / float(p.sum()))
    lo_db, hi_db = nsr_range_db(alpha, config)
    offset = config.noise_own_offset_db if config is not None else 0.0
    if not lo_db <= nsr <= hi_db:
        e = expected_nsr_db(alpha, config)
        fit = f"fits at the defaults give {e:+.1f} dB on its evaluation data" if e is not None else "not measured"
        way = (
            "far below: this noise would leave the activation nearly clean"
            if nsr < lo_db
            else "far above: this noise would leave nothing to detect"
        )
        raise NoiseFileError(
            f"{where}: noise-to-signal ratio on its own recorded activation statistics is {nsr:+.1f} dB, {way} "
            f"for ALPHA {alpha:g} (accepted {lo_db:+.1f} … {hi_db:+.1f} dB; {fit}); refit it with "
            f"`veil fit-noise --alpha {alpha:g}`"
        )
    e = expected_nsr_db(alpha, config)
    if e is not None and abs(nsr - (e - offset)) > WARN_DB:
        warnings.warn(
            f"{where}: NSR {nsr:+.1f} dB on its own statistics, {nsr - e + offset:+.1f} dB from "
            f"what the default fit gives for ALPHA {alpha:g} ({e - offset:+.1f} dB): a short "
            "fit or other settings; its privacy is not that of the documented ALPHA",
            NoiseFileWarning,
            stacklevel=3,
        )
    return nsr


def _expected(
    model: SplitModel | None, weights_sha256: str | None, split_point: str | None
) -> tuple[str, str, int | None]:
    """(weights SHA-256, split point, channels) a file must record: the model's, or given explicitly."""
    model = _check_model(model)
    if model is not None:
        return weights_sha256 or model.weights_sha256, split_point or model.split_point, model.channels
    if weights_sha256 is None or split_point is None:
        raise ValueError(
            "which model is the noise for? pass model= (a veil.models.SplitModel), or both weights_sha256= "
            "and split_point="
        )
    return weights_sha256, split_point, None


def load_noise_file(
    path: str | Path,
    model: SplitModel | None = None,
    *,
    weights_sha256: str | None = None,
    split_point: str | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    sha256: str | None = None,
) -> tuple[Obfuscator, dict[str, Any]]:
    """Load one noise file after checking its pinned hash, model, split point, weights, channels and
    noise (:func:`check_noise`). What it must be for comes from ``model`` (``weights_sha256``/``split_point``
    override or, without a model, replace it); there is no default model.

    The file is read once: the hash, metadata and tensors all come from the same bytes.
    """
    want_sha, want_split, want_channels = _expected(model, weights_sha256, split_point)
    path = Path(path)
    data = _read(path, sha256)
    meta = _metadata(path, data)
    file_split = meta.get("split_point")
    file_model = meta.get("model") or (file_split.split(".")[0] if isinstance(file_split, str) else None)
    want_model = want_split.split(".")[0]
    if file_model != want_model:
        raise NoiseFileError(
            f"{path} was fitted for model {file_model!r} (split point {file_split!r}), but this model is "
            f"{want_model!r} ({want_split!r}); refit it with `veil fit-noise` for this model"
        )
    if file_split != want_split:
        raise NoiseFileError(
            f"{path} was fitted at split point {file_split!r}, but the model "
            f"splits at {want_split!r}; refit it with `veil fit-noise` at this split"
        )
    if meta.get("weights_sha256") != want_sha:
        raise NoiseFileError(
            f"{path} was fitted for model weights with SHA-256 {meta.get('weights_sha256')}, but the "
            f"model uses {want_sha or '(random weights)'}; refit it with `veil fit-noise` for these weights"
        )
    if meta.get("family") not in FAMILIES:
        raise NoiseFileError(f"{path}: unknown noise family {meta.get('family')!r}")
    try:
        alpha = check_alpha(meta.get("alpha"))
    except ValueError as exc:
        raise NoiseFileError(f"{path}: the ALPHA in its metadata is wrong: {exc}") from None
    try:
        tensors = load_tensors(data)
    except (SafetensorError, OSError, ValueError) as exc:
        raise NoiseFileError(f"{path} is corrupt (cannot read its tensors): {exc}") from exc
    missing = [k for k in _TENSORS if k not in tensors]
    if missing:
        raise NoiseFileError(f"{path} lacks tensors {missing}")
    c = int(meta.get("channels", tensors["mu"].numel()))
    if any(tensors[k].shape != (c,) for k in _TENSORS):
        raise NoiseFileError(
            f"{path}: tensor shapes {[tuple(tensors[k].shape) for k in _TENSORS]} do not match {c} channels"
        )
    if want_channels is not None and c != want_channels:
        raise NoiseFileError(
            f"{path} holds noise for {c} channels, but the activation of {want_split} has {want_channels}; "
            "it was not fitted for this model"
        )
    recorded = (meta.get("activation_stats") or {}).get("channel_power")
    if recorded is not None:
        rec = torch.as_tensor(recorded, dtype=torch.float64) if isinstance(recorded, list) else None
        if (
            rec is None
            or rec.shape != (c,)
            or not torch.allclose(rec, tensors["signal_power"].double(), rtol=1e-4, atol=1e-5)
        ):
            raise NoiseFileError(
                f"{path}: the signal_power tensor disagrees with the activation statistics in "
                "its metadata (the file was edited)"
            )
    ref = get_config(DEFAULT_MODEL)
    ref_channels = ref.split(REFERENCE_POWER_SPLIT.split(".")[1]).channels
    if want_split == REFERENCE_POWER_SPLIT and want_sha == ref.weights.sha256 and c == ref_channels:
        total = float(tensors["signal_power"].double().sum())
        if not abs(10 * math.log10(max(total, 1e-300) / REFERENCE_POWER)) <= REFERENCE_POWER_DB:
            raise NoiseFileError(
                f"{path} records a total activation power of {total:.4g}, but the reference head's is ≈ 60–92 "
                f"on natural images (accepted {REFERENCE_POWER / 10 ** (REFERENCE_POWER_DB / 10):g} … "
                f"{REFERENCE_POWER * 10 ** (REFERENCE_POWER_DB / 10):g}): its statistics, and the noise measured "
                "against them, are not this model's"
            )
    if meta["format"] == conditioned.FORMAT:
        return _load_conditioned(path, tensors, meta, c, float(alpha), seed, generator), meta
    config = _registered(want_model)
    check_noise(tensors["mu"], tensors["log_sigma"], tensors["signal_power"], float(alpha), str(path), config)
    obf = Obfuscator(c, meta["family"], seed=seed, generator=generator)
    with torch.no_grad():
        for k in _TENSORS:
            getattr(obf, k).copy_(tensors[k])
    obf.requires_grad_(False)
    return obf.eval(), meta


def _load_conditioned(
    path: Path,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    c: int,
    alpha: float,
    seed: int | None,
    generator: torch.Generator | None,
) -> ConditionedObfuscator:
    """An input-conditioned noise file (:mod:`veil.obfuscate.conditioned`), after its own checks: the
    tensors' recorded SHA-256 (any edit after fitting is refused) and the NSR checks on its mean σ(a)²."""
    digest = tensors_sha256(tensors)
    if digest != meta.get("tensors_sha256"):
        raise NoiseFileError(
            f"{path}: its tensors' SHA-256 {digest} differs from the recorded {meta.get('tensors_sha256')} "
            "(the file was modified after fitting); refusing it"
        )
    if not all(torch.isfinite(t).all() for t in tensors.values()):
        raise NoiseFileError(f"{path} holds non-finite values")
    try:
        obf = ConditionedObfuscator(c, meta["family"], hidden=int(meta["hidden"]), seed=seed, generator=generator)
        obf.load_file_tensors(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise NoiseFileError(f"{path}: conditioned-noise tensors do not fit its settings ({exc})") from exc
    with torch.no_grad():
        for k in _TENSORS:
            getattr(obf, k).copy_(tensors[k])
    # σ varies with the input; the file is judged on its mean noise power over the fitting data
    config = _registered(str(meta.get("split_point", "")).split(".")[0])  # its calibration (noise_nsr_db)
    # σ(a) varies with the input: judged on its mean noise power over the fitting data, against the per-channel
    # bounds and the *lower* end of ALPHA's range only. The net concentrates noise where the tail needs little
    # signal, so a high mean power does not mean nothing is left to detect; a low one still means no obfuscation.
    nsr = check_noise(obf.mu, effective_log_sigma(obf), obf.signal_power, alpha, str(path), None)
    lo_db, _ = nsr_range_db(alpha, config)
    if nsr < lo_db:
        raise NoiseFileError(
            f"{path}: mean noise-to-signal ratio of its input-conditioned noise on its own recorded activation "
            f"statistics is {nsr:+.1f} dB, far below what ALPHA {alpha:g} needs (at least {lo_db:+.1f} dB): this "
            f"noise would leave the activation nearly clean; refit it with `veil fit-noise --alpha {alpha:g}`"
        )
    obf.requires_grad_(False)
    return obf.eval()


def load_obfuscator(
    alpha: float | None,
    noise: str | Path | None = None,
    noise_dir: str | Path | None = None,
    model: SplitModel | None = None,
    *,
    weights_sha256: str | None = None,
    split_point: str | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    key: bytes | NoiseKey | os.PathLike | None = None,
    sha256: str | None = None,
) -> tuple[Obfuscator, dict[str, Any]]:
    """Find (:func:`find_noise_file`) and load the noise fitted for ALPHA for ``model``.

    Refuses a file fitted for another model, split point, weights or channel count, or another
    ALPHA than asked (``weights_sha256``/``split_point`` without a model: see :func:`load_noise_file`).
    Noise is fresh and unpredictable unless ``seed``/``generator`` is given (experiments only);
    ``key`` (bytes ≥ 32, a :class:`NoiseKey`, or a key file's path) makes it *keyed*: the same
    activation always gets the same noise (see :mod:`veil.obfuscate.keystream`). ``sha256`` pins
    the file's hash: any other content is refused.
    """
    if alpha is not None:
        alpha = check_alpha(alpha)
    _expected(model, weights_sha256, split_point)  # refuse a call that does not say which model, first
    noise = find_noise_file(alpha, noise, noise_dir, model)
    obf, meta = load_noise_file(
        noise,
        model,
        weights_sha256=weights_sha256,
        split_point=split_point,
        seed=seed,
        generator=generator,
        sha256=sha256,
    )
    if key is not None:
        obf.set_key(read_key_file(key) if isinstance(key, (str, os.PathLike)) else key)
    if alpha is not None and abs(float(meta["alpha"]) - float(alpha)) > 1e-9:
        raise NoiseFileError(f"{noise} was fitted for ALPHA {meta['alpha']:g}, not the requested {alpha:g}")
    return obf, meta

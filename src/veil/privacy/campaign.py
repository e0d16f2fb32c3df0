"""The audit over several ALPHAs: which noise to attack, which decoders to train, where to cache.

:func:`veil.privacy.audit.audit` scores one configuration. This module holds the policy around it
that ``veil audit`` and ``veil train-decoder`` share, so any caller gets the same behaviour:

- **noise** (:func:`audit_noise`): the given noise file, else the noise directory's file for that
  ALPHA, else fit it on the training photos (``veil fit-noise``'s defaults) and save it there;
- **decoders**: the naive (and perceptual) decoder once, the adaptive ones per noise file, all
  cached under the veil cache's ``attackers/`` (:func:`veil.privacy.train.ensure_decoder`);
- **the reconstruction cache** (:func:`audit_cache_dir`): the clean pass, shared by every ALPHA;
- **the loop** (:func:`audit_alphas`): one report per ALPHA (and per noise mode with ``keyed``).

Errors name the library's arguments, not command-line flags.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veil import jsonio
from veil.models import SplitModel
from veil.obfuscate import NoiseFileError, Obfuscator, load_obfuscator, noise_path
from veil.privacy.audit import Attacks, FaceSet, audit, check_independence, make_views, require_faces
from veil.privacy.decoders import Decoder, attackers_dir
from veil.privacy.train import Batches, ModelFeatures, TrainingData, ensure_decoder
from veil.privacy.verdict import privacy_columns

NOISE_MODES = ("fresh", "keyed")


@dataclass
class AuditNoise:
    """The noise one ALPHA is audited against, with the file it came from."""

    obfuscator: Obfuscator
    meta: dict[str, Any]
    sha256: str
    path: Path


#: where the white-box search may start (:attr:`AuditSettings.whitebox_start`)
WHITEBOX_STARTS = ("grey", "decoder")


@dataclass
class AuditSettings:
    """The attackers' budgets and the audit's options (``veil audit``'s defaults)."""

    #: input scale of the deployed path (None: the model's own, ×3 for FaceBoxes)
    scale: float | None = None
    #: wall-time budget of each decoder not cached yet (it stops earlier when its loss plateaus)
    decoder_minutes: float = 15.0
    whitebox_steps: int = 100
    whitebox_faces: int = 40
    whitebox_batch: int = 8
    #: where the white-box search starts: "grey" (the mean colour) or "decoder" (the hybrid: the layer-wise
    #: chain's reconstruction at a deep split with ``layerwise``, else the naive/adaptive decoder's)
    whitebox_start: str = "grey"
    #: averaging attack: obfuscations averaged per image (each ≥ 2; K = 1 is the adaptive attacker)
    ks: tuple[int, ...] = (4, 16)
    #: near-duplicate averaging: obfuscated near-duplicates averaged per image (empty: off)
    dup_ks: tuple[int, ...] = (16,)
    perceptual: bool = True
    #: the enlarged copies of faces below 192 px at the network (off: not a full audit)
    enlarge: bool = True
    #: also audit keyed noise under a random audit key
    keyed: bool = False
    #: also run the identity regressor (veil.privacy.regressor): clean and per ALPHA, cached
    regressor: bool = False
    #: wall-time budget of each regressor not cached yet
    regressor_minutes: float = 6.0
    #: also run the layer-wise chain at a deep split (veil.privacy.layerwise): clean and per ALPHA, cached
    layerwise: bool = False
    #: wall-time budget of each layer-wise inverter not cached yet
    layerwise_minutes: float = 8.0
    #: then the whole chain trains end to end on pixel L1 this long (0: off)
    layerwise_finetune_minutes: float = 8.0

    def check(self) -> None:
        if any(k < 2 for k in (*self.ks, *self.dup_ks)):
            raise ValueError("averaging K values (ks, dup_ks) must be ≥ 2 (K = 1 is the adaptive attacker itself)")
        if self.whitebox_start not in WHITEBOX_STARTS:
            raise ValueError(f"whitebox_start must be one of {', '.join(WHITEBOX_STARTS)}, not {self.whitebox_start!r}")


def audit_cache_dir(model: SplitModel) -> Path:
    """Where the clean pass (reconstructions' scores and the originals' embeddings) is cached, under the
    model's key (model, split, weights hash)."""
    return attackers_dir(model) / "audit-cache"


def audit_noise(
    alpha: float,
    model: SplitModel,
    fit_dirs: Sequence[str | Path],
    noise: str | Path | None = None,
    noise_dir: str | Path | None = None,
    progress: bool = True,
) -> AuditNoise:
    """The noise for ALPHA: the file ``noise``, else the one in ``noise_dir`` (default: the model's
    directory in the veil cache); when that does not exist yet, fit it on ``fit_dirs`` (photos, for a
    model that reads any input size) with the default recipe and save it there.

    A missing explicit ``noise`` file is an error, never a reason to fit; so is missing noise for a
    fixed-size model, which is fitted on its own training data, not on photo crops.
    """
    from veil.digest import sha256_file

    path = Path(noise) if noise is not None else noise_path(alpha, noise_dir, model)
    if not path.is_file():
        if noise is not None:
            raise NoiseFileError(f"noise file not found: {path}")
        if model.config.input.size is not None:
            raise NoiseFileError(
                f"no noise for ALPHA {alpha:g} at {path}: {model.name} takes a fixed input size, so its noise is "
                "fitted on its own training images (veil.obfuscate.whole.fit_whole_images), not here"
            )
        if not fit_dirs:
            raise NoiseFileError(f"no noise for ALPHA {alpha:g} at {path} and no training photos to fit it on")
        if progress:
            print(f"fitting noise for ALPHA {alpha:g} → {path}", file=sys.stderr)
        from veil.obfuscate.fit import FitConfig
        from veil.obfuscate.recipe import fit_and_save

        fit_and_save(model, model.weights_sha256, fit_dirs, path, FitConfig(alpha=alpha), progress=progress)
    obf, meta = load_obfuscator(alpha, noise=path, model=model)
    return AuditNoise(obf, meta, sha256_file(path), path)


def audit_alphas(
    model: SplitModel,
    faces: FaceSet,
    alphas: Sequence[float],
    out: str | Path,
    train_dirs: Sequence[str | Path],
    settings: AuditSettings | None = None,
    noise: str | Path | None = None,
    noise_dir: str | Path | None = None,
    progress: bool = True,
    on_report: Callable[[dict[str, Any], Path], None] | None = None,
) -> list[dict[str, Any]]:
    """Audit every ALPHA in ``alphas`` (0: clean activations only) on ``faces``; return the reports.

    Reports go to ``out`` (one sub-folder ``alpha-<A>[-keyed]`` each when there are several, and a
    ``summary.json`` of the privacy columns). All noise is loaded (or fitted) first, so a bad file
    fails before any training; ``on_report(report, folder)`` is called after each report.
    """
    s = settings or AuditSettings()
    s.check()
    require_faces(model)
    if noise is not None and len(alphas) > 1:
        raise ValueError("one noise file names one ALPHA: give a single ALPHA with it")
    scale = model.config.input.scale if s.scale is None else s.scale
    noises = {a: audit_noise(a, model, train_dirs, noise, noise_dir, progress) for a in alphas if a > 0}
    views = make_views(faces, scale, enlarge=s.enlarge)
    if progress:
        print(
            f"auditing {faces.n_faces} faces in {len(faces.images)} FDDB images ({len(views) - len(faces.images)} "
            f"enlarged copies) at scale ×{scale:g}",
            file=sys.stderr,
        )
    feats = ModelFeatures(model) if s.perceptual else None
    data: TrainingData = train_dirs

    def decoder(obf: AuditNoise | None = None, alpha: float | None = None, perceptual: bool = False) -> Decoder:
        return ensure_decoder(
            model,
            s.decoder_minutes,
            data,
            obfuscator=None if obf is None else obf.obfuscator,
            noise_sha256=None if obf is None else obf.sha256,
            alpha=alpha,
            loss="perceptual" if perceptual else "l1",
            features=feats if perceptual else None,
            progress=progress,
            scale=scale,
        )

    def regressor(obf: AuditNoise | None = None):
        from veil.privacy.regressor import ensure_regressor

        return ensure_regressor(
            model,
            train_dirs,
            scale,
            wire=None if obf is None else obf.obfuscator,
            noise_sha256=None if obf is None else obf.sha256,
            minutes=s.regressor_minutes,
            progress=progress,
        )

    def layerwise(obf: AuditNoise | None = None):
        from veil.privacy.layerwise import ensure_chain

        return ensure_chain(
            model,
            s.layerwise_minutes,
            train_dirs,
            scale,
            obfuscator=None if obf is None else obf.obfuscator,
            noise_sha256=None if obf is None else obf.sha256,
            decoder_minutes=s.decoder_minutes,
            finetune_minutes=s.layerwise_finetune_minutes,
            progress=progress,
        )

    naive = decoder()
    naive_p = decoder(perceptual=True) if feats is not None else None
    reg_clean = regressor() if s.regressor else None
    chain_clean = layerwise() if s.layerwise else None
    base = Attacks(
        model,
        naive,
        perceptual_clean=naive_p,
        whitebox_steps=s.whitebox_steps,
        whitebox_faces=s.whitebox_faces,
        whitebox_batch=s.whitebox_batch,
        ks=tuple(s.ks),
        dup_ks=tuple(s.dup_ks),
        regressor=reg_clean,
        layerwise=chain_clean,
        whitebox_init=(chain_clean or naive) if s.whitebox_start == "decoder" else None,
    )
    out = Path(out)
    rows: list[dict[str, Any]] = []
    for alpha in alphas:
        modes = NOISE_MODES if (alpha > 0 and s.keyed) else NOISE_MODES[:1]
        for mode in modes:
            single = len(alphas) == 1 and len(modes) == 1
            dest = out if single else out / (f"alpha-{alpha:g}" + ("" if mode == "fresh" else "-keyed"))
            decs: dict[str, Any] = {"naive": naive.meta}
            if naive_p is not None:
                decs["perceptual_clean"] = naive_p.meta
            if reg_clean is not None:
                decs["regressor"] = reg_clean.meta
            if chain_clean is not None:
                decs["layerwise"] = chain_clean.meta["inverter"]
            att = base
            meta: dict[str, Any] = {"decoders": decs, "whitebox_start": s.whitebox_start}
            nz = noises.get(alpha)
            if nz is not None:
                adaptive = decoder(nz, alpha)
                perc = decoder(nz, alpha, perceptual=True) if feats is not None else None
                decs["adaptive"] = adaptive.meta
                if perc is not None:
                    decs["perceptual"] = perc.meta
                reg_adaptive = regressor(nz) if s.regressor else None
                if reg_adaptive is not None:
                    decs["regressor_adaptive"] = reg_adaptive.meta
                chain_adaptive = layerwise(nz) if chain_clean is not None else None
                if chain_adaptive is not None:
                    decs["layerwise_adaptive"] = chain_adaptive.meta["inverter"]
                att = Attacks(
                    **{
                        **base.__dict__,
                        "adaptive": adaptive,
                        "obfuscator": nz.obfuscator,
                        "perceptual": perc,
                        "regressor_adaptive": reg_adaptive,
                        "layerwise_adaptive": chain_adaptive,
                        "whitebox_init_adaptive": (chain_adaptive or adaptive)
                        if s.whitebox_start == "decoder"
                        else None,
                    }
                )
                meta.update(
                    noise_file=str(nz.path),
                    noise_sha256=nz.sha256,
                    noise_mode=mode,
                    independence_notes=check_independence(decs, nz.meta),
                )
                # keyed: ε from HMAC(key, activation) under a random key the attacker never knows
                nz.obfuscator.set_key(secrets.token_bytes(32) if mode == "keyed" else None)
            try:
                rep = audit(
                    faces,
                    att,
                    alpha,
                    scale,
                    out_dir=dest,
                    meta=meta,
                    views=views,
                    cache_dir=audit_cache_dir(model),
                    enlarge=s.enlarge,
                    progress=progress,
                )
            finally:
                if nz is not None:
                    nz.obfuscator.set_key(None)
            rows.append(rep)
            if on_report is not None:
                on_report(rep, dest)
    if len(rows) > 1:
        summary = [
            {"alpha": r["alpha"], "noise_mode": r.get("noise_mode", "fresh"), **privacy_columns(r)} for r in rows
        ]
        jsonio.write_json(out / "summary.json", summary)
    return rows


def reconstruction_alphas(
    model: SplitModel,
    images: Sequence[np.ndarray],
    alphas: Sequence[float],
    out: str | Path,
    data: TrainingData,
    settings: AuditSettings | None = None,
    noise: str | Path | None = None,
    noise_dir: str | Path | None = None,
    progress: bool = True,
    on_report: Callable[[dict[str, Any], Path], None] | None = None,
    labels: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """The reconstruction audit (:mod:`veil.privacy.reconstruction`, any model) of every ALPHA on ``images``.

    ``labels`` (a classifier's, one per image): each report also holds the label leak
    (:func:`veil.privacy.label_leak.label_leak`: the clean classifier's accuracy on the reconstructions).

    Noise as in :func:`audit_noise` (fitted on the training photos only for models that read photos of
    any size; a fixed-size model's noise file must exist); naive and adaptive decoders cached per model key
    (:func:`~veil.privacy.train.ensure_decoder`, trained on ``data``); one report per ALPHA in ``out``
    (a sub-folder ``alpha-<A>`` each when there are several).
    """
    from veil.privacy.reconstruction import reconstruction_audit

    s = settings or AuditSettings()
    s.check()
    if noise is not None and len(alphas) > 1:
        raise ValueError("one noise file names one ALPHA: give a single ALPHA with it")
    fit_dirs = [] if data is None or isinstance(data, Batches) else [Path(d) for d in data]
    noises = {a: audit_noise(a, model, fit_dirs, noise, noise_dir, progress) for a in alphas if a > 0}
    scale = model.config.input.scale if s.scale is None else s.scale

    def decoder(nz: AuditNoise | None = None, alpha: float | None = None) -> Decoder:
        return ensure_decoder(
            model,
            s.decoder_minutes,
            data,
            obfuscator=None if nz is None else nz.obfuscator,
            noise_sha256=None if nz is None else nz.sha256,
            alpha=alpha,
            progress=progress,
            scale=scale,
        )

    naive = decoder()
    base = Attacks(
        model,
        naive,
        whitebox_steps=s.whitebox_steps,
        whitebox_faces=s.whitebox_faces,
        whitebox_batch=s.whitebox_batch,
        ks=tuple(s.ks),
    )
    out = Path(out)
    rows: list[dict[str, Any]] = []
    for alpha in alphas:
        dest = out if len(alphas) == 1 else out / f"alpha-{alpha:g}"
        decs: dict[str, Any] = {"naive": naive.meta}
        meta: dict[str, Any] = {"decoders": decs}
        att = base
        nz = noises.get(alpha)
        if nz is not None:
            adaptive = decoder(nz, alpha)
            decs["adaptive"] = adaptive.meta
            att = Attacks(**{**base.__dict__, "adaptive": adaptive, "obfuscator": nz.obfuscator})
            meta.update(noise_file=str(nz.path), noise_sha256=nz.sha256)
        if labels is not None and model.config.task == "classification":
            from veil.privacy.label_leak import label_leak

            meta["label_leak"] = label_leak(att, images, labels, progress=progress)
        rep = reconstruction_audit(images, att, alpha, scale, out_dir=dest, progress=progress, meta=meta)
        rows.append(rep)
        if on_report is not None:
            on_report(rep, dest)
    return rows

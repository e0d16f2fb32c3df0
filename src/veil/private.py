"""``veil.make_private``: any registered split model, obfuscated, in one call (as Opacus's ``make_private``).

Everything a user would otherwise assemble and check by hand is done inside: the model is built
with its weights resolved and SHA-256 verified (:func:`veil.models.create`), the noise fitted for
ALPHA *for this model, split and weights* is found and checked (:func:`veil.obfuscate.load_obfuscator`:
another model's, split's or weights' noise, a wrong channel count, a pinned hash that differs, an
absurd file are refused with the reason), or fitted on photos you name, and the result is the
ordinary data path (:class:`veil.pipeline.SplitPipeline`; a :class:`veil.detector.Detector` for a
face detector) with the obfuscator in place: ``client_side`` (what may leave the trust zone),
``server_side`` (the tail), ``predict``/``detect``. Noise is drawn fresh on every call from the
operating system unless a ``key`` makes it keyed (or ``seed``, for reproducible experiments only).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veil import assets
from veil.detector import Detector
from veil.models import DEFAULT_MODEL, SplitModel, create
from veil.obfuscate import NoiseFileError, NoiseKey, check_alpha, find_noise_file, load_obfuscator, noise_path
from veil.pipeline import Prediction, SplitPipeline
from veil.preprocess import Prepared

__all__ = ["NoNoiseError", "PrivateDetector", "PrivatePipeline", "make_private"]


class NoNoiseError(NoiseFileError):
    """No noise has been fitted for this model, split, weights and ALPHA (the message says how to fit it)."""


@dataclass
class PrivatePipeline(SplitPipeline):
    """A :class:`SplitPipeline` that always has its obfuscator, and knows which noise it runs."""

    alpha: float | None = None
    noise_file: Path | None = None
    noise_meta: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.obfuscator is None:
            raise ValueError("a private pipeline needs its obfuscator (use veil.make_private)")

    def detect(self, image: np.ndarray | Prepared, obfuscate: bool = True) -> Prediction:
        """The task's answer (:meth:`predict`), with the activation obfuscated unless ``obfuscate=False``."""
        return self.predict(image, obfuscate=obfuscate)


@dataclass
class PrivateDetector(Detector, PrivatePipeline):
    """A face detector from :func:`make_private`: :class:`veil.detector.Detector`'s API, noise always set."""


def _fit(model: SplitModel, alpha: float, images: Sequence[str | Path], out: Path, progress: bool) -> None:
    """Fit ALPHA for ``model`` on photo folders with the default recipe of its kind and save it at ``out``."""
    from veil.obfuscate.fit import FitConfig

    if model.config.input.size is None:  # any input size: zoomed crops of the photos
        from veil.obfuscate.recipe import fit_and_save

        fit_and_save(model, model.weights_sha256, list(images), out, FitConfig(alpha=alpha), progress=progress)
        return
    from veil.data.images import list_images
    from veil.obfuscate.whole import fit_whole_images
    from veil.preprocess import load_image

    files = list_images(images)
    data = {"dirs": [str(d) for d in images], "images": len(files)}
    pictures = [load_image(f) for f in files]
    fit_whole_images(model, pictures, out, FitConfig(alpha=alpha), data, progress=progress)


def make_private(
    model: str | SplitModel = DEFAULT_MODEL,
    alpha: float = assets.DEFAULT_ALPHA,
    noise: str | Path | None = None,
    key: bytes | NoiseKey | os.PathLike | str | None = None,
    *,
    split: str | None = None,
    weights: str | Path | None = None,
    verify_sha: bool = True,
    noise_dir: str | Path | None = None,
    noise_sha256: str | None = None,
    fit_images: Sequence[str | Path] | None = None,
    backend: str = "fp32",
    scale: float | None = None,
    seed: int | None = None,
    progress: bool = False,
) -> PrivatePipeline:
    """``model`` (a registered name, cut at ``split``, or a :class:`veil.models.SplitModel`) with the noise
    fitted for ALPHA between its head and tail; a :class:`PrivateDetector` for a face detector.

    Noise: the file ``noise``, else the one in ``noise_dir`` (default: this model's directory in the
    veil cache), else, for FaceBoxes with its reference weights at its default split, the noise that
    ships with veil. When there is none, it is fitted on ``fit_images`` (folders of unlabeled photos,
    never the evaluation set) and saved in that directory; without them :class:`NoNoiseError` says
    how to fit it. ``key`` (bytes, a :class:`veil.obfuscate.NoiseKey` or a key file) makes the noise
    keyed; ``noise_sha256`` pins the noise file's hash.
    """
    alpha = check_alpha(alpha)
    if isinstance(model, SplitModel):
        if split is not None or weights is not None:
            raise ValueError("split= and weights= choose how a model is built: give them with its name, not a model")
        m = model
    else:
        m = create(model, split, weights=weights, verify_sha=verify_sha)
    key = Path(key) if isinstance(key, str) else key
    try:
        path = find_noise_file(alpha, noise, noise_dir, m)
    except NoiseFileError as exc:  # none fitted for this model, split, weights and ALPHA
        path = noise_path(alpha, noise_dir, m)
        if not fit_images:
            flags = "" if m.name == DEFAULT_MODEL else f" --model {m.name}"
            flags += "" if m.split == m.config.default_split else f" --split {m.split}"
            raise NoNoiseError(
                f"no noise fitted for ALPHA {alpha:g} for {m.split_point} with weights "
                f"{m.weights_sha256[:12] or '(random)'} (looked in {path.parent}); fit it here with "
                "make_private(..., fit_images=[DIR, ...]) (folders of unlabeled photos, not the evaluation set), "
                f"or `veil fit-noise{flags} --alpha {alpha:g} --images DIR`{exc.legacy_hint}"
            ) from exc
        _fit(m, alpha, fit_images, path, progress)
    obf, meta = load_obfuscator(alpha, noise=path, model=m, seed=seed, key=key, sha256=noise_sha256)
    cls = PrivateDetector if m.config.task == "face-detection" else PrivatePipeline
    return cls(
        model=m,
        weights_sha256=m.weights_sha256,
        scale=scale,  # type: ignore[arg-type]  # None: the model's own
        obfuscator=obf,
        backend=backend,
        alpha=alpha,
        noise_file=path,
        noise_meta=meta,
    )

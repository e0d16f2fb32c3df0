"""A registered model with its weights: found, SHA-256 verified and loaded (``veil.models.create``).

Where a model's weights come from is its config's :class:`~veil.models.registry.WeightsSpec`;
this module is the one resolver for every model. Resolution order: an explicit path, then
``$VEIL_WEIGHTS`` (for the default model only: one variable cannot name every model's weights),
then the cache (``$VEIL_CACHE_DIR`` or ``~/.cache/veil``, filled by ``veil weights fetch|import``),
then the copy shipped inside a package (``WeightsSpec.shipped``). Every file, the shipped one
included, is checked against ``WeightsSpec.sha256`` before use, unless the caller opts out
(``verify_sha=False``) for weights of their own; the file's SHA-256 is recorded on the model
either way, so noise files and caches made for one set of weights never serve another.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import torch

from veil.digest import sha256_file
from veil.models.registry import ModelConfig, SplitModel, build, get_config
from veil.settings import settings

#: The model every command uses unless told otherwise (``--model``), and the only one
#: ``$VEIL_WEIGHTS`` applies to.
DEFAULT_MODEL = "faceboxes"


class WeightsError(RuntimeError):
    """Weights are missing, corrupt, or not the expected checkpoint."""


def cache_dir() -> Path:
    """The cache directory (``$VEIL_CACHE_DIR`` or ``~/.cache/veil``)."""
    return settings().cache_dir


def _config(model: str | ModelConfig) -> ModelConfig:
    return get_config(model) if isinstance(model, str) else model


def cache_path(model: str | ModelConfig = DEFAULT_MODEL) -> Path:
    """Where ``veil weights fetch|import`` installs a model's weights.

    ``CACHE/weights/<model>/<filename>``; the default model keeps its historical place,
    ``CACHE/<filename>`` (``~/.cache/veil/FaceBoxesProd.pth``), so existing caches stay valid.
    """
    config = _config(model)
    if config.name == DEFAULT_MODEL:
        return cache_dir() / config.weights.filename
    return cache_dir() / "weights" / config.name / config.weights.filename


def _hint(config: ModelConfig) -> str:
    flag = "" if config.name == DEFAULT_MODEL else f" --model {config.name}"
    fetch = f"Run `veil weights fetch{flag}` to download them, or " if config.weights.url else ""
    return f"{fetch}`veil weights import{flag} PATH` for a local copy of {config.weights.filename}."


def resolve(model: str | ModelConfig = DEFAULT_MODEL, path: str | Path | None = None) -> Path:
    """The weights file for ``model``: ``path``, then ``$VEIL_WEIGHTS`` (default model only), the cache,
    then the shipped copy; :class:`WeightsError` saying where it looked and how to get them."""
    config = _config(model)
    env = settings().weights if config.name == DEFAULT_MODEL else None
    for candidate, origin in ((path, ""), (env, " (given by $VEIL_WEIGHTS)")):
        if candidate:
            p = Path(candidate).expanduser()
            if not p.is_file():
                raise WeightsError(f"weights file does not exist{origin}: {p}")
            return p
    cached = cache_path(config)
    if cached.is_file():
        return cached
    shipped = config.weights.shipped
    if shipped is not None and shipped.is_file():
        return shipped
    looked = ("$VEIL_WEIGHTS, " if config.name == DEFAULT_MODEL else "") + str(cached)
    if shipped is not None:
        looked += f" and the package's {shipped}, which this installation lacks"
    raise WeightsError(f"no {config.name} weights found (none given; looked at {looked}). {_hint(config)}")


def verify(path: str | Path, model: str | ModelConfig = DEFAULT_MODEL) -> str:
    """Check a file against the model's SHA-256; return it, or raise :class:`WeightsError` saying what differs."""
    config = _config(model)
    expected = config.weights.sha256
    digest = sha256_file(path)
    if digest != expected:
        raise WeightsError(
            f"{path} is not the reference {config.name} checkpoint: SHA-256 {digest} != expected {expected}. "
            f"The file is corrupt, truncated or a different model; get it again ({_hint(config)}). "
            "Weights of your own: load them with verify_sha=False (the file's own SHA-256 is then recorded)."
        )
    return digest


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint safely (tensors only) and strip a ``module.`` prefix if present."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files; re-raised as WeightsError
        raise WeightsError(f"cannot read weights {path}: {exc.__class__.__name__}: {exc}") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path} does not hold a PyTorch state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def create(
    name: str = DEFAULT_MODEL,
    split: str | None = None,
    pretrained: bool = True,
    weights: str | Path | None = None,
    verify_sha: bool = True,
) -> SplitModel:
    """The registered model ``name`` cut at ``split`` (default: its first), in eval mode.

    ``pretrained``: weights resolved (:func:`resolve`; ``weights`` is an explicit file), verified
    against the config's SHA-256 unless ``verify_sha=False`` (weights of your own), and loaded
    strictly into ``model.network``; ``model.weights_sha256`` is the file's SHA-256. Without
    ``pretrained`` (and no ``weights``) the weights are random and ``weights_sha256`` is "".
    """
    model = build(name, split)
    if not pretrained and weights is None:
        return model
    config = model.config
    p = resolve(config, weights)
    digest = verify(p, config) if verify_sha else sha256_file(p)
    try:
        model.network.load_state_dict(load_state_dict(p), strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{p} does not fit the {config.name} architecture: {exc}") from exc
    model.weights_sha256 = digest
    return model.eval()


def install(src: str | Path, model: str | ModelConfig = DEFAULT_MODEL) -> Path:
    """Verify a local checkpoint against the model's SHA-256 and copy it into the cache; return the installed path."""
    config = _config(model)
    verify(src, config)
    dest = cache_path(config)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)  # never a half-copied file under the final name
    return dest


def fetch(model: str | ModelConfig = DEFAULT_MODEL, url: str | None = None, timeout: float = 30.0) -> Path:
    """Download a model's weights from their public source (or ``url``), verify them, and install them."""
    config = _config(model)
    url = url or config.weights.url
    if not url:
        raise WeightsError(
            f"{config.name} has no public download source; its weights ship with veil "
            f"({config.weights.shipped}) or come from `veil weights import --model {config.name} PATH`"
        )
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_dir(), suffix=".part", delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - the config's https URL
                shutil.copyfileobj(resp, tmp)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            Path(tmp.name).unlink(missing_ok=True)
            raise WeightsError(
                f"could not download the {config.name} weights from {url} ({exc}). Offline? Copy "
                f"{config.weights.filename} here by other means and run `veil weights import"
                f"{'' if config.name == DEFAULT_MODEL else ' --model ' + config.name} PATH`."
            ) from exc
    try:
        return install(tmp.name, config)
    finally:
        Path(tmp.name).unlink(missing_ok=True)

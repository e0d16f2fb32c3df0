"""Models from other packages: the ``veil.models`` entry-point group.

A package that defines split models names the module that registers them (with
:func:`~veil.models.registry.register_model`) in its metadata::

    [project.entry-points."veil.models"]
    mynet = "mypackage.veil_models"

and every front end — ``veil models``, the CLI's ``--model``, :func:`veil.make_private` — knows them
once the package is installed, without editing veil. Loaded lazily, the first time the registry is
listed or a name is not found, so importing veil scans no package metadata.
"""

from __future__ import annotations

import importlib.metadata
import warnings

#: The entry-point group veil reads.
GROUP = "veil.models"
_loaded: set[str] = set()


def load_plugins() -> list[str]:
    """Import each ``veil.models`` entry point not imported yet; return the names newly loaded.

    A plugin that fails to import is reported with a warning naming it and skipped: one broken
    package must not take veil's own models down with it.
    """
    new: list[str] = []
    for ep in importlib.metadata.entry_points(group=GROUP):
        key = f"{ep.name}={ep.value}"
        if key in _loaded:
            continue
        _loaded.add(key)
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001 - any error in someone else's package: warn and go on
            warnings.warn(
                f"veil model plugin {ep.name!r} ({ep.value}) failed to load and is skipped: "
                f"{exc.__class__.__name__}: {exc}",
                stacklevel=2,
            )
            continue
        new.append(ep.name)
    return new

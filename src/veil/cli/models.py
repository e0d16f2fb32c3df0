"""``veil models`` and ``veil models show NAME``: the registered split models (thin layer over
:func:`veil.models.list_models` and :func:`veil.models.get_config`)."""

from __future__ import annotations

import argparse
from typing import Any

from veil import jsonio
from veil.cli.errors import CLIError
from veil.models import ModelConfig, UnknownModelError, get_config, list_models, pretrained


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list the registered split models, their splits and weights",
        description="The split models veil knows (its registry; a model of your own registers with "
        "@veil.models.register_model): each model's task, the places it can be cut into head and tail "
        "(activation channels and stride), where its weights come from (source, SHA-256, license) and "
        "which weights file this machine would load. `veil models show NAME` adds the input "
        "normalisation, the outputs and whether the weights file's SHA-256 matches. Every command "
        "that runs a model takes --model NAME and --split NAME.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_list)
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    s = msub.add_parser("show", help="everything the registry knows about one model")
    s.add_argument("name", help="a registered model name (see `veil models`)")
    s.add_argument("--json", action="store_true", help="print JSON instead of text")
    s.set_defaults(func=_show)


def _where(config: ModelConfig, verify: bool) -> dict[str, Any]:
    """Which weights file this machine would load for ``config`` (and from where), or why none."""
    try:
        path = pretrained.resolve(config)
    except pretrained.WeightsError as exc:
        return {"path": None, "origin": None, "problem": str(exc)}
    if config.weights.shipped is not None and path == config.weights.shipped:
        origin = "shipped with veil"
    elif path == pretrained.cache_path(config):
        origin = "veil cache"
    else:
        origin = "$VEIL_WEIGHTS"
    out: dict[str, Any] = {"path": str(path), "origin": origin}
    if verify:
        try:
            pretrained.verify(path, config)
            out["sha256_matches"] = True
        except pretrained.WeightsError as exc:
            out.update(sha256_matches=False, problem=str(exc))
    return out


def describe(name: str, verify: bool = False) -> dict[str, Any]:
    """The registry's facts about model ``name`` as plain data (what ``veil models`` prints)."""
    c = get_config(name)
    w = c.weights
    return {
        "name": c.name,
        "task": c.task,
        "description": c.description,
        "default_split": c.default_split,
        "splits": [
            {"name": s.name, "channels": s.channels, "stride": s.stride, "description": s.description} for s in c.splits
        ],
        "input": {
            "mean": list(c.input.mean),
            "std": list(c.input.std),
            "scale": c.input.scale,
            "size": list(c.input.size) if c.input.size else None,
            "channels": c.input.channels,
        },
        "outputs": list(c.outputs),
        "labels": list(c.labels),
        "weights": {
            "filename": w.filename,
            "sha256": w.sha256,
            "source": w.url or "ships with veil (no public download)",
            "license": w.license,
            "provenance": w.provenance,
            "resolves_to": _where(c, verify),
        },
    }


def _text(d: dict[str, Any], full: bool) -> str:
    w = d["weights"]
    lines = [f"{d['name']}  ({d['task']})" + (f": {d['description']}" if d["description"] else "")]
    lines.append("  splits (channels × stride; the first is the default):")
    for s in d["splits"]:
        desc = f"  {s['description']}" if s["description"] else ""
        lines.append(f"    {s['name']:<12} {s['channels']:>4} ch, stride {s['stride']:<3}{desc}")
    lines.append(f"  weights: {w['filename']}  SHA-256 {w['sha256']}")
    lines.append(f"    source:  {w['source']}")
    lines.append(f"    license: {w['license'] or '(not stated)'}")
    if full and w["provenance"]:
        lines.append(f"    made:    {w['provenance']}")
    r = w["resolves_to"]
    if r["path"] is None:
        lines.append(f"    on this machine: none found. {r['problem']}")
    else:
        lines.append(f"    on this machine: {r['path']} ({r['origin']})")
        if "sha256_matches" in r:
            lines.append("    SHA-256: " + ("matches" if r["sha256_matches"] else f"DIFFERS. {r['problem']}"))
    if full:
        i = d["input"]
        size = "any size" if i["size"] is None else f"{i['size'][0]}×{i['size'][1]}"
        lines.append(
            f"  input: {i['channels']} channel(s), {size}, scale ×{i['scale']:g}, "
            f"mean {i['mean'][: i['channels']]}, std {i['std'][: i['channels']]} (0..255 units)"
        )
        lines.append(f"  outputs: {', '.join(d['outputs'])}")
        if d["labels"]:
            lines.append(f"  labels: {', '.join(d['labels'])}")
    return "\n".join(lines)


def _list(args: argparse.Namespace) -> int:
    models = [describe(n) for n in list_models()]
    if args.json:
        print(jsonio.dumps(models))
    else:
        print("\n\n".join(_text(d, full=False) for d in models))
        print("\n`veil models show NAME` for one model in full (input, outputs, SHA-256 check of its weights).")
    return 0


def _show(args: argparse.Namespace) -> int:
    try:
        d = describe(args.name, verify=True)
    except UnknownModelError as exc:  # it lists the known names
        raise CLIError(str(exc)) from None
    print(jsonio.dumps(d) if args.json else _text(d, full=True))
    return 0


__all__ = ["describe", "register"]

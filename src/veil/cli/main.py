"""Entry point of the ``veil`` command: discovers subcommand modules and dispatches."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import veil
import veil.cli
from veil.cli.errors import CLIError  # also re-exported: cli/defend.py imports it from here
from veil.cli.threads import COMPUTE_COMMANDS, add_threads_arg, set_threads

#: Order in ``--help``: the data's path first, then operations. Unlisted modules follow.
_ORDER = ["demo", "models", "weights", "data", "detect", "evaluate", "noise", "sweep", "audit", "triton", "k8s"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="veil",
        description="Confidential inference with split models: run a model's head locally, obfuscate its "
        "activation with learned noise, and send only that to the tail on a server. FaceBoxes (face "
        "detection) is the default model; `veil models` lists every registered model and its splits.",
    )
    parser.add_argument("--version", action="version", version=f"veil {veil.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = [m.name for m in pkgutil.iter_modules(veil.cli.__path__) if m.name not in ("main", "__init__")]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    for name in names:
        module = importlib.import_module(f"veil.cli.{name}")
        if hasattr(module, "register"):
            module.register(sub)
    for name, p in sub.choices.items():  # one --threads for every command that computes
        if name in COMPUTE_COMMANDS:
            add_threads_arg(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    previous = None
    try:
        previous = set_threads(args)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except CLIError as exc:
        print(f"veil {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as exc:
        # Library errors (bad weights, corrupt files, missing data) are user errors here.
        print(f"veil {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:  # main() may run inside a longer process (tests, notebooks)
            import torch

            torch.set_num_threads(previous)

"""``--threads`` for every command that computes: one definition, applied by ``veil.cli.main``.

Why a default of one thread per process: torch's default (one thread per core) oversubscribes as
soon as anything else runs — on a loaded 2-core machine ``veil evaluate`` took 1.9 s per image with
the default against 144 ms with one thread (issue 12). Parallelism across images comes from
``--workers N`` (processes, each with ``cores // N`` threads); ``--threads N`` gives this
process N threads, e.g. on an idle machine with one worker.
"""

from __future__ import annotations

import argparse

#: Threads per process when ``--threads`` is not given.
DEFAULT_THREADS = 1
#: Top-level commands that run the network (and get ``--threads`` if their module did not add it).
COMPUTE_COMMANDS = (
    "detect",
    "evaluate",
    "fit-noise",
    "sweep",
    "audit",
    "train-decoder",
    "leak-scale",
    "export-triton",
    "infer",
    "demo",
)


def threads_value(text: str) -> int:
    """argparse type: a thread count ≥ 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads must be a whole number ≥ 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--threads must be ≥ 1, got {n}")
    return n


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    """Add ``--threads N`` to a command's parser (once)."""
    if any("--threads" in a.option_strings for a in p._actions):
        return
    p.add_argument(
        "--threads",
        type=threads_value,
        default=None,
        metavar="N",
        help=f"torch CPU threads in this process (default: {DEFAULT_THREADS}, so processes never "
        "oversubscribe the cores; with --workers, each worker process gets cores/workers)",
    )


def set_threads(args: argparse.Namespace) -> int | None:
    """Apply ``--threads`` (or the default) to torch in this process; return the previous count.

    ``None`` when the command has no ``--threads``: nothing is changed.
    """
    if not hasattr(args, "threads"):
        return None
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads or DEFAULT_THREADS)
    return previous

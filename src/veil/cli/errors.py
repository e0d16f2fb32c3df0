"""The CLI's one user-facing error type, below every command module so none imports ``veil.cli.main``."""

from __future__ import annotations


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2, no traceback."""

"""--threads: on every command that computes, one thread per process by default, restored afterwards."""

from __future__ import annotations

import argparse

import pytest
import torch

from veil.cli.main import build_parser, main
from veil.cli.threads import COMPUTE_COMMANDS, DEFAULT_THREADS, set_threads


def test_every_compute_command_has_threads():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [
        c
        for c in COMPUTE_COMMANDS
        if c in sub.choices and not any("--threads" in a.option_strings for a in sub.choices[c]._actions)
    ]
    assert not missing and set(COMPUTE_COMMANDS) <= set(sub.choices), missing
    assert "--threads" in sub.choices["evaluate"].format_help()


def test_default_is_one_thread_and_the_previous_count_comes_back(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert set_threads(argparse.Namespace(threads=None)) == 2 and torch.get_num_threads() == DEFAULT_THREADS == 1
        assert set_threads(argparse.Namespace(threads=3)) == 1 and torch.get_num_threads() == 3
        assert set_threads(argparse.Namespace()) is None and torch.get_num_threads() == 3  # no --threads: untouched
        torch.set_num_threads(2)
        assert main(["detect", str(tmp_path / "missing.jpg"), "--out", str(tmp_path), "--threads", "1"]) != 0
        assert torch.get_num_threads() == 2  # a command run in-process leaves the caller's setting alone
    finally:
        torch.set_num_threads(before)


def test_threads_must_be_positive():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["detect", "x.jpg", "--out", "o", "--threads", "0"])

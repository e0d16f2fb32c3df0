"""``veil models``: the registry as users see it, read from the registered configs and this machine."""

from __future__ import annotations

import json

from veil.cli.main import main
from veil.digest import sha256_file
from veil.models import get_config, list_models, pretrained


def test_models_lists_every_registered_model_with_splits_and_where_its_weights_resolve(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VEIL_WEIGHTS", raising=False)
    assert main(["models", "--json"]) == 0
    models = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in models] == list_models() and {"faceboxes", "digits"} <= set(list_models())
    for m in models:
        c = get_config(m["name"])
        assert [(s["name"], s["channels"], s["stride"]) for s in m["splits"]] == [
            (s.name, s.channels, s.stride) for s in c.splits
        ]
        w = m["weights"]
        assert w["sha256"] == c.weights.sha256 and w["license"]
        # An empty cache: the copy shipped with veil, which is the registered checkpoint.
        assert w["resolves_to"]["origin"] == "shipped with veil"
        assert sha256_file(w["resolves_to"]["path"]) == c.weights.sha256
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "inception2" in text and "128 ch, stride 32" in text and "16 ch, stride 2" in text


def test_models_show_checks_the_weights_that_would_load(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("VEIL_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["models", "show", "digits"]) == 0
    out = capsys.readouterr().out
    assert "SHA-256: matches" in out and "32×32" in out and "labels: 0, 1, 2" in out
    # A wrong file in the cache comes first, and is reported as not the registered checkpoint.
    bad = pretrained.cache_path("digits")
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the checkpoint")
    assert main(["models", "show", "digits", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)["weights"]["resolves_to"]
    assert (r["path"], r["origin"], r["sha256_matches"]) == (str(bad), "veil cache", False)
    assert main(["models", "show", "nope"]) == 2
    assert "known models: digits, faceboxes" in capsys.readouterr().err


def _helps(parser, prefix=()):
    """Every (sub)command's help text, nested ones included (``veil weights fetch``, ``veil models show``)."""
    import argparse

    yield prefix, parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _helps(sub, (*prefix, name))


def test_help_of_every_command_names_no_developer_path():
    """``--model``/``--split`` read the registry; no help text points at a developer's data layout."""
    from veil.cli.main import build_parser

    helps = dict(_helps(build_parser()))
    assert ("models",) in helps and ("models", "show") in helps
    for argv, text in helps.items():
        for bad in ("../shared", "/work/", "shared/data", "shared/models"):
            assert bad not in text, (argv, bad)
        if "--model {" in text:  # the choices and the splits come from the registry
            assert all(name in text for name in list_models()), argv
        if "\n  --split NAME" in text:  # the option itself (not a mention of it)
            split_help = text.split("\n  --split NAME", 1)[-1]
            assert all(s.name in split_help for n in list_models() for s in get_config(n).splits), argv

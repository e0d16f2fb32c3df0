"""``veil weights fetch|import|path``: get, install or locate a model's checkpoint (SHA-256 verified)."""

from __future__ import annotations

import argparse

from veil.cli.options import add_model_choice
from veil.models import get_config, pretrained


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "weights",
        help="download, import or locate a model's weights",
        description="The reference FaceBoxes checkpoint ships inside veil (MIT; used when nothing else "
        "is given). Weights are looked up at --weights, then $VEIL_WEIGHTS (the default model only), then "
        "the cache ($VEIL_CACHE_DIR or ~/.cache/veil, filled by fetch/import), then the copy shipped "
        "with veil; every one is checked against the model's SHA-256 (its registered config).",
    )
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    f = wsub.add_parser("fetch", help="download a model's checkpoint from its public source and verify it")
    add_model_choice(f, split=False, weights=False)
    f.add_argument("--url", help="source URL (default: the model's registered source)")
    f.set_defaults(func=_fetch)
    i = wsub.add_parser("import", help="verify a local checkpoint and install it into the cache")
    add_model_choice(i, split=False, weights=False)
    i.add_argument("path", help="path to the checkpoint (FaceBoxesProd.pth for faceboxes)")
    i.set_defaults(func=_import)
    w = wsub.add_parser(
        "path", help="print which weights file would be used (the shipped one if none other), and verify it"
    )
    add_model_choice(w, split=False)
    w.set_defaults(func=_path)


def _fetch(args: argparse.Namespace) -> int:
    print(f"installed {pretrained.fetch(args.model, args.url)} (SHA-256 verified)")
    return 0


def _import(args: argparse.Namespace) -> int:
    print(f"installed {pretrained.install(args.path, args.model)} (SHA-256 verified)")
    return 0


def _path(args: argparse.Namespace) -> int:
    config = get_config(args.model)
    p = pretrained.resolve(config, args.weights)
    pretrained.verify(p, config)
    print(p)
    return 0

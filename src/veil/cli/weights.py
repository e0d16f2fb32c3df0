"""``veil weights fetch|import|path``: get, install or locate a FaceBoxes checkpoint (SHA-256 verified)."""

from __future__ import annotations

import argparse

from veil import weights


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "weights",
        help="download, import or locate the FaceBoxes weights",
        description="The reference FaceBoxes checkpoint ships inside veil (MIT; used when nothing else "
        "is given). Weights are looked up at --weights, then $VEIL_WEIGHTS, then the cache "
        "($VEIL_CACHE_DIR or ~/.cache/veil, filled by fetch/import), then the shipped "
        "file; every one is checked against the reference SHA-256.",
    )
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    f = wsub.add_parser("fetch", help="download the reference checkpoint from its public source and verify it")
    f.add_argument("--url", default=weights.REFERENCE_URL, help="source URL (default: %(default)s)")
    f.set_defaults(func=_fetch)
    i = wsub.add_parser("import", help="verify a local FaceBoxesProd.pth and install it into the cache")
    i.add_argument("path", help="path to FaceBoxesProd.pth")
    i.set_defaults(func=_import)
    w = wsub.add_parser(
        "path", help="print which weights file would be used (the shipped one if none other), and verify it"
    )
    w.add_argument("--weights", help="explicit weights path")
    w.set_defaults(func=_path)


def _fetch(args: argparse.Namespace) -> int:
    print(f"installed {weights.fetch(args.url)} (SHA-256 verified)")
    return 0


def _import(args: argparse.Namespace) -> int:
    print(f"installed {weights.install(args.path)} (SHA-256 verified)")
    return 0


def _path(args: argparse.Namespace) -> int:
    p = weights.resolve_weights(args.weights)
    weights.verify(p)
    print(p)
    return 0

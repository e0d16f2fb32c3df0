"""``veil data check fddb|fit``: verify data you fetched, and say exactly what is missing."""

from __future__ import annotations

import argparse

from veil import jsonio
from veil.cli.errors import CLIError
from veil.data.check import FDDB_ARCHIVES, FDDB_URL


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="check a downloaded FDDB copy or photo folders for fitting; write the digits data as PNG files",
        description="Data you fetch yourself. FDDB (evaluation only): download "
        f"{' and '.join(FDDB_ARCHIVES)} from {FDDB_URL} and unpack both into one "
        "directory (DIR/FDDB-folds/, DIR/originalPics/). Fitting photos (noise fitting, "
        "attacker training): any folders of photos with faces that are not the "
        "evaluation set, e.g. WIDER FACE validation images; never FDDB. Exit status 0 "
        "when usable, 1 when not.",
    )
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = dsub.add_parser("check", help="verify a dataset and list what is missing")
    csub = c.add_subparsers(dest="kind", metavar="KIND", required=True)
    f = csub.add_parser(
        "fddb",
        help="fold files (official SHA-256) and images per fold",
        description="Verify an FDDB copy: the 20 fold files against the official SHA-256, the "
        "images each fold lists. Default DIR: $VEIL_DATASET.",
    )
    f.add_argument("dir", nargs="?", help="FDDB root (default: $VEIL_DATASET)")
    f.add_argument("--json", action="store_true", help="print the report as JSON")
    f.set_defaults(func=_check_fddb)
    g = csub.add_parser(
        "fit",
        help="photo folders for noise fitting and attacker training",
        description="Count readable photos, refuse FDDB. Default: $VEIL_FIT_IMAGES.",
    )
    g.add_argument("dirs", nargs="*", help="photo folders (default: $VEIL_FIT_IMAGES)")
    g.add_argument("--json", action="store_true", help="print the report as JSON")
    g.set_defaults(func=_check_fit)
    d = dsub.add_parser(
        "digits",
        help="write the digits model's data as PNG files plus labels.csv",
        description="Write one split of the handwritten digits the `digits` model was trained and is measured "
        "on (scikit-learn's copy of the UCI data, CC BY 4.0; split fixed under seed 0) as DIR/NNNN.png "
        "(8x8 grey) and DIR/labels.csv (file,label,index,split). `veil evaluate --model digits --dataset "
        "DIR` reads such a folder; noise fitting refuses a folder of the test split.",
    )
    d.add_argument("dir", help="output folder")
    d.add_argument("--split", choices=("train", "test"), default="test", help="which split (default: %(default)s)")
    d.set_defaults(func=_export_digits)


def _print(rep, as_json: bool) -> int:
    if as_json:
        print(
            jsonio.dumps(
                {
                    "what": rep.what,
                    "ok": rep.ok,
                    "complete": rep.complete,
                    "counts": rep.counts,
                    "missing": rep.missing,
                    "lines": rep.lines,
                },
                indent=1,
            )
        )
    else:
        print(rep.text(), end="")
    return 0 if rep.ok else 1


def _check_fddb(args: argparse.Namespace) -> int:
    from veil.data.check import check_fddb
    from veil.settings import settings

    root = args.dir or settings().dataset
    if root is None:
        raise CLIError(f"give the FDDB directory (or set VEIL_DATASET); get FDDB from {FDDB_URL}")
    return _print(check_fddb(root), args.json)


def _check_fit(args: argparse.Namespace) -> int:
    from veil.data.check import check_fit_images
    from veil.settings import settings

    return _print(check_fit_images(args.dirs or list(settings().fit_images)), args.json)


def _export_digits(args: argparse.Namespace) -> int:
    from veil.data.digits import DigitsDataError, export_split

    try:
        manifest = export_split(args.split, args.dir)
    except DigitsDataError as exc:
        raise CLIError(str(exc)) from exc
    print(f"wrote the digits {args.split} split to {manifest.parent} ({manifest.name} lists file, label, index, split)")
    return 0

"""``veil noise-key new FILE``: create the client's secret key for keyed noise (mode 0600)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "noise-key",
        help="create the secret key for keyed noise (averaging resistance)",
        description="Keyed noise derives each image's noise from HMAC-SHA256(key, activation), so the same "
        "image always gets the same noise and averaging repeated queries gains nothing. The key "
        "stays in the trust zone (client machine, Kubernetes Secret): it is never written into "
        "noise files, sent to the server, or logged. Use it with --noisy --noise-key FILE (or "
        "$VEIL_NOISE_KEY_FILE) on detect, evaluate and infer.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    new = actions.add_parser(
        "new",
        help="write a new random 256-bit key (hex) to FILE, mode 0600",
        description="Write 32 random bytes from the OS as hex to FILE with mode 0600. "
        "Refuses to replace an existing key (the noise it keyed would change).",
    )
    new.add_argument("file", metavar="FILE")
    new.set_defaults(func=run_new)


def run_new(args: argparse.Namespace) -> int:
    from veil.obfuscate import new_key_file

    key = new_key_file(args.file)
    print(f"wrote {args.file} (mode 0600, key id {key.id}); use it with --noisy --noise-key {args.file}")
    return 0

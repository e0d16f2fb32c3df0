"""The ``veil`` command line: a thin layer over the library.

Each module in this package that defines ``register(subparsers)`` adds one or more
subcommands; :mod:`veil.cli.main` discovers them, so commands are added without
editing a central list.
"""

"""Subcommands of the ``skfmcib`` command line, one module each.

Each module defines ``add_parser(subparsers)``, which adds its parser and sets
``func`` to a ``run(args) -> int`` function.
"""

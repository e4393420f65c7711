"""The ``skfmcib`` command line: ``skfmcib <command> ...``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from . import __version__

__all__ = ["build_parser", "main"]

# Subcommand modules, in the order ``skfmcib --help`` lists them. A module that cannot
# be imported (an optional dependency missing) is left out of the listing.
COMMANDS = [
    "skfmcib.commands.demo",
    "skfmcib.commands.extract",
    "skfmcib.commands.qc",
    "skfmcib.commands.pretrain",
    "skfmcib.commands.weights",
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available subcommand.

    Returns
    -------
    argparse.ArgumentParser
        ``skfmcib``'s parser; a subcommand whose module cannot be imported (an optional
        dependency missing) is left out.
    """
    parser = argparse.ArgumentParser(
        prog="skfmcib",
        description="FMCIB foundation-model features for lesions in CT scans.",
    )
    parser.add_argument("--version", action="version", version=f"skfmcib {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # not part of this installation
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after ``skfmcib`` (``sys.argv[1:]`` when omitted).

    Returns
    -------
    int
        The exit status: 0 done; 1 done in part or not there (rows that failed in
        ``extract`` or ``qc``, weights not downloaded yet for ``weights path``); 2 an
        error; 130 interrupted. ``--help``,
        ``--version`` and arguments argparse refuses raise :class:`SystemExit`, as
        argparse does.

    Examples
    --------
    >>> import tempfile
    >>> from skfmcib.cli import main
    >>> main(["weights", "path", "--cache-dir", tempfile.mkdtemp()])  # doctest: +ELLIPSIS
    /...model_weights.torch
    1
    """
    try:
        # Building the parser imports the commands (torch among them: a second or two).
        parser = build_parser()
    except KeyboardInterrupt:
        print("skfmcib: interrupted", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    prog = f"skfmcib {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        # What a command keeps when interrupted, it says itself (extract's parts,
        # pretrain's last epoch); here only the traceback is spared.
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (``| head -1``): stop quietly, as a shell
        # command stopped by SIGPIPE does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        # A file or folder the command cannot read or write: one line, not a traceback.
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

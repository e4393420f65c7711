"""Subcommands of the ``skfmcib`` command line, one module each.

Each module defines ``add_parser(subparsers)``, which adds its parser and sets
``func`` to a ``run(args) -> int`` function.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping

from .._text import counted

__all__ = ["FLAGS", "as_flags", "counted", "positive_int"]

# Options as the library's messages name them, and the flags that set them.
FLAGS = {
    "coordinate_system='RAS'": "--coordinate-system RAS",
    "coordinate_system='LPS'": "--coordinate-system LPS",
    "weights=<path to the file>": "--weights <path to the file>",
    "pass cache_dir": "pass --cache-dir",
    "the label given for every row": "--mask-label",
}


def as_flags(message: str, flags: Mapping[str, str] = FLAGS) -> str:
    """Reword a library message for the command line: options named by their flags.

    Parameters
    ----------
    message : str
        A message of the Python API, e.g. a failed row's reason.
    flags : mapping of str to str, default=FLAGS
        Python spellings and the flags that replace them; by default :data:`FLAGS`,
        the options of the ``skfmcib`` commands.

    Returns
    -------
    str
        The message, each spelling in ``flags`` replaced by its flag.

    Examples
    --------
    >>> from skfmcib.commands import as_flags
    >>> as_flags("if the coordinates are RAS, use coordinate_system='RAS'")
    'if the coordinates are RAS, use --coordinate-system RAS'
    """
    if not flags:
        return message
    # One pass, longest spelling first: a flag put in is never read again, and
    # "warmup_epochs must" is not taken for "epochs must".
    pattern = "|".join(re.escape(k) for k in sorted(flags, key=len, reverse=True))
    return re.sub(pattern, lambda m: flags[m.group(0)], message)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1.

    Parameters
    ----------
    text : str
        The option's value as given on the command line.

    Returns
    -------
    int
        The number.

    Raises
    ------
    argparse.ArgumentTypeError
        When ``text`` is not a whole number of at least 1 (argparse then reports it).

    Examples
    --------
    >>> from skfmcib.commands import positive_int
    >>> positive_int("3")
    3
    """
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value

"""Wording shared by messages: counts, short lists, and where a warning points."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def counted(n: int, noun: str) -> str:
    """``1 row``, ``2 rows``.

    Parameters
    ----------
    n : int
        The count.
    noun : str
        What is counted, in the singular; the plural adds an ``s``.

    Returns
    -------
    str
        ``n`` and the noun, in the plural unless ``n`` is 1.

    Examples
    --------
    >>> from skfmcib._text import counted
    >>> counted(1, "chunk"), counted(2, "chunk")
    ('1 chunk', '2 chunks')
    """
    return f"{n} {noun}{'' if n == 1 else 's'}"


def listing(items: Sequence, limit: int = 10) -> str:
    """The first ``limit`` items, comma-separated, with ``...`` when there are more.

    Examples
    --------
    >>> from skfmcib._text import listing
    >>> listing([3, 7]), listing(range(12), limit=3)
    ('3, 7', '0, 1, 2, ...')
    """
    shown = ", ".join(str(item) for item in list(items)[:limit])
    return shown + (", ..." if len(items) > limit else "")


def user_stacklevel() -> int:
    """The ``stacklevel`` at which a warning points to the first caller outside skfmcib.

    Called by the function that warns: a warning raised deep in the package (loading
    weights inside ``fit``, say) then names the user's line, not the package's.

    Examples
    --------
    >>> from skfmcib._text import user_stacklevel
    >>> user_stacklevel()  # called from outside the package: the caller itself
    1
    """
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    return level

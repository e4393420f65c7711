"""Wording shared by messages: counts and short lists."""

from __future__ import annotations

from collections.abc import Sequence


def counted(n: int, noun: str) -> str:
    """``1 row``, ``2 rows``.

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

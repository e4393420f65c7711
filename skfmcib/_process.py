"""Process-level helpers: returning freed heap memory, pausing the garbage collector."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import sys
from collections.abc import Callable, Iterator


def _find_malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only (musl has none)
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def release_free_memory() -> None:
    """Give the heap memory freed so far back to the operating system (glibc only).

    glibc keeps freed blocks below 32 MiB in its per-thread heaps; a reading thread
    that decoded an image box of tens of megabytes would otherwise hold that memory
    while the encoder allocates its own. Elsewhere this does nothing.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the duration of the block.

    Importing torch creates about 250 000 long-lived objects; the collector would walk
    them several times while they are being created (about 0.15 s). Collection resumes
    at the end of the block if it was enabled at its start.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()

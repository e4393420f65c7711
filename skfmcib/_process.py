"""Process-level helpers: the heap's freed memory (kept or returned), pausing the collector."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import sys
import threading
from collections.abc import Iterator


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim, opt = libc.malloc_trim, libc.mallopt  # glibc only (musl has no malloc_trim)
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    opt.argtypes, opt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return libc


_LIBC = _glibc()
# mallopt parameters (malloc.h), and what is set back afterwards: glibc's default
# M_MMAP_MAX, and the trim threshold its dynamic adjustment reaches once blocks of
# 32 MiB (its largest mmap threshold) have been freed, as any torch work does.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_MMAP_MAX, _TRIM_AFTER = 65536, 64 * 2**20
_KEEP_LOCK = threading.Lock()
_keeping = 0


def release_free_memory() -> None:
    """Give the heap memory freed so far back to the operating system (glibc only).

    glibc keeps freed blocks below 32 MiB in its per-thread heaps; a reading thread
    that decoded an image box of tens of megabytes would otherwise hold that memory
    while the encoder allocates its own. Does nothing while :func:`freed_memory_kept`
    is in effect (the block gives the memory back when it ends) and off glibc.
    """
    if _LIBC is not None and not _keeping:
        _LIBC.malloc_trim(0)


@contextlib.contextmanager
def freed_memory_kept() -> Iterator[None]:
    """Let malloc reuse the memory freed inside the block instead of unmapping it.

    A forward pass of the encoder on the CPU allocates and frees about a gigabyte as
    it goes (activations, and oneDNN's copy of each convolution's weights in its
    blocked layout). glibc serves blocks above its mmap threshold (32 MiB at most)
    with new mappings and gives back the top of its heap beyond its trim threshold,
    so the kernel maps and zeroes those pages again and again: a quarter of the
    encoder's time on a 2-core machine. Inside the block large blocks come from the
    heap (``M_MMAP_MAX`` 0) and the heap is not trimmed (``M_TRIM_THRESHOLD`` 1 GiB):
    the same arithmetic on memory already mapped. When the last of nested or
    concurrent blocks ends, ``M_MMAP_MAX`` is set back to glibc's default and the
    trim threshold to 64 MiB, and the memory is given back (``malloc_trim``); having
    been set, glibc's thresholds no longer adjust themselves for the rest of the
    process. Does nothing off glibc, or when the environment variable
    ``SKFMCIB_KEEP_FREED_MEMORY`` is ``0``.
    """
    global _keeping
    if _LIBC is None or os.environ.get("SKFMCIB_KEEP_FREED_MEMORY", "1") == "0":
        yield
        return
    with _KEEP_LOCK:
        if _keeping == 0:
            _LIBC.mallopt(_M_MMAP_MAX, 0)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, 2**30)
        _keeping += 1
    try:
        yield
    finally:
        with _KEEP_LOCK:
            _keeping -= 1
            if _keeping == 0:
                _LIBC.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                _LIBC.mallopt(_M_TRIM_THRESHOLD, _TRIM_AFTER)
                _LIBC.malloc_trim(0)


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

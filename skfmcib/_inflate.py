"""Inflate a gzip file with Intel's ISA-L (the ``isal`` package), in large blocks.

A gzipped NIfTI is read by inflating it from its start. With ISA-L a whole CT is read
about 1.4 times as fast as SimpleITK reads it (with zlib-ng), and inflated about 1.9
times as fast as Python's zlib inflates it (``benchmarks/inflate.py``,
``docs/performance.md``). :class:`GzipStream` hands it the file memory-mapped, in
slices of several megabytes, and takes its output in blocks of up to 16 MiB: the GIL is
given up and taken back about once per block (each also costs a wait for the GIL when
another thread runs Python code), so a thread running Python code beside it (torch
being imported while the first scans are read) does not slow it down much.

:func:`available` says whether ``isal`` is installed (it is a dependency where it has
wheels); where it is not, callers read gzip files with SimpleITK.
"""

from __future__ import annotations

import mmap
import os

try:
    from isal import igzip_lib
except ImportError:  # pragma: no cover - a platform without isal's wheels
    igzip_lib = None

_GZIP_MAGIC = b"\x1f\x8b"
# Compressed bytes handed over per call: about as many as the output asked for (a CT
# inflates to 1.5-3 times its compressed size), so that one call usually gives it all.
_INPUT_BYTES = 16 * 2**20
_MIN_INPUT_BYTES = 2**16
# Inflated bytes taken per call; readers ask for at most this much at a time.
BLOCK_BYTES = 16 * 2**20


def available() -> bool:
    """Whether gzip files can be inflated here without SimpleITK."""
    return igzip_lib is not None


class GzipError(OSError):
    """The file is not complete gzip data (cut short, corrupt, or not gzip)."""


def _inflater():
    # One gzip member; unconsumed input is kept inside, output taken up to a limit.
    return igzip_lib.IgzipDecompressor(flag=igzip_lib.DECOMP_GZIP, hist_bits=15)


class GzipStream:
    """The content of a gzip file (one or several members), read in order.

    Parameters
    ----------
    path : str
        A gzip file.

    Raises
    ------
    OSError
        The file cannot be opened, or ``isal`` is not installed.
    """

    def __init__(self, path: str) -> None:
        if igzip_lib is None:
            raise OSError("the isal package is not installed")
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self._input = memoryview(self._map) if size else memoryview(b"")
        self._fed = 0  # input bytes handed to the inflater
        self._inflater = _inflater()
        self._ended = False

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes of the content; fewer only at its end."""
        pieces = []
        left = n
        while left > 0 and not self._ended:
            inflater = self._inflater
            if inflater.eof:
                # Another gzip member may follow (concatenated files); anything else
                # after a member is ignored, as zlib's gzread does.
                self._fed -= len(inflater.unused_data)
                if self._input[self._fed : self._fed + 2] == _GZIP_MAGIC:
                    self._inflater = _inflater()
                else:
                    self._ended = True
                continue
            given = memoryview(b"")
            if inflater.needs_input:
                if self._fed >= len(self._input):
                    raise GzipError("the file ends in the middle of its compressed data")
                size = min(_INPUT_BYTES, max(_MIN_INPUT_BYTES, left))
                given = self._input[self._fed : self._fed + size]
                self._fed += len(given)
            try:
                block = inflater.decompress(given, min(left, BLOCK_BYTES))
            except igzip_lib.IsalError as exc:
                raise GzipError(f"corrupt compressed data ({exc})") from exc
            finally:
                given.release()  # the map can be closed whatever happens
            if block:
                pieces.append(block)
                left -= len(block)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def skip(self, n: int) -> None:
        """Inflate and drop the next ``n`` bytes."""
        while n > 0:
            got = len(self.read(min(n, BLOCK_BYTES)))
            if not got:
                raise GzipError("the content ends before the data its header describes")
            n -= got

    def finish(self) -> None:
        """Inflate the rest of the content and drop it.

        Each member's CRC-32 and length are checked at its end: corrupt data that
        still inflates is found only there.
        """
        while len(self.read(BLOCK_BYTES)) == BLOCK_BYTES:
            pass

    def close(self) -> None:
        """Release the file."""
        self._input.release()
        self._input = memoryview(b"")
        if self._map is not None:
            self._map.close()
            self._map = None

    def __enter__(self) -> GzipStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

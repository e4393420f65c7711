"""A dependency-free progress line on stderr: count, rate and time left."""

from __future__ import annotations

import sys
import time


class Progress:
    """Progress display for long loops, usable as a context manager.

    Parameters
    ----------
    total : int
        Number of items expected.
    enabled : bool or "auto", default="auto"
        "auto" shows the line when stderr is a terminal and ``total >= min_total``.
    unit : str, default="items"
        Name of the items, shown after the rate.
    min_total : int, default=32
        Smallest ``total`` for which "auto" shows anything.
    stream : file-like, optional
        Where to write (stderr by default).
    """

    def __init__(self, total, enabled="auto", unit="items", min_total=32, stream=None):
        self.total = int(total)
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        if isinstance(enabled, str):
            if enabled != "auto":
                raise ValueError(f"progress must be True, False or 'auto', got {enabled!r}")
            isatty = getattr(self.stream, "isatty", lambda: False)
            enabled = bool(isatty()) and self.total >= min_total
        self.enabled = bool(enabled)
        self.done = 0
        self._start = time.perf_counter()
        self._last = 0.0
        self._width = 0  # of the line drawn last, to blank what a shorter one leaves

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items done; redraws at most ten times a second."""
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self._last >= 0.1 or self.done >= self.total):
            self._last = now
            line = self.line(now)
            self.stream.write("\r" + line.ljust(self._width))
            self._width = len(line)
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        """The text of the progress line."""
        elapsed = (time.perf_counter() if now is None else now) - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = max(self.total - self.done, 0) / rate if rate > 0 else float("nan")
        eta = "--:--" if left != left else f"{int(left // 60):02d}:{int(left % 60):02d}"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"{self.done}/{self.total} {self.unit} ({pct:3.0f}%) "
            f"{rate:.2f} {self.unit}/s ETA {eta}"
        )

    def close(self) -> None:
        """End the line."""
        if self.enabled and self.done:
            self.stream.write("\n")
            self.stream.flush()

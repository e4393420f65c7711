"""Encoder checkpoints: the official download, the cache, checksums, layouts and strict loading.

This is the one module that knows about weight files. Everything else asks it for an
encoder (:func:`load_encoder`) and gets back a network plus a :class:`WeightsInfo` that
says where the weights came from.

- :func:`fetch_weights` downloads a registered file (the FMCIB weights on Zenodo) once
  into :func:`default_cache_dir`, resuming interrupted downloads, and checks what the
  registry knows about it (size, md5) before moving it into place.
- :func:`read_checkpoint` reads ``.torch``/``.pt``/``.ckpt`` files with
  ``torch.load(weights_only=True, mmap=True)`` and ``.safetensors`` files, and accepts the
  layouts the reference package accepts (``trunk_state_dict``, Lightning ``state_dict``
  with ``model.trunk.`` prefixes, bare state dicts, ``module.`` prefixes).
- :func:`load_encoder` builds the encoder on the ``meta`` device and assigns the
  checkpoint's tensors to it, so no second copy of the weights is made. Loading is
  strict: a missing, unexpected or mis-shaped entry is an error, never silent garbage.
- :func:`save_checkpoint` writes a checkpoint that carries its architecture, so it
  reloads with no further arguments.

The FMCIB weights are licensed CC BY-NC 4.0 (non-commercial use only), unlike this
package's code; :func:`fetch_weights` says so once per process with a
:class:`WeightsLicenseNotice` warning.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import operator
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import torch

from skfmcib._files import atomic_write, file_state
from skfmcib._text import user_stacklevel
from skfmcib.encoder import ARCHITECTURES, EncoderConfig, ResNet3D

__all__ = [
    "FMCIB_WEIGHTS",
    "REGISTRY",
    "Checkpoint",
    "CheckpointError",
    "WeightsChecksumError",
    "WeightsDownloadError",
    "WeightsInfo",
    "WeightsLicenseNotice",
    "WeightsRecord",
    "bad_values",
    "cached_weights_path",
    "default_cache_dir",
    "fetch_weights",
    "file_digest",
    "load_encoder",
    "read_checkpoint",
    "save_checkpoint",
]

PathLike = str | os.PathLike[str]


# ----------------------------------------------------------------------------- errors


class WeightsLicenseNotice(UserWarning):
    """Shown once per process when licensed weights are fetched.

    Silence it with ``warnings.filterwarnings("ignore", category=WeightsLicenseNotice)``.
    """


class WeightsDownloadError(OSError):
    """The weights could not be downloaded; the message says how to place them by hand."""


class WeightsChecksumError(WeightsDownloadError):
    """A downloaded file does not have the registered size or md5; it was deleted."""


class CheckpointError(ValueError):
    """A file is not a usable checkpoint for the requested encoder; the message names it."""


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class WeightsRecord:
    """Where a weights file lives and what it must look like.

    Parameters
    ----------
    name : str
        Registry name; also the cache sub-folder (``<cache>/<name>/<filename>``).
    url : str
        Download address (HTTP or HTTPS; redirects are followed).
    filename : str
        File name in the cache.
    size : int, optional
        Exact size in bytes; checked when known. Also decides whether a cached file is
        complete without touching the network.
    md5 : str, optional
        Hex md5 of the file, as Zenodo publishes it; checked after a download when known.
    license : str, optional
        Licence of the weights; when set, :func:`fetch_weights` shows a one-time
        :class:`WeightsLicenseNotice`.
    homepage : str, optional
        Human-readable page of the record (shown in messages).
    api_url : str, optional
        A Zenodo-style record API (JSON with ``files[].key``, ``size`` and ``checksum``
        ``"md5:..."``). When ``size`` or ``md5`` is not pinned, :func:`fetch_weights`
        reads them from there before downloading, so every download is checked against
        the published record.
    config : EncoderConfig, optional
        The architecture the file holds. A cached file that records another
        architecture is refused (strict loading checks the tensors against this one).

    Examples
    --------
    >>> from dataclasses import replace
    >>> from skfmcib.weights import FMCIB_WEIGHTS
    >>> mirror = replace(FMCIB_WEIGHTS, url="https://example.org/model_weights.torch")
    >>> mirror.filename
    'model_weights.torch'
    """

    name: str
    url: str
    filename: str
    size: int | None = None
    md5: str | None = None
    license: str | None = None
    homepage: str | None = None
    api_url: str | None = None
    config: EncoderConfig | None = None


#: The official FMCIB weights (Pai et al. 2024), Zenodo record 10528450. Their size and
#: md5 are read from the Zenodo record's API before each download and checked after it;
#: a file already in the cache is used as is (strict loading against the ResNet-50 still
#: rejects a wrong or truncated file).
FMCIB_WEIGHTS = WeightsRecord(
    name="fmcib",
    url="https://zenodo.org/records/10528450/files/model_weights.torch?download=1",
    filename="model_weights.torch",
    size=None,
    md5=None,
    license="CC BY-NC 4.0",
    homepage="https://zenodo.org/records/10528450",
    api_url="https://zenodo.org/api/records/10528450",
    config=EncoderConfig(),
)

#: Registered weights by name.
REGISTRY: dict[str, WeightsRecord] = {FMCIB_WEIGHTS.name: FMCIB_WEIGHTS}

_CHUNK = 1 << 20
_NOTICES_SHOWN: set[str] = set()
_NOTICE_LOCK = threading.Lock()


def _user_agent() -> str:
    from skfmcib import __version__

    return f"skfmcib/{__version__} (python-urllib)"


def default_cache_dir() -> Path:
    """Return the folder that downloaded weights are kept in.

    ``$SKFMCIB_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/skfmcib``, else
    ``~/.cache/skfmcib``. The folder is not created.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> import os
    >>> from unittest import mock
    >>> from skfmcib.weights import default_cache_dir
    >>> with mock.patch.dict(os.environ, {"SKFMCIB_CACHE_DIR": "/data/skfmcib-cache"}):
    ...     print(default_cache_dir().as_posix())
    /data/skfmcib-cache
    """
    env = os.environ.get("SKFMCIB_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "skfmcib"
    return Path.home() / ".cache" / "skfmcib"


def _resolve_record(name: str | WeightsRecord, url: str | None = None) -> WeightsRecord:
    if isinstance(name, WeightsRecord):
        record = name
    elif isinstance(name, str) and name in REGISTRY:
        record = REGISTRY[name]
    else:
        raise ValueError(f"Unknown weights {name!r}; registered: {sorted(REGISTRY)}")
    return record if url is None else replace(record, url=url)


def cached_weights_path(
    name: str | WeightsRecord = "fmcib", *, cache_dir: PathLike | None = None
) -> Path:
    """Return where :func:`fetch_weights` keeps (or will keep) a registered file.

    This is also where to put a file downloaded by hand.

    Parameters
    ----------
    name : str or WeightsRecord, default="fmcib"
        A registered name or a record.
    cache_dir : str or path-like, optional
        Cache folder; :func:`default_cache_dir` when omitted.

    Returns
    -------
    pathlib.Path

    Examples
    --------
    >>> from skfmcib.weights import cached_weights_path
    >>> cached_weights_path("fmcib", cache_dir="/tmp/cache").as_posix()
    '/tmp/cache/fmcib/model_weights.torch'
    """
    record = _resolve_record(name)
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    return root / record.name / record.filename


def _show_license_notice(record: WeightsRecord) -> None:
    if record.license is None:
        return
    with _NOTICE_LOCK:
        if record.name in _NOTICES_SHOWN:
            return
        _NOTICES_SHOWN.add(record.name)
    terms = " (non-commercial use only; attribution required)" if "NC" in record.license else ""
    warnings.warn(
        f"The {record.name!r} weights ({record.homepage or record.url}) are licensed "
        f"{record.license}{terms}. This applies to the weights and to features computed "
        "with them, independently of skfmcib's own MIT licence. Silence this notice with "
        "warnings.filterwarnings('ignore', category=skfmcib.weights.WeightsLicenseNotice).",
        WeightsLicenseNotice,
        stacklevel=user_stacklevel(),
    )


def _manual_hint(record: WeightsRecord, target: Path) -> str:
    known = []
    if record.size is not None:
        known.append(f"{record.size} bytes")
    if record.md5 is not None:
        known.append(f"md5 {record.md5}")
    check = f" (expected: {', '.join(known)})" if known else ""
    return (
        f"To install the weights by hand, download {record.url} with a browser or another "
        f"machine and save it as\n    {target}{check}\n"
        "or pass weights=<path to the file> instead of the registered name."
    )


def _size_ok(path: Path, size: int | None) -> bool:
    return size is None or path.stat().st_size == size


@contextlib.contextmanager
def _file_lock(target: Path) -> Iterator[None]:
    """Serialise downloads of one file between processes (POSIX; a no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        fh = open(target.with_name(target.name + ".lock"), "a+b")  # noqa: SIM115
    except OSError as exc:
        raise _unwritable(target.parent, exc) from exc
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _unwritable(folder: Path, exc: OSError) -> WeightsDownloadError:
    return WeightsDownloadError(
        f"Cannot write to the weights cache folder {folder}: {exc.strerror or exc}. Set "
        "SKFMCIB_CACHE_DIR or pass cache_dir to use another folder, or pass "
        "weights=<path to the file>."
    )


class _Progress:
    """A dependency-free byte counter on stderr (redrawn in place on a terminal)."""

    def __init__(
        self, label: str, total: int | None, initial: int, enabled: bool, stream: TextIO | None
    ) -> None:
        self.label, self.total, self.done = label, total, initial
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start, self.start_done = time.monotonic(), initial
        self.last_draw = 0.0
        self.last_decile = -1
        if enabled:
            self._draw(force=True)

    def _line(self) -> str:
        mb = self.done / 1e6
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = (self.done - self.start_done) / 1e6 / elapsed
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 20)
            return (
                f"{self.label} [{bar:<20}] {100 * frac:5.1f}% "
                f"{mb:.1f}/{self.total / 1e6:.1f} MB {rate:.1f} MB/s"
            )
        return f"{self.label} {mb:.1f} MB {rate:.1f} MB/s"

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            if force or now - self.last_draw >= 0.1:
                self.stream.write("\r" + self._line())
                self.stream.flush()
                self.last_draw = now
        else:
            decile = int(10 * self.done / self.total) if self.total else -1
            if force or decile > self.last_decile:
                self.stream.write(self._line() + "\n")
                self.stream.flush()
                self.last_decile = decile

    def update(self, n: int) -> None:
        self.done += n
        if self.enabled:
            self._draw()

    def close(self) -> None:
        if self.enabled and self.tty:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()


def _parse_content_range(value: str | None) -> tuple[int, int | None] | None:
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    if not match:
        return None
    total = None if match.group(2) == "*" else int(match.group(2))
    return int(match.group(1)), total


def _published_checksums(record: WeightsRecord, target: Path, timeout: float) -> WeightsRecord:
    """Fill in a record's unknown size and md5 from its Zenodo-style record API."""
    if record.api_url is None or (record.size is not None and record.md5 is not None):
        return record
    request = urllib.request.Request(
        record.api_url, headers={"User-Agent": _user_agent(), "Accept": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            meta = json.loads(response.read().decode("utf-8"))
    except (OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise WeightsDownloadError(
            f"Could not read the size and checksum of the {record.name!r} weights from "
            f"{record.api_url}: {reason}.\n{_manual_hint(record, target)}"
        ) from exc
    files = meta.get("files", []) if isinstance(meta, dict) else []
    if isinstance(files, dict):  # InvenioRDM: {"entries": {key: {...}}}
        files = list(files.get("entries", {}).values())
    for entry in files:
        if isinstance(entry, dict) and entry.get("key") == record.filename:
            checksum = str(entry.get("checksum", ""))
            md5 = checksum.split(":", 1)[1] if checksum.startswith("md5:") else None
            size = entry.get("size")
            if md5 is None or not isinstance(size, int):
                break
            return replace(
                record,
                size=record.size if record.size is not None else size,
                md5=record.md5 if record.md5 is not None else md5,
            )
    raise WeightsDownloadError(
        f"The record {record.api_url} does not list {record.filename!r} with a size and an "
        f"md5 checksum; not downloading unverified weights.\n{_manual_hint(record, target)}"
    )


def _download(
    record: WeightsRecord, part: Path, target: Path, *, progress: bool, timeout: float
) -> None:
    """Fill ``part`` with the whole file, resuming what is there when the server allows."""
    for _attempt in range(3):
        offset = part.stat().st_size if part.exists() else 0
        if record.size is not None:
            if offset == record.size:
                return
            if offset > record.size:
                part.unlink()
                offset = 0
        headers = {"User-Agent": _user_agent(), "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(record.url, headers=headers)
        restart = False
        total: int | None = None
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if response.status == 206:
                    parsed = _parse_content_range(response.headers.get("Content-Range"))
                    if parsed is None or parsed[0] != offset:
                        restart = True  # a range we did not ask for: start over
                    else:
                        total = parsed[1]
                else:  # 200: the server ignored Range (or none was sent): start over
                    offset = 0
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                if not restart:
                    if record.size is not None and total is not None and total != record.size:
                        part.unlink(missing_ok=True)
                        raise WeightsChecksumError(
                            f"{record.url} serves {total} bytes, but the registered "
                            f"{record.name!r} weights have {record.size} bytes; not "
                            f"downloading.\n{_manual_hint(record, target)}"
                        )
                    bar = _Progress(record.filename, total, offset, progress, None)
                    try:
                        with open(part, "ab" if offset else "wb") as fh:
                            while chunk := response.read(_CHUNK):
                                fh.write(chunk)
                                bar.update(len(chunk))
                    finally:
                        bar.close()
        except WeightsDownloadError:
            raise
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # the partial file is not a prefix we can extend
                part.unlink(missing_ok=True)
                continue
            raise WeightsDownloadError(
                f"Could not download the {record.name!r} weights from {record.url}: "
                f"HTTP {exc.code} {exc.reason}.\n{_manual_hint(record, target)}"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            kept = (
                f" The partial download is kept in {part} and resumes on the next call."
                if part.exists() and part.stat().st_size
                else ""
            )
            raise WeightsDownloadError(
                f"Could not download the {record.name!r} weights from {record.url}: "
                f"{reason}.{kept}\n{_manual_hint(record, target)}"
            ) from exc
        if restart:
            part.unlink(missing_ok=True)
            continue
        got = part.stat().st_size
        # The server's length, else the registered size (a server may send none, and
        # then a connection that drops looks like the end of the file).
        expected = total if total is not None else record.size
        if (expected is not None and got < expected) or (total is not None and got != total):
            raise WeightsDownloadError(
                f"The download of {record.url} stopped at {got} of {expected} bytes. Call "
                f"again to resume from {part}.\n{_manual_hint(record, target)}"
            )
        return
    raise WeightsDownloadError(
        f"{record.url} did not honour resumed downloads; giving up.\n"
        f"{_manual_hint(record, target)}"
    )


def _verify(record: WeightsRecord, part: Path, target: Path) -> None:
    size = part.stat().st_size
    if record.size is not None and size != record.size:
        part.unlink()
        raise WeightsChecksumError(
            f"The downloaded {record.name!r} weights have {size} bytes, expected "
            f"{record.size}; the download was deleted.\n{_manual_hint(record, target)}"
        )
    if record.md5 is not None:
        md5 = _hash_file(part, "md5")
        if md5 != record.md5.lower():
            part.unlink()
            raise WeightsChecksumError(
                f"The downloaded {record.name!r} weights have md5 {md5}, expected "
                f"{record.md5}; the download was deleted.\n{_manual_hint(record, target)}"
            )


def fetch_weights(
    name: str | WeightsRecord = "fmcib",
    *,
    cache_dir: PathLike | None = None,
    url: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Return the local path of registered weights, downloading them once if needed.

    A file already in the cache (with the registered size, when that is known) is
    returned without any network access. Otherwise the file is downloaded with
    ``urllib`` into ``<file>.part`` (resuming a previous partial download with an HTTP
    ``Range`` request; a server that ignores it is read from the start again), checked
    against the registered size and md5 (read from the record's API, ``api_url``, when
    they are not pinned), and moved into place atomically. A resumed file that fails the
    check is downloaded once more from the start; a record with neither size nor md5
    never resumes (nothing could tell a stale partial file from the right one). Concurrent
    calls from several processes download it once (POSIX file lock).

    Parameters
    ----------
    name : str or WeightsRecord, default="fmcib"
        A name from :data:`REGISTRY`, or a record (to use a mirror or pinned checksums).
    cache_dir : str or path-like, optional
        Cache folder; :func:`default_cache_dir` when omitted. The file goes to
        ``<cache_dir>/<name>/<filename>`` (see :func:`cached_weights_path`).
    url : str, optional
        Download from this address instead of the record's (a mirror of the same file).
    progress : bool, default=True
        Show a progress bar on stderr while downloading.
    timeout : float, default=60.0
        Seconds to wait for the server before giving up.

    Returns
    -------
    pathlib.Path
        The cached file.

    Raises
    ------
    WeightsDownloadError
        The download failed; the message says where to put a file downloaded by hand.
        A partial download is kept and resumed by the next call.
    WeightsChecksumError
        The download does not have the registered size or md5; it was deleted.

    Warns
    -----
    WeightsLicenseNotice
        Once per process for records with a licence (CC BY-NC 4.0 for FMCIB).

    Examples
    --------
    A file that is already in the cache is used without any network access:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from skfmcib.weights import WeightsRecord, cached_weights_path, fetch_weights
    >>> record = WeightsRecord("demo", "https://example.invalid/w.torch", "w.torch", size=3)
    >>> cache = Path(tempfile.mkdtemp())
    >>> placed = cached_weights_path(record, cache_dir=cache)
    >>> placed.parent.mkdir(parents=True)
    >>> _ = placed.write_bytes(b"abc")
    >>> fetch_weights(record, cache_dir=cache) == placed
    True
    """
    record = _resolve_record(name, url)
    target = cached_weights_path(record, cache_dir=cache_dir)
    _show_license_notice(record)
    if target.is_file() and _size_ok(target, record.size):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(target.parent, exc) from exc
    part = target.with_name(target.name + ".part")
    with _file_lock(target):
        if target.is_file() and _size_ok(target, record.size):
            return target  # another process finished it while we waited
        record = _published_checksums(record, target, timeout)
        resumed = part.is_file() and part.stat().st_size > 0
        if resumed and record.size is None and record.md5 is None:
            part.unlink()  # nothing to check a resumed file against: start over
            resumed = False
        _download(record, part, target, progress=progress, timeout=timeout)
        try:
            _verify(record, part, target)
        except WeightsChecksumError:
            if not resumed:
                raise
            # The partial file kept from before was not the start of this file (another
            # version, or another server's): once more from the start.
            _download(record, part, target, progress=progress, timeout=timeout)
            _verify(record, part, target)
        os.replace(part, target)
    return target


# -------------------------------------------------------------------------- digests

_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}
_DIGEST_LOCK = threading.Lock()


def _hash_file(path: Path, algorithm: str) -> str:
    with open(path, "rb") as fh:
        if hasattr(hashlib, "file_digest"):
            return hashlib.file_digest(
                fh, lambda: hashlib.new(algorithm, usedforsecurity=False)
            ).hexdigest()
        h = hashlib.new(algorithm, usedforsecurity=False)  # pragma: no cover - Python 3.10
        while block := fh.read(_CHUNK):  # pragma: no cover
            h.update(block)
        return h.hexdigest()  # pragma: no cover


def file_digest(path: PathLike) -> str:
    """Return the SHA-256 of a file as hex, memoised for the life of the process.

    The memo is keyed by the resolved path and the file's size, modification and
    status-change times and inode, so a rewritten file is hashed again, even one of
    the same size whose modification time did not change.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    str
        64 hexadecimal digits.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from skfmcib.weights import file_digest
    >>> p = Path(tempfile.mkdtemp()) / "empty.bin"
    >>> _ = p.write_bytes(b"")
    >>> file_digest(p)
    'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    resolved = Path(path).expanduser().resolve()
    key = (str(resolved), *file_state(resolved))
    with _DIGEST_LOCK:
        cached = _DIGESTS.get(key)
    if cached is not None:
        return cached
    digest = _hash_file(resolved, "sha256")
    with _DIGEST_LOCK:
        # One entry per file: a rewritten file's older states are never asked again.
        for old in [k for k in _DIGESTS if k[0] == key[0]]:
            del _DIGESTS[old]
        _DIGESTS[key] = digest
    return digest


class _FileDigest:
    """The SHA-256 of a file as it was when its weights were read, computed when asked.

    Hashing a 738 MB checkpoint takes about half a second; most uses of an encoder
    never need the digest (it identifies the weights in feature caches, pickles and
    provenance). The file's state (:func:`skfmcib._files.file_state`) is noted at
    reading; if it differs when the digest is first asked for, the file changed since,
    and its digest would not describe the weights that were read: that is an error.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._state = file_state(path)
        self._value: str | None = None
        self._lock = threading.Lock()

    def get(self) -> str:
        with self._lock:
            if self._value is None:
                try:
                    now = file_state(self.path)
                except OSError as exc:
                    raise CheckpointError(
                        f"{self.path} was removed after its weights were read, before its "
                        f"digest was needed: {exc}"
                    ) from exc
                if now != self._state:
                    raise CheckpointError(
                        f"{self.path} changed after its weights were read, so its digest no "
                        "longer describes them; load the weights again"
                    )
                self._value = file_digest(self.path)
            return self._value

    def check_unchanged(self) -> None:
        """Raise :class:`CheckpointError` if the file was rewritten in place since it was
        read: weights read memory-mapped are pages of it, and would change with it."""
        try:
            size, mtime, _, inode = file_state(self.path)
        except OSError:
            return  # removed: the pages read stay the file as it was
        if inode == self._state[3] and (size, mtime) != self._state[:2]:
            raise CheckpointError(
                f"{self.path} was rewritten after its weights were read; they are read "
                "from the file's pages as needed, so they would now be a mix of the old "
                "and the new file. Fit again to use the new weights. To replace a weights "
                "file that a running model uses, write the new file beside it and rename "
                "it over the old one"
            )


# ---------------------------------------------------------------------- checkpoints


@dataclass(eq=False)
class Checkpoint:
    """The encoder weights found in a file, with their origin.

    Made by :func:`read_checkpoint`, not by users: the constructor's parameters
    (the attributes below, with a private digest in place of ``digest``) are internal.

    Attributes
    ----------
    state_dict : dict of str to torch.Tensor
        Encoder entries with MONAI key names (prefixes removed, head entries dropped).
        Tensors from ``.torch`` files are memory-mapped, not copied.
    config : EncoderConfig or None
        The architecture stored beside the weights (``encoder_config``), if any.
    path : pathlib.Path
        The absolute path of the file.
    digest : str
        SHA-256 of the file (:func:`file_digest`), computed on first access; an error
        (:class:`CheckpointError`) if the file changed after it was read.
    extra : dict
        Other top-level entries of the file (``extra`` of :func:`save_checkpoint`,
        Lightning bookkeeping, ...).
    """

    state_dict: dict[str, torch.Tensor] = field(repr=False)
    config: EncoderConfig | None
    path: Path
    _digest: _FileDigest = field(repr=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def digest(self) -> str:
        """SHA-256 of the file, computed on first access; see the class's attributes."""
        return self._digest.get()


def _short(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _torch_load(path: Path) -> Any:
    # mmap needs the zip format of torch.save (the default since torch 1.6).
    use_mmap = zipfile.is_zipfile(path)
    try:
        with warnings.catch_warnings():
            # torch warns of a pickle protocol it did not write, then fails or not: the
            # failure says what is wrong, in one line.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except OSError:
        raise
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(exc))
        if found:
            raise CheckpointError(
                f"Refusing to load {path}: it contains a pickled {found.group(1)} object, "
                "which torch.load(weights_only=True) does not allow because unpickling "
                "arbitrary objects can run code. If you trust the file, re-save its state "
                "dict (a dict of tensors) or use skfmcib.weights.save_checkpoint."
            ) from exc
        raise CheckpointError(
            f"{path} is not a readable torch checkpoint ({_what_it_is(path)}): "
            f"{_unpickler_detail(exc)}"
        ) from exc


_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _unpickler_detail(exc: BaseException) -> str:
    """What went wrong, in one sentence, without torch's advice around it (which
    includes loading with ``weights_only=False``: never, for a file one has not made)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(_TORCH_ADVICE)]
    text = lines[0] if lines else ""
    text = text.removeprefix("WeightsUnpickler error:").strip() or (lines[1:] or [""])[0]
    sentence, dot, _ = text.partition(". ")
    return f"{type(exc).__name__}: {sentence}{dot.strip()}".rstrip(": ")


def _what_it_is(path: Path) -> str:
    """A guess at what a file that torch cannot read is, from its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return "unreadable"
    if not head:
        return "the file is empty"
    if head.lstrip().lower().startswith((b"<!doctype", b"<html", b"<?xml")):
        return "a web page, not a checkpoint: a download that returned an error page?"
    if len(head) > 9 and head[8:10] == b'{"':
        return "it looks like a safetensors file: give it the .safetensors suffix"
    if head[:1] == b"\x80" and head[1:2] in (b"\x03", b"\x04", b"\x05"):
        return (
            "a plain Python pickle, not a file written by torch.save: re-save its tensors "
            "with torch.save or skfmcib.weights.save_checkpoint"
        )
    return "corrupt, truncated, or not written by torch.save"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _load_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        from safetensors import safe_open
    except ImportError as exc:
        # A CheckpointError, so that the commands say it in one line as any other.
        raise CheckpointError(
            f"{path}: reading .safetensors files needs the optional 'safetensors' package: "
            "pip install 'skfmcib[safetensors]' (or convert the file with torch.save)"
        ) from exc
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(
            f"{path} is not a readable safetensors file: {_first_line(exc)}"
        ) from exc
    meta: dict[str, Any] = {}
    for key, value in metadata.items():
        if key == "format":
            continue
        try:
            meta[key] = json.loads(value)
        except ValueError:
            meta[key] = value
    return tensors, meta


def _split_layout(obj: Any, path: Path) -> tuple[Mapping[Any, Any], dict[str, Any]]:
    """Find the encoder state in a loaded object; return it and the other entries."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a checkpoint: expected a dict of "
            "tensors or a dict with 'trunk_state_dict' or 'state_dict'."
        )
    for container in ("trunk_state_dict", "state_dict"):
        if container in obj:
            state = obj[container]
            if not isinstance(state, Mapping):
                raise CheckpointError(
                    f"{path}: '{container}' is a {type(state).__name__}, not a mapping of "
                    "names to tensors."
                )
            others = {k: v for k, v in obj.items() if k != container}
            return state, others
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    keys = [repr(k) for k in list(obj)[:10]]
    raise CheckpointError(
        f"{path} has no encoder state: expected 'trunk_state_dict', 'state_dict' or a "
        f"bare dict of tensors, found top-level keys [{', '.join(keys)}]"
        + (" ..." if len(obj) > 10 else "")
    )


def _normalise_keys(state: Mapping[Any, Any], path: Path) -> dict[str, torch.Tensor]:
    """Strip ``module.`` (anywhere) and ``model.trunk.``/``trunk.``; drop head entries."""
    bad = [
        f"{k!r} ({type(v).__name__})"
        for k, v in state.items()
        if not isinstance(k, str) or not isinstance(v, torch.Tensor)
    ]
    if bad:
        raise CheckpointError(
            f"{path}: the state dict must map names to tensors; offending entries: {_short(bad)}"
        )
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        name = ".".join(part for part in key.split(".") if part != "module")
        if name.startswith(("model.heads.", "heads.")):
            continue
        for prefix in ("model.trunk.", "trunk."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
                break
        if name in out:
            raise CheckpointError(
                f"{path}: entries {origin[name]!r} and {key!r} both map to {name!r}."
            )
        out[name], origin[name] = value, key
    if not out:
        raise CheckpointError(f"{path}: the state dict holds no encoder entries.")
    return out


def _config_from(value: Any, path: Path) -> EncoderConfig | None:
    if value is None:
        return None
    if isinstance(value, EncoderConfig):
        return value
    if not isinstance(value, Mapping):
        raise CheckpointError(
            f"{path}: 'encoder_config' is a {type(value).__name__}, expected a dict of "
            "EncoderConfig fields."
        )
    try:
        return EncoderConfig.from_dict(dict(value))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid 'encoder_config': {exc}") from exc


def read_checkpoint(path: PathLike) -> Checkpoint:
    """Read the encoder weights from a checkpoint file.

    ``.safetensors`` files are read with ``safetensors`` (when installed; the
    architecture comes from the ``encoder_config`` metadata entry). Every other file is
    read with ``torch.load(path, map_location="cpu", weights_only=True, mmap=True)``
    (without ``mmap`` for files in torch's legacy, non-zip format), so no code in the
    file runs and the tensors are paged in from disk rather than copied.

    Accepted layouts: ``{"trunk_state_dict": sd, ...}`` (the FMCIB release and
    :func:`save_checkpoint`), ``{"state_dict": sd}`` (Lightning; ``model.trunk.`` prefixes
    are removed and ``model.heads.`` entries dropped) and a bare ``sd``; ``module.``
    components (DataParallel) are removed wherever they occur.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    Checkpoint

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    CheckpointError
        The file is corrupt, holds objects that are not weights-only safe, or holds no
        mapping of names to tensors. The message names the file.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> from skfmcib.encoder import EncoderConfig, ResNet3D
    >>> from skfmcib.weights import read_checkpoint
    >>> net = ResNet3D(EncoderConfig(arch="resnet10", widen_factor=0.25))
    >>> path = Path(tempfile.mkdtemp()) / "lightning.ckpt"
    >>> sd = {f"model.trunk.{k}": v for k, v in net.state_dict().items()}
    >>> sd["model.heads.0.weight"] = torch.zeros(2, 128)
    >>> torch.save({"state_dict": sd, "epoch": 3}, path)
    >>> ckpt = read_checkpoint(path)
    >>> sorted(ckpt.state_dict)[:2], ckpt.config, ckpt.extra
    (['bn1.bias', 'bn1.num_batches_tracked'], None, {'epoch': 3})
    """
    given = Path(path).expanduser()
    if not given.is_file():
        raise FileNotFoundError(errno.ENOENT, "No checkpoint file at", str(given))
    resolved = given.resolve()
    digest = _FileDigest(resolved)  # the file as it is read
    if resolved.suffix == ".safetensors":
        state, others = _load_safetensors(resolved)
    else:
        state, others = _split_layout(_torch_load(resolved), resolved)
    config = _config_from(others.pop("encoder_config", None), resolved)
    return Checkpoint(
        state_dict=_normalise_keys(state, resolved),
        config=config,
        path=resolved,
        _digest=digest,
        extra=dict(others),
    )


# --------------------------------------------------------------------- the encoder


class WeightsInfo:
    """Where an encoder's weights came from.

    Parameters
    ----------
    source : str
        ``"fmcib"`` (or another registry name), the absolute path of the checkpoint, or
        ``"random"``.
    digest : str
        SHA-256 of the checkpoint file, or ``"random:<random_state>"``.
    config : EncoderConfig
        The architecture of the encoder.
    path : pathlib.Path or None, default=None
        The checkpoint file (None for random weights).

    Attributes
    ----------
    source, digest, config, path
        As above. For weights read by :func:`load_encoder`, ``digest`` is computed
        the first time it is asked for (hashing a large file takes a while); it is an
        error (:class:`CheckpointError`) if the file changed after it was read.
        Pickling a ``WeightsInfo`` stores the digest.
    """

    __slots__ = ("_digest", "config", "path", "source")

    def __init__(
        self,
        source: str,
        digest: str | _FileDigest,
        config: EncoderConfig,
        path: Path | None = None,
    ) -> None:
        self.source = source
        self._digest = digest
        self.config = config
        self.path = path

    @property
    def digest(self) -> str:
        """SHA-256 of the checkpoint file, or ``"random:<random_state>"``."""
        digest = self._digest
        return digest if isinstance(digest, str) else digest.get()

    def check_unchanged(self) -> None:
        """Raise :class:`CheckpointError` if the checkpoint was rewritten in place since
        its weights were read (memory-mapped weights would change with it)."""
        if isinstance(self._digest, _FileDigest):
            self._digest.check_unchanged()

    def _fields(self) -> tuple:
        return (self.source, self.digest, self.config, self.path)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WeightsInfo):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        digest = self._digest if isinstance(self._digest, str) else "<not computed yet>"
        return (
            f"WeightsInfo(source={self.source!r}, digest={digest!r}, config={self.config!r}, "
            f"path={self.path!r})"
        )

    def __reduce__(self):
        return (WeightsInfo, self._fields())


def _guess_architecture(state: Mapping[str, torch.Tensor]) -> str | None:
    """Describe the architecture a MONAI-layout state dict was made for, if recognisable."""
    stem = state.get("conv1.weight")
    if stem is None or stem.ndim != 5:
        return None
    blocks = []
    for stage in range(1, 5):
        found = {
            int(m.group(1))
            for k in state
            if (m := re.match(rf"layer{stage}\.(\d+)\.", k)) is not None
        }
        blocks.append(len(found))
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in state)
    arch = next(
        (
            name
            for name, (block, layers) in ARCHITECTURES.items()
            if tuple(blocks) == layers and (getattr(block, "expansion", 1) == 4) == bottleneck
        ),
        None,
    )
    parts = [f"arch={arch!r}" if arch else f"blocks per stage {blocks}"]
    parts.append(f"widen_factor={stem.shape[0] / 64:g}")
    parts.append(f"bias_downsample={any(k.endswith('downsample.0.bias') for k in state)}")
    if stem.shape[1] != 1:
        parts.append(f"{stem.shape[1]} input channels (the encoder takes 1)")
    return ", ".join(parts)


def _check_fits(
    config: EncoderConfig,
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    path: Path,
) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs encoder {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{path} does not fit the encoder {config} (loading is strict):"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {_short(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {_short(unexpected)}")
    if mismatched:
        lines.append(f"  shape mismatches ({len(mismatched)}): {_short(mismatched, 5)}")
    guess = _guess_architecture(state)
    # One mis-shaped tensor is that tensor's problem, not another architecture.
    if guess is not None and (len(mismatched) > 1 or len(missing) + len(unexpected) > 2):
        lines.append(
            f"The checkpoint looks like a different architecture ({guess}); pass a "
            "matching config=EncoderConfig(...), or re-save it with save_checkpoint so "
            "the architecture travels with the weights."
        )
    raise CheckpointError("\n".join(lines))


def _as_loaded(value: torch.Tensor, like: torch.Tensor, key: str, path: Path) -> torch.Tensor:
    if value.dtype != like.dtype:
        if value.is_floating_point() and like.is_floating_point():
            value = value.to(like.dtype)
        elif (
            not value.is_floating_point()
            and not value.is_complex()
            and not like.is_floating_point()
        ):
            value = value.to(like.dtype)
        else:
            raise CheckpointError(
                f"{path}: entry {key!r} has dtype {value.dtype}, expected {like.dtype}."
            )
    return value.to("cpu").contiguous()


_RANDOM_FILLS = frozenset(
    getattr(torch.Tensor, name)
    for name in (
        "normal_",
        "uniform_",
        "random_",
        "bernoulli_",
        "exponential_",
        "log_normal_",
        "cauchy_",
        "geometric_",
    )
)


class _SkipMetaRandomInit(torch.overrides.TorchFunctionMode):
    """Skip random initialisation of meta tensors.

    The weights are replaced right away, and torch implements random fills of meta
    tensors in Python references whose first use imports the compiler stack (seconds).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RANDOM_FILLS and args and getattr(args[0], "is_meta", False):
            return args[0]
        return func(*args, **(kwargs or {}))


def _encoder_from_state(
    config: EncoderConfig, state: Mapping[str, torch.Tensor], path: Path
) -> ResNet3D:
    with torch.device("meta"), _SkipMetaRandomInit():
        encoder = ResNet3D(config)  # no memory is allocated for the parameters
    expected = encoder.state_dict()
    state = dict(state)
    for key in expected:  # a BN step counter is not a weight; some files lack it
        stem = key.removesuffix("num_batches_tracked")
        if stem != key and key not in state and stem + "running_mean" in state:
            state[key] = torch.zeros((), dtype=torch.long)
    _check_fits(config, expected, state, path)
    prepared = {k: _as_loaded(state[k], expected[k], k, path) for k in expected}
    # assign=True makes the (memory-mapped) tensors the parameters themselves: no copy.
    encoder.load_state_dict(prepared, strict=True, assign=True)
    if any(t.is_meta for t in (*encoder.parameters(), *encoder.buffers())):
        raise CheckpointError(f"{path}: some encoder tensors were not loaded.")
    return encoder.eval()


_SEEDED_INIT = threading.Lock()


def _random_encoder(
    config: EncoderConfig, random_state: int | None
) -> tuple[ResNet3D, WeightsInfo]:
    if random_state is None:
        encoder = ResNet3D(config)
    else:
        try:
            seed = operator.index(random_state)
        except TypeError:
            raise TypeError(
                f"random_state must be an int or None, got {type(random_state).__name__}"
            ) from None
        # torch's layers initialise from its global generator, seeded here and put back
        # after. One initialisation at a time: two at once (fits in threads) would draw
        # from each other's seeded generator and give other weights than the seed's.
        with _SEEDED_INIT, torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = ResNet3D(config)
    info = WeightsInfo(source="random", digest=f"random:{random_state}", config=config)
    return encoder.eval(), info


def load_encoder(
    weights: PathLike | WeightsRecord | None = "fmcib",
    *,
    config: EncoderConfig | Mapping[str, Any] | None = None,
    cache_dir: PathLike | None = None,
    progress: bool = True,
    random_state: int | None = None,
) -> tuple[ResNet3D, WeightsInfo]:
    """Build the encoder and load its weights strictly.

    Parameters
    ----------
    weights : str, path-like, WeightsRecord or None, default="fmcib"
        ``"fmcib"`` (or another :data:`REGISTRY` name, or a record): the official weights,
        downloaded once by :func:`fetch_weights`. Any other string or path: a checkpoint
        file (see :func:`read_checkpoint` for the layouts). None: random initialisation.
    config : EncoderConfig or dict, optional
        The architecture. When omitted: the checkpoint's ``encoder_config``, else the
        FMCIB ResNet-50 (:class:`~skfmcib.encoder.EncoderConfig` defaults).
    cache_dir : str or path-like, optional
        Cache folder for registered weights (:func:`default_cache_dir` when omitted).
    progress : bool, default=True
        Show a progress bar while downloading.
    random_state : int, optional
        Seed of the random initialisation when ``weights=None``; ignored otherwise.
        torch's global generator is seeded for the initialisation and put back as it
        was after it (a thread drawing from it meanwhile would draw from the seeded one);
        seeded initialisations run one at a time, so each seed gives its weights.

    Returns
    -------
    encoder : ResNet3D
        In eval mode, on the CPU, float32. Parameters require grad (freeze them for
        feature extraction). Tensors read from ``.torch`` files stay memory-mapped
        (copy-on-write) until written to.
    info : WeightsInfo
        Source, SHA-256 digest and architecture.

    Raises
    ------
    CheckpointError
        The checkpoint has missing or unexpected entries or entries of the wrong shape
        for the architecture; the message names the file and the keys.
    WeightsDownloadError
        The official weights are not cached and could not be downloaded.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> from skfmcib.encoder import EncoderConfig
    >>> from skfmcib.weights import load_encoder, save_checkpoint
    >>> small = EncoderConfig(arch="resnet10", widen_factor=0.25)
    >>> net, info = load_encoder(None, config=small, random_state=0)
    >>> info.source, info.digest
    ('random', 'random:0')
    >>> path = save_checkpoint(net, Path(tempfile.mkdtemp()) / "small.torch")
    >>> net2, info2 = load_encoder(path)
    >>> info2.config == small, info2.source == str(path.resolve())
    (True, True)
    >>> x = torch.zeros(1, 1, 50, 50, 50)
    >>> torch.equal(net(x), net2(x))
    True

    The official weights (downloaded on first use; CC BY-NC 4.0):

    >>> encoder, info = load_encoder("fmcib")  # doctest: +SKIP
    >>> encoder.out_features  # doctest: +SKIP
    4096
    """
    if isinstance(config, Mapping):
        config = EncoderConfig.from_dict(dict(config))
    if config is not None and not isinstance(config, EncoderConfig):
        raise TypeError(f"config must be an EncoderConfig or a dict, got {type(config)!r}")
    if weights is None:
        return _random_encoder(config or EncoderConfig(), random_state)
    source: str | None = None
    record: WeightsRecord | None = None
    if isinstance(weights, WeightsRecord) or (isinstance(weights, str) and weights in REGISTRY):
        record = _resolve_record(weights)
        path = fetch_weights(record, cache_dir=cache_dir, progress=progress)
        source = record.name
    elif isinstance(weights, (str, os.PathLike)):
        path = Path(weights).expanduser()
        if not path.is_file():
            hint = "; random weights are weights=None" if str(weights) == "random" else ""
            raise FileNotFoundError(
                errno.ENOENT,
                f"No checkpoint file at {str(path)!r}, and {str(weights)!r} is not a "
                f"registered weights name ({', '.join(sorted(REGISTRY))}){hint}",
                str(path),
            )
    else:
        raise TypeError(
            "weights must be a registered name, a path, a WeightsRecord or None, got "
            f"{type(weights).__name__}"
        )
    try:
        checkpoint = read_checkpoint(path)
    except CheckpointError as exc:
        if record is None:
            raise
        raise CheckpointError(
            f"{exc} This file is the cached copy of the registered weights "
            f"{record.name!r}: remove it to download them again."
        ) from exc
    pinned = record.config if record is not None else None
    if pinned is not None and checkpoint.config not in (None, pinned):
        raise CheckpointError(
            f"{checkpoint.path} is where the registered weights {record.name!r} are kept, "
            f"but it holds a checkpoint of another encoder ({checkpoint.config!r}; "
            f"{record.name!r} is {pinned!r}); remove it to download the official file "
            "again, or pass its path as weights to use it"
        )
    arch = config or pinned or checkpoint.config or EncoderConfig()
    encoder = _encoder_from_state(arch, checkpoint.state_dict, checkpoint.path)
    info = WeightsInfo(
        source=source or str(checkpoint.path),
        digest=checkpoint._digest,
        config=arch,
        path=checkpoint.path,
    )
    return encoder, info


def bad_values(encoder: torch.nn.Module) -> list[str]:
    """Entries of ``encoder`` that no trained network holds: NaN or infinite values, and
    batch-normalisation variances below zero. Either makes every feature NaN.

    Loading does not look for them (it would read every byte of a large file before
    the first patch is encoded); :class:`~skfmcib.FMCIBTransformer` does when the
    encoder gives NaN features, and ``skfmcib weights info`` always does.

    Parameters
    ----------
    encoder : torch.nn.Module

    Returns
    -------
    list of str
        The entries' names (with why, for variances), in the state dict's order.

    Examples
    --------
    >>> import torch
    >>> from skfmcib.encoder import EncoderConfig
    >>> from skfmcib.weights import bad_values, load_encoder
    >>> net, _ = load_encoder(None, config=EncoderConfig("resnet10", 0.25), random_state=0)
    >>> bad_values(net)
    []
    >>> with torch.no_grad():
    ...     net.conv1.weight[0, 0, 0, 0, 0] = float("nan")
    ...     net.bn1.running_var[0] = -1.0
    >>> bad_values(net)
    ['conv1.weight', 'bn1.running_var (negative variance)']
    """
    found = []
    for name, value in encoder.state_dict().items():
        if not value.is_floating_point():
            continue
        if not bool(torch.isfinite(value).all()):
            found.append(name)
        elif name.endswith("running_var") and bool((value < 0).any()):
            found.append(f"{name} (negative variance)")
    return found


# ------------------------------------------------------------------------- saving

_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.Tensor)


def _check_plain(value: Any, where: str) -> None:
    """Reject values that torch.load(weights_only=True) could not read back."""
    if isinstance(value, _PLAIN):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, f"{where} key")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"extra{where} is a {type(value).__name__}; only tensors, numbers, strings, None "
        "and lists/tuples/dicts of them can be stored (weights-only checkpoints)."
    )


def save_checkpoint(
    encoder: ResNet3D, path: PathLike, *, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write the encoder's weights and architecture to a file, atomically.

    A ``.safetensors`` path gets a safetensors file (``encoder_config`` and the
    ``extra`` entries are JSON strings in its metadata; needs the ``safetensors``
    package). Any other path gets ``torch.save({"trunk_state_dict": ...,
    "encoder_config": encoder.config.to_dict(), **extra})``. Both reload with
    :func:`read_checkpoint` / :func:`load_encoder` and no further arguments. The file is
    written next to ``path`` and renamed into place, so readers never see half a file.

    Parameters
    ----------
    encoder : ResNet3D
        The encoder (any device; tensors are saved from the CPU).
    path : str or path-like
        Destination; parent folders are created.
    extra : mapping, optional
        More top-level entries (tensors, numbers, strings, lists and dicts of them; for
        safetensors, JSON-serialisable values).

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from skfmcib.encoder import EncoderConfig, ResNet3D
    >>> from skfmcib.weights import read_checkpoint, save_checkpoint
    >>> net = ResNet3D(EncoderConfig(arch="resnet10", widen_factor=0.25))
    >>> out = save_checkpoint(net, Path(tempfile.mkdtemp()) / "net.torch", extra={"note": "x"})
    >>> ckpt = read_checkpoint(out)
    >>> ckpt.config.arch, ckpt.extra
    ('resnet10', {'note': 'x'})
    """
    config = getattr(encoder, "config", None)
    if not isinstance(config, EncoderConfig):
        raise TypeError(
            f"save_checkpoint needs a ResNet3D (with .config), got {type(encoder).__name__}"
        )
    state = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    if any(v.is_meta for v in state.values()):
        raise ValueError("The encoder has tensors on the meta device; load its weights first.")
    path = Path(path).expanduser()
    extra = dict(extra or {})
    safetensors_file = path.suffix == ".safetensors"
    reserved = {"trunk_state_dict", "state_dict", "encoder_config"}
    if safetensors_file:
        reserved.add("format")
    clash = sorted(reserved & extra.keys())
    if clash:
        raise ValueError(f"extra may not contain the reserved keys {clash}")

    if safetensors_file:
        try:
            from safetensors.torch import save_file
        except ImportError as exc:
            raise ImportError(
                "Writing .safetensors files needs the optional 'safetensors' package: "
                "pip install 'skfmcib[safetensors]'; use a .torch path otherwise."
            ) from exc
        metadata = {"format": "pt", "encoder_config": json.dumps(config.to_dict())}
        for key, value in extra.items():
            if not isinstance(key, str):
                raise TypeError(f"extra keys must be strings, got {key!r}")
            try:
                metadata[key] = json.dumps(value)
            except TypeError as exc:
                raise TypeError(
                    f"extra[{key!r}] cannot be stored in safetensors metadata: {exc}"
                ) from exc
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=metadata))
    else:
        _check_plain(extra, "")
        payload = {"trunk_state_dict": state, "encoder_config": config.to_dict(), **extra}
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path

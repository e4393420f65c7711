"""Per-lesion feature cache on a ``joblib.Memory``.

A lesion's features are stored under a key made of everything that decides them:

- the encoder: the weights' SHA-256 (or ``random:<seed>`` with the torch version, whose
  initialisation it depends on), the architecture and the precision;
- the preprocessing: patch size, spacing, intensity mapping, fill value and grid rule,
  and this package's version (a release may change any of them);
- the image: its absolute path with size, modification and status-change times and
  inode of its file(s) (:func:`skfmcib.io.image_identity`), or for a pre-cropped
  patch the hash of its voxels;
- the seed, in LPS millimetres.

Changing any of these misses the cache. The device and batch size are not part of
the key: they change features only by floating-point rounding. Entries read or written
in this process are also kept in memory (64 MB at most) for the next lookups.

Each entry is one ``.npy`` file, named by the SHA-1 of its key, in the folder
``skfmcib-features`` of the ``joblib.Memory``'s store (so ``Memory.clear()`` removes
them). Entries are read with ``numpy.load(allow_pickle=False)``: reading a cache folder
never runs code, whoever wrote it (joblib's own entries are pickles).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import warnings
import zipfile
from collections import OrderedDict

import joblib
import numpy as np
import pandas as pd

from .io import image_identity
from .patches import HU_OFFSET, HU_SCALE, PATCH_SIZE

_FORMAT = "skfmcib-lesion-features/2"
_FOLDER = "skfmcib-features"

PREPROCESSING = (
    ("patch_size_voxels", PATCH_SIZE),
    ("spacing_mm", 1.0),
    ("interpolation", "trilinear"),
    ("intensity", f"(HU + {HU_OFFSET:g}) / {HU_SCALE:g}"),
    ("outside_scan_hu", -HU_OFFSET),
    ("grid", "reference 1 mm LPS grid, seed index truncated, seed-centred"),
)


class _Recent:
    """Features read or written in this process, by cache folder and key (bounded LRU).

    A model-selection search reads the same lesions once per fold and candidate; this
    spares the disk reads. Keys determine the features, so a copy is never stale.
    """

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._max = max_bytes
        self._lock = threading.Lock()

    def get(self, key: tuple) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple, value: np.ndarray) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self._max and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes


_RECENT = _Recent()


def _writable(folder: str) -> bool:
    """Whether files can be created in ``folder`` (or the nearest folder above it)."""
    path = os.path.abspath(folder)
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return os.access(path, os.W_OK)


class FeatureCache:
    """Look up and store per-lesion features in a ``joblib.Memory``.

    Parameters
    ----------
    memory : joblib.Memory
        With a location (caching enabled).
    encoder_key : tuple
        What identifies the encoder and its arithmetic (see the module docstring).
    """

    def __init__(self, memory: joblib.Memory, encoder_key: tuple) -> None:
        from . import __version__

        store = getattr(memory.store_backend, "location", None)
        if store is None:
            store = os.path.join(os.fspath(memory.location), "joblib")
        self._folder = os.path.join(os.fspath(store), _FOLDER)
        self._prefix = (_FORMAT, __version__, encoder_key, PREPROCESSING)
        self._where = str(memory.location)
        self._writable = _writable(self._folder)

    def row_keys(self, seeds: pd.DataFrame) -> list[tuple | None]:
        """Keys of the rows of :func:`~skfmcib.table.validate_table` output (None: uncachable)."""
        identities: dict[tuple, tuple | None] = {}
        keys: list[tuple | None] = []
        coords = seeds[["x", "y", "z"]].to_numpy(dtype=np.float64)
        for path, uid, seed in zip(seeds["image_path"], seeds["series_uid"], coords, strict=True):
            if not path or not np.all(np.isfinite(seed)):
                keys.append(None)
                continue
            image = (path, uid)
            if image not in identities:
                identities[image] = image_identity(path, uid)
            identity = identities[image]
            keys.append(None if identity is None else ("image", identity, tuple(seed.tolist())))
        return keys

    @staticmethod
    def patch_key(patch: np.ndarray) -> tuple:
        """Key of a pre-cropped patch: the hash of its voxels."""
        return ("patch", joblib.hash(np.ascontiguousarray(patch, dtype=np.float32)))

    def _file(self, full: tuple) -> str:
        digest = joblib.hash(full, hash_name="sha1")
        return os.path.join(self._folder, digest[:2], digest + ".npy")

    def get(self, key: tuple | None) -> np.ndarray | None:
        """The stored features of ``key``, or None."""
        if key is None:
            return None
        full = (self._prefix, key)
        recent = _RECENT.get((self._where, full))
        if recent is not None:
            return recent.copy()
        try:
            with open(self._file(full), "rb") as fh:  # closed whatever np.load makes of it
                value = np.load(fh, allow_pickle=False)
                if not isinstance(value, np.ndarray):  # an .npz archive: not an entry
                    return None
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # corrupt: put stores it again
            return None
        if value.ndim != 1 or value.dtype != np.float32 or not np.isfinite(value).all():
            return None  # not features: stored again by put
        _RECENT.put((self._where, full), value.copy())
        return value

    def put(self, key: tuple | None, features: np.ndarray) -> None:
        """Store the features of ``key`` (replacing an unreadable entry)."""
        if key is None:
            return
        value = np.array(features, dtype=np.float32)
        full = (self._prefix, key)
        if self._writable:
            try:
                _save(self._file(full), value)
            except OSError as exc:  # a full disk, say: the features are still returned
                self._writable = None  # said once
                warnings.warn(
                    f"memory={self._where!r}: features could not be stored in the cache "
                    f"({exc.strerror or exc}); they are returned but not stored",
                    UserWarning,
                    stacklevel=5,
                )
        elif self._writable is False:
            self._writable = None  # said once
            warnings.warn(
                f"memory={self._where!r}: the feature cache folder is not writable; "
                "features stored in it are read, new ones are not stored",
                UserWarning,
                stacklevel=5,
            )
        _RECENT.put((self._where, full), value.copy())


def _save(path: str, value: np.ndarray) -> None:
    """Write ``value`` to ``path`` through a temporary file renamed over it: a reader
    (another process sharing the folder) sees the old entry, none, or the whole new one."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(
        folder, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    )
    try:
        with open(tmp, "wb") as fh:
            np.save(fh, value, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise

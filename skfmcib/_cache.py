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
"""

from __future__ import annotations

import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import joblib
import numpy as np
import pandas as pd

from .io import image_identity
from .patches import HU_OFFSET, HU_SCALE, PATCH_SIZE

_FORMAT = "skfmcib-lesion-features/1"

PREPROCESSING = (
    ("patch_size_voxels", PATCH_SIZE),
    ("spacing_mm", 1.0),
    ("interpolation", "trilinear"),
    ("intensity", f"(HU + {HU_OFFSET:g}) / {HU_SCALE:g}"),
    ("outside_scan_hu", -HU_OFFSET),
    ("grid", "reference 1 mm LPS grid, seed index truncated, seed-centred"),
)


def _lesion_features(key: Hashable, features: Any = None) -> Any:
    """Identity function memoised by joblib: its stored output is the features of ``key``."""
    # Keep this function's text as it is: joblib empties a function's cache when its
    # source changes, so another version of it would wipe the folders it shares.
    return features


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

        self._func = memory.cache(_lesion_features, ignore=["features"], verbose=0)
        self._prefix = (_FORMAT, __version__, encoder_key, PREPROCESSING)
        self._where = str(memory.location)
        self._writable = _writable(self._func.store_backend.location)

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

    def get(self, key: tuple | None) -> np.ndarray | None:
        """The stored features of ``key``, or None."""
        if key is None:
            return None
        full = (self._prefix, key)
        recent = _RECENT.get((self._where, full))
        if recent is not None:
            return recent.copy()
        if not self._func.check_call_in_cache(full):
            return None
        try:
            # Read the stored entry without calling through joblib, which would store
            # None in place of an entry it cannot read (and print its traceback).
            value = self._func.call_and_shelve(full).get()
        except Exception:  # a truncated or corrupt entry, or one removed meanwhile
            return None
        if not isinstance(value, np.ndarray) or value.ndim != 1:
            return None  # not features: stored again by put
        _RECENT.put((self._where, full), np.array(value, dtype=np.float32))
        return value

    def put(self, key: tuple | None, features: np.ndarray) -> None:
        """Store the features of ``key`` (replacing an unreadable entry)."""
        if key is None:
            return
        value = np.array(features, dtype=np.float32)
        if self._writable:
            self._func.call((self._prefix, key), features=value)
        elif self._writable is False:
            self._writable = None  # said once
            warnings.warn(
                f"memory={self._where!r}: the feature cache folder is not writable; "
                "features stored in it are read, new ones are not stored",
                UserWarning,
                stacklevel=5,
            )
        _RECENT.put((self._where, (self._prefix, key)), value.copy())

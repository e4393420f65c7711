"""FMCIBTransformer: FMCIB features for lesions, as a scikit-learn transformer."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import threading
import warnings
from numbers import Integral
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, check_memory

from ._cache import FeatureCache
from ._files import file_state
from ._precision import check_precision_name
from ._process import gc_paused
from ._progress import Progress
from ._text import listing
from .patches import (
    RowWarning,
    _iter_patches,
    check_input_form,
    check_patch_array,
    resolve_n_jobs,
)
from .table import RowError, validate_table

__all__ = ["FMCIBTransformer"]


# torch (about a second to import) is imported when the weights load, not with this
# module: fit_transform reads the first images while it imports, in another thread.


def _encoder_config(arch):
    from .encoder import EncoderConfig

    if arch is None or isinstance(arch, EncoderConfig):
        return arch
    if isinstance(arch, str):
        return EncoderConfig(arch=arch)
    if isinstance(arch, dict):
        return EncoderConfig.from_dict(arch)
    raise ValueError(f"arch must be None, an architecture name or a dict, got {arch!r}")


class FMCIBTransformer(TransformerMixin, BaseEstimator):
    """Extract FMCIB foundation-model features for lesions in CT scans.

    Each lesion (a seed point in a CT) becomes the reference package's 50 mm
    patch, which the FMCIB encoder turns into 4096 features. The patch is sampled
    from the original image on exactly the reference's 1 mm grid, so interior
    lesions give the reference's numbers without resampling whole scans.

    Parameters
    ----------
    weights : "fmcib", str, path-like or None, default="fmcib"
        ``"fmcib"``: the official weights (downloaded once into the cache, see
        :func:`skfmcib.weights.fetch_weights`). A path: a local checkpoint in any
        layout the reference accepts. ``None``: random initialisation (seeded by
        ``random_state``), for experiments and tests.
    arch : None, str or dict, default=None
        Encoder architecture: None takes it from the checkpoint, else the FMCIB
        ResNet-50. A name (``"resnet10"``, ..., ``"resnet50"``) or a dict of
        :class:`~skfmcib.encoder.EncoderConfig` fields overrides it.
    device : str, default="auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    batch_size : int or "auto", default=8
        Patches encoded at once. ``"auto"`` sizes batches to the free memory on CUDA
        (see :func:`skfmcib.runtime.auto_batch_size`) and is 8 on the CPU. The first
        batch of a lesion table is half as large, so that encoding starts on the first
        patches read; batches depend only on the table, never on timing.
    precision : {"fp32", "bf16", "fp16"}, default="fp32"
        Arithmetic of the encoder. ``"bf16"``/``"fp16"`` use autocast (channels-last):
        faster on hardware with reduced-precision units (about 2x with bf16 on CPUs
        with AMX), features within cosine 0.999 of fp32. fp32 is exact (no TF32).
        Changed with ``set_params`` after fit, it takes effect at the next transform
        (the encoder is prepared again from its weights).
    coordinate_system : {"LPS", "RAS"}, default="LPS"
        Convention of the table's coordinates (the reference's is LPS).
    on_error : {"raise", "nan"}, default="raise"
        A bad row (missing file, seed outside the scan, ...) raises an error naming
        the row, the file and the problem, or becomes a row of NaN with a warning.
        With ``"raise"``, the error is the first failure met: rows whose seeds are not
        numbers are checked before any image is read, then images are read in the
        order of their first row, so it is not always the lowest row that fails.
    memory : None, str or joblib.Memory, default=None
        Cache of per-lesion features: a folder or a ``joblib.Memory``. A lesion is
        encoded once and then read back, as long as the weights (digest), the
        architecture, the precision, the preprocessing, the image file (path, size,
        modification and status-change times, inode, and those of the data files a
        header names) and the seed are the same; changing any of them misses the
        cache. A folder that is not writable is read but not added to. Entries are
        ``.npy`` files read without unpickling: reading a cache never runs code. With
        it, a cross-validated search over later pipeline steps encodes each lesion
        once, and a fit whose weights were already loaded in this process defers
        loading the encoder until a lesion is not in the cache.
    n_jobs : int or None, default=None
        Threads that read images and extract patches while the encoder runs (rows
        are grouped by image, each image opened once). None: one thread per two CPU
        cores (at most 4) on the CPU, one per core with CUDA; in ``fit_transform`` on
        the CPU, one per core (at most 4) until the weights are loaded, since the
        encoder cannot run before. ``-1``: one per core; 0: read in the calling thread
        between batches. Features do not depend on it.
    progress : bool or "auto", default="auto"
        Show a progress line on stderr; "auto" shows it for long inputs on a terminal.
    cache_dir : str or path-like, default=None
        Where the official weights are cached; default
        :func:`skfmcib.weights.default_cache_dir`.
    random_state : int, RandomState instance or None, default=None
        Seeds the random initialisation when ``weights=None``.

    Attributes
    ----------
    encoder_ : torch.nn.Module
        The encoder, in eval mode on ``device``. Not pickled: it is reloaded from
        ``weights`` (and its digest checked) after unpickling.
    weights_info_ : skfmcib.weights.WeightsInfo
        Where the weights came from, their SHA-256 digest and the architecture.
    device_ : torch.device
        Where the encoder runs.
    n_features_out_ : int
        Number of features (4096 for FMCIB).

    See Also
    --------
    skfmcib.load_patches : The preprocessed patches alone.

    Examples
    --------
    >>> import numpy as np, pandas as pd, SimpleITK as sitk, tempfile, os
    >>> from skfmcib import FMCIBTransformer
    >>> ct = np.full((60, 60, 60), -1000, dtype=np.int16)  # air around a 40 HU body
    >>> ct[:, 10:50, 10:50] = 40
    >>> img = sitk.GetImageFromArray(ct)
    >>> path = os.path.join(tempfile.mkdtemp(), "ct.nii.gz")
    >>> sitk.WriteImage(img, path)
    >>> table = pd.DataFrame({"image_path": [path], "coordX": [30.0],
    ...                       "coordY": [30.0], "coordZ": [30.0]})
    >>> fmcib = FMCIBTransformer(weights=None, arch={"arch": "resnet10",
    ...                          "widen_factor": 0.25}, random_state=0)
    >>> fmcib.fit_transform(table).shape
    (1, 128)
    """

    def __init__(
        self,
        weights="fmcib",
        arch=None,
        device="auto",
        batch_size=8,
        precision="fp32",
        coordinate_system="LPS",
        on_error="raise",
        memory=None,
        n_jobs=None,
        progress="auto",
        cache_dir=None,
        random_state=None,
    ):
        self.weights = weights
        self.arch = arch
        self.device = device
        self.batch_size = batch_size
        self.precision = precision
        self.coordinate_system = coordinate_system
        self.on_error = on_error
        self.memory = memory
        self.n_jobs = n_jobs
        self.progress = progress
        self.cache_dir = cache_dir
        self.random_state = random_state

    def _check_params(self) -> None:
        if self.batch_size != "auto" and (
            not isinstance(self.batch_size, Integral)
            or isinstance(self.batch_size, bool)
            or self.batch_size < 1
        ):
            raise ValueError(
                f"batch_size must be a positive integer or 'auto', got {self.batch_size!r}"
            )
        resolve_n_jobs(self.n_jobs)
        _check_memory(self.memory)
        check_precision_name(self.precision)
        if self.coordinate_system not in ("LPS", "RAS"):
            raise ValueError(
                f"coordinate_system must be 'LPS' or 'RAS', got {self.coordinate_system!r}"
            )
        if self.on_error not in ("raise", "nan"):
            raise ValueError(f"on_error must be 'raise' or 'nan', got {self.on_error!r}")
        if self.progress not in (True, False, "auto"):
            raise ValueError(f"progress must be True, False or 'auto', got {self.progress!r}")

    def fit(
        self, X: pd.DataFrame | ArrayLike | None = None, y: ArrayLike | None = None
    ) -> FMCIBTransformer:
        """Load the encoder; the data are only checked (the encoder is pretrained).

        Parameters
        ----------
        X : DataFrame, array-like or None
            Input as for :meth:`transform`, not read: a lesion table's columns and
            coordinates are checked, an array must be numeric and finite (patch
            shapes are checked by :meth:`transform`). None skips the check.
        y : ignored
            Accepted for API compatibility.

        Returns
        -------
        FMCIBTransformer
            The transformer itself, fitted.
        """
        with gc_paused():  # the first call imports torch
            from . import runtime
            from .weights import load_encoder

        self._check_params()
        check_input_form(X, self.coordinate_system)
        self.device_ = runtime.resolve_device(self.device)
        seed = None
        if self.weights is None:
            seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        self._random_seed = seed
        self.__dict__.pop("_encoder", None)
        self.__dict__.pop("_weights_read", None)
        self.__dict__.pop("_auto_batch", None)
        config = _encoder_config(self.arch)
        memo = _weights_memo_key(self.weights, config, self.cache_dir, seed)
        known = None
        if memo is not None and self._feature_memory() is not None:
            known = _WEIGHTS_SEEN.get(memo)
        if known is not None:
            # These weights were loaded and checked in this process: the cache can be
            # used at once, and the encoder is loaded only if a lesion is not in it.
            self.weights_info_, self.n_features_out_ = known
            return self
        encoder, info = load_encoder(
            self.weights, config=config, cache_dir=self.cache_dir, random_state=seed
        )
        self._encoder = runtime.prepare_encoder(encoder, self.device_, self.precision)
        self._encoder_precision = self.precision
        self._weights_read = info
        self.weights_info_ = info
        self.n_features_out_ = int(encoder.out_features)
        if memo is not None:
            _WEIGHTS_SEEN.put(memo, info, self.n_features_out_)
        return self

    @property
    def encoder_(self):
        """The fitted encoder (reloaded from its source after unpickling)."""
        if "_encoder" in self.__dict__ and self._encoder_precision != self.precision:
            # set_params(precision=...) after fit: the weights as that precision needs them.
            self._check_params()
            del self._encoder
            self.__dict__.pop("_auto_batch", None)
        if "_encoder" not in self.__dict__:
            if "weights_info_" not in self.__dict__:
                raise AttributeError("encoder_ exists only after fit")
            self._reload_encoder()
        return self._encoder

    def _reload_encoder(self) -> None:
        from . import runtime
        from .weights import REGISTRY, load_encoder

        info = self.weights_info_
        weights = self.weights
        if info.path is not None and isinstance(weights, (str, os.PathLike)):
            if not (isinstance(weights, str) and weights in REGISTRY):
                # The file that was fitted, wherever this process runs: a relative path
                # would be resolved against another working directory after unpickling.
                weights = info.path
        encoder, new = load_encoder(
            weights,
            config=info.config,
            cache_dir=self.cache_dir,
            random_state=self._random_seed,
        )
        if new.digest != info.digest:
            raise RuntimeError(
                f"the weights at {new.source} changed since this transformer was fitted "
                f"(digest {info.digest[:12]}... then, {new.digest[:12]}... now); fit it again"
            )
        if "device_" not in self.__dict__ or not _device_usable(self.device_):
            self.device_ = runtime.resolve_device(self.device)
        self._encoder = runtime.prepare_encoder(encoder, self.device_, self.precision)
        self._encoder_precision = self.precision
        self._weights_read = new

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_encoder", None)
        state.pop("_weights_read", None)
        state.pop("_auto_batch", None)
        state.pop("_encoder_precision", None)
        return state

    def transform(self, X: pd.DataFrame | ArrayLike) -> np.ndarray:
        """Compute FMCIB features.

        Parameters
        ----------
        X : DataFrame or array-like
            A lesion table with columns ``image_path``, ``coordX``, ``coordY``,
            ``coordZ`` (other columns ignored), or pre-cropped patches of shape
            ``(n, 50, 50, 50)``, ``(n, 1, 50, 50, 50)`` or ``(n, 125000)``.

        Returns
        -------
        ndarray of shape (n_lesions, n_features_out_), float32
            One row per lesion, in the input's order (NaN for bad rows when
            ``on_error="nan"``).
        """
        check_is_fitted(self, "weights_info_")
        if isinstance(X, pd.DataFrame):
            return self._transform_table(X)
        patches = check_patch_array(X)
        out = np.empty((len(patches), self.n_features_out_), dtype=np.float32)
        precision = self.precision  # the one the cache key and every batch use
        cache = self._feature_cache()
        keys = [None] * len(patches)
        todo = np.arange(len(patches))
        if cache is not None:
            keys = [cache.patch_key(p) for p in patches]
            todo = self._fill_from_cache(cache, keys, out)
        with self._progress(len(patches)) as bar:
            bar.update(len(patches) - len(todo))
            for start in range(0, len(todo), self._batch_size()):
                where = todo[start : start + self._batch_size()]
                self._encode_into(out, where, patches[where], cache, keys, precision)
                bar.update(len(where))
        return out

    # -- helpers ---------------------------------------------------------------------

    def _feature_memory(self):
        memory = _check_memory(self.memory)
        return None if memory.location is None else memory

    def _feature_cache(self) -> FeatureCache | None:
        memory = self._feature_memory()
        if memory is None:
            return None
        info = self.weights_info_
        encoder_key = (info.digest, tuple(sorted(info.config.to_dict().items())), self.precision)
        if info.source == "random":
            # Random initialisation depends on torch's generator and init code.
            import torch

            encoder_key += (f"torch {torch.__version__}",)
        return FeatureCache(memory, encoder_key)

    @staticmethod
    def _fill_from_cache(cache: FeatureCache, keys: list, out: np.ndarray) -> np.ndarray:
        """Copy cached rows into ``out``; return the positions still to compute."""
        todo = []
        for pos, key in enumerate(keys):
            hit = cache.get(key)
            if hit is None or hit.shape != out.shape[1:]:
                todo.append(pos)
            else:
                out[pos] = hit
        return np.asarray(todo, dtype=np.int64)

    def _batch_size(self, loading: _Loader | None = None) -> int:
        if self.batch_size != "auto":
            return int(self.batch_size)
        if loading is not None:
            loading.wait()
        if "_auto_batch" not in self.__dict__:
            from . import runtime

            self._auto_batch = runtime.auto_batch_size(self.encoder_, self.device_, self.precision)
        return self._auto_batch

    def _n_threads(self, on_cuda: bool | None = None) -> int:
        """Reading threads; ``on_cuda``: where the encoder will run (default: ``device_``)."""
        if on_cuda is None:
            on_cuda = self.device_.type == "cuda"
        if self.n_jobs is None and on_cuda:
            return os.cpu_count() or 1
        return resolve_n_jobs(self.n_jobs)

    def _encode(self, encoder, batch: np.ndarray) -> np.ndarray:
        from . import runtime

        # Checked before (a file cut short would crash the process when its pages are
        # read) and after (nothing computed from a rewritten file is kept or cached).
        read = self.__dict__.get("_weights_read")
        if read is not None:
            read.check_unchanged()
        feats = runtime.encode(encoder, batch, self.device_, self.precision)
        if read is not None:
            read.check_unchanged()
        return feats

    def _encode_into(self, out, where, batch, cache, keys, precision: str, index=None) -> None:
        """Encode ``batch`` into the rows ``where`` of ``out`` (and the cache).

        ``index``: the table's row labels, to name rows in errors (default: positions).
        """
        feats = self._encode(self.encoder_, batch)
        if self.precision != precision or self._encoder_precision != precision:
            # set_params from another thread while this call runs: its features would
            # mix two precisions, and the cache would file them under the first's key.
            raise RuntimeError(
                f"precision changed from {precision!r} to {self.precision!r} while transform "
                "was running; nothing of this call was kept or cached. Change parameters "
                "between calls"
            )
        finite = np.isfinite(feats).all(axis=1)
        if not finite.all():
            failed = np.asarray(where)[~finite]
            noun = "patch" if index is None else "row"
            rows = failed if index is None else index[failed]
            raise self._non_finite(noun, list(rows), precision)
        out[where] = feats
        if cache is not None:
            for pos, row in zip(where, feats, strict=True):
                cache.put(keys[pos], row)

    def _non_finite(self, noun: str, rows: list, precision: str) -> Exception:
        """The error for features that came out NaN or infinite (patches are finite)."""
        from .weights import CheckpointError, bad_values

        plural = "es" if noun == "patch" else "s"
        what = f"NaN or infinite features for {noun}{plural if len(rows) > 1 else ''} "
        what += listing(rows)
        bad = bad_values(self.encoder_)
        if bad:
            entries = "1 entry" if len(bad) == 1 else f"{len(bad)} entries"
            return CheckpointError(
                f"{self.weights_info_.path or self.weights_info_.source}: the encoder gave "
                f"{what}: the weights hold NaN or infinite values, or negative batch-norm "
                f"variances, in {entries} ({listing(bad, 5)}). These weights cannot "
                "give features; no NaN features were kept or cached"
            )
        hint = (
            "; float16's range (65504) is too small for these activations: use "
            "precision='bf16' or 'fp32'."
            if precision == "fp16"
            else "; are the intensities far outside the CT range?"
        )
        return ValueError(
            f"the encoder gave {what} at precision {precision!r}{hint} No NaN features "
            "were kept or cached."
        )

    def _progress(self, total: int) -> Progress:
        return Progress(total, enabled=self.progress, unit="lesions")

    def _transform_table(
        self,
        X: pd.DataFrame,
        loading: _Loader | None = None,
        n_threads: int | None = None,
        running=None,
    ) -> np.ndarray:
        """Features of a lesion table; ``loading``: weights still being loaded (no cache).

        ``n_threads`` reading threads (default: :meth:`_n_threads`), of which
        ``running()`` may read at a time (default: all).
        """
        seeds = validate_table(X, self.coordinate_system)
        out = None if loading is not None else self._empty_output(len(X))
        precision = self.precision  # the one the cache key and every batch use
        cache = None if loading is not None else self._feature_cache()
        keys: list = [None] * len(X)
        todo = np.arange(len(X))
        if cache is not None:
            keys = cache.row_keys(seeds)
            todo = self._fill_from_cache(cache, keys, out)
        with self._progress(len(X)) as bar:
            bar.update(len(X) - len(todo))
            # Images are read and patches extracted in background threads (n_jobs)
            # while this thread encodes; rows come grouped by image.
            if len(todo) == 0:
                return out
            results = _iter_patches(
                X.iloc[todo],
                self.coordinate_system,
                n_threads if n_threads is not None else self._n_threads(),
                running,
                # A failed load (a mistyped weights path, say) is raised at once, not
                # when the first batch has been read.
                check=loading.raise_if_failed if loading is not None else None,
            )
            batch, where = [], []
            # The first batch is half the size: the encoder starts on the first
            # patches read rather than idling until a whole batch is ready. Batches
            # depend only on the table, never on timing.
            size = max(1, (self._batch_size(loading) + 1) // 2)
            with contextlib.closing(results):
                for pos, patch in results:
                    if isinstance(patch, RowError):
                        self._row_failed(patch)
                        bar.update(1)
                        continue
                    batch.append(patch)
                    where.append(todo[pos])
                    if len(batch) == size:
                        out = self._ready_output(out, len(X), loading)
                        self._encode_into(
                            out, where, np.stack(batch)[:, None], cache, keys, precision, X.index
                        )
                        bar.update(len(batch))
                        batch, where = [], []
                        size = self._batch_size(loading)
                out = self._ready_output(out, len(X), loading)
                if batch:
                    self._encode_into(
                        out, where, np.stack(batch)[:, None], cache, keys, precision, X.index
                    )
                    bar.update(len(batch))
        return out

    def _empty_output(self, n: int) -> np.ndarray:
        return np.full((n, self.n_features_out_), np.nan, dtype=np.float32)

    def _ready_output(self, out, n: int, loading: _Loader | None) -> np.ndarray:
        """The output array, once the weights are loaded (waiting for them if needed)."""
        if out is None:
            loading.wait()
            out = self._empty_output(n)
        return out

    def fit_transform(
        self, X: pd.DataFrame | ArrayLike, y: ArrayLike | None = None, **fit_params: Any
    ) -> np.ndarray:
        """Fit (load the encoder) and compute the features of ``X``.

        For a lesion table without a feature cache, the first images are read while
        the weights load; the result is that of ``fit(X).transform(X)``.

        Parameters
        ----------
        X : DataFrame or array-like
            As for :meth:`transform`.
        y : ignored
            Accepted for API compatibility.
        **fit_params : dict
            Passed to :meth:`fit` (none are used).

        Returns
        -------
        ndarray of shape (n_lesions, n_features_out_), float32
        """
        if not isinstance(X, pd.DataFrame):
            return self.fit(X, y, **fit_params).transform(X)
        self._check_params()
        if self._feature_memory() is not None:
            return self.fit(X, y, **fit_params).transform(X)
        validate_table(X, self.coordinate_system)
        # The device decides the number of reading threads; torch is imported, and the
        # device resolved, by fit in the loading thread, unless that is needed here.
        on_cuda = _will_use_cuda(self.device)
        steady = self._n_threads(on_cuda=on_cuda)
        n_threads, running = steady, None
        if self.n_jobs is None and not on_cuda:
            # Until the weights are loaded the encoder cannot run: one reading thread
            # per core (at most 4) meanwhile, then the default share.
            n_threads = max(steady, min(4, os.cpu_count() or 1))
        loading = _Loader(lambda: self.fit(X, y, **fit_params))
        if n_threads > steady:

            def running() -> int:
                return steady if loading.done() else n_threads

        try:
            out = self._transform_table(X, loading, n_threads, running)
        except BaseException:
            loading.wait(reraise=False)
            raise
        loading.wait()
        return out

    def _row_failed(self, error: RowError) -> None:
        if self.on_error == "raise":
            raise error
        warning = RowWarning(f"{error}; its features are NaN")
        warning.row_error = error
        warnings.warn(warning, stacklevel=4)

    def get_feature_names_out(self, input_features: ArrayLike | None = None) -> np.ndarray:
        """Names of the output features: ``fmcib_0``, ``fmcib_1``, ...

        One per feature, up to ``fmcib_{n_features_out_ - 1}`` (``fmcib_4095`` for the
        FMCIB ResNet-50).

        Parameters
        ----------
        input_features : ignored
            The features do not depend on the input's columns.

        Returns
        -------
        ndarray of str, shape (n_features_out_,)
        """
        check_is_fitted(self, "n_features_out_")
        return np.asarray([f"fmcib_{i}" for i in range(self.n_features_out_)], dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


def _check_memory(memory):
    """``check_memory`` that also takes path-like objects."""
    if isinstance(memory, os.PathLike):
        memory = os.fspath(memory)
    try:
        return check_memory(memory)
    except OSError as exc:  # joblib creates the folder
        message = f"memory={memory!r}: cannot create the feature cache folder ({exc.strerror})"
        raise OSError(exc.errno, message) from exc


def _weights_memo_key(weights, config, cache_dir, seed) -> tuple | None:
    from .weights import REGISTRY, WeightsRecord, cached_weights_path

    if weights is None:
        return ("random", seed, config)
    if isinstance(weights, WeightsRecord) or (isinstance(weights, str) and weights in REGISTRY):
        # The file the cache folder holds now: $SKFMCIB_CACHE_DIR, or the working folder
        # of a relative cache_dir, may have changed since the last fit.
        target = os.path.realpath(cached_weights_path(weights, cache_dir=cache_dir))
        return ("registry", weights, target, config)
    if isinstance(weights, (str, os.PathLike)):
        # The file a link points to now: repointing a link loads the weights again.
        return ("file", os.path.realpath(os.path.expanduser(os.fspath(weights))), config)
    return None  # not valid weights: load_encoder says why


class _Loader:
    """Runs a function (loading the weights) in a thread; ``wait`` joins it."""

    def __init__(self, fn) -> None:
        self._error: BaseException | None = None

        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # handed to the caller of wait
                self._error = exc

        self._thread = threading.Thread(target=run, name="skfmcib-weights", daemon=True)
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def raise_if_failed(self) -> None:
        """Raise the function's exception if it has already failed."""
        if self._error is not None and self.done():
            self.wait()

    def wait(self, reraise: bool = True) -> None:
        self._thread.join()
        if reraise and self._error is not None:
            error, self._error = self._error, None
            raise error


class _WeightsMemo:
    """Weights loaded (and so checked) in this process, by how they were asked for.

    A fit with a feature cache uses it to skip loading an encoder it may not need;
    an entry holds only while the checkpoint file is unchanged.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple, tuple] = {}

    @staticmethod
    def _state(info) -> tuple | None:
        if info.path is None:
            return ()
        try:
            return file_state(info.path)
        except OSError:
            return None

    def put(self, key: tuple, info, n_features: int) -> None:
        state = self._state(info)
        if state is not None:
            with self._lock:
                self._seen[key] = (info, n_features, state)

    def get(self, key: tuple):
        with self._lock:
            entry = self._seen.get(key)
        if entry is None:
            return None
        info, n_features, state = entry
        if self._state(info) != state:
            return None
        return info, n_features


_WEIGHTS_SEEN = _WeightsMemo()


def _torch_build_has_gpu() -> bool:
    """Whether the installed torch was built for CUDA or ROCm, read without importing it.

    ``torch/version.py`` is a plain module that records the build; a CPU-only build
    can never see a GPU, so ``device="auto"`` is the CPU there.
    """
    spec = importlib.util.find_spec("torch")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = os.path.join(folder, "version.py")
        version_spec = importlib.util.spec_from_file_location("_skfmcib_torch_version", path)
        if version_spec is None or version_spec.loader is None or not os.path.isfile(path):
            continue
        version = importlib.util.module_from_spec(version_spec)
        try:
            version_spec.loader.exec_module(version)
        except Exception:  # an unusual torch: ask torch itself
            return True
        return bool(getattr(version, "cuda", None) or getattr(version, "hip", None))
    return True


def _will_use_cuda(device) -> bool:
    """Whether ``device`` resolves to CUDA; imports torch only when it cannot tell otherwise."""
    spec = str(device)
    if spec != "auto":
        return spec.startswith("cuda")
    if "torch" not in sys.modules and not _torch_build_has_gpu():
        return False
    from . import runtime

    return runtime.resolve_device(device).type == "cuda"


def _device_usable(device) -> bool:
    from . import runtime

    try:
        runtime.resolve_device(device)
    except ValueError:
        return False
    return True

"""FMCIBTransformer: FMCIB features for lesions, as a scikit-learn transformer."""

from __future__ import annotations

import warnings
from numbers import Integral

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted

from . import runtime
from ._progress import Progress
from .encoder import EncoderConfig
from .patches import RowWarning, check_patch_array, iter_patches
from .table import RowError, validate_table
from .weights import load_encoder

__all__ = ["FMCIBTransformer"]


def _encoder_config(arch) -> EncoderConfig | None:
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
    batch_size : int, default=8
        Patches encoded at once.
    precision : {"fp32", "bf16", "fp16"}, default="fp32"
        Arithmetic of the encoder. ``"bf16"``/``"fp16"`` use autocast: faster on
        hardware with reduced-precision units, features within cosine 0.999 of fp32.
    coordinate_system : {"LPS", "RAS"}, default="LPS"
        Convention of the table's coordinates (the reference's is LPS).
    on_error : {"raise", "nan"}, default="raise"
        A bad row (missing file, seed outside the scan, ...) raises an error naming
        the row, the file and the problem, or becomes a row of NaN with a warning.
    memory : None, str or joblib.Memory, default=None
        Cache of per-lesion features (see the performance section of the docs).
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
    >>> img = sitk.GetImageFromArray(np.full((60, 60, 60), 40, dtype=np.int16))
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
        self.progress = progress
        self.cache_dir = cache_dir
        self.random_state = random_state

    def _check_params(self) -> None:
        if not isinstance(self.batch_size, Integral) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        runtime.check_precision(self.precision)
        if self.coordinate_system not in ("LPS", "RAS"):
            raise ValueError(
                f"coordinate_system must be 'LPS' or 'RAS', got {self.coordinate_system!r}"
            )
        if self.on_error not in ("raise", "nan"):
            raise ValueError(f"on_error must be 'raise' or 'nan', got {self.on_error!r}")
        if self.progress not in (True, False, "auto"):
            raise ValueError(f"progress must be True, False or 'auto', got {self.progress!r}")

    def fit(self, X=None, y=None):
        """Load the encoder; the data are only checked (the encoder is pretrained).

        Parameters
        ----------
        X : DataFrame, array-like or None
            Input as for :meth:`transform`; checked for its form (columns, shape),
            not read. None skips the check.
        y : ignored
            Accepted for API compatibility.

        Returns
        -------
        self : FMCIBTransformer
        """
        self._check_params()
        if isinstance(X, pd.DataFrame):
            validate_table(X, self.coordinate_system)
        elif X is not None:
            # Generic checks only (finite, real, non-empty, not sparse); no copy. The
            # patch shape is checked where patches are used, in transform.
            check_array(X, allow_nd=True, dtype=None, copy=False)
        self.device_ = runtime.resolve_device(self.device)
        seed = None
        if self.weights is None:
            seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        encoder, info = load_encoder(
            self.weights,
            config=_encoder_config(self.arch),
            cache_dir=self.cache_dir,
            random_state=seed,
        )
        self._encoder = runtime.prepare_encoder(encoder, self.device_, self.precision)
        self.weights_info_ = info
        self._random_seed = seed
        self.n_features_out_ = int(encoder.out_features)
        return self

    @property
    def encoder_(self):
        """The fitted encoder (reloaded from its source after unpickling)."""
        if "_encoder" not in self.__dict__:
            if "weights_info_" not in self.__dict__:
                raise AttributeError("encoder_ exists only after fit")
            self._reload_encoder()
        return self._encoder

    def _reload_encoder(self) -> None:
        info = self.weights_info_
        encoder, new = load_encoder(
            self.weights,
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

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_encoder", None)
        return state

    def transform(self, X):
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
        encoder = self.encoder_
        if isinstance(X, pd.DataFrame):
            return self._transform_table(encoder, X)
        patches = check_patch_array(X)
        out = np.empty((len(patches), self.n_features_out_), dtype=np.float32)
        with self._progress(len(patches)) as bar:
            for start in range(0, len(patches), self.batch_size):
                batch = patches[start : start + self.batch_size]
                out[start : start + len(batch)] = self._encode(encoder, batch)
                bar.update(len(batch))
        return out

    def _encode(self, encoder, batch: np.ndarray) -> np.ndarray:
        return runtime.encode(encoder, batch, self.device_, self.precision)

    def _progress(self, total: int) -> Progress:
        return Progress(total, enabled=self.progress, unit="lesions")

    def _transform_table(self, encoder, X: pd.DataFrame) -> np.ndarray:
        out = np.full((len(X), self.n_features_out_), np.nan, dtype=np.float32)
        batch, where = [], []
        with self._progress(len(X)) as bar:
            for pos, patch in iter_patches(X, self.coordinate_system):
                if isinstance(patch, RowError):
                    self._row_failed(patch)
                    bar.update(1)
                    continue
                batch.append(patch)
                where.append(pos)
                if len(batch) == self.batch_size:
                    out[where] = self._encode(encoder, np.stack(batch)[:, None])
                    bar.update(len(batch))
                    batch, where = [], []
            if batch:
                out[where] = self._encode(encoder, np.stack(batch)[:, None])
                bar.update(len(batch))
        return out

    def _row_failed(self, error: RowError) -> None:
        if self.on_error == "raise":
            raise error
        warnings.warn(f"{error}; its features are NaN", RowWarning, stacklevel=4)

    def get_feature_names_out(self, input_features=None):
        """Names of the output features, ``fmcib_0`` ... ``fmcib_4095``.

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


def _device_usable(device) -> bool:
    try:
        runtime.resolve_device(device)
    except ValueError:
        return False
    return True

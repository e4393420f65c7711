"""A small hand-crafted radiomics baseline: what a lesion looks like, in 22 numbers.

:class:`RadiomicsTransformer` takes the same input as
:class:`~skfmcib.FMCIBTransformer` (a lesion table or the reference's 50 mm patches)
and describes each lesion with classic, interpretable features: intensity statistics
(in Hounsfield units), shape statistics of a region grown from the seed, simple
texture and the lesion's surroundings. It is the baseline every downstream report
sets beside the foundation model, so that the report shows what the encoder adds.

The region is grown from the seed with a half-contrast threshold: the patch is
smoothed with a Gaussian, the seed's intensity is the mean of the central 3^3 voxels,
the background's is the median beyond 18 mm of the seed, and the lesion is the
connected set of voxels (faces touching) around the centre whose smoothed intensity
lies within half the seed-background contrast of the seed's (at least
``min_tolerance_hu``), inside a ball of ``max_radius_mm``. Half the contrast is where
a blurred edge lies, so the region's size follows the lesion's whether it is brighter
(a calcification, a nodule in the lung) or darker (a cyst in the kidney) than its
surroundings. Patches are sampled at 1 mm, so a voxel is 1 mm^3.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .patches import HU_OFFSET, HU_SCALE, PATCH_SIZE, as_patches, check_input_form

__all__ = ["RADIOMICS_FEATURES", "RadiomicsTransformer", "radiomics_features"]

#: Names of the features, in output order.
RADIOMICS_FEATURES = (
    # intensity of the grown region (HU)
    "hu_mean",
    "hu_std",
    "hu_p10",
    "hu_median",
    "hu_p90",
    "hu_skewness",
    "hu_kurtosis",
    "hu_entropy",
    # intensity of the sphere of radius 5 mm at the seed, independent of the region
    "core_hu_mean",
    "core_hu_std",
    # shape of the grown region
    "volume_mm3",
    "equivalent_diameter_mm",
    "surface_area_mm2",
    "sphericity",
    "elongation",
    "flatness",
    "major_axis_mm",
    "border_fraction",
    # texture: gradient magnitude (HU/mm) inside the region and on its surface
    "gradient_mean",
    "edge_gradient_mean",
    # surroundings: a shell 5 to 10 mm outside the region
    "shell_hu_mean",
    "shell_hu_std",
)

_CENTRE = PATCH_SIZE // 2
_CORE_RADIUS_MM = 5.0
_BACKGROUND_MM = 18.0
_SHELL_MM = (5.0, 10.0)
_ENTROPY_BIN_HU = 25.0
_CROSS = ndimage.generate_binary_structure(3, 1)


def _distance_from_centre() -> np.ndarray:
    k = np.arange(PATCH_SIZE, dtype=np.float64) - _CENTRE
    return np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)


_RADIUS = _distance_from_centre()


def _moments(values: np.ndarray) -> tuple[float, float, float, float]:
    """Mean, standard deviation, skewness and excess kurtosis (0, 0 for constant data)."""
    mean = float(values.mean())
    dev = values - mean
    var = float(np.mean(dev**2))
    if var <= 1e-12 * max(1.0, mean * mean):
        return mean, 0.0, 0.0, 0.0
    std = var**0.5
    skew = float(np.mean(dev**3)) / std**3
    kurt = float(np.mean(dev**4)) / var**2 - 3.0
    return mean, std, skew, kurt


def _entropy(values: np.ndarray) -> float:
    """Shannon entropy (bits) of the intensities in fixed 25 HU bins."""
    # Rounded first: float32 patches bring whole HU values back as 99.99997 for 100,
    # which would fall into the bin below.
    bins = np.floor(np.round(values, 3) / _ENTROPY_BIN_HU).astype(np.int64)
    counts = np.unique(bins, return_counts=True)[1]
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def _surface_faces(region: np.ndarray) -> int:
    """Number of voxel faces between the region and the rest (1 mm^2 each)."""
    padded = np.pad(region, 1).astype(np.int8)
    return int(sum(np.abs(np.diff(padded, axis=axis)).sum() for axis in range(3)))


# Normalised values of the int16 range: no CT in HU lies beyond them.
_MIN_NORMALISED = (-32768 + HU_OFFSET) / HU_SCALE
_MAX_NORMALISED = (32767 + HU_OFFSET) / HU_SCALE


def _check_settings(min_tolerance_hu, max_radius_mm, smoothing_mm) -> None:
    for name, value, lo, hi in (
        ("min_tolerance_hu", min_tolerance_hu, 0.0, np.inf),
        ("max_radius_mm", max_radius_mm, 1.0, PATCH_SIZE / 2 - 1),
        ("smoothing_mm", smoothing_mm, 0.0, 10.0),
    ):
        if isinstance(value, bool) or not isinstance(value, Real) or not lo <= value <= hi:
            raise ValueError(f"{name} must be a number in [{lo}, {hi}], got {value!r}")


def radiomics_features(
    patch: np.ndarray,
    *,
    min_tolerance_hu: float = 30.0,
    max_radius_mm: float = 20.0,
    smoothing_mm: float = 1.0,
) -> np.ndarray:
    """Compute the radiomics features of one normalised 50^3 patch.

    Parameters
    ----------
    patch : ndarray of shape (50, 50, 50) or (1, 50, 50, 50)
        A patch as :func:`skfmcib.load_patches` returns it: ``(HU + 1024) / 3072`` at
        1 mm, the seed at the centre. Other shapes are refused.
    min_tolerance_hu : float, default=30.0
        A voxel belongs to the region when its smoothed intensity differs from the
        seed's by at most half the seed-background contrast, or this, whichever is larger.
    max_radius_mm : float, default=20.0
        The region stays within this distance of the seed.
    smoothing_mm : float, default=1.0
        Standard deviation of the Gaussian smoothing before region growing and gradients
        (0 for none).

    Returns
    -------
    ndarray of shape (22,), float64
        The features named in :data:`RADIOMICS_FEATURES`; NaN everywhere for a patch
        that holds NaN (a row that could not be read).

    Examples
    --------
    A 10 mm sphere of 40 HU in air:

    >>> import numpy as np
    >>> from skfmcib.radiomics import RADIOMICS_FEATURES, radiomics_features
    >>> k = np.arange(50) - 25
    >>> r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    >>> hu = np.where(r <= 5, 40.0, -1000.0)
    >>> f = dict(zip(RADIOMICS_FEATURES, radiomics_features((hu + 1024) / 3072)))
    >>> round(f["hu_median"]), round(f["equivalent_diameter_mm"])
    (40, 10)
    """
    _check_settings(min_tolerance_hu, max_radius_mm, smoothing_mm)
    patch = np.asarray(patch, dtype=np.float64)
    if patch.shape not in ((PATCH_SIZE,) * 3, (1,) + (PATCH_SIZE,) * 3):
        raise ValueError(
            f"patch has shape {patch.shape}; expected (50, 50, 50) (or (1, 50, 50, 50)), a "
            "patch as skfmcib.load_patches returns it"
        )
    patch = patch.reshape(PATCH_SIZE, PATCH_SIZE, PATCH_SIZE)
    if not np.all(np.isfinite(patch)):
        return np.full(len(RADIOMICS_FEATURES), np.nan)
    if patch.max() > _MAX_NORMALISED or patch.min() < _MIN_NORMALISED:
        raise ValueError(
            f"patch values span [{patch.min():.4g}, {patch.max():.4g}]: a patch in HU? "
            "It must be normalised as (HU + 1024) / 3072, as skfmcib.load_patches gives it"
        )
    hu = patch * HU_SCALE - HU_OFFSET
    smooth = ndimage.gaussian_filter(hu, smoothing_mm) if smoothing_mm > 0 else hu
    c = _CENTRE
    seed_hu = float(smooth[c - 1 : c + 2, c - 1 : c + 2, c - 1 : c + 2].mean())
    ball = _RADIUS <= max_radius_mm
    background_hu = float(np.median(smooth[_RADIUS > _BACKGROUND_MM]))
    tolerance = max(abs(seed_hu - background_hu) / 2.0, min_tolerance_hu)
    candidate = (np.abs(smooth - seed_hu) <= tolerance) & ball
    candidate[c, c, c] = True  # the seed always belongs to its lesion
    labels, _ = ndimage.label(candidate, structure=_CROSS)
    region = labels == labels[c, c, c]

    values = hu[region]
    mean, std, skew, kurt = _moments(values)
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    core = hu[_RADIUS <= _CORE_RADIUS_MM]

    volume = float(region.sum())  # 1 mm^3 voxels
    area = float(_surface_faces(region))
    eq_diameter = (6.0 * volume / np.pi) ** (1.0 / 3.0)
    sphericity = np.pi ** (1.0 / 3.0) * (6.0 * volume) ** (2.0 / 3.0) / area
    coords = np.argwhere(region).astype(np.float64)
    if len(coords) > 1:
        # principal axes; + 1/12 is the variance of a unit voxel along each axis
        eig = np.sort(np.linalg.eigvalsh(np.cov(coords, rowvar=False)))[::-1] + 1.0 / 12.0
    else:
        eig = np.full(3, 1.0 / 12.0)
    elongation = float(np.sqrt(eig[1] / eig[0]))
    flatness = float(np.sqrt(eig[2] / eig[0]))
    major_axis = float(2.0 * np.sqrt(5.0 * eig[0]))  # a solid ellipsoid's axis
    rim = ball & ~ndimage.binary_erosion(ball, structure=_CROSS)
    border_fraction = float((region & rim).sum()) / volume

    grad = np.sqrt(sum(g**2 for g in np.gradient(smooth)))
    surface = region & ~ndimage.binary_erosion(region, structure=_CROSS)
    dist_out = ndimage.distance_transform_edt(~region)
    shell = (dist_out > _SHELL_MM[0]) & (dist_out <= _SHELL_MM[1])
    shell_mean, shell_std = (
        (float(hu[shell].mean()), float(hu[shell].std())) if shell.any() else (mean, 0.0)
    )

    return np.array(
        [
            mean,
            std,
            p10,
            p50,
            p90,
            skew,
            kurt,
            _entropy(values),
            float(core.mean()),
            float(core.std()),
            volume,
            eq_diameter,
            area,
            sphericity,
            elongation,
            flatness,
            major_axis,
            border_fraction,
            float(grad[region].mean()),
            float(grad[surface].mean()),
            shell_mean,
            shell_std,
        ]
    )


class RadiomicsTransformer(TransformerMixin, BaseEstimator):
    """Hand-crafted radiomics features of lesions: the baseline for FMCIB features.

    Takes the same input as :class:`~skfmcib.FMCIBTransformer` and returns 22
    interpretable features per lesion (see :data:`RADIOMICS_FEATURES`):

    - intensity of the lesion region in HU: mean, standard deviation, 10th, 50th and
      90th percentiles, skewness, excess kurtosis, entropy (25 HU bins); mean and
      standard deviation in the sphere of radius 5 mm (10 mm across) at the seed;
    - shape of the region: volume, equivalent-sphere diameter, surface area (counted
      voxel faces), sphericity, elongation and flatness (ratios of principal axes),
      major-axis length, and the fraction of the region on the ``max_radius_mm``
      limit (high when the region leaked into the surrounding organ);
    - texture: mean gradient magnitude inside the region and on its surface (margin
      sharpness);
    - surroundings: mean and standard deviation of HU 5 to 10 mm outside the region.

    The region is grown from the seed: voxels connected to the centre whose smoothed
    intensity differs from the seed's by at most half the contrast between the seed
    and the background (the median beyond 18 mm), inside a ball of ``max_radius_mm``
    (see :mod:`skfmcib.radiomics`). Nothing is learnt from the data; ``fit`` only
    checks parameters.

    Parameters
    ----------
    min_tolerance_hu : float, default=30.0
        Smallest intensity window of the region (HU), for lesions of low contrast.
    max_radius_mm : float, default=20.0
        Radius of the ball the region is grown in (at most 24, the patch's half width).
    smoothing_mm : float, default=1.0
        Gaussian smoothing before region growing and gradients (0 for none).
    coordinate_system : {"LPS", "RAS"}, default="LPS"
        Convention of a lesion table's coordinates.
    on_error : {"raise", "nan"}, default="raise"
        What a bad table row does: raise an error naming it, or give a row of NaN with
        a warning.

    Attributes
    ----------
    n_features_out_ : int
        Number of features (22).

    See Also
    --------
    skfmcib.FMCIBTransformer : Foundation-model features of the same input.
    radiomics_features : The features of one patch.

    Notes
    -----
    Surface areas counted on voxel faces overestimate smooth surfaces (by about 1.5 for
    a sphere), so the sphericity of a voxelised ball is about 0.66 rather than 1; it
    still orders shapes from compact to irregular.

    Examples
    --------
    >>> import numpy as np
    >>> from skfmcib.radiomics import RadiomicsTransformer
    >>> k = np.arange(50) - 25
    >>> r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    >>> patches = np.stack([np.where(r <= d / 2, 40.0, -1000.0) for d in (10, 20)])
    >>> radiomics = RadiomicsTransformer().set_output(transform="pandas")
    >>> features = radiomics.fit_transform((patches + 1024) / 3072)
    >>> features.shape
    (2, 22)
    >>> features["equivalent_diameter_mm"].round().tolist()
    [10.0, 20.0]
    """

    def __init__(
        self,
        min_tolerance_hu=30.0,
        max_radius_mm=20.0,
        smoothing_mm=1.0,
        coordinate_system="LPS",
        on_error="raise",
    ):
        self.min_tolerance_hu = min_tolerance_hu
        self.max_radius_mm = max_radius_mm
        self.smoothing_mm = smoothing_mm
        self.coordinate_system = coordinate_system
        self.on_error = on_error

    def _check_params(self) -> None:
        _check_settings(self.min_tolerance_hu, self.max_radius_mm, self.smoothing_mm)
        if self.coordinate_system not in ("LPS", "RAS"):
            raise ValueError(
                f"coordinate_system must be 'LPS' or 'RAS', got {self.coordinate_system!r}"
            )
        if self.on_error not in ("raise", "nan"):
            raise ValueError(f"on_error must be 'raise' or 'nan', got {self.on_error!r}")

    def fit(self, X=None, y=None):
        """Check the parameters and the form of ``X``; nothing is learnt.

        Parameters
        ----------
        X : DataFrame, array-like or None
            Input as for :meth:`transform`; only its form is checked. None skips it.
        y : ignored
            Accepted for API compatibility.

        Returns
        -------
        self : RadiomicsTransformer
        """
        self._check_params()
        check_input_form(X, self.coordinate_system)
        self.n_features_out_ = len(RADIOMICS_FEATURES)
        return self

    def transform(self, X):
        """Compute the features.

        Parameters
        ----------
        X : DataFrame or array-like
            A lesion table (``image_path``, ``coordX``, ``coordY``, ``coordZ``) or
            patches of shape ``(n, 50, 50, 50)``, ``(n, 1, 50, 50, 50)`` or
            ``(n, 125000)``, as for :class:`~skfmcib.FMCIBTransformer`.

        Returns
        -------
        ndarray of shape (n_lesions, 22), float64
        """
        check_is_fitted(self, "n_features_out_")
        self._check_params()  # set_params after fit: a settings error, not a patch's
        patches = as_patches(X, coordinate_system=self.coordinate_system, on_error=self.on_error)
        out = np.empty((len(patches), self.n_features_out_))
        labels = X.index if isinstance(X, pd.DataFrame) else None
        for i, patch in enumerate(patches):
            try:
                out[i] = radiomics_features(
                    patch[0],
                    min_tolerance_hu=self.min_tolerance_hu,
                    max_radius_mm=self.max_radius_mm,
                    smoothing_mm=self.smoothing_mm,
                )
            except ValueError as exc:
                where = f"row {labels[i]}" if labels is not None else f"patch {i}"
                raise ValueError(f"{where}: {exc}") from None
        return out

    def get_feature_names_out(self, input_features=None):
        """Names of the output features (:data:`RADIOMICS_FEATURES`).

        Parameters
        ----------
        input_features : ignored
            The features do not depend on the input's columns.

        Returns
        -------
        ndarray of str, shape (22,)
        """
        check_is_fitted(self, "n_features_out_")
        return np.asarray(RADIOMICS_FEATURES, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        return tags

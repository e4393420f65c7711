"""Patch extraction: the reference's 50 mm cube around a seed, sampled directly.

The reference package resamples the whole CT to 1 mm, reorients it to LPS,
truncates the seed to a voxel index and crops 50 voxels around it. Only those
50^3 voxels matter, so this module computes exactly the grid those steps
produce and samples the original image on it with trilinear interpolation
(voxel centres at integer indices, 0.0 outside the image). Interior patches
equal the reference's; at image borders the seed stays at the centre and what
lies outside the scan is -1024 HU (0.0 after normalisation), blended with the edge
voxels up to one voxel spacing beyond their centres, as interpolation does.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import ndimage
from sklearn.utils.validation import check_array

from ._pipeline import prefetch
from ._process import release_free_memory
from ._text import listing
from .io import Geometry, ImageReadError, Volume, open_image
from .table import RowError, row_problem, validate_table

__all__ = [
    "HU_OFFSET",
    "HU_SCALE",
    "PATCH_SIZE",
    "PatchGrid",
    "as_patches",
    "check_input_form",
    "check_patch_array",
    "RowWarning",
    "extract_patch",
    "iter_patches",
    "load_patches",
    "normalize_hu",
    "patch_grid",
    "reference_grid",
]

PATCH_SIZE = 50
HU_OFFSET = 1024.0
HU_SCALE = 3072.0
# MONAI's test of whether a corner voxel is the smallest on every axis (np.allclose's atol).
_CORNER_ATOL = 1e-8


def normalize_hu(hu: ArrayLike) -> np.ndarray:
    """Map Hounsfield units to the encoder's input scale, ``(HU + 1024) / 3072``.

    No clipping, as in the reference: -1024 HU maps to 0 and 2048 HU to 1. Computed in
    float32, as the reference computes it (MONAI's ``NormalizeIntensityd`` on the
    float32 image ``LoadImaged`` gives), before any resampling.

    Parameters
    ----------
    hu : array-like
        Intensities in Hounsfield units, of any shape.

    Returns
    -------
    ndarray of float32
        The normalised intensities, of the shape of ``hu``.

    Examples
    --------
    >>> import numpy as np
    >>> from skfmcib.patches import normalize_hu
    >>> normalize_hu(np.array([-1024.0, 2048.0])).tolist()
    [0.0, 1.0]
    """
    values = np.asarray(hu, dtype=np.float32)
    return (values + np.float32(HU_OFFSET)) / np.float32(HU_SCALE)


@dataclass(frozen=True)
class ReferenceGrid:
    """The 1 mm LPS grid the reference resamples an image onto.

    Attributes
    ----------
    first : ndarray of shape (3,)
        LPS position of the grid's first sample (x, y, z).
    shape : ndarray of shape (3,)
        Number of samples along x, y and z.
    """

    first: np.ndarray
    shape: np.ndarray


def reference_grid(geometry: Geometry) -> ReferenceGrid:
    """Compute the grid of the reference's 1 mm resampling and LPS reorientation.

    Parameters
    ----------
    geometry : Geometry
        The original image's geometry.

    Returns
    -------
    ReferenceGrid
        First sample (LPS mm) and number of samples per axis.

    Notes
    -----
    The resampling runs in RAS with a diagonal 1 mm output affine. The output
    extent is ``round(hi - lo + 1)`` of the voxel-centre corners. When one corner
    is the smallest on all axes (images aligned with the patient axes, flipped or
    not) the output starts at that corner; otherwise (oblique images) the output
    is centred on the input, starting at ``R @ (size / 2) + t - n / 2`` in RAS.
    """
    ras = np.diag([-1.0, -1.0, 1.0])
    corners = geometry.corner_points() @ ras  # (8, 3) voxel-centre corners in RAS
    n = np.round(np.ptp(corners, axis=0) + 1.0)
    first_ras = None
    for corner in corners:
        if np.all(np.min(corners - corner, axis=0) >= -_CORNER_ATOL):
            first_ras = corner
            break
    if first_ras is None:
        size = np.asarray(geometry.size, dtype=np.float64)
        r_ras = ras @ geometry.index_to_physical
        first_ras = r_ras @ (size / 2.0) + ras @ geometry.origin - n / 2.0
    first_lps = np.array([-(first_ras[0] + n[0] - 1), -(first_ras[1] + n[1] - 1), first_ras[2]])
    return ReferenceGrid(first=first_lps, shape=n.astype(np.int64))


@dataclass(frozen=True)
class PatchGrid:
    """Where a patch samples the image.

    Made by :func:`patch_grid`; the attributes below are also the constructor's
    parameters, in this order.

    Attributes
    ----------
    start : ndarray of shape (3,)
        LPS position (x, y, z) of the patch's first sample; samples follow at 1 mm
        along L, P and S.
    inside : bool
        Whether the whole cube lies inside the reference's resampled grid (no padding:
        the patch then equals the reference's exactly).
    """

    start: np.ndarray
    inside: bool


def patch_grid(geometry: Geometry, seed_lps: np.ndarray) -> PatchGrid:
    """Place the 50^3 sampling grid for a seed exactly where the reference crops.

    Parameters
    ----------
    geometry : Geometry
        The original image's geometry.
    seed_lps : array-like of shape (3,)
        Seed point in LPS millimetres.

    Returns
    -------
    PatchGrid
        The patch's first sample and whether it lies inside the resampled image.
    """
    grid = reference_grid(geometry)
    seed = np.asarray(seed_lps, dtype=np.float64)
    # int() truncation of the seed's index in the resampled (1 mm, LPS) image.
    index = np.trunc(seed - grid.first)
    lo = index - PATCH_SIZE // 2
    inside = bool(np.all(lo >= 0) and np.all(lo + PATCH_SIZE <= grid.shape))
    return PatchGrid(start=grid.first + lo, inside=inside)


class _Voxels(Protocol):
    """What sampling reads: a :class:`~skfmcib.io.Volume` or :class:`~skfmcib.io.ImageSource`."""

    geometry: Geometry

    def read_region(self, lo, hi) -> np.ndarray: ...


@dataclass(frozen=True)
class _SamplePlan:
    """Where a patch's samples fall in the image, and the voxels to read for them.

    Holds the affine map only (a few numbers): the samples' indices, 3 MB a lesion,
    are computed when they are used, so that the plans of many lesions of one image
    cost nothing while its voxels are read.
    """

    base: np.ndarray  # (3,) continuous (x, y, z) index of the first sample
    inv: np.ndarray  # (3, 3) index step along each LPS axis
    lo: np.ndarray  # (3,) first voxel to read (x, y, z)
    hi: np.ndarray  # (3,) one past the last voxel to read

    def index(self) -> np.ndarray:
        """Continuous ``(x, y, z)`` index of every sample, shape ``(3, 50, 50, 50)``."""
        return _sample_index(self.base, self.inv)


_K = np.arange(PATCH_SIZE, dtype=np.float64)


def _sample_index(base: np.ndarray, inv: np.ndarray) -> np.ndarray:
    # Continuous index of every sample, base + kx * inv[:, 0] + ky * inv[:, 1] +
    # kz * inv[:, 2], laid out (kz, ky, kx) to give SimpleITK array order. Whole-array
    # operations, few of them: each gives up the GIL, and winning it back costs up to
    # 5 ms while another thread runs Python (the torch import, meanwhile).
    yx = (base[:, None] + inv[:, 0, None] * _K)[:, None, :] + (inv[:, 1, None] * _K)[:, :, None]
    return yx[:, None, :, :] + (inv[:, 2, None] * _K)[:, :, None, None]


def _sample_plan(geom: Geometry, start: np.ndarray) -> _SamplePlan:
    """The samples of the 1 mm LPS grid from ``start`` in ``geom``'s voxel indices."""
    inv = np.linalg.inv(geom.index_to_physical)  # LPS offset -> (x, y, z) index
    base = inv @ (start - geom.origin)
    flat = _sample_index(base, inv).reshape(3, -1)
    size = np.asarray(geom.size)
    # Only the block of voxels the samples touch is read; one voxel of fill around it
    # makes every out-of-image neighbour read the fill value.
    lo = np.clip(np.floor(flat.min(1)).astype(np.int64), 0, size - 1)
    hi = np.clip(np.floor(flat.max(1)).astype(np.int64) + 2, 1, size)
    return _SamplePlan(base, inv, lo, hi)


def _interpolate(hu: np.ndarray, plan: _SamplePlan) -> np.ndarray:
    """Trilinear samples of the normalised voxels ``hu`` (the plan's block), 0.0 outside."""
    lo, hi = plan.lo, plan.hi
    block = np.zeros(tuple((hi - lo + 2)[::-1]), dtype=np.float64)
    block[1:-1, 1:-1, 1:-1] = normalize_hu(hu)
    # Indices into the block, (z, y, x) first; beyond it everything is the fill, as
    # is its outer layer, which "nearest" repeats.
    coords = plan.index()[::-1] - (lo[::-1] - 1)[:, None, None, None]
    return ndimage.map_coordinates(block, coords, order=1, mode="nearest")


def _sampled(pos: int, label, hu: np.ndarray, plan: _SamplePlan, failed) -> tuple:
    """``(pos, patch)`` of one lesion from its box's voxels ``hu``, or ``failed``'s row
    error when the voxels hold NaN or infinite values (float NRRD or MetaImage files
    can): the encoder would turn them into features that are not numbers."""
    patch = _interpolate(hu, plan).astype(np.float32)
    bad = int(np.count_nonzero(~np.isfinite(patch)))
    if bad:
        return failed(
            pos,
            label,
            ImageReadError(
                f"the image has NaN or infinite voxels around the seed ({bad} of the "
                f"patch's {patch.size} samples are not numbers)"
            ),
        )
    return pos, patch


def _sample_normalized(volume: _Voxels, start: np.ndarray) -> np.ndarray:
    """Sample ``volume`` normalised, on the 1 mm LPS grid from ``start``; (z, y, x) output.

    As in the reference, intensities are normalised first and the image is surrounded
    by 0.0 (-1024 HU), then interpolated trilinearly. Only the block of voxels the
    samples touch is read from ``volume``.
    """
    plan = _sample_plan(volume.geometry, start)
    return _interpolate(volume.read_region(plan.lo, plan.hi), plan)


class _Block:
    """A box of voxels already read, serving the boxes inside it."""

    def __init__(self, voxels: np.ndarray, lo: np.ndarray) -> None:
        self.voxels, self.lo = voxels, lo

    def read_region(self, lo, hi) -> np.ndarray:
        a, b = np.asarray(lo) - self.lo, np.asarray(hi) - self.lo
        return self.voxels[a[2] : b[2], a[1] : b[1], a[0] : b[0]]


# Boxes of a sequential source are read together, as union boxes of at most this many
# voxels (64 MiB of int16): one pass through the file per union instead of one per lesion.
_UNION_VOXELS = 32 * 2**20


# The boxes one pass through a gzipped file holds at once, in voxels (128 MiB of int16):
# an image with more lesions than that is read in several passes, so that memory does
# not grow with the number of lesions that share an image.
_PASS_VOXELS = 64 * 2**20


def _passes(plans: list) -> list[list]:
    """Split plans into passes of at most ``_PASS_VOXELS`` voxels of boxes, in the order
    of their boxes' last slices (the first passes are the shortest)."""
    passes: list[list] = [[]]
    held = 0
    for item in sorted(plans, key=lambda item: int(item[2].hi[2])):
        size = int(np.prod(item[2].hi - item[2].lo))
        if passes[-1] and held + size > _PASS_VOXELS:
            passes.append([])
            held = 0
        passes[-1].append(item)
        held += size
    return passes


def _one_pass(source, plans: list, failed) -> Iterator[tuple[int, np.ndarray | RowError]]:
    """Patches of a source inflated once for all its lesions' boxes (once per
    ``_PASS_VOXELS`` of boxes), as they come."""
    for group in _passes(plans):
        yield from _pass(source, group, failed)


def _pass(source, plans: list, failed) -> Iterator[tuple[int, np.ndarray | RowError]]:
    done = set()
    try:
        for k, hu in source.iter_regions([(plan.lo, plan.hi) for _, _, plan in plans]):
            pos, label, plan = plans[k]
            done.add(k)
            yield _sampled(pos, label, hu, plan, failed)
            del hu
    except ImageReadError as exc:
        for k, (pos, label, _) in enumerate(plans):
            if k not in done:
                yield failed(pos, label, exc)
    release_free_memory()  # the boxes' voxels, before the encoder's next batch


def _union_groups(plans: list) -> list[tuple[np.ndarray, np.ndarray, list]]:
    """Group plans into union boxes of bounded size, cheapest pass first.

    A pass inflates the file from its start up to the union's last slice. Groups are
    filled from the top slice down, so that the pass every grouping needs (up to the
    top lesion's last slice) takes as many lesions as it can hold and what is left
    over lies lower in the file; they are read in the order of their last slice.
    """
    groups: list[tuple[np.ndarray, np.ndarray, list]] = []
    for item in sorted(plans, key=lambda item: -int(item[2].hi[2])):
        plan = item[2]
        if groups:
            lo, hi, members = groups[-1]
            new_lo, new_hi = np.minimum(lo, plan.lo), np.maximum(hi, plan.hi)
            if np.prod(new_hi - new_lo) <= _UNION_VOXELS:
                groups[-1] = (new_lo, new_hi, [*members, item])
                continue
        groups.append((plan.lo, plan.hi, [item]))
    return groups[::-1]


def extract_patch(volume: Volume | _Voxels, seed_lps: np.ndarray) -> np.ndarray:
    """Extract the reference's normalised 50^3 patch around a seed.

    Parameters
    ----------
    volume : Volume or ImageSource
        The CT, in Hounsfield units: in memory (:func:`~skfmcib.io.read_image`) or
        opened for region reads (:func:`~skfmcib.io.open_image`), which reads only the
        voxels the patch needs.
    seed_lps : array-like of shape (3,)
        Seed point in LPS millimetres.

    Returns
    -------
    ndarray of shape (50, 50, 50), float32
        ``(HU + 1024) / 3072`` sampled at 1 mm around the seed, in SimpleITK array
        order ``(z, y, x)``; 0.0 (= -1024 HU) outside the scan. NaN or infinite
        voxels of the image are passed on (a lesion table's rows refuse them).

    Raises
    ------
    ValueError
        The seed is not a finite number or lies outside the scan.

    Examples
    --------
    >>> import numpy as np
    >>> from skfmcib.io import Geometry, Volume
    >>> from skfmcib.patches import extract_patch
    >>> geom = Geometry((80, 80, 80), np.zeros(3), np.ones(3), np.eye(3))
    >>> vol = Volume(np.full((80, 80, 80), 2048, dtype=np.int16), geom)
    >>> patch = extract_patch(vol, [40.0, 40.0, 40.0])
    >>> patch.shape, float(patch[25, 25, 25])
    ((50, 50, 50), 1.0)
    """
    seed = np.asarray(seed_lps, dtype=np.float64).reshape(3)
    problem = (
        "seed is not a finite number" if not np.isfinite(seed).all() else ""
    ) or _seed_problem(volume.geometry, seed)
    if problem:
        raise ValueError(problem)
    return _patch_at(volume, seed)


def _patch_at(volume: Volume | _Voxels, seed: np.ndarray) -> np.ndarray:
    """:func:`extract_patch` without its check of the seed: for points known to be
    finite that may lie outside the scan (QC's mirrored seeds, pretraining's views)."""
    grid = patch_grid(volume.geometry, seed)
    return _sample_normalized(volume, grid.start).astype(np.float32)


def resolve_n_jobs(n_jobs: int | None) -> int:
    """Number of background reading threads for an ``n_jobs`` setting.

    ``None`` gives one thread per two CPU cores, between 1 and 4: reading and patch
    extraction then overlap with encoding while the encoder keeps most cores. A
    negative value counts back from the number of cores (``-1``: one per core);
    ``0`` reads in the calling thread.

    Parameters
    ----------
    n_jobs : int or None

    Returns
    -------
    int

    Raises
    ------
    ValueError
        When ``n_jobs`` is not None or an integer.

    Examples
    --------
    >>> from skfmcib.patches import resolve_n_jobs
    >>> resolve_n_jobs(3), resolve_n_jobs(0)
    (3, 0)
    """
    cores = os.cpu_count() or 1
    if n_jobs is None:
        return max(1, min(4, cores // 2))
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)):
        raise ValueError(f"n_jobs must be None or an integer, got {n_jobs!r}")
    if n_jobs < 0:
        return max(1, cores + 1 + int(n_jobs))
    return int(n_jobs)


@dataclass(frozen=True)
class _ImageJob:
    """The rows of a lesion table that share one image."""

    path: str
    series_uid: str | None
    rows: list[tuple[int, object, np.ndarray]]  # position, label, LPS seed

    def __call__(self) -> Iterator[tuple[int, np.ndarray | RowError]]:
        return _image_patches(self)


def _image_jobs(
    seeds: pd.DataFrame,
) -> tuple[list[tuple[int, RowError]], list[_ImageJob]]:
    """Split a validated table into rows that are wrong already and one job per image."""
    labels = seeds.index
    keys = list(zip(seeds["image_path"], seeds["series_uid"], strict=True))
    coords = seeds[["x", "y", "z"]].to_numpy(dtype=np.float64)
    groups: dict[tuple, list[int]] = {}
    for pos, key in enumerate(keys):
        groups.setdefault(key, []).append(pos)
    errors, jobs = [], []
    for (path, series_uid), positions in groups.items():
        rows = []
        for pos in positions:
            problem = row_problem(seeds.iloc[pos])
            if problem:
                errors.append((pos, RowError(labels[pos], path, problem)))
            else:
                rows.append((pos, labels[pos], coords[pos]))
        if rows:
            jobs.append(_ImageJob(path, series_uid, rows))
    return errors, jobs


class IntensityWarning(UserWarning):
    """An image's intensities do not look like CT Hounsfield units."""


def _warn_if_not_ct(source) -> None:
    """Warn when the first slice holds nothing below 0: MR, PET, or CT without its rescale.

    A CT in HU has air (about -1000) or at least fat (about -100) in its first slice,
    even when cropped tightly to the body; MR, PET and raw CT values are not negative.
    The first slice is the cheapest part of a file to read.
    """
    nx, ny, _ = source.geometry.size
    try:
        low = float(np.min(source.read_region(np.array([0, 0, 0]), np.array([nx, ny, 1]))))
    except ImageReadError:
        return  # the patches will say what is wrong
    if low >= 0.0:
        warnings.warn(
            f"{source.path}: no voxel below 0 (air or fat in HU) in its first slice "
            f"(minimum {low:.0f}): not a CT in HU? (MR, PET, or a CT stored without its "
            "rescale slope and intercept); its features would be meaningless",
            IntensityWarning,
            stacklevel=2,
        )


def _image_patches(job: _ImageJob) -> Iterator[tuple[int, np.ndarray | RowError]]:
    path = job.path

    def failed(pos, label, exc: ImageReadError) -> tuple[int, RowError]:
        return pos, RowError.from_image_error(label, path, exc)

    try:
        source = open_image(path, job.series_uid)
    except ImageReadError as exc:
        for pos, label, _ in job.rows:
            yield failed(pos, label, exc)
        return
    with source:
        _warn_if_not_ct(source)
        plans = []
        for pos, label, seed in job.rows:
            problem = _seed_problem(source.geometry, seed)
            if problem:
                yield pos, RowError(label, path, problem)
            else:
                start = patch_grid(source.geometry, seed).start
                plans.append((pos, label, _sample_plan(source.geometry, start)))
        if source.strategy == "inflate":
            yield from _one_pass(source, plans, failed)
            return
        if source.sequential:
            # Each read of this file decompresses it from the start: read the lesions'
            # boxes as a few union boxes, one pass each.
            groups = _union_groups(plans)
        else:
            groups = [(plan.lo, plan.hi, [(pos, label, plan)]) for pos, label, plan in plans]
        yield from _read_groups(source, groups, failed)


def _read_groups(source, groups: list, failed) -> Iterator[tuple[int, np.ndarray | RowError]]:
    """Patches of the plans in ``groups``, each group's box read at once."""
    for lo, hi, members in groups:
        try:
            reader = _Block(source.read_region(lo, hi), lo)
        except ImageReadError as exc:
            if len(members) > 1:
                # Each lesion alone, so that what it gives does not depend on the others
                # (a file corrupt near its end fails only the boxes that reach it).
                alone = [(plan.lo, plan.hi, [(pos, label, plan)]) for pos, label, plan in members]
                yield from _read_groups(source, alone, failed)
                continue
            for pos, label, _ in members:
                yield failed(pos, label, exc)
            continue
        for pos, label, plan in members:
            hu = reader.read_region(plan.lo, plan.hi)
            yield _sampled(pos, label, hu, plan, failed)
        del reader, hu
        release_free_memory()  # the box's voxels, before the encoder's next batch


def iter_patches(
    table: pd.DataFrame, coordinate_system: str = "LPS", n_jobs: int | None = 0
) -> Iterator[tuple[int, np.ndarray | RowError]]:
    """Yield ``(position, patch or RowError)`` for every row of a lesion table.

    Rows are grouped by image so that each image is opened once, whatever the rows'
    order; positions say where each result belongs. Only the voxels around each seed
    are read where the format allows it (see :func:`skfmcib.io.open_image`). A row
    that cannot be processed yields a :class:`~skfmcib.table.RowError` naming the row,
    the file and the problem instead of a patch.

    Parameters
    ----------
    table : DataFrame
        Lesion table (see :func:`skfmcib.table.validate_table`).
    coordinate_system : {"LPS", "RAS"}, default="LPS"
        Convention of the table's coordinates.
    n_jobs : int or None, default=0
        Threads that read images and extract patches ahead of the consumer (see
        :func:`resolve_n_jobs`); 0 does the work in the calling thread. The results and
        their order do not depend on it.

    Yields
    ------
    position : int
        0-based position of the row in ``table``.
    patch : ndarray of shape (50, 50, 50) or RowError
        The normalised patch, or what went wrong.

    Examples
    --------
    >>> import numpy as np, pandas as pd, SimpleITK as sitk, tempfile, os
    >>> from skfmcib.patches import iter_patches
    >>> ct = np.full((60, 60, 60), -1000, dtype=np.int16)  # air around a 40 HU body
    >>> ct[:, 10:50, 10:50] = 40
    >>> img = sitk.GetImageFromArray(ct)
    >>> path = os.path.join(tempfile.mkdtemp(), "ct.nii")
    >>> sitk.WriteImage(img, path)
    >>> table = pd.DataFrame({"image_path": [path, "absent.nii", path],
    ...                       "coordX": [30.0, 0, 20], "coordY": [30.0, 0, 25],
    ...                       "coordZ": [30.0, 0, 35]})
    >>> [(pos, type(p).__name__) for pos, p in iter_patches(table, n_jobs=2)]
    [(0, 'ndarray'), (2, 'ndarray'), (1, 'RowError')]
    """
    return _iter_patches(table, coordinate_system, resolve_n_jobs(n_jobs))


def _iter_patches(
    table: pd.DataFrame, coordinate_system: str, n_threads: int, running=None, check=None
) -> Iterator[tuple[int, np.ndarray | RowError]]:
    """:func:`iter_patches` with ``n_threads`` threads, ``running`` of them at a time;
    ``check`` as for :func:`skfmcib._pipeline.prefetch`."""
    seeds = validate_table(table, coordinate_system)
    errors, jobs = _image_jobs(seeds)
    yield from errors
    yield from prefetch(jobs, n_threads, running=running, check=check)


def _seed_problem(geometry: Geometry, seed: np.ndarray) -> str:
    if geometry.contains(seed):
        return ""
    corners = geometry.corner_points(edges=True)
    extent = " x ".join(
        f"[{lo:.1f}, {hi:.1f}]" for lo, hi in zip(corners.min(0), corners.max(0), strict=True)
    )
    return (
        f"seed ({seed[0]:.2f}, {seed[1]:.2f}, {seed[2]:.2f}) LPS mm lies outside the scan, "
        f"whose voxels span {extent} mm; if the coordinates are RAS (3D Slicer, nibabel), "
        "use coordinate_system='RAS'"
    )


def load_patches(
    X: pd.DataFrame,
    *,
    coordinate_system: str = "LPS",
    on_error: str = "raise",
    n_jobs: int | None = None,
) -> np.ndarray:
    """Read the reference's preprocessed patches for a table of lesions.

    Each image is opened once, only the voxels around each seed are read where the
    format allows it, and only the 50^3 samples around each seed are computed: the
    whole volume is never resampled.

    Parameters
    ----------
    X : DataFrame
        One row per lesion: ``image_path`` (a file SimpleITK reads or a DICOM series
        directory), ``coordX``, ``coordY``, ``coordZ`` (mm); other columns ignored.
    coordinate_system : {"LPS", "RAS"}, default="LPS"
        Convention of the coordinates.
    on_error : {"raise", "nan"}, default="raise"
        What a bad row does: raise a :class:`~skfmcib.table.RowError`, or become a
        patch of NaN with a warning naming the row and file.
    n_jobs : int or None, default=None
        Threads reading images in parallel (see :func:`resolve_n_jobs`).

    Returns
    -------
    ndarray of shape (n_lesions, 1, 50, 50, 50), float32
        Normalised intensities ``(HU + 1024) / 3072`` in SimpleITK array order.

    Examples
    --------
    >>> import numpy as np, pandas as pd, SimpleITK as sitk, tempfile, os
    >>> from skfmcib import load_patches
    >>> ct = np.full((60, 60, 60), -1000, dtype=np.int16)  # air around a 40 HU body
    >>> ct[:, 10:50, 10:50] = 40
    >>> img = sitk.GetImageFromArray(ct)
    >>> path = os.path.join(tempfile.mkdtemp(), "ct.nii.gz")
    >>> sitk.WriteImage(img, path)
    >>> table = pd.DataFrame({"image_path": [path, path], "coordX": [30.0, 20.0],
    ...                       "coordY": [30.0, 25.0], "coordZ": [30.0, 35.0]})
    >>> load_patches(table).shape
    (2, 1, 50, 50, 50)
    """
    if on_error not in ("raise", "nan"):
        raise ValueError(f"on_error must be 'raise' or 'nan', got {on_error!r}")
    out = np.empty((len(X), 1, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE), dtype=np.float32)
    with contextlib.closing(iter_patches(X, coordinate_system, n_jobs=n_jobs)) as results:
        for pos, patch in results:
            if isinstance(patch, RowError):
                if on_error == "raise":
                    raise patch
                warnings.warn(f"{patch}; its patch is NaN", RowWarning, stacklevel=2)
                out[pos] = np.nan
            else:
                out[pos, 0] = patch
    return out


class RowWarning(UserWarning):
    """A lesion row was skipped (``on_error="nan"``); the message names row and file."""


def check_patch_array(X: ArrayLike) -> np.ndarray:
    """Validate pre-cropped patches and return them as ``(n, 1, 50, 50, 50)`` float32.

    Parameters
    ----------
    X : array-like
        Patches of shape ``(n, 50, 50, 50)``, ``(n, 1, 50, 50, 50)`` or flattened
        ``(n, 125000)``, already normalised like :func:`load_patches` output.

    Returns
    -------
    ndarray of shape (n, 1, 50, 50, 50), float32

    Raises
    ------
    ValueError
        For any other shape, naming the shape found and the shapes accepted, and for
        patches with NaN or infinite values, naming them.

    Examples
    --------
    >>> import numpy as np
    >>> from skfmcib.patches import check_patch_array
    >>> check_patch_array(np.zeros((3, 50, 50, 50))).shape
    (3, 1, 50, 50, 50)
    """
    if hasattr(X, "toarray") or hasattr(X, "todense"):
        raise TypeError("sparse input is not supported: patches are dense 50^3 volumes")
    arr = _numeric(X)
    if np.iscomplexobj(arr):
        raise ValueError("patches must be real numbers, got complex data")
    arr = arr.reshape(_patch_shape(arr.shape))
    out = np.ascontiguousarray(arr, dtype=np.float32)
    # One patch at a time: a mask of the whole array would be as large as a byte copy.
    finite = np.fromiter((np.isfinite(p).all() for p in out), dtype=bool, count=len(out))
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{len(bad)} of {len(out)} patches contain NaN or infinite values "
            f"(patch {listing(bad)}); patches must be finite"
        )
    return out


def _numeric(X) -> np.ndarray:
    """``X`` as an array (no copy of an array), if it holds numbers; else the error that
    says a lesion table or patches were expected."""
    arr = np.asarray(X)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise _table_expected(X, arr)
    return arr


def _table_expected(X, arr: np.ndarray) -> ValueError:
    """The error for input that is neither a lesion table nor numeric patches."""
    what = (
        f"a {type(X).__name__}"
        if isinstance(X, (Mapping, list, tuple))
        else f"an array of {arr.dtype} values, shape {arr.shape}"
    )
    return ValueError(
        "expected a lesion table (a pandas DataFrame with columns image_path, coordX, "
        f"coordY, coordZ) or numeric patches of shape (n, {PATCH_SIZE}, {PATCH_SIZE}, "
        f"{PATCH_SIZE}), (n, 1, {PATCH_SIZE}, {PATCH_SIZE}, {PATCH_SIZE}) or "
        f"(n, {PATCH_SIZE**3}); got {what}. Records (a list of dicts), a dict of columns "
        "or a table's .values: pass pandas.DataFrame(...) of the records or columns"
    )


def _patch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``(n, 1, 50, 50, 50)`` for an accepted patch array shape; ValueError otherwise."""
    n = PATCH_SIZE
    accepted = (
        (len(shape) == 2 and shape[1] == n**3)
        or (len(shape) == 4 and shape[1:] == (n, n, n))
        or (len(shape) == 5 and shape[1:] == (1, n, n, n))
    )
    if not accepted:
        raise ValueError(
            f"expected a lesion table (DataFrame with image_path, coordX, coordY, coordZ) or "
            f"patches of shape (n, {n}, {n}, {n}), (n, 1, {n}, {n}, {n}) or (n, {n**3}); "
            f"got an array of shape {shape}"
        )
    if shape[0] == 0:
        raise ValueError("got 0 patches; need at least one")
    return (shape[0], 1, n, n, n)


def as_patches(
    X: pd.DataFrame | ArrayLike, *, coordinate_system: str = "LPS", on_error: str = "raise"
) -> np.ndarray:
    """Turn estimator input (a lesion table or patch array) into patches.

    Parameters
    ----------
    X : DataFrame or array-like
        A lesion table (see :func:`load_patches`) or pre-cropped patches (see
        :func:`check_patch_array`).
    coordinate_system : {"LPS", "RAS"}, default="LPS"
        Convention of a table's coordinates, as in :func:`load_patches`; used for
        tables only.
    on_error : {"raise", "nan"}, default="raise"
        What a bad table row does, as in :func:`load_patches`; used for tables only.

    Returns
    -------
    ndarray of shape (n, 1, 50, 50, 50), float32

    Examples
    --------
    >>> import numpy as np
    >>> from skfmcib.patches import as_patches
    >>> patches = as_patches(np.zeros((2, 50 ** 3)))  # flattened patches
    >>> patches.shape, patches.dtype
    ((2, 1, 50, 50, 50), dtype('float32'))
    """
    if isinstance(X, pd.DataFrame):
        return load_patches(X, coordinate_system=coordinate_system, on_error=on_error)
    return check_patch_array(X)


def check_input_form(X: pd.DataFrame | ArrayLike | None, coordinate_system: str = "LPS") -> None:
    """Check estimator input's form in ``fit`` without reading any image.

    A lesion table's columns and coordinate convention are checked; an array gets the
    generic checks only (real, finite, dense, non-empty), with no copy. Patch shapes are
    checked where patches are used (:func:`check_patch_array`). None is accepted.

    Parameters
    ----------
    X : DataFrame, array-like or None
        A lesion table, pre-cropped patches, or None (nothing to check).
    coordinate_system : {"LPS", "RAS"}, default="LPS"
        Convention of a table's coordinates (see :func:`~skfmcib.table.validate_table`).

    Raises
    ------
    ValueError
        When a table lacks a required column or is empty, the coordinate system is
        unknown, or an array is not numeric, holds NaN or infinite values, or is empty.
    TypeError
        For sparse input.

    Examples
    --------
    >>> import numpy as np
    >>> from skfmcib.patches import check_input_form
    >>> check_input_form(np.zeros((2, 1, 50, 50, 50), np.float32))
    """
    if isinstance(X, pd.DataFrame):
        validate_table(X, coordinate_system)
    elif X is not None:
        if not (hasattr(X, "toarray") or hasattr(X, "todense")):
            _numeric(X)
        check_array(X, allow_nd=True, dtype=None, copy=False)

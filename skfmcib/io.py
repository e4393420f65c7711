"""Image input: CT volumes with their LPS geometry.

Everything the rest of the package knows about an image passes through
:class:`Volume`: the voxels in SimpleITK array order ``(z, y, x)`` and the
geometry (origin, spacing, direction) in LPS millimetres, the convention of
ITK, SimpleITK and DICOM. Files are read with SimpleITK; a directory is read
as a DICOM series.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = ["ImageReadError", "Volume", "read_image", "read_geometry"]


class ImageReadError(OSError):
    """An image could not be read or is not a 3D scalar volume."""


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of a 3D image in LPS millimetres.

    Parameters
    ----------
    size : tuple of int
        Voxel counts along the image axes ``(x, y, z)`` (ITK order).
    origin : ndarray of shape (3,)
        Physical position of voxel ``(0, 0, 0)``'s centre.
    spacing : ndarray of shape (3,)
        Voxel size along each image axis.
    direction : ndarray of shape (3, 3)
        Columns are the image axes' directions in LPS.
    """

    size: tuple[int, int, int]
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray

    @property
    def index_to_physical(self) -> np.ndarray:
        """The 3x3 matrix ``direction @ diag(spacing)`` (index -> offset in mm)."""
        return self.direction * self.spacing[None, :]

    def physical_to_continuous_index(self, points: np.ndarray) -> np.ndarray:
        """Map LPS points ``(..., 3)`` to continuous ``(x, y, z)`` voxel indices."""
        inv = np.linalg.inv(self.index_to_physical)
        return (np.asarray(points, dtype=np.float64) - self.origin) @ inv.T

    def corner_points(self) -> np.ndarray:
        """LPS positions of the centres of the 8 corner voxels, shape ``(8, 3)``."""
        hi = np.asarray(self.size, dtype=np.float64) - 1
        corners = np.array([[i, j, k] for i in (0, hi[0]) for j in (0, hi[1]) for k in (0, hi[2])])
        return self.origin + corners @ self.index_to_physical.T

    def contains(self, point: np.ndarray) -> bool:
        """Whether an LPS point lies within the voxel-centre extent of the image."""
        idx = self.physical_to_continuous_index(point)
        return bool(np.all(idx >= -0.5) and np.all(idx <= np.asarray(self.size) - 0.5))


@dataclass(frozen=True)
class Volume:
    """A 3D scalar image: voxels (HU for CT) and their geometry.

    Parameters
    ----------
    array : ndarray of shape (nz, ny, nx)
        Voxel values in SimpleITK array order.
    geometry : Geometry
        Where the voxels are, in LPS millimetres.
    path : str
        Where the image was read from.

    Examples
    --------
    >>> import numpy as np, SimpleITK as sitk, tempfile, os
    >>> from skfmcib.io import read_image
    >>> img = sitk.GetImageFromArray(np.zeros((4, 5, 6), dtype=np.int16))
    >>> path = os.path.join(tempfile.mkdtemp(), "ct.nii.gz")
    >>> sitk.WriteImage(img, path)
    >>> vol = read_image(path)
    >>> vol.array.shape, vol.geometry.size
    ((4, 5, 6), (6, 5, 4))
    """

    array: np.ndarray = field(repr=False)
    geometry: Geometry
    path: str = ""


def _geometry_of(image_or_reader) -> Geometry:
    return Geometry(
        size=tuple(int(s) for s in image_or_reader.GetSize()),
        origin=np.asarray(image_or_reader.GetOrigin(), dtype=np.float64),
        spacing=np.asarray(image_or_reader.GetSpacing(), dtype=np.float64),
        direction=np.asarray(image_or_reader.GetDirection(), dtype=np.float64).reshape(3, 3),
    )


def _dicom_series_files(directory: Path, series_uid: str | None) -> list[str]:
    reader = sitk.ImageSeriesReader
    uids = list(reader.GetGDCMSeriesIDs(str(directory)) or ())
    if not uids:
        raise ImageReadError(f"{directory}: directory holds no DICOM series")
    if series_uid is None:
        if len(uids) > 1:
            raise ImageReadError(
                f"{directory}: directory holds {len(uids)} DICOM series "
                f"({', '.join(uids)}); give the one to use as series_uid "
                "(a 'series_uid' column in the table)"
            )
        series_uid = uids[0]
    elif series_uid not in uids:
        raise ImageReadError(
            f"{directory}: no DICOM series {series_uid!r}; found {', '.join(uids)}"
        )
    return list(reader.GetGDCMSeriesFileNames(str(directory), series_uid))


def _check_3d_scalar(path: str, dim: int, components: int, size) -> None:
    if components != 1:
        raise ImageReadError(f"{path}: image has {components} components per voxel; need 1")
    if dim != 3:
        raise ImageReadError(f"{path}: image is {dim}D (size {tuple(size)}); need a 3D volume")
    if min(size) < 2:
        raise ImageReadError(
            f"{path}: image has size {tuple(size)}; a 3D volume needs at least 2 voxels per axis"
        )


def read_geometry(path: str | os.PathLike, series_uid: str | None = None) -> Geometry:
    """Read an image's geometry without its voxels.

    Parameters
    ----------
    path : str or path-like
        Image file (NIfTI, NRRD, MHA/MHD, ...) or DICOM series directory.
    series_uid : str, optional
        SeriesInstanceUID to pick when a directory holds several series.

    Returns
    -------
    Geometry
        Size, origin, spacing and direction in LPS millimetres.

    Raises
    ------
    ImageReadError
        When the file is missing or unreadable or not a 3D scalar image.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or directory")
    if path.is_dir():
        # The series reader gives the geometry of the whole stack; reading it is the
        # only portable way to get the slice positions right.
        return read_image(path, series_uid).geometry
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageReadError(f"{path}: cannot read image header ({_first_line(exc)})") from exc
    _check_3d_scalar(
        str(path), reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize()
    )
    return _geometry_of(reader)


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages end with the useful description.
    return lines[-1] if lines else type(exc).__name__


def read_image(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read a 3D CT image into a :class:`Volume`.

    Parameters
    ----------
    path : str or path-like
        An image file SimpleITK reads (NIfTI ``.nii``/``.nii.gz``, NRRD, MHA/MHD, a
        single DICOM file with a 3D volume, ...) or a directory holding one DICOM series.
    series_uid : str, optional
        SeriesInstanceUID to read when a directory holds several series.

    Returns
    -------
    Volume
        Voxels as stored (integer types are kept; HU after DICOM/NIfTI rescaling) with
        the image's LPS geometry.

    Raises
    ------
    ImageReadError
        Missing or unreadable file, a directory with no or several DICOM series, or an
        image that is not 3D with one component per voxel.

    Examples
    --------
    >>> import numpy as np, SimpleITK as sitk, tempfile, os
    >>> from skfmcib.io import read_image
    >>> img = sitk.GetImageFromArray(np.full((3, 4, 5), -1000, dtype=np.int16))
    >>> img.SetSpacing((0.7, 0.7, 2.5))
    >>> path = os.path.join(tempfile.mkdtemp(), "ct.nrrd")
    >>> sitk.WriteImage(img, path)
    >>> read_image(path).geometry.spacing.tolist()
    [0.7, 0.7, 2.5]
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or directory")
    try:
        if path.is_dir():
            files = _dicom_series_files(path, series_uid)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ImageReadError(f"{path}: cannot read image ({_first_line(exc)})") from exc
    _check_3d_scalar(
        str(path), image.GetDimension(), image.GetNumberOfComponentsPerPixel(), image.GetSize()
    )
    array = sitk.GetArrayViewFromImage(image)
    # Keep the voxels alive independently of the SimpleITK image.
    array = np.array(array, copy=True)
    return Volume(array=array, geometry=_geometry_of(image), path=str(path))

"""Image input: CT volumes with their LPS geometry.

Everything the rest of the package knows about an image passes through
:class:`Volume`: the voxels in SimpleITK array order ``(z, y, x)`` and the
geometry (origin, spacing, direction) in LPS millimetres, the convention of
ITK, SimpleITK and DICOM. Files are read as SimpleITK reads them; a directory is
read as a DICOM series.

A lesion needs only the voxels around it. :func:`open_image` reads an image's
header and returns an :class:`ImageSource` whose :meth:`~ImageSource.read_region`
reads one box of voxels: uncompressed NIfTI (``.nii``) and raw NRRD files are read
at byte offsets and ``.nii.gz`` files inflated up to the box's last slice, once for
all the boxes asked together (both without importing SimpleITK, see
:mod:`skfmcib._nifti`), MetaImage files are streamed by SimpleITK, and a DICOM series
reads every header but the pixel data of the slices in the box only. Other files are
read whole, once.
"""

from __future__ import annotations

import math
import mmap
import os
import shutil
import tempfile
import threading
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from . import _inflate, _nifti
from ._files import file_state
from ._text import counted, listing

if TYPE_CHECKING:
    import SimpleITK as sitk

__all__ = [
    "Geometry",
    "ImageReadError",
    "ImageSource",
    "Volume",
    "image_identity",
    "open_image",
    "read_geometry",
    "read_image",
]


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

    def physical_to_continuous_index(self, points: ArrayLike) -> np.ndarray:
        """Map LPS points ``(..., 3)`` to continuous ``(x, y, z)`` voxel indices.

        Parameters
        ----------
        points : array-like of shape (..., 3)
            Points in LPS millimetres.

        Returns
        -------
        ndarray of shape (..., 3), float64
            Their voxel indices along the image axes ``(x, y, z)``, not rounded: a
            voxel's centre has whole indices.

        Examples
        --------
        >>> import numpy as np
        >>> from skfmcib.io import Geometry
        >>> g = Geometry((10, 10, 5), np.zeros(3), np.array([0.5, 0.5, 2.0]), np.eye(3))
        >>> g.physical_to_continuous_index([1.0, 2.0, 3.0]).tolist()
        [2.0, 4.0, 1.5]
        """
        inv = np.linalg.inv(self.index_to_physical)
        return (np.asarray(points, dtype=np.float64) - self.origin) @ inv.T

    def corner_points(self, edges: bool = False) -> np.ndarray:
        """LPS positions of the centres of the 8 corner voxels, shape ``(8, 3)``.

        Parameters
        ----------
        edges : bool, default=False
            Give the outer corners of those voxels instead (half a voxel further out).

        Returns
        -------
        ndarray of shape (8, 3)
            The corners in LPS millimetres.

        Examples
        --------
        >>> import numpy as np
        >>> from skfmcib.io import Geometry
        >>> g = Geometry((10, 10, 5), np.zeros(3), np.array([0.5, 0.5, 2.0]), np.eye(3))
        >>> g.corner_points().max(axis=0).tolist()
        [4.5, 4.5, 8.0]
        >>> g.corner_points(edges=True).min(axis=0).tolist()
        [-0.25, -0.25, -1.0]
        """
        lo = -0.5 if edges else 0.0
        hi = np.asarray(self.size, dtype=np.float64) - 1 + (0.5 if edges else 0.0)
        corners = np.array(
            [[i, j, k] for i in (lo, hi[0]) for j in (lo, hi[1]) for k in (lo, hi[2])]
        )
        return self.origin + corners @ self.index_to_physical.T

    def contains(self, point: ArrayLike) -> bool:
        """Whether an LPS point lies within the image: its voxels, edges included.

        Parameters
        ----------
        point : array-like of shape (3,)
            A point in LPS millimetres.

        Returns
        -------
        bool

        Examples
        --------
        >>> import numpy as np
        >>> from skfmcib.io import Geometry
        >>> g = Geometry((10, 10, 5), np.zeros(3), np.array([0.5, 0.5, 2.0]), np.eye(3))
        >>> g.contains([4.75, 0.0, 0.0]), g.contains([5.0, 0.0, 0.0])
        (True, False)
        """
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

    def read_region(self, lo: ArrayLike, hi: ArrayLike) -> np.ndarray:
        """The voxels of the index box ``[lo, hi)`` (``(x, y, z)`` bounds), ``(z, y, x)`` order.

        The same interface as :meth:`ImageSource.read_region`, served from memory.

        Parameters
        ----------
        lo : array-like of 3 ints
            Inclusive lower voxel index along ``(x, y, z)``, ``0 <= lo < hi``.
        hi : array-like of 3 ints
            Exclusive upper voxel index along ``(x, y, z)``, ``hi <= size``.

        Returns
        -------
        ndarray of shape (hi[2] - lo[2], hi[1] - lo[1], hi[0] - lo[0])
            A view of :attr:`array` (no copy).

        Raises
        ------
        ValueError
            When the box is empty or not inside the image.

        Examples
        --------
        >>> import numpy as np
        >>> from skfmcib.io import Geometry, Volume
        >>> arr = np.arange(4 * 5 * 6).reshape(4, 5, 6)  # z, y, x
        >>> vol = Volume(arr, Geometry((6, 5, 4), np.zeros(3), np.ones(3), np.eye(3)))
        >>> vol.read_region([1, 0, 2], [3, 2, 4]).shape
        (2, 2, 2)
        """
        lo, hi = _check_box(self.geometry, lo, hi)
        return self.array[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]


def _require_exists(path: Path) -> None:
    """Raise an :class:`ImageReadError` naming ``path`` unless it exists."""
    try:
        exists = path.exists()
    except OSError as exc:  # a name too long, a folder without permission, ...
        raise ImageReadError(f"{path}: cannot be examined ({exc.strerror or exc})") from exc
    if not exists:
        name = str(path)
        spaces = " (the path starts or ends with a space)" if name != name.strip() else ""
        raise ImageReadError(f"{path}: no such file or directory{spaces}")


def _geometry_of(image_or_reader) -> Geometry:
    spacing = np.asarray(image_or_reader.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image_or_reader.GetDirection(), dtype=np.float64).reshape(3, 3)
    # A header's negative voxel size: ITK's image reader makes it positive and turns the
    # axis around; ReadImageInformation reports it as written.
    flip = np.where(spacing < 0, -1.0, 1.0)
    return Geometry(
        size=tuple(int(s) for s in image_or_reader.GetSize()),
        origin=np.asarray(image_or_reader.GetOrigin(), dtype=np.float64),
        spacing=spacing * flip,
        direction=direction * flip,
    )


def _pick_series(directory: Path, uids: list[str], series_uid: str | None) -> str:
    if not uids:
        raise ImageReadError(f"{directory}: directory holds no DICOM series")
    if series_uid is None:
        if len(uids) > 1:
            raise ImageReadError(
                f"{directory}: directory holds {len(uids)} DICOM series "
                f"({', '.join(map(repr, uids))}); give the one to use as series_uid "
                "(a 'series_uid' column in the table)"
                + (
                    "; the series without a SeriesInstanceUID ('') cannot be named in a "
                    "table: move it to a folder of its own"
                    if "" in uids
                    else ""
                )
            )
        return uids[0]
    if series_uid not in uids:
        raise ImageReadError(
            f"{directory}: no DICOM series {series_uid!r}; found {', '.join(map(repr, uids))}"
        )
    return series_uid


def _dicom_series_files(directory: Path, series_uid: str | None) -> list[str]:
    reader = _sitk().ImageSeriesReader
    uids = list(reader.GetGDCMSeriesIDs(str(directory)) or ())
    series_uid = _pick_series(directory, uids, series_uid)
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


def _check_gzip_complete(path: Path) -> None:
    """Reject a gzipped NIfTI cut short (an interrupted copy or download).

    A gzip file ends with the size of its content modulo 2**32, and a NIfTI header says
    how large the content is. ITK reads a file that lost only its end without complaint
    (the missing voxels become zeros), so compare the two.
    """
    import gzip
    import struct

    if not path.name.lower().endswith(".nii.gz"):
        return
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return  # not gzip at all: ITK says what it is not
    try:
        with gzip.open(path, "rb") as fh:
            header = fh.read(540)
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            stored = struct.unpack("<I", fh.read(4))[0]
    except (OSError, EOFError, struct.error, zlib.error) as exc:
        raise ImageReadError(
            f"{path}: cannot read image (file is truncated or corrupt: {exc})"
        ) from exc
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            datatype, bitpix = struct.unpack(order + "2h", header[70:74])
            offset = struct.unpack(order + "f", header[108:112])[0]
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            dims = struct.unpack(order + "8q", header[16:80])
            datatype, bitpix = struct.unpack(order + "2h", header[12:16])
            offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return  # not a NIfTI header this knows: let ITK judge
    n = 1
    for d in dims[1 : 1 + max(0, min(int(dims[0]), 7))]:
        n *= max(1, int(d))
    # nifti_clib sizes voxels by the datatype, whatever bitpix says, and reads a
    # vox_offset that is not a number as none.
    nbytes = _NIFTI_VOXEL_BYTES.get(datatype, bitpix // 8)
    offset = int(offset) if math.isfinite(offset) else 0
    expected = max(offset, 348) + n * nbytes
    if stored == expected % 2**32:
        return
    # A file of several gzip members (bgzip) stores only the last member's size, and
    # bytes after the data or after the last member are allowed: count the content
    # itself before calling the file truncated.
    try:
        stored, failure = _gzip_content_bytes(path)
    except (OSError, zlib.error) as exc:
        raise ImageReadError(
            f"{path}: cannot read image (file is truncated or corrupt: {exc})"
        ) from exc
    if stored < expected:
        what = f"corrupt: {failure}" if failure else "truncated"
        raise ImageReadError(
            f"{path}: cannot read image (file is {what}: its gzip stream holds {stored} "
            f"bytes, the NIfTI header needs {expected}); copy or download it again"
        )


# Bytes per voxel of the NIfTI datatype codes (nifti_clib's nifti_datatype_sizes).
_NIFTI_VOXEL_BYTES = {
    2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8,
    1280: 8, 1536: 16, 1792: 16, 2048: 32, 2304: 4,
}  # fmt: skip


def _gzip_content_bytes(path: Path) -> tuple[int, str]:
    """The length of a gzip file's content: its members in turn, as zlib's ``gzread``
    reads them (bytes after a member that do not start another one are ignored).

    A failure in the first member is raised; after it, what was counted is returned
    with the failure (else ""): the caller compares the count with what the header
    needs, so content missing from a bad later member is still missing, while trailing
    bytes that only look like another member do not matter.
    """
    total = 0
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            start = 0
            while view[start : start + 2] == b"\x1f\x8b":
                inflater = zlib.decompressobj(31)
                pos, counted_before = start, total
                try:
                    while not inflater.eof:
                        if pos >= len(view):
                            raise OSError("the file ends in the middle of its compressed data")
                        with view[pos : pos + (1 << 22)] as chunk:
                            pos += len(chunk)
                            total += len(inflater.decompress(chunk, 1 << 24))
                        while inflater.unconsumed_tail and not inflater.eof:
                            total += len(inflater.decompress(inflater.unconsumed_tail, 1 << 24))
                except (OSError, zlib.error) as exc:
                    if start == 0:
                        raise
                    return counted_before, f"the gzip member at byte {start}: {exc}"
                start = pos - len(inflater.unused_data)
        finally:
            view.release()
    return total, ""


def _check_slice_gaps(path: Path, distances: list[float], names: list[str] | None = None) -> None:
    """Reject a DICOM series whose slices are not evenly spaced: a missing slice (a gap),
    an extra or repeated one (a short step). ``names`` are the slices' files, in the
    order of ``distances``, for the message."""
    if len(distances) < 3:
        return
    distances = np.asarray(distances, dtype=np.float64)
    order = np.argsort(distances, kind="stable")
    ordered = distances[order]
    n = len(ordered)
    dz = (ordered[-1] - ordered[0]) / (n - 1)
    if dz <= 0:
        return  # all slices at one position: refused by the caller's own checks
    # The volume puts slice k at first + k * dz (ITK's spacing: first to last over the
    # count). Positions written rounded (0.625 mm slices at one decimal: 0.05 mm off)
    # stay well within a fifth of a slice of that; a missing, extra or repeated slice
    # moves some by half a slice or more.
    if np.abs(ordered - (ordered[0] + dz * np.arange(n))).max() <= 0.2 * dz:
        return
    steps = np.diff(ordered)
    step = float(np.median(steps))
    worst = int(np.argmax(np.abs(steps - step)))
    between = f"from {ordered[worst]:.2f} to {ordered[worst + 1]:.2f} mm along the stack"
    if names is not None:
        a, b = (Path(names[order[k]]).name for k in (worst, worst + 1))
        between = f"{a} to {b}, {between}"
    if steps[worst] >= 1.25 * step:
        what = "missing slices?"
    elif steps[worst] <= 0.75 * step:
        what = "an extra or repeated slice?"
    else:
        what = "slices of two spacings?"
    raise ImageReadError(
        f"{path}: the slices are not evenly spaced ({what}): their positions "
        f"step {steps[worst]:.2f} mm ({between}) where slices are {step:.2f} mm "
        "apart; a volume needs evenly spaced slices"
    )


def _check_series_gaps(path: Path, reader: sitk.ImageSeriesReader, image: sitk.Image) -> None:
    normal = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)[:, 2]
    distances = []
    files = list(reader.GetFileNames())
    for k in range(len(files)):
        if not reader.HasMetaDataKey(k, "0020|0032"):
            return
        position = [float(v) for v in reader.GetMetaData(k, "0020|0032").split("\\")]
        distances.append(float(normal @ np.asarray(position)))
    _check_slice_gaps(path, distances, files)


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

    Examples
    --------
    >>> import numpy as np, SimpleITK as sitk, tempfile, os
    >>> from skfmcib.io import read_geometry
    >>> img = sitk.GetImageFromArray(np.zeros((3, 4, 5), dtype=np.int16))
    >>> path = os.path.join(tempfile.mkdtemp(), "ct.mha")
    >>> sitk.WriteImage(img, path)
    >>> read_geometry(path).size
    (5, 4, 3)
    """
    with open_image(path, series_uid) as source:
        return source.geometry


def _sitk():
    """SimpleITK, imported when first needed.

    Importing it maps and initialises a large library (about 100 MB of memory, 0.1 s),
    which reading the common NIfTI files does not need.
    """
    import SimpleITK

    return SimpleITK


class _ItkName:
    """The name to give SimpleITK for an image file.

    Under SimpleITK's NIfTI reader, nifti_clib looks for ``<stem>.nii`` before
    ``<stem>.nii.gz`` whatever name it is given: with both beside each other, reading
    ``ct.nii.gz`` would give ``ct.nii``'s header and voxels. Such a file is given to
    SimpleITK as a link in a private temporary folder, kept while this object lives.
    """

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        if not path.name.lower().endswith(".nii.gz"):
            return
        stem = path.name[: -len(".nii.gz")]
        shadow = [path.parent / (stem + ext) for ext in (".nii", ".NII")]
        if not any(p.is_file() for p in shadow):
            return
        folder = tempfile.mkdtemp(prefix="skfmcib-")
        weakref.finalize(self, shutil.rmtree, folder, ignore_errors=True)
        link = Path(folder) / "image.nii.gz"
        try:
            os.symlink(path.resolve(), link)
        except OSError as exc:
            raise ImageReadError(
                f"{path}: {stem}.nii lies beside it, which SimpleITK's NIfTI reader would "
                f"read instead, and no link to the file could be made ({exc}); move one of "
                "the two"
            ) from exc
        self.name = str(link)


def _read_dicom_directory(path: Path, series_uid: str | None) -> Volume:
    """A DICOM series read whole by SimpleITK (series pydicom cannot describe)."""
    try:
        files = _dicom_series_files(path, series_uid)
        if len(files) == 1:  # one file: a multi-frame (enhanced) CT, read as a file
            image = _sitk().ReadImage(files[0])
        else:
            reader = _sitk().ImageSeriesReader()
            reader.SetFileNames(files)
            reader.MetaDataDictionaryArrayUpdateOn()
            image = reader.Execute()
            _check_3d_scalar(
                str(path), image.GetDimension(), image.GetNumberOfComponentsPerPixel(),
                image.GetSize(),
            )  # fmt: skip
            _check_series_gaps(path, reader, image)
    except RuntimeError as exc:
        raise ImageReadError(f"{path}: cannot read image ({_first_line(exc)})") from exc
    _check_3d_scalar(
        str(path), image.GetDimension(), image.GetNumberOfComponentsPerPixel(), image.GetSize()
    )
    array = np.array(_sitk().GetArrayViewFromImage(image), copy=True)
    return Volume(array=array, geometry=_geometry_of(image), path=str(path))


def _narrowed(array: np.ndarray) -> np.ndarray:
    """Rescaled integer voxels in ``int16`` where they fit, as GDCM stores a CT."""
    if array.dtype.kind != "i" or array.dtype.itemsize <= 2 or array.size == 0:
        return array
    info = np.iinfo(np.int16)
    if info.min <= array.min() and array.max() <= info.max:
        return array.astype(np.int16)
    return array


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
        the image's LPS geometry: those SimpleITK reads. A NIfTI file whose header
        skfmcib reads as ITK does (see :func:`open_image`) is read without SimpleITK,
        a ``.nii.gz`` inflated with ISA-L where the ``isal`` package is installed. A
        DICOM directory is read as extraction reads it (:func:`open_image`): the
        same slices, the same checks (a localizer or a second scan in the series is
        refused), each slice's own rescale; rescaled integers come as ``int16``
        where they fit.

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
    _require_exists(path)
    if path.is_dir():
        # As extraction reads it (open_image): the same slices, checks and values.
        source = _open_dicom_directory(path, series_uid)
        if isinstance(source, _WholeSource) and source._volume is not None:
            return source._volume
        volume = source.read()
        return Volume(_narrowed(volume.array), volume.geometry, volume.path)
    try:
        _check_gzip_complete(path)
        _check_meta_compressed(path)
        source = _nifti_source(path)
        if source is not None:
            return source.read()
        itk_name = _ItkName(path)  # kept alive while SimpleITK reads
        image = _sitk().ReadImage(itk_name.name)
    except RuntimeError as exc:
        raise ImageReadError(f"{path}: cannot read image ({_first_line(exc)})") from exc
    _check_3d_scalar(
        str(path), image.GetDimension(), image.GetNumberOfComponentsPerPixel(), image.GetSize()
    )
    array = _sitk().GetArrayViewFromImage(image)
    # Keep the voxels alive independently of the SimpleITK image.
    array = np.array(array, copy=True)
    return Volume(array=array, geometry=_geometry_of(image), path=str(path))


# --------------------------------------------------------------------------- regions


def _check_box(geometry: Geometry, lo, hi) -> tuple[np.ndarray, np.ndarray]:
    lo = np.asarray(lo, dtype=np.int64).reshape(3)
    hi = np.asarray(hi, dtype=np.int64).reshape(3)
    size = np.asarray(geometry.size, dtype=np.int64)
    if np.any(lo < 0) or np.any(hi > size) or np.any(hi <= lo):
        raise ValueError(
            f"region [{lo.tolist()}, {hi.tolist()}) is empty or not inside the image of "
            f"size {tuple(size.tolist())}"
        )
    return lo, hi


class ImageSource:
    """An image opened for reading: its geometry at once, its voxels box by box.

    Made by :func:`open_image`, which picks how each format is read. Sources are
    safe to use from several threads and hold no open file between reads.

    Attributes
    ----------
    path : str
        The file or DICOM directory.
    geometry : Geometry
        Where the voxels are, in LPS millimetres.
    strategy : str
        How voxels are read: ``"stream"`` (SimpleITK reads only the box),
        ``"raw"`` (byte ranges of an uncompressed file), ``"inflate"`` (a gzipped
        NIfTI inflated up to the box's last slice, see :meth:`iter_regions`),
        ``"dicom"`` (the slices the box touches), or ``"whole"`` (the whole image,
        once, kept in memory).
    files_read : list of str
        Files whose voxel data were read, one entry per read, in order (a DICOM
        slice still in the source's slice cache is not read again).
    sequential : bool
        Whether every read goes through the file from its start (gzip-compressed
        files): several boxes are then best read as one box that holds them all.

    Examples
    --------
    >>> import numpy as np, SimpleITK as sitk, tempfile, os
    >>> from skfmcib.io import open_image
    >>> arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    >>> path = os.path.join(tempfile.mkdtemp(), "ct.nii")
    >>> sitk.WriteImage(sitk.GetImageFromArray(arr), path)
    >>> with open_image(path) as source:
    ...     block = source.read_region([1, 0, 2], [3, 2, 4])  # x, y, z bounds
    >>> block.shape, bool((block == arr[2:4, 0:2, 1:3]).all())
    ((2, 2, 2), True)
    """

    strategy = "whole"
    sequential = False

    def __init__(self, path: str, geometry: Geometry) -> None:
        self.path = path
        self.geometry = geometry
        self.files_read: list[str] = []
        self._lock = threading.Lock()

    def read_region(self, lo: ArrayLike, hi: ArrayLike) -> np.ndarray:
        """Read the voxels of the index box ``[lo, hi)``.

        Parameters
        ----------
        lo, hi : array-like of 3 ints
            Inclusive lower and exclusive upper voxel index along ``(x, y, z)``, with
            ``0 <= lo < hi <= size``.

        Returns
        -------
        ndarray of shape (hi[2] - lo[2], hi[1] - lo[1], hi[0] - lo[0])
            The voxels in SimpleITK array order, with the values a full read gives
            (DICOM rescale slope and intercept applied).
        """
        lo, hi = _check_box(self.geometry, lo, hi)
        return self._read(lo, hi)

    def iter_regions(
        self, boxes: Iterable[tuple[ArrayLike, ArrayLike]]
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Read several index boxes; yield ``(k, voxels)`` for the ``k``-th box.

        A gzipped NIfTI read without SimpleITK (``strategy == "inflate"``) is
        inflated once for all the boxes, and each box is yielded as soon as its last
        slice has been inflated (in the order of the boxes' last slices); other
        sources read the boxes one by one, in the order given.

        Parameters
        ----------
        boxes : iterable of (lo, hi)
            Index boxes as for :meth:`read_region`.

        Yields
        ------
        (int, ndarray)
            The box's position in ``boxes`` and its voxels, as :meth:`read_region`
            gives them.
        """
        for k, (lo, hi) in enumerate(boxes):
            yield k, self.read_region(lo, hi)

    def read(self) -> Volume:
        """Read the whole image into a :class:`Volume`.

        Returns
        -------
        Volume
            The voxels (as :meth:`read_region` gives them), the geometry and the path.

        Examples
        --------
        >>> import numpy as np, SimpleITK as sitk, tempfile, os
        >>> from skfmcib.io import open_image
        >>> path = os.path.join(tempfile.mkdtemp(), "ct.nii")
        >>> sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16)), path)
        >>> with open_image(path) as source:
        ...     volume = source.read()
        >>> volume.array.shape, volume.geometry.size
        ((4, 5, 6), (6, 5, 4))
        """
        return Volume(
            array=np.asarray(self.read_region((0, 0, 0), self.geometry.size)),
            geometry=self.geometry,
            path=self.path,
        )

    def _read(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _record(self, file: str) -> None:
        with self._lock:
            self.files_read.append(file)

    def close(self) -> None:
        """Release what the source keeps in memory (decoded voxels)."""

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, size={self.geometry.size})"


class _WholeSource(ImageSource):
    """Reads the whole image on first use and serves every box from memory."""

    strategy = "whole"

    def __init__(self, path: str, geometry: Geometry, series_uid: str | None = None) -> None:
        super().__init__(path, geometry)
        self._series_uid = series_uid
        self._volume: Volume | None = None

    def _read(self, lo, hi):
        with self._lock:
            if self._volume is None:
                path = Path(self.path)
                if path.is_dir():
                    self._volume = _read_dicom_directory(path, self._series_uid)
                else:
                    self._volume = read_image(path)
                self.files_read.append(self.path)
            volume = self._volume
        return volume.read_region(lo, hi)

    def close(self) -> None:
        with self._lock:
            self._volume = None


class _StreamSource(ImageSource):
    """SimpleITK reads only the requested box (NIfTI and MetaImage files)."""

    strategy = "stream"

    def __init__(
        self, path: str, geometry: Geometry, io_name: str, sequential: bool, itk_name: _ItkName
    ) -> None:
        super().__init__(path, geometry)
        self._io_name = io_name
        self.sequential = sequential
        self._itk_name = itk_name

    def _read(self, lo, hi):
        reader = _sitk().ImageFileReader()
        reader.SetImageIO(self._io_name)
        reader.SetFileName(self._itk_name.name)
        reader.SetExtractIndex([int(v) for v in lo])
        reader.SetExtractSize([int(v) for v in hi - lo])
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise ImageReadError(f"{self.path}: cannot read image ({_first_line(exc)})") from exc
        self._record(self.path)
        return np.asarray(_ImageVoxels(image))


class _ImageVoxels:
    """A SimpleITK image's voxels as an array interface: no copy, the image kept alive."""

    def __init__(self, image: sitk.Image) -> None:
        self._image = image
        self.__array_interface__ = _sitk().GetArrayViewFromImage(image).__array_interface__


class _RawSource(ImageSource):
    """Reads byte ranges of an uncompressed voxel block (raw NRRD)."""

    strategy = "raw"

    def __init__(self, path: str, geometry: Geometry, dtype: np.dtype, offset: int) -> None:
        super().__init__(path, geometry)
        self._dtype = dtype
        self._offset = offset
        # A truncated file is refused whole, not only for the boxes in its missing part.
        need = offset + int(np.prod(geometry.size)) * dtype.itemsize
        _check_length(Path(path), Path(path), need)

    def _read(self, lo, hi):
        nx, ny, _ = self.geometry.size
        item = self._dtype.itemsize
        rows = int(hi[1] - lo[1])
        out = np.empty((int(hi[2] - lo[2]), rows, int(hi[0] - lo[0])), dtype=self._dtype)
        with open(self.path, "rb", buffering=0) as f:
            for k, z in enumerate(range(int(lo[2]), int(hi[2]))):
                f.seek(self._offset + (z * ny + int(lo[1])) * nx * item)
                buf = bytearray(rows * nx * item)
                if f.readinto(buf) != len(buf):
                    raise ImageReadError(f"{self.path}: file is shorter than its header says")
                block = np.frombuffer(buf, dtype=self._dtype).reshape(rows, nx)
                out[k] = block[:, lo[0] : hi[0]]
        self._record(self.path)
        return out.astype(self._dtype.newbyteorder("="), copy=False)


class _NiftiSource(_RawSource):
    """An uncompressed NIfTI-1 file read without SimpleITK: the rows of the box, at their
    byte offsets, scaled as ITK scales them (see :mod:`skfmcib._nifti`)."""

    def __init__(self, path: str, geometry: Geometry, layout: _nifti.NiftiLayout) -> None:
        super().__init__(path, geometry, layout.stored, layout.offset)
        self._layout = layout

    def _read(self, lo, hi):
        return _nifti.scaled(super()._read(lo, hi), self._layout)


class _NiftiGzSource(ImageSource):
    """A gzipped NIfTI-1 file read without SimpleITK: inflated from its start (ISA-L
    through :mod:`skfmcib._inflate`) up to the last slice asked for, once for all the
    boxes asked together, each box cut from the slices as they pass and scaled as ITK
    scales it (see :mod:`skfmcib._nifti`). A read that reaches the last slice also
    inflates the file's end, where gzip's check sums find corrupt data: then the boxes
    that reach the last slice fail, those handed on before do not."""

    strategy = "inflate"
    sequential = True

    def __init__(self, path: str, geometry: Geometry, layout: _nifti.NiftiLayout) -> None:
        super().__init__(path, geometry)
        self._layout = layout

    def _read(self, lo, hi):
        ((_, voxels),) = self.iter_regions([(lo, hi)])
        return voxels

    def iter_regions(
        self, boxes: Iterable[tuple[ArrayLike, ArrayLike]]
    ) -> Iterator[tuple[int, np.ndarray]]:
        boxes = [_check_box(self.geometry, lo, hi) for lo, hi in boxes]
        if not boxes:
            return
        nx, ny, _ = self.geometry.size
        stored = self._layout.stored
        plane = nx * ny * stored.itemsize
        first = min(int(lo[2]) for lo, _ in boxes)
        last = max(int(hi[2]) for _, hi in boxes)
        outs: list[np.ndarray | None] = [
            np.empty(tuple(int(v) for v in (hi - lo)[::-1]), dtype=stored) for lo, hi in boxes
        ]
        waiting = sorted(range(len(boxes)), key=lambda k: int(boxes[k][1][2]))
        # Whole slices per read, at most one block of the inflater (one GIL round trip).
        per_call = max(1, _inflate.BLOCK_BYTES // plane)
        try:
            with _inflate.GzipStream(self.path) as stream:
                self._record(self.path)
                stream.skip(self._layout.offset + first * plane)
                z = first
                while z < last:
                    # Each read stops where the next box ends, so a box is complete (and
                    # handed on) before anything after it is inflated: what a box gives,
                    # data or error, is what reading it alone gives.
                    n = min(per_call, int(boxes[waiting[0]][1][2]) - z)
                    data = stream.read(n * plane)
                    if len(data) < n * plane:
                        raise _inflate.GzipError("file is shorter than its header says")
                    slab = np.frombuffer(data, dtype=stored).reshape(n, ny, nx)
                    for out, (lo, hi) in zip(outs, boxes, strict=True):
                        a, b = max(z, int(lo[2])), min(z + n, int(hi[2]))
                        if out is not None and a < b:
                            out[a - lo[2] : b - lo[2]] = slab[
                                a - z : b - z, lo[1] : hi[1], lo[0] : hi[0]
                            ]
                    z += n
                    if z == self.geometry.size[2]:
                        stream.finish()  # the gzip check sums, before the last boxes
                    while waiting and boxes[waiting[0]][1][2] <= z:
                        k = waiting.pop(0)
                        voxels, outs[k] = outs[k], None
                        yield k, _nifti.scaled(voxels, self._layout)  # in native byte order
        except OSError as exc:
            raise ImageReadError(f"{self.path}: cannot read image ({exc})") from exc


_NRRD_TYPES = {
    np.dtype(np.int8): ("signed char", "int8", "int8_t"),
    np.dtype(np.uint8): ("uchar", "unsigned char", "uint8", "uint8_t"),
    np.dtype(np.int16): (
        "short", "short int", "signed short", "signed short int", "int16", "int16_t",
    ),
    np.dtype(np.uint16): ("ushort", "unsigned short", "unsigned short int", "uint16", "uint16_t"),
    np.dtype(np.int32): ("int", "signed int", "int32", "int32_t"),
    np.dtype(np.uint32): ("uint", "unsigned int", "uint32", "uint32_t"),
    np.dtype(np.int64): (
        "longlong", "long long", "long long int", "signed long long",
        "signed long long int", "int64", "int64_t",
    ),
    np.dtype(np.uint64): (
        "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
    ),
    np.dtype(np.float32): ("float",),
    np.dtype(np.float64): ("double",),
}  # fmt: skip
_NRRD_TYPE_OF = {name: dtype for dtype, names in _NRRD_TYPES.items() for name in names}


_NRRD_HEADER_BYTES = 1 << 24


def _raw_nrrd_layout(path: str, size: tuple[int, int, int]) -> tuple[np.dtype, int] | None:
    """Data type and byte offset of an attached, uncompressed NRRD voxel block, else None."""
    fields: dict[str, str] = {}
    with open(path, "rb") as f:
        if not f.readline(64).startswith(b"NRRD"):
            return None
        while True:
            line = f.readline()
            if not line or f.tell() > _NRRD_HEADER_BYTES:
                return None  # no data after the header, or no header SimpleITK reads
            text = line.decode("latin-1").rstrip("\r\n")
            if not text:
                break
            if text.startswith("#") or ":=" in text or ": " not in text:
                continue
            key, value = text.split(": ", 1)
            fields[key.strip().lower()] = value.strip()
        offset = f.tell()
    if fields.get("encoding", "").lower() != "raw":
        return None
    if any(k in fields for k in ("data file", "datafile")):
        return None
    for key in ("line skip", "lineskip", "byte skip", "byteskip"):
        if fields.get(key, "0") != "0":
            return None
    try:
        sizes = tuple(int(s) for s in fields.get("sizes", "").split())
    except ValueError:
        return None
    dtype = _NRRD_TYPE_OF.get(fields.get("type", "").lower())
    if dtype is None or sizes != tuple(size):
        return None
    if dtype.itemsize > 1:
        endian = fields.get("endian", "").lower()
        if endian not in ("little", "big"):
            return None
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    if os.path.getsize(path) < offset + math.prod(sizes) * dtype.itemsize:
        return None
    return dtype, offset


def _meta_header(path: Path) -> tuple[dict[str, str], int, bytes]:
    """A MetaImage header's fields, its length in bytes (where LOCAL voxels start), and
    the bytes read after it (in a detached ``.mhd``: a ``LIST``'s file names)."""
    fields: dict[str, str] = {}
    length = 0
    with open(path, "rb") as f:
        # A detached header is small; an attached one's voxels follow its header.
        head = f.read(1 << 20 if path.suffix.lower() == ".mhd" else 1 << 16)
    for raw in head.split(b"\n"):
        length += len(raw) + 1
        key, _, value = raw.decode("latin-1").partition("=")
        fields[key.strip()] = value.strip()
        if key.strip() == "ElementDataFile":
            break
    return fields, length, head[length:]


def _meta_flag(fields: dict[str, str], key: str, default: bool) -> bool:
    """A MetaImage yes/no field as MetaIO reads it: ``T``, ``t`` or ``1`` first is yes."""
    value = fields.get(key)
    if value is None:
        return default
    return value[:1] in ("T", "t", "1")


_META_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
               "MET_UINT": 4, "MET_FLOAT": 4, "MET_DOUBLE": 8}  # fmt: skip


def _check_meta_compressed(path: Path, fields: dict[str, str] | None = None) -> None:
    """Refuse a compressed MetaImage whose voxels follow its header (``LOCAL``) and whose
    header lacks ``CompressedDataSize``: SimpleITK inflates such a file wrongly (another
    result on each read), with only a console message. SimpleITK writes the size.

    ``fields`` are :func:`_meta_header`'s, where the caller has read them already.
    """
    if fields is None:
        if path.suffix.lower() not in (".mha", ".mhd"):
            return
        try:
            fields, _, _ = _meta_header(path)
        except OSError as exc:
            raise ImageReadError(
                f"{path}: cannot read image header ({exc.strerror or exc})"
            ) from exc
    if (
        _meta_flag(fields, "CompressedData", False)
        and "CompressedDataSize" not in fields
        and fields.get("ElementDataFile", "").upper() == "LOCAL"
    ):
        raise ImageReadError(
            f"{path}: compressed MetaImage without CompressedDataSize, which SimpleITK "
            "reads wrongly; write it again with SimpleITK (it stores the size), or "
            "uncompressed"
        )


def _check_meta_complete(
    path: Path, size: tuple[int, ...], fields: dict[str, str], header: int
) -> None:
    """Refuse an uncompressed MetaImage whose voxel data is shorter than its header says.

    ``fields`` and ``header`` (its length) are :func:`_meta_header`'s. ITK reports such a
    file as "cannot be read ... No such file or directory"; checked for one data file
    (LOCAL or a named one) with a known element type.
    """
    item = _META_BYTES.get(fields.get("ElementType", ""))
    name = fields.get("ElementDataFile", "")
    try:
        skip = int(fields.get("HeaderSize", "0") or 0)
        channels = int(fields.get("ElementNumberOfChannels", "1") or 1)
    except ValueError:
        return  # ITK's own reading reports it
    if item is None or not name or name.startswith("LIST") or "%" in name or skip < 0:
        return
    data = path if name == "LOCAL" else path.parent / name
    offset = header if name == "LOCAL" else skip
    _check_length(path, data, offset + int(np.prod(size)) * item * channels, named=True)


def _check_length(path: Path, data: Path, need: int, named: bool = False) -> None:
    """Refuse an image whose voxel file ``data`` has fewer than ``need`` bytes."""
    if not data.is_file():
        raise ImageReadError(f"{path}: the data file its header names, {data}, does not exist")
    have = data.stat().st_size
    if have < need:
        where = f" in {data.name}" if named else ""
        raise ImageReadError(
            f"{path}: file is shorter than its header says ({have} bytes{where}; the header "
            f"describes {need}): truncated?"
        )


# ----------------------------------------------------------------------------- DICOM

_DICOM_TAGS = [
    "SeriesInstanceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "NumberOfFrames",
    "PhotometricInterpretation",
    "RescaleSlope",
    "RescaleIntercept",
    "SOPClassUID",
]
# Storage classes whose geometry GDCM takes from PixelSpacing and ImagePositionPatient,
# as the headers are read here: CT, MR and PET images. Others (CR, RT Image, NM,
# secondary capture, private classes) take their spacing or origin from elsewhere, or
# are not series to GDCM; SimpleITK reads those.
_SLICE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image Storage
    }
)
# Slices decoded and kept per series, so that nearby lesions share them.
_DICOM_CACHE_BYTES = 64 << 20


@dataclass(frozen=True)
class _DicomSlice:
    file: str
    position: np.ndarray
    slope: float
    intercept: float


def _dicom_headers(directory: Path) -> dict[str, list[tuple[str, object]]]:
    """Headers of the DICOM files directly in ``directory``, grouped by SeriesInstanceUID."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, list[tuple[str, object]]] = {}
    with os.scandir(directory) as it:
        # GDCM leaves hidden files out (".IM0001.dcm", AppleDouble "._IM0001.dcm", the
        # partial copies rsync leaves behind), so they are not slices here either.
        entries = sorted(
            (e for e in it if e.is_file() and not e.name.startswith(".")), key=lambda e: e.name
        )
    for entry in entries:
        try:
            ds = pydicom.dcmread(entry.path, stop_before_pixels=True, specific_tags=_DICOM_TAGS)
        except InvalidDicomError:
            # No preamble and file meta (a raw data set), which GDCM reads too; anything
            # else read this way has no image attributes and is left out below.
            try:
                ds = pydicom.dcmread(
                    entry.path, stop_before_pixels=True, specific_tags=_DICOM_TAGS, force=True
                )
            except Exception:  # noqa: BLE001 - not DICOM at all
                continue
        except (OSError, ValueError, EOFError):
            continue
        if not _is_image(ds):
            continue  # a DICOMDIR, a structured report, a file that only looks like DICOM
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((entry.path, ds))
    return series


def _sop_class(ds) -> str:
    """The storage class as GDCM takes it: the file meta's, else the data set's."""
    meta = getattr(ds, "file_meta", None)
    uid = str((meta.get("MediaStorageSOPClassUID", "") if meta is not None else "") or "")
    return uid or str(ds.get("SOPClassUID", "") or "")


def _is_image(ds) -> bool:
    try:
        return int(ds.get("Rows") or 0) > 0
    except (TypeError, ValueError):
        return False


def _float_list(value, n: int) -> np.ndarray | None:
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.all(np.isfinite(out)) else None


def _dicom_series_layout(
    headers: list[tuple[str, object]], path: Path
) -> tuple[Geometry, list[_DicomSlice]] | None:
    """Sorted slices and the geometry SimpleITK's series reader gives them.

    None when the series is one that only SimpleITK should read (multi-frame, colour,
    MONOCHROME1, missing positions or spacings). An :class:`ImageReadError` when its
    slices cannot make one volume (slices of another size or orientation, two slices at
    one position), which SimpleITK would stack all the same.
    """
    if len(headers) < 2:
        return None
    first = headers[0][1]
    iop = _float_list(first.get("ImageOrientationPatient"), 6)
    spacing = _float_list(first.get("PixelSpacing"), 2)
    rows, cols = first.get("Rows"), first.get("Columns")
    if iop is None or spacing is None or not rows or not cols:
        return None
    if any(_sop_class(ds) not in _SLICE_CLASSES for _, ds in headers):
        return None
    slices = []
    odd_size, odd_orientation = [], []
    for file, ds in headers:
        if (
            int(ds.get("SamplesPerPixel", 1) or 1) != 1
            or int(ds.get("NumberOfFrames", 1) or 1) != 1
            or str(ds.get("PhotometricInterpretation", "MONOCHROME2")) != "MONOCHROME2"
        ):
            return None
        other_iop = _float_list(ds.get("ImageOrientationPatient"), 6)
        other_spacing = _float_list(ds.get("PixelSpacing"), 2)
        position = _float_list(ds.get("ImagePositionPatient"), 3)
        if position is None or other_iop is None or other_spacing is None:
            return None
        if ds.get("Rows") != rows or ds.get("Columns") != cols:
            odd_size.append(f"{Path(file).name} ({ds.get('Rows')} x {ds.get('Columns')})")
            continue
        # Rounding in the written cosines is not another orientation (1e-4: 0.006 deg).
        if not np.allclose(other_iop, iop, rtol=0, atol=1e-4):
            odd_orientation.append(Path(file).name)
            continue
        if not np.allclose(other_spacing, spacing, rtol=0, atol=1e-6):
            return None
        try:
            slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        except (TypeError, ValueError):
            return None
        slices.append(_DicomSlice(file, position, slope, intercept))
    if odd_size or odd_orientation:
        odd = odd_size or odd_orientation
        what = (
            f"another size than the {rows} x {cols} of {Path(headers[0][0]).name}"
            if odd_size
            else f"another orientation than {Path(headers[0][0]).name}"
        )
        verb = "has" if len(odd) == 1 else "have"
        raise ImageReadError(
            f"{path}: {counted(len(odd), 'slice')} of the series {verb} {what} "
            f"({listing(odd, 5)}): a localizer or another scan under the same "
            "SeriesInstanceUID? Move them out of the folder"
        )
    # GDCM orders slices by their distance along the normal of the first file's plane.
    row, col = iop[:3], iop[3:]
    normal = _cross(row, col)
    distance = np.array([normal @ s.position for s in slices])
    if len(np.unique(distance)) != len(distance):
        order = np.argsort(distance, kind="stable")
        same = np.flatnonzero(np.diff(distance[order]) == 0)[0]
        a, b = (Path(slices[order[k]].file).name for k in (same, same + 1))
        raise ImageReadError(
            f"{path}: two slices at one position ({a} and {b}, {distance[order[same]]:.2f} mm "
            "along the stack): a duplicated slice, or two scans under the same "
            "SeriesInstanceUID?"
        )
    slices = [slices[i] for i in np.argsort(distance, kind="stable")]
    # Direction as ITK's GDCM image IO makes it (orthogonalised, in its order of
    # operations), spacing along the stack as ITK's series reader computes it: first to
    # last position over the slice count.
    normal = _normalized(normal)
    row = _normalized(_cross(col, normal))
    col = _cross(normal, row)
    span = _norm(slices[-1].position - slices[0].position)
    dz = span / (len(slices) - 1) if span != 0 else 1.0
    geometry = Geometry(
        size=(int(cols), int(rows), len(slices)),
        origin=slices[0].position.copy(),
        spacing=np.array([spacing[1], spacing[0], dz]),
        direction=np.column_stack([row, col, normal]),
    )
    return geometry, slices


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array(
        [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
    )


def _norm(v: np.ndarray) -> float:
    return math.sqrt(float(v[0]) * v[0] + float(v[1]) * v[1] + float(v[2]) * v[2])


def _normalized(v: np.ndarray) -> np.ndarray:
    # As vnl does it: multiply by the reciprocal of the norm.
    return v * (1.0 / _norm(v))


def _rescaled(raw: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    if slope == 1.0 and intercept == 0.0:
        return raw
    if float(slope).is_integer() and float(intercept).is_integer():
        wide = np.int32 if raw.dtype.itemsize <= 2 else np.int64
        return raw.astype(wide) * wide(slope) + wide(intercept)
    return raw.astype(np.float64) * slope + intercept


class _DicomSource(ImageSource):
    """A DICOM series: headers read once, pixel data of the slices a box touches."""

    strategy = "dicom"

    def __init__(self, path: str, geometry: Geometry, slices: list[_DicomSlice]) -> None:
        super().__init__(path, geometry)
        self._slices = slices
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_bytes = 0

    def _slice(self, k: int) -> np.ndarray:
        with self._lock:
            hit = self._cache.get(k)
            if hit is not None:
                self._cache.move_to_end(k)
                return hit
        info = self._slices[k]
        pixels = _dicom_pixels(info, self.geometry.size[1], self.geometry.size[0])
        with self._lock:
            self.files_read.append(info.file)
            if k not in self._cache:
                self._cache[k] = pixels
                self._cached_bytes += pixels.nbytes
            while self._cached_bytes > _DICOM_CACHE_BYTES and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.nbytes
        return pixels

    def _read(self, lo, hi):
        planes = [
            self._slice(z)[lo[1] : hi[1], lo[0] : hi[0]] for z in range(int(lo[2]), int(hi[2]))
        ]
        return np.stack(planes)

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
            self._cached_bytes = 0


def _dicom_pixels(info: _DicomSlice, rows: int, cols: int) -> np.ndarray:
    """One slice's rescaled pixels, read with pydicom, or with SimpleITK (GDCM) for
    transfer syntaxes pydicom cannot decode here."""
    import pydicom

    why = ""
    try:
        raw = pydicom.dcmread(info.file).pixel_array
    except Exception as exc:  # noqa: BLE001 - any decoder problem: let GDCM try
        raw, why = None, _first_line(exc)
    if raw is not None and raw.shape == (rows, cols):
        return _rescaled(raw, info.slope, info.intercept)
    try:
        image = _sitk().ReadImage(info.file)  # GDCM applies the rescale itself
    except RuntimeError as exc:
        # pydicom's reason first: it knows a truncated file as one, where GDCM only
        # finds no reader for it.
        reasons = "; ".join(r for r in (why, f"GDCM: {_first_line(exc)}") if r)
        raise ImageReadError(f"{info.file}: cannot read DICOM pixels ({reasons})") from exc
    return _sitk().GetArrayFromImage(image).reshape(rows, cols)


# ------------------------------------------------------------------------- opening


def open_image(path: str | os.PathLike, series_uid: str | None = None) -> ImageSource:
    """Open an image for reading regions: its header now, voxels on demand.

    Parameters
    ----------
    path : str or path-like
        An image file SimpleITK reads or a directory holding a DICOM series.
    series_uid : str, optional
        SeriesInstanceUID to read when a directory holds several series.

    Returns
    -------
    ImageSource
        Its :meth:`~ImageSource.read_region` reads the least the format allows:
        byte ranges of an uncompressed NIfTI (header parsed as ITK parses it; the
        headers ITK's choices make uncertain are left to SimpleITK) or a raw NRRD;
        a gzipped NIfTI inflated up to the box's last slice (ISA-L, where the
        ``isal`` package is installed; otherwise, like a compressed MetaImage, a
        box streamed by SimpleITK); the pixel data of the slices a box touches in a
        DICOM series (headers read with pydicom; a series pydicom cannot describe
        exactly as SimpleITK does is read whole by SimpleITK). Any other file is
        read whole on first use and kept until :meth:`~ImageSource.close`. The
        values are those :func:`read_image` gives.

    Raises
    ------
    ImageReadError
        Missing or unreadable file, a directory with no or several DICOM series, or an
        image that is not 3D with one component per voxel.

    Examples
    --------
    >>> import numpy as np, SimpleITK as sitk, tempfile, os
    >>> from skfmcib.io import open_image, read_image
    >>> arr = np.random.default_rng(0).integers(-1000, 1000, (20, 30, 40)).astype(np.int16)
    >>> path = os.path.join(tempfile.mkdtemp(), "ct.nrrd")
    >>> sitk.WriteImage(sitk.GetImageFromArray(arr), path)
    >>> source = open_image(path)
    >>> source.strategy, source.geometry.size
    ('raw', (40, 30, 20))
    >>> part = source.read_region([5, 6, 7], [15, 16, 17])
    >>> bool((part == read_image(path).array[7:17, 6:16, 5:15]).all())
    True
    """
    path = Path(path)
    _require_exists(path)
    if path.is_dir():
        return _open_dicom_directory(path, series_uid)
    _check_gzip_complete(path)
    source = _nifti_source(path)
    if source is not None:
        return source
    itk_name = _ItkName(path)
    reader = _sitk().ImageFileReader()
    reader.SetFileName(itk_name.name)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ImageReadError(f"{path}: cannot read image header ({_first_line(exc)})") from exc
    _check_3d_scalar(
        str(path), reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize()
    )
    geometry = _geometry_of(reader)
    io_name = reader.GetImageIOFromFileName(str(path))
    if io_name == "NrrdImageIO":
        layout = _raw_nrrd_layout(str(path), geometry.size)
        if layout is not None:
            return _RawSource(str(path), geometry, *layout)
    elif io_name == "NiftiImageIO":
        compressed = path.name.lower().endswith(".gz")
        return _StreamSource(str(path), geometry, io_name, compressed, itk_name)
    elif io_name == "MetaImageIO":
        fields, header, _ = _meta_header(path)  # read once for the four questions
        _check_meta_compressed(path, fields)
        if _meta_flag(fields, "BinaryData", True):  # text voxels: SimpleITK reads boxes wrong
            compressed = path.name.lower().endswith(".gz") or (
                path.suffix.lower() in (".mha", ".mhd")
                and _meta_flag(fields, "CompressedData", False)
            )
            if not compressed:
                _check_meta_complete(path, geometry.size, fields, header)
            return _StreamSource(str(path), geometry, io_name, compressed, itk_name)
    return _WholeSource(str(path), geometry)


def _nifti_source(path: Path) -> ImageSource | None:
    """A NIfTI file whose header skfmcib reads as ITK does, as a source; else None
    (SimpleITK reads it)."""
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        return None
    layout = _nifti.read_layout(path)
    if layout is None:
        return None
    _check_3d_scalar(str(path), 3, 1, layout.size)
    geometry = Geometry(layout.size, layout.origin, layout.spacing, layout.direction)
    if path.name.lower().endswith(".gz"):
        return _NiftiGzSource(str(path), geometry, layout)
    return _NiftiSource(str(path), geometry, layout)


def _open_dicom_directory(path: Path, series_uid: str | None) -> ImageSource:
    series = _dicom_headers(path)
    layout = None
    if series:
        uid = _pick_series(path, sorted(series), series_uid)
        layout = _dicom_series_layout(series[uid], path)
    if layout is None:
        # Not a series pydicom describes as SimpleITK does (or no DICOM pydicom reads):
        # SimpleITK reads it, whole, and reports any problem.
        volume = _read_dicom_directory(path, series_uid)
        source = _WholeSource(str(path), volume.geometry, series_uid)
        source._volume = volume
        return source
    geometry, slices = layout
    normal = geometry.direction[:, 2]
    _check_slice_gaps(
        path, [float(normal @ sl.position) for sl in slices], [sl.file for sl in slices]
    )
    return _DicomSource(str(path), geometry, slices)


# ------------------------------------------------------------------------ identity

_ANALYZE_PAIRS = ((".hdr", (".img", ".img.gz")), (".hdr.gz", (".img", ".img.gz")),
                  (".img", (".hdr", ".hdr.gz")), (".img.gz", (".hdr", ".hdr.gz")))  # fmt: skip


def _listed_files(folder: Path, spec: str, following: list[str]) -> list[Path] | None:
    """The files a MetaImage ``ElementDataFile`` or NRRD ``data file`` field names.

    ``spec`` is the field's value: one file name, ``LIST`` (the names follow, one a line)
    or a ``printf`` pattern with its first, last and step numbers. None: not understood.
    """
    words = spec.split()
    if not words:
        return None
    if words[0].upper() == "LIST":
        names = [line.strip() for line in following if line.strip()]
    elif "%" in words[0]:
        try:
            first, last, step = (int(w) for w in words[1:4])
            names = [words[0] % i for i in range(first, last + (1 if step > 0 else -1), step)]
        except (ValueError, TypeError):
            return None
    else:
        names = [spec]
    return [folder / name for name in names]


def _data_files(path: Path) -> list[Path] | None:
    """Files other than ``path`` that hold its image: a detached header's voxel files.

    For a MetaImage or NRRD header, the files its ``ElementDataFile`` / ``data file``
    field names; for one half of an Analyze or NIfTI ``.hdr``/``.img`` pair, the other.
    None when a header names its data files in a way not understood here.
    """
    name = path.name.lower()
    for suffix, partners in _ANALYZE_PAIRS:
        if name.endswith(suffix):
            stem = path.name[: -len(suffix)]
            return [q for q in (path.with_name(stem + s) for s in partners) if q.is_file()]
    if name.endswith((".mhd", ".mha")):
        fields, _, rest = _meta_header(path)
        value = fields.get("ElementDataFile")
        if value is None:
            return None
        if value == "LOCAL":
            return []
        return _listed_files(path.parent, value, rest.decode("latin-1").splitlines())
    if name.endswith((".nhdr", ".nrrd")):
        with open(path, "rb") as f:
            head = f.read(1 << 20 if name.endswith(".nhdr") else 1 << 16)
        if name.endswith(".nrrd"):
            head = head.split(b"\n\n", 1)[0]  # the voxels of an attached file follow
        lines = head.decode("latin-1").splitlines()
        for i, line in enumerate(lines):
            key, sep, value = line.partition(": ")
            if sep and key.strip().lower() in ("data file", "datafile"):
                return _listed_files(path.parent, value.strip(), lines[i + 1 :])
        return None if name.endswith(".nhdr") else []
    return []


def image_identity(path: str | os.PathLike, series_uid: str | None = None) -> tuple | None:
    """What identifies an image's current content without reading it, for caches.

    Parameters
    ----------
    path : str or path-like
        Image file or DICOM directory.
    series_uid : str, optional
        The series picked in a DICOM directory.

    Returns
    -------
    tuple or None
        The absolute path and, for the file (with the data files its header names,
        for ``.mhd`` or ``.nhdr``, or the other half of an ``.hdr``/``.img`` pair) or
        every file of a directory: size, modification and status-change times (ns)
        and inode. Rewriting, replacing or touching a file changes it. None when the
        path or a data file does not exist or cannot be examined, or a header names
        its data files in a way not understood here (such an image is not cached).

    Examples
    --------
    >>> import tempfile, os, pathlib
    >>> from skfmcib.io import image_identity
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "ct.nii.gz"
    >>> _ = p.write_bytes(b"1")
    >>> before = image_identity(p)
    >>> _ = p.write_bytes(b"22")
    >>> before == image_identity(p)
    False
    """
    p = Path(path).expanduser().absolute()
    try:
        if p.is_dir():
            with os.scandir(p) as it:
                files = sorted((e.name, e.path) for e in it if e.is_file())
            return (str(p), series_uid, tuple((name, file_state(f)) for name, f in files))
        state = file_state(str(p))
        data = _data_files(p)
        if data is None:
            return None
        return (str(p), state, tuple((str(d), file_state(str(d))) for d in data))
    except (OSError, ValueError):  # missing, unreadable, a name the system refuses
        return None

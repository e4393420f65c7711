"""NIfTI-1 files without SimpleITK: the header and values as ITK reads them.

Most CT scans in NIfTI are one file holding a 3D volume of integers or floats placed by
a qform and/or an sform. For such a file (``.nii``, or ``.nii.gz`` inflated by
:mod:`skfmcib._inflate`), :func:`read_layout` parses the 348-byte header with
:mod:`struct` and computes the geometry exactly as SimpleITK's reader (ITK 5.4's
``NiftiImageIO`` over nifti_clib) does: the qform matrix from its quaternion in single
precision, ITK's choice between qform and sform, the RAS to LPS flip, direction columns
normalised in double precision, spacing from ``pixdim``.
:mod:`skfmcib.io` then reads the rows of a box at their byte offsets (a ``.nii``) or
while inflating the file once for all the boxes asked together (a ``.nii.gz``), and
:func:`scaled` gives them the values SimpleITK gives.

Where ITK's choice depends on details this module does not reproduce (both transforms
set, different, and the sform not the scanner's; neither set; non-positive voxel
sizes; units other than millimetres; vector, 4D or NIfTI-2 images; a transform at the
edge of ITK's tolerance), :func:`read_layout` returns None and the caller reads the file
with SimpleITK, as it does gzipped files where the ``isal`` package is not installed.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _inflate

# NIfTI datatype codes ITK reads as a scalar of the same type.
_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4"}
_XFORM_SCANNER_ANAT = 1
_HEADER_BYTES = 348


@dataclass(frozen=True)
class NiftiLayout:
    """Where a NIfTI file's voxels are and what SimpleITK makes of them.

    Attributes
    ----------
    size : tuple of int
        Voxels along ``(x, y, z)``.
    origin, spacing : ndarray of shape (3,)
        LPS millimetres, as SimpleITK reports them.
    direction : ndarray of shape (3, 3)
        Columns are the image axes' directions in LPS.
    stored : numpy.dtype
        Voxel type in the file, with its byte order.
    offset : int
        Byte offset of the first voxel in the file.
    slope, intercept : float
        Scaling applied to stored values (1 and 0 when none is).
    """

    size: tuple[int, int, int]
    origin: np.ndarray
    spacing: np.ndarray
    direction: np.ndarray
    stored: np.dtype
    offset: int
    slope: float
    intercept: float

    @property
    def rescaled(self) -> bool:
        """Whether SimpleITK scales the stored values (and returns floats)."""
        return _must_rescale(self.slope, self.intercept)


def _must_rescale(slope: float, intercept: float) -> bool:
    # ITK's NiftiImageIO::MustRescale.
    eps = np.finfo(np.float64).eps
    return abs(slope) > eps and (abs(slope - 1.0) > eps or abs(intercept) > eps)


def read_layout(path: str | Path) -> NiftiLayout | None:
    """The layout of a NIfTI-1 file this module reads as SimpleITK does, or None.

    Parameters
    ----------
    path : str or path-like
        A ``.nii`` file, or a ``.nii.gz`` file (its content's header).

    Returns
    -------
    NiftiLayout or None
        None when the file is not a single-file NIfTI-1 3D scalar volume whose
        geometry this module computes exactly as ITK does (see the module's text),
        or is gzipped where the ``isal`` package is not installed.

    Examples
    --------
    >>> import numpy as np, SimpleITK as sitk, tempfile, os
    >>> from skfmcib._nifti import read_layout
    >>> img = sitk.GetImageFromArray(np.zeros((4, 5, 6), dtype=np.int16))
    >>> img.SetSpacing((0.7, 0.7, 1.25)); img.SetOrigin((-10.0, 20.0, 5.0))
    >>> path = os.path.join(tempfile.mkdtemp(), "ct.nii")
    >>> sitk.WriteImage(img, path)
    >>> layout = read_layout(path)
    >>> layout.size, layout.origin.tolist(), layout.stored.str
    ((6, 5, 4), [-10.0, 20.0, 5.0], '<i2')
    """
    try:
        raw = _header_bytes(str(path))
    except OSError:
        return None  # SimpleITK reports what is wrong
    if raw is None or len(raw) < _HEADER_BYTES or raw[344:348] != b"n+1\x00":
        return None
    for order in "<>":
        if struct.unpack(order + "i", raw[:4])[0] == _HEADER_BYTES:
            break
    else:
        return None
    h = _Header(raw, order)
    if h.datatype not in _DTYPES or 1004 <= h.intent_code <= 1007:
        return None
    ndim = h.dim[0]
    if not 3 <= ndim <= 7 or any(d != 1 for d in h.dim[4 : ndim + 1]):
        return None  # 2D, or a fourth dimension ITK keeps
    size = tuple(int(d) for d in h.dim[1:4])
    spacing = [float(p) for p in h.pixdim[1:4]]
    if min(size) < 1 or not all(math.isfinite(p) and p > 0 for p in spacing):
        return None
    if (h.xyzt_units & 0x07) not in (0, 2):  # unknown or millimetres: no scaling
        return None
    matrix = _itk_matrix(h, spacing)
    if matrix is None:
        return None
    lps = np.array([-1.0, -1.0, 1.0])
    m = matrix.astype(np.float64)
    origin = lps * m[:3, 3]
    direction = lps[:, None] * m[:3, :3]
    direction = direction / np.sqrt((direction**2).sum(axis=0))
    if not math.isfinite(h.vox_offset):
        return None  # SimpleITK decides where the voxels are
    offset = int(h.vox_offset)
    if offset != h.vox_offset or offset < 352:
        return None
    slope, intercept = (float(v) if math.isfinite(v) else 0.0 for v in (h.scl_slope, h.scl_inter))
    if abs(slope) < np.finfo(np.float64).eps:
        slope = 1.0  # ITK's reading of a zero slope (the intercept still applies)
    stored = np.dtype(_DTYPES[h.datatype]).newbyteorder(order)
    return NiftiLayout(
        size=size,
        origin=origin,
        spacing=np.array(spacing, dtype=np.float64),
        direction=direction,
        stored=stored,
        offset=offset,
        slope=slope,
        intercept=intercept,
    )


def _header_bytes(path: str) -> bytes | None:
    """The first 348 bytes of a ``.nii`` file, or of a ``.nii.gz`` file's content."""
    if not path.lower().endswith(".gz"):
        with open(path, "rb") as fh:
            return fh.read(_HEADER_BYTES)
    if not _inflate.available():
        return None
    with _inflate.GzipStream(path) as stream:
        return stream.read(_HEADER_BYTES)


class _Header:
    """The fields of a NIfTI-1 header this module uses, as stored (float32 as Python floats)."""

    def __init__(self, raw: bytes, order: str) -> None:
        def unpack(fmt: str, at: int):
            return struct.unpack_from(order + fmt, raw, at)

        self.dim = unpack("8h", 40)
        (self.intent_code, self.datatype) = unpack("2h", 68)
        self.pixdim = unpack("8f", 76)
        (self.vox_offset, self.scl_slope, self.scl_inter) = unpack("3f", 108)
        self.xyzt_units = raw[123]
        (self.qform_code, self.sform_code) = unpack("2h", 252)
        # nifti_clib's FIXED_FLOAT: a quaternion or offset that is not a number is 0.
        self.quatern = tuple(v if math.isfinite(v) else 0.0 for v in unpack("6f", 256))
        self.srow = unpack("12f", 280)


def _quatern_to_mat44(h: _Header, spacing: list[float]) -> np.ndarray:
    # nifti_clib's nifti_quatern_to_mat44: double arithmetic, float result.
    b, c, d, qx, qy, qz = h.quatern
    a = 1.0 - (b * b + c * c + d * d)
    if a < 1.0e-7:
        n = 1.0 / math.sqrt(b * b + c * c + d * d)
        b, c, d, a = b * n, c * n, d * n, 0.0
    else:
        a = math.sqrt(a)
    xd, yd, zd = spacing
    if h.pixdim[0] < 0.0:
        zd = -zd
    rows = [
        [(a * a + b * b - c * c - d * d) * xd, 2.0 * (b * c - a * d) * yd,
         2.0 * (b * d + a * c) * zd, qx],
        [2.0 * (b * c + a * d) * xd, (a * a + c * c - b * b - d * d) * yd,
         2.0 * (c * d - a * b) * zd, qy],
        [2.0 * (b * d - a * c) * xd, 2.0 * (c * d + a * b) * yd,
         (a * a + d * d - c * c - b * b) * zd, qz],
        [0.0, 0.0, 0.0, 1.0],
    ]  # fmt: skip
    return np.array(rows, dtype=np.float64).astype(np.float32)


def _orthonormal_deviation(s: np.ndarray) -> float:
    """How far the sform's normalised columns are from orthonormal (ITK allows 1e-4)."""
    r = s[:3, :3].astype(np.float64)
    norms = np.sqrt((r**2).sum(axis=0))
    if not np.all(norms > 0):
        return math.inf
    r = r / norms
    return float(np.abs(r.T @ r - np.eye(3)).max())


def _itk_matrix(h: _Header, spacing: list[float]) -> np.ndarray | None:
    """The float32 4x4 matrix ITK takes the geometry from, or None when not certain."""
    q_code, s_code = h.qform_code > 0, h.sform_code > 0
    if not (q_code or s_code):
        return None
    q = _quatern_to_mat44(h, spacing) if q_code else None
    s = None
    if s_code:
        s = np.array([*np.reshape(h.srow, (3, 4)), (0, 0, 0, 1)], dtype=np.float32)
        if not np.all(np.isfinite(s)):
            return None
    if s is None:
        return q
    # ITK uses the sform when it is a rotation (normalised columns orthonormal within
    # 1e-4) and the qform is unset or the sform is the scanner's; when both are set and
    # the sform is another space, the two are compared through their SVDs. Decide only
    # far from the tolerance, and only in the cases where the SVDs do not matter.
    deviation = _orthonormal_deviation(s)
    if 1e-5 <= deviation <= 1e-3:
        return None
    rotation = deviation < 1e-5
    if q is None:
        return s if rotation else None  # ITK refuses a sheared sform without a qform
    if np.array_equal(s, q):
        return s  # both choices are the same
    if h.sform_code == _XFORM_SCANNER_ANAT:
        return s if rotation else q
    return None


def scaled(stored: np.ndarray, layout: NiftiLayout) -> np.ndarray:
    """Stored voxel values as SimpleITK returns them: scaled as ITK scales them.

    Parameters
    ----------
    stored : ndarray
        Values as read from the file (any byte order).
    layout : NiftiLayout
        The file's layout, from :func:`read_layout`.

    Returns
    -------
    ndarray
        The stored values in native byte order when the header asks for no scaling;
        otherwise ``slope * value + intercept`` as ITK computes it: float64 data in
        double precision, other data converted to float32, scaled in double precision
        and rounded to float32. NaN and infinite floats are set to 0 first, as
        nifti_clib sets them.

    Examples
    --------
    >>> import numpy as np
    >>> from skfmcib._nifti import NiftiLayout, scaled
    >>> layout = NiftiLayout((2, 1, 1), np.zeros(3), np.ones(3), np.eye(3),
    ...                      np.dtype("<i2"), 352, slope=1.0, intercept=-1024.0)
    >>> scaled(np.array([0, 2048], dtype="<i2"), layout)
    array([-1024.,  1024.], dtype=float32)
    """
    native = stored.astype(stored.dtype.newbyteorder("="), copy=False)
    if native.dtype.kind == "f" and not np.isfinite(native).all():
        # nifti_clib, which ITK reads with, sets non-finite voxels to 0 before scaling.
        native = np.where(np.isfinite(native), native, native.dtype.type(0))
    if not layout.rescaled:
        return native
    if native.dtype == np.float64:
        return native * layout.slope + layout.intercept
    values = native.astype(np.float32).astype(np.float64)
    values *= layout.slope
    values += layout.intercept
    return values.astype(np.float32)

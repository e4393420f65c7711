"""Seeds from label images: one seed per connected lesion, in LPS millimetres.

A lesion table may give ``mask_path`` (a label image: NIfTI, NRRD, MHA, a DICOM
series folder, or a DICOM SEG file when the optional ``highdicom`` package is
installed) instead of coordinates. Each connected lesion of each non-zero label
becomes one row, seeded at its centroid; or, with a label value given, the
centroid of all voxels of that value is the row's seed.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from numbers import Integral
from pathlib import Path

import numpy as np
import pandas as pd

from ._text import counted
from .io import ImageReadError, read_image
from .table import RowError, _given

__all__ = ["MASK_COLUMNS", "read_label_image", "seeds_from_masks"]

MASK_COLUMNS = (
    "mask_row",
    "mask_label",
    "mask_component",
    "mask_voxels",
    "mask_volume_mm3",
    "centroid_in_lesion",
)
_CONNECTIVITY = {6: 1, 18: 2, 26: 3}


def _is_dicom_file(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        head = fh.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _read_dicom_seg(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A DICOM SEG as a label array ``(z, y, x)`` and its 4x4 index -> LPS affine."""
    try:
        import highdicom
    except ImportError as exc:
        raise ImageReadError(
            f"{path}: reading DICOM SEG needs the optional 'highdicom' package "
            "(pip install 'skfmcib[seg]'); or export the segmentation as NIfTI or NRRD"
        ) from exc
    try:
        seg = highdicom.seg.segread(str(path))
        volume = seg.get_volume(combine_segments=True)
    except Exception as exc:  # noqa: BLE001 - highdicom raises many kinds
        raise ImageReadError(f"{path}: cannot read DICOM SEG ({exc})") from exc
    if volume is None:
        raise ImageReadError(f"{path}: DICOM SEG frames do not form a regular 3D volume")
    # highdicom volumes are (slices, rows, columns) with an affine from that index
    # order to the LPS frame of reference: the array and affine are used as they are.
    array = np.asarray(volume.array)
    affine = np.asarray(volume.affine, dtype=np.float64)
    return array, affine


def read_label_image(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a label image as an integer array and its index-to-LPS affine.

    Parameters
    ----------
    path : str or path-like
        NIfTI, NRRD, MHA/MHD, a DICOM series folder, or a DICOM SEG file (needs
        ``highdicom``).

    Returns
    -------
    labels : ndarray of integers
        The label values, in the array order of the file, in the file's integer type
        (``uint8`` for a boolean mask, ``int64`` for whole numbers stored as floats).
    affine : ndarray of shape (4, 4)
        Maps an array index (in the order of ``labels``' axes) to LPS millimetres.

    Raises
    ------
    ImageReadError
        Missing or unreadable file, non-integer labels, a DICOM SEG without highdicom.

    Examples
    --------
    >>> import numpy as np, SimpleITK as sitk, tempfile, os
    >>> from skfmcib.masks import read_label_image
    >>> m = sitk.GetImageFromArray(np.zeros((3, 4, 5), dtype=np.uint8))
    >>> m.SetSpacing((1.0, 1.0, 2.0))
    >>> p = os.path.join(tempfile.mkdtemp(), "mask.nrrd")
    >>> sitk.WriteImage(m, p)
    >>> labels, affine = read_label_image(p)
    >>> labels.shape, affine[:3, 0].tolist()  # array axis 0 is z: 2 mm along S
    ((3, 4, 5), [0.0, 0.0, 2.0])
    """
    path = Path(path)
    if _is_dicom_file(path) and _dicom_modality(path) == "SEG":
        array, affine = _read_dicom_seg(path)
    else:
        volume = read_image(path)
        array = volume.array
        geom = volume.geometry
        # Array axes are (z, y, x): column j of the affine is the direction of axis j.
        affine = np.eye(4)
        affine[:3, :3] = geom.index_to_physical[:, ::-1]
        affine[:3, 3] = geom.origin
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all() or not np.array_equal(array, np.round(array)):
            raise ImageReadError(
                f"{path}: a label image must hold whole numbers; this one has fractional "
                "or non-finite values (a probability map? threshold it first)"
            )
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise ImageReadError(f"{path}: label image of type {array.dtype} is not supported")
    lowest = array.min() if array.size else 0
    if lowest < 0:
        raise ImageReadError(
            f"{path}: a label image holds labels 0, 1, 2, ...; this one has values down to "
            f"{lowest:g} (the CT itself rather than its segmentation?)"
        )
    if array.dtype == bool:
        return array.view(np.uint8), affine
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.int64), affine
    return array, affine  # the file's own integer type: no copy


def _dicom_modality(path: Path) -> str:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return "SEG"  # SimpleITK cannot read SEG headers of some kinds; let highdicom try
    return reader.GetMetaData("0008|0060").strip() if reader.HasMetaDataKey("0008|0060") else ""


# Above this label value, the labels present are listed with np.unique (one list entry
# per possible value would be too many); below, one pass finds every label's box.
_MAX_BOXED_LABEL = 65535


def _label_boxes(labels: np.ndarray) -> list[tuple[int, tuple]]:
    """``(value, bounding box)`` of each non-zero label value present, in value order."""
    from scipy import ndimage

    if labels.size == 0:
        return []
    top = int(labels.max())
    if top <= _MAX_BOXED_LABEL:
        boxes = ndimage.find_objects(labels)  # one pass over the volume for all labels
        return [(v, box) for v, box in enumerate(boxes, start=1) if box is not None]
    whole = tuple(slice(0, n) for n in labels.shape)
    return [(int(v), whole) for v in np.unique(labels) if v != 0]


def _components(labels: np.ndarray, label: int | None, connectivity: int):
    """Yield ``(label value, component number, voxel index array (n, ndim))``."""
    from scipy import ndimage

    if label is not None:
        yield label, 1, np.argwhere(labels == label)
        return
    structure = ndimage.generate_binary_structure(labels.ndim, _CONNECTIVITY[connectivity])
    for value, box in _label_boxes(labels):
        # Each label is labelled within its own box, not over the whole volume.
        lab, n = ndimage.label(labels[box] == value, structure=structure)
        corner = np.array([s.start for s in box])
        for k, sl in enumerate(ndimage.find_objects(lab, n), start=1):
            offset = corner + [s.start for s in sl]
            yield value, k, np.argwhere(lab[sl] == k) + offset


def seeds_from_masks(
    table: pd.DataFrame,
    label: int | None = None,
    *,
    connectivity: int = 26,
    min_voxels: int = 1,
) -> pd.DataFrame:
    """Turn a table of label images into a lesion table with one seed per lesion.

    Parameters
    ----------
    table : DataFrame
        One row per mask: ``mask_path`` (label image) and usually ``image_path`` (the
        CT). An optional ``mask_label`` column gives a label value per row.
    label : int, optional
        The label value whose voxels form the lesion: the seed is the centroid of all
        voxels of that value (one row per mask). When omitted (and no ``mask_label``
        column), every connected component of every non-zero value is a lesion. A
        row's ``mask_label`` that differs from it is an error (which one was meant?);
        rows with an empty ``mask_label`` use it.
    connectivity : {6, 18, 26}, default=26
        Which neighbours join voxels into one lesion (faces; faces and edges; all).
    min_voxels : int, default=1
        Components with fewer voxels are ignored (specks).

    Returns
    -------
    DataFrame
        The input's columns repeated for each lesion, plus ``coordX``, ``coordY``,
        ``coordZ`` (the centroid, LPS mm), ``mask_row`` (the input row's label),
        ``mask_label`` (the value), ``mask_component`` (1, 2, ... within the value),
        ``mask_voxels``, ``mask_volume_mm3`` and ``centroid_in_lesion`` (False for
        a hollow or curved lesion whose centroid falls outside it). Index 0..n-1.

    Raises
    ------
    RowError
        A mask that cannot be read or holds no lesion; names the row and the file.
    ValueError
        The table has no ``mask_path`` column, or bad arguments.

    Examples
    --------
    >>> import numpy as np, pandas as pd, SimpleITK as sitk, tempfile, os
    >>> from skfmcib.masks import seeds_from_masks
    >>> a = np.zeros((20, 20, 20), dtype=np.uint8)
    >>> a[2:5, 2:5, 2:5] = 1          # a 3x3x3 lesion around index (3, 3, 3)
    >>> a[10:14, 12:16, 6:10] = 1     # another, label 1 as well
    >>> m = sitk.GetImageFromArray(a)
    >>> m.SetOrigin((-10.0, -10.0, 0.0))
    >>> p = os.path.join(tempfile.mkdtemp(), "mask.nii.gz")
    >>> sitk.WriteImage(m, p)
    >>> seeds = seeds_from_masks(pd.DataFrame({"mask_path": [p]}))
    >>> seeds[["coordX", "coordY", "coordZ", "mask_voxels"]].values.tolist()
    [[-7.0, -7.0, 3.0, 27.0], [-2.5, 3.5, 11.5, 64.0]]
    """
    if connectivity not in _CONNECTIVITY:
        raise ValueError(f"connectivity must be 6, 18 or 26, got {connectivity!r}")
    if not isinstance(table, pd.DataFrame) or "mask_path" not in table.columns:
        raise ValueError("seeds_from_masks needs a DataFrame with a 'mask_path' column")
    if len(table) == 0:
        raise ValueError("lesion table is empty")
    if label is not None and _label_value(label) is None:
        raise ValueError(f"label must be a positive whole number, got {label!r}")
    if isinstance(min_voxels, bool) or not isinstance(min_voxels, Integral) or min_voxels < 1:
        raise ValueError(f"min_voxels must be a positive integer, got {min_voxels!r}")
    rows = []
    for row_label, rec in table.iterrows():
        value = label
        if "mask_label" in table.columns and _given(rec["mask_label"]):
            value = _label_value(rec["mask_label"])
            if value is None:
                raise RowError(
                    row_label,
                    str(rec["mask_path"]),
                    f"mask_label {rec['mask_label']!r} is not a positive whole number",
                )
            if label is not None and value != label:
                raise RowError(
                    row_label,
                    str(rec["mask_path"]),
                    f"its mask_label {value} differs from the label given for every row "
                    f"({label}); give one or the other",
                )
        rows.extend(_lesions_of(row_label, rec, value, connectivity, min_voxels))
    out = pd.DataFrame(rows).reset_index(drop=True)
    for col in ("mask_row", "mask_label", "mask_component", "mask_voxels"):
        if pd.api.types.is_integer_dtype(out[col]) or pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].astype(np.int64)  # row labels stay as they are otherwise
    return out


def _label_value(value) -> int | None:
    """``value`` as a positive whole number, else None (0 is the background)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() and number > 0 else None


def _lesions_of(
    row: Hashable, rec: pd.Series, value: int | None, connectivity: int, min_voxels: int
) -> list[dict]:
    path = rec["mask_path"]
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise RowError(row, "", "mask_path is empty")
    try:
        labels, affine = read_label_image(path)
    except ImageReadError as exc:
        raise RowError.from_image_error(row, path, exc) from exc
    voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
    found = []
    for lab, comp, idx in _components(labels, value, connectivity):
        if len(idx) < min_voxels:
            continue
        centre = idx.mean(axis=0)
        lps = affine[:3, :3] @ centre + affine[:3, 3]
        nearest = tuple(np.clip(np.round(centre).astype(np.int64), 0, np.array(labels.shape) - 1))
        entry = rec.to_dict()
        entry.pop("mask_label", None)
        entry.update(
            coordX=float(lps[0]),
            coordY=float(lps[1]),
            coordZ=float(lps[2]),
            mask_row=row,
            mask_label=int(lab),
            mask_component=int(comp),
            mask_voxels=int(len(idx)),
            mask_volume_mm3=float(len(idx) * voxel_mm3),
            centroid_in_lesion=bool(labels[nearest] == lab),
        )
        found.append(entry)
    if not found:
        what = f"label {value}" if value is not None else "non-zero voxels"
        size = f" (at least {counted(min_voxels, 'voxel')})" if min_voxels > 1 else ""
        raise RowError(row, str(path), f"mask holds no {what}{size}")
    return found

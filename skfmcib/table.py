"""Lesion tables: one row per lesion, an image path and a seed point.

The reference's convention: columns ``image_path``, ``coordX``, ``coordY`` and
``coordZ``, the seed in physical millimetres, LPS. Other columns are kept but
ignored; an optional ``series_uid`` column picks a series in a DICOM directory
holding several.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Hashable

import numpy as np
import pandas as pd

__all__ = ["COORD_COLUMNS", "REQUIRED_COLUMNS", "RowError", "row_problem", "validate_table"]

COORD_COLUMNS = ("coordX", "coordY", "coordZ")
# Options for pd.read_csv that read every number as written. pandas before 3 parses
# 17-digit numbers to a neighbouring float in about one case in six by default: a seed
# on a voxel centre can then fall one voxel lower in the reference's truncated index.
EXACT_CSV = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
REQUIRED_COLUMNS = ("image_path", *COORD_COLUMNS)
_COORDINATE_SYSTEMS = ("LPS", "RAS")
# Columns some reader of the package uses: one of them twice is ambiguous.
_READ_COLUMNS = (*REQUIRED_COLUMNS, "series_uid", "mask_path", "mask_label")


def check_csv_header(path: str | os.PathLike) -> None:
    """Refuse a CSV file whose header names a column the package reads twice.

    pandas would rename the second ``coordX`` to ``coordX.1`` and the first would be
    used silently.
    """
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        # The first line that is not blank, as pandas takes it.
        first = next((line for line in fh if line.strip()), "")
    header = next(csv.reader([first]), [])
    twice = sorted({c for c in header if c in _READ_COLUMNS and header.count(c) > 1})
    if twice:
        raise ValueError(
            f"{path}: the header names column(s) {', '.join(twice)} more than once; "
            "keep one of each"
        )


def columns_hint(columns) -> str:
    """A hint for a table that lacks the required columns ('' when there is none)."""
    names = [str(c) for c in columns]
    if len(names) == 1:
        for sep, what in ((";", "semicolons"), ("\t", "tabs")):
            if sep in names[0]:
                return (
                    f"; its single column {names[0]!r} holds {what}: the file looks "
                    f"separated by {what}, and a lesion table is comma-separated"
                )
    lowered = {n.strip().lower(): n for n in names}
    near = [
        lowered[c.lower()] for c in REQUIRED_COLUMNS if c not in names and c.lower() in lowered
    ]
    if near:
        return f" (column names are case- and space-sensitive; found {near})"
    return ""


class RowError(ValueError):
    """A lesion row that cannot be processed; names the row, the file and the problem.

    The attributes below are also the constructor's parameters, in this order.

    Attributes
    ----------
    row : hashable
        The row's index label in the table.
    path : str
        The row's image path.
    reason : str
        What is wrong.
    """

    def __init__(self, row: Hashable, path: str, reason: str) -> None:
        self.row, self.path, self.reason = row, path, reason
        super().__init__(f"row {row} ({path}): {reason}")

    def __reduce__(self):
        return (type(self), (self.row, self.path, self.reason))

    @classmethod
    def from_image_error(cls, row: Hashable, path, exc: BaseException) -> RowError:
        """The error of a row whose image (or mask) could not be read: ``exc``'s message,
        which names the file first, as the reason.

        Parameters
        ----------
        row : hashable
            The row's index label in the table.
        path : str or path-like
            The file that could not be read.
        exc : BaseException
            The reading error; its message, less a leading ``"{path}: "``, becomes the
            reason.

        Returns
        -------
        RowError

        Examples
        --------
        >>> from skfmcib.table import RowError
        >>> str(RowError.from_image_error(3, "ct.nii", OSError("ct.nii: not found")))
        'row 3 (ct.nii): not found'
        """
        return cls(row, str(path), str(exc).removeprefix(f"{path}: "))


def validate_table(table: pd.DataFrame, coordinate_system: str = "LPS") -> pd.DataFrame:
    """Check a lesion table and return its seeds in LPS.

    Parameters
    ----------
    table : DataFrame
        One row per lesion with ``image_path``, ``coordX``, ``coordY``, ``coordZ``.
    coordinate_system : {"LPS", "RAS"}, default="LPS"
        Convention of the coordinates. RAS coordinates (3D Slicer, nibabel) have x
        and y negated relative to LPS.

    Returns
    -------
    DataFrame
        Columns ``image_path`` (str), ``series_uid`` (str or None) and ``x``, ``y``,
        ``z`` (float, LPS mm), with the input's index. Rows with a missing or
        non-numeric coordinate keep NaN there; :func:`row_problem` reports them.

    Raises
    ------
    ValueError
        When a required column is missing, the table is empty, or the coordinate
        system is unknown.

    Examples
    --------
    >>> import pandas as pd
    >>> from skfmcib.table import validate_table
    >>> t = pd.DataFrame({"image_path": ["ct.nii.gz"], "coordX": [10.0],
    ...                   "coordY": [-20.0], "coordZ": [5.0]})
    >>> validate_table(t, "RAS")[["x", "y", "z"]].values.tolist()
    [[-10.0, 20.0, 5.0]]
    """
    if coordinate_system not in _COORDINATE_SYSTEMS:
        raise ValueError(
            f"coordinate_system must be one of {_COORDINATE_SYSTEMS}, got {coordinate_system!r}"
        )
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(table).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"lesion table lacks column(s) {missing}; it needs {list(REQUIRED_COLUMNS)} "
            f"(has {list(map(str, table.columns))}){columns_hint(table.columns)}"
        )
    if len(table) == 0:
        raise ValueError("lesion table is empty")
    out = pd.DataFrame(index=table.index)
    out["image_path"] = [_path_str(p) for p in table["image_path"]]
    if "series_uid" in table.columns:
        # Missing (None, NaN, pd.NA of a nullable column) or empty: not given.
        # An object column: pandas 3 would make a text column of strings and None,
        # with NaN for None.
        out["series_uid"] = pd.Series(
            [_path_str(u) or None for u in table["series_uid"]], index=table.index, dtype=object
        )
    else:
        out["series_uid"] = None
    sign = (-1.0, -1.0, 1.0) if coordinate_system == "RAS" else (1.0, 1.0, 1.0)
    for col, axis, s in zip(COORD_COLUMNS, "xyz", sign, strict=True):
        out[axis] = pd.to_numeric(table[col], errors="coerce").astype(np.float64) * s
    return out


def _path_str(p) -> str:
    if p is None or (pd.api.types.is_scalar(p) and pd.isna(p)):
        return ""  # missing, whatever the column's type (NaN, None, pd.NA, NaT)
    return str(p)


def _given(value) -> bool:
    """Whether a table cell holds a value (not missing, not empty text)."""
    return bool(_path_str(value).strip())


def row_problem(rec: pd.Series) -> str:
    """Describe what is wrong with a row of :func:`validate_table`'s output, or ''.

    Only what can be told without reading the image: an empty path or a missing,
    non-numeric or infinite coordinate.

    Parameters
    ----------
    rec : Series
        A row of :func:`validate_table`'s output (``image_path``, ``x``, ``y``, ``z``).

    Returns
    -------
    str
        The problem, or ``""`` when the row looks usable.

    Examples
    --------
    >>> import pandas as pd
    >>> from skfmcib.table import row_problem
    >>> row_problem(pd.Series({"image_path": "ct.nii.gz", "x": 1.0, "y": float("nan"),
    ...                        "z": 2.0}))
    'coordinate coordY is missing or not a finite number'
    """
    if not rec["image_path"]:
        return "image_path is empty"
    bad = [c for c, a in zip(COORD_COLUMNS, "xyz", strict=True) if not np.isfinite(rec[a])]
    if bad:
        return f"coordinate {', '.join(bad)} is missing or not a finite number"
    return ""

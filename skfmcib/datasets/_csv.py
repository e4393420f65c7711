"""Reader for lesion tables in the reference package's CSV format."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..table import EXACT_CSV, check_csv_header, columns_hint

__all__ = ["read_reference_csv"]

_REQUIRED = ("image_path", "coordX", "coordY", "coordZ")
_COORDS = _REQUIRED[1:]


def read_reference_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a lesion table in the reference package's CSV format.

    The format has one row per lesion with the columns ``image_path``, ``coordX``,
    ``coordY`` and ``coordZ`` (the seed point in physical millimetres, LPS). Other
    columns are parsed as :func:`pandas.read_csv` parses them by default, as the
    reference package reads the file: numbers become numbers (``007`` is 7), empty
    cells and ``NA`` are missing. :func:`skfmcib.extract.read_table` keeps them as
    written instead.

    Parameters
    ----------
    path : str or path-like
        The CSV file.

    Returns
    -------
    DataFrame
        The table with a fresh ``RangeIndex``, columns in the file's order.
        ``image_path`` holds absolute path strings: relative paths are resolved
        against the folder holding the CSV file (not the working directory), ``~``
        is expanded, and absolute paths are kept (normalised). Whether the images
        exist is not checked. ``coordX``, ``coordY`` and ``coordZ`` are float64.
        Blank lines (nothing but spaces and commas) are skipped, and leave the types
        of the other columns as they would be without them.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When the file cannot be parsed as CSV or has no header, when a required
        column is missing or named twice (the message names the file and the
        columns; a file separated by semicolons is said to be), or when an
        ``image_path`` is empty or a coordinate is missing, non-numeric or infinite
        (the message names the file, the column, the value and the row both as its
        0-based position among the data rows and as its 1-based line in the file,
        counting the header as line 1 and assuming one record per line).

    See Also
    --------
    make_lesion_cohort : Writes a synthetic cohort with such a CSV file.

    Examples
    --------
    >>> import os, tempfile
    >>> from skfmcib.datasets import read_reference_csv
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     csv = os.path.join(tmp, "seeds.csv")
    ...     with open(csv, "w") as f:
    ...         _ = f.write("image_path,coordX,coordY,coordZ,label\\n")
    ...         _ = f.write("scans/ct.nii.gz,10.5,-20,33,1\\n")
    ...     table = read_reference_csv(csv)
    ...     image = table.loc[0, "image_path"]
    ...     image == os.path.join(tmp, "scans", "ct.nii.gz")
    True
    >>> table[["coordX", "coordY", "coordZ"]].values.tolist(), table["label"].tolist()
    ([[10.5, -20.0, 33.0]], [1])
    """
    csv_path = Path(os.fspath(path)).expanduser()
    if not csv_path.is_file():
        raise FileNotFoundError(f"lesion table {str(csv_path)!r} does not exist or is not a file")
    name = str(csv_path)
    try:
        # Every cell as written, blank lines kept as rows, so that row positions map to
        # file lines; the rows kept are then parsed as pandas parses a file.
        text = pd.read_csv(csv_path, skip_blank_lines=False, dtype=str, keep_default_na=False)
        check_csv_header(csv_path)
    except pd.errors.EmptyDataError:
        raise ValueError(
            f"{name}: the file is empty; expected a header line with {', '.join(_REQUIRED)}"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{name}: cannot be read as CSV: {exc}") from None

    missing = [c for c in _REQUIRED if c not in text.columns]
    if missing:
        found = ", ".join(map(str, text.columns))
        raise ValueError(
            f"{name}: missing required column(s) {', '.join(missing)}; the reference "
            f"format needs {', '.join(_REQUIRED)}; found columns: {found}"
            f"{columns_hint(text.columns)}"
        )

    text = text.fillna("")  # the cells of a short row
    # A blank line: nothing but spaces and commas.
    blank = (text.apply(lambda column: column.str.strip()) == "").all(axis=1).to_numpy()
    lines = (np.arange(len(text)) + 2)[~blank]  # line 1 is the header
    text = text.loc[~blank].reset_index(drop=True)
    table = pd.read_csv(
        io.StringIO(text.to_csv(index=False)), dtype={"image_path": object}, **EXACT_CSV
    )

    for col in _COORDS:
        values = pd.to_numeric(table[col], errors="coerce").astype(np.float64)
        bad = ~np.isfinite(values.to_numpy())
        if bad.any():
            pos = int(np.flatnonzero(bad)[0])
            raw_value = text[col].iloc[pos]
            # Empty, spaces, NA, nan, null, ...: what pandas reads as missing.
            missing = pd.isna(table[col].iloc[pos]) or not raw_value.strip()
            what = "missing" if missing else f"not a finite number: {raw_value!r}"
            raise ValueError(
                f"{name}: {col} is {what} in data row {pos} (0-based, blank lines "
                f"skipped), line {lines[pos]} of the file"
                + (f"; {int(bad.sum())} row(s) in all" if bad.sum() > 1 else "")
            )
        table[col] = values

    folder = csv_path.absolute().parent
    paths = []
    for pos, value in enumerate(table["image_path"]):
        if pd.isna(value) or not str(value).strip():
            raise ValueError(
                f"{name}: image_path is empty in data row {pos} (0-based, blank lines "
                f"skipped), line {lines[pos]} of the file"
            )
        p = Path(str(value).strip()).expanduser()
        paths.append(os.path.normpath(p if p.is_absolute() else folder / p))
    table["image_path"] = paths
    return table

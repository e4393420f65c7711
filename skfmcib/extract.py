"""Resumable feature extraction for lesion tables: the library behind ``skfmcib extract``.

A run splits the table into chunks of whole images (each image is read once),
encodes them with :class:`~skfmcib.FMCIBTransformer` and writes each finished
chunk atomically as its own part file in ``OUT.parts/``, next to a manifest that
records the run's provenance and the chunks done. A run that is killed loses at
most the chunk in progress; ``resume=True`` checks that the provenance matches
and computes only the missing chunks. The parts are then assembled, in the
table's row order, into the output file (again atomically), and removed.

Files written for an output ``OUT``:

- ``OUT`` (``.parquet`` or ``.csv``): the input columns and the feature columns;
  the provenance is in the Parquet schema metadata (key ``skfmcib``) or, for CSV,
  in ``OUT.provenance.json``;
- ``OUT.errors.csv``: one line per failed row (``row``, ``image_path``,
  ``reason``), always written (empty but for its header when nothing failed);
- ``OUT.parts/`` while the run is unfinished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._files import atomic_write
from ._progress import Progress
from ._text import counted, listing
from .patches import HU_OFFSET, HU_SCALE, PATCH_SIZE, RowWarning
from .table import (
    COORD_COLUMNS,
    EXACT_CSV,
    RowError,
    _given,
    check_csv_header,
    validate_table,
)
from .transformer import FMCIBTransformer

__all__ = [
    "ExtractError",
    "ExtractSummary",
    "ProvenanceMismatch",
    "extract",
    "prepare_table",
    "read_provenance",
    "read_table",
    "table_digest",
]

ON_ERROR = ("raise", "skip", "nan")
DEFAULT_CHUNK_SIZE = 64
PARTS_FORMAT = "skfmcib-extract-parts/1"
METADATA_KEY = b"skfmcib"
ERROR_COLUMNS = ["row", "image_path", "reason"]

# Provenance entries that must agree for a run to be resumed: they decide the numbers
# (weights, architecture, preprocessing, arithmetic) or which rows exist (the table).
# The device and batch size are recorded but may change between a run and its resumption.
_FINGERPRINT_KEYS = (
    "skfmcib_version",
    "weights_digest",
    "encoder_config",
    "n_features",
    "precision",
    "preprocessing",
    "table_sha256",
    "n_rows",
    "chunk_size",
)

# Columns of a lesion table whose values the package reads: paths and DICOM series UIDs
# (text), the seed and the mask label (numbers). Every other column of a CSV table is read
# as text exactly as written, so that the output repeats it unchanged.
_PATH_COLUMNS = ("image_path", "mask_path", "series_uid")
_NUMBER_COLUMNS = (*COORD_COLUMNS, "mask_label")

# Set by the command line: how messages name the options (see command_line_messages).
_COMMAND_LINE: ContextVar[Callable[[str], str] | None] = ContextVar(
    "skfmcib_extract_command_line", default=None
)
_UNSET = object()


class ExtractError(RuntimeError):
    """A run could not start or could not go on (usage, provenance, a failed row).

    Attributes
    ----------
    exit_status : int
        What the command line returns for it: 1 when rows failed, 2 otherwise.
    """

    def __init__(self, message: str, exit_status: int = 2) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class ProvenanceMismatch(ExtractError):
    """``resume`` found parts of a run made with other weights, parameters or table."""


@dataclass
class ExtractSummary:
    """What :func:`extract` did.

    Made by :func:`extract`; the attributes below are also the constructor's
    parameters, in this order.

    Attributes
    ----------
    out : pathlib.Path
        The output file.
    errors_path : pathlib.Path
        The errors file (``OUT.errors.csv``).
    n_rows : int
        Rows of the (seed) table.
    n_written : int
        Rows in the output (``n_rows`` less the failed ones with ``on_error="skip"``).
    n_failed : int
        Rows whose features could not be computed (listed in the errors file).
    n_chunks : int
        Chunks the table was split into.
    n_chunks_resumed : int
        Chunks found done by an earlier run and not computed again.
    n_duplicates : int
        Rows that repeat an earlier row's image and seed; computed once, copied.
    seconds : float
        Wall time of the call.
    provenance : dict
        The provenance written into the output.
    already_complete : bool
        True when ``resume`` found the output finished already and wrote nothing.
    """

    out: Path
    errors_path: Path
    n_rows: int
    n_written: int
    n_failed: int
    n_chunks: int
    n_chunks_resumed: int
    n_duplicates: int
    seconds: float
    provenance: dict = field(repr=False)
    already_complete: bool = False

    @property
    def exit_status(self) -> int:
        """0 when every row succeeded, 1 when some failed."""
        return 1 if self.n_failed else 0


# -------------------------------------------------------------------------- messages


@contextlib.contextmanager
def command_line_messages(translate: Callable[[str], str] = str) -> Iterator[None]:
    """Word the messages of the :func:`extract` calls inside for a command-line user.

    Options are named by their flags (``--resume``, ``--on-error skip``) instead of their
    parameters (``resume=True``, ``on_error='skip'``), and ``translate`` rewrites the
    reasons of failed rows, which other modules word for Python, where they reach the
    user (``OUT.errors.csv`` and error messages). ``skfmcib extract`` runs in it.

    Parameters
    ----------
    translate : callable, optional
        Maps a reason to its command-line wording; reasons are kept as they are when
        omitted.
    """
    token = _COMMAND_LINE.set(translate)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def _option(name: str, value: Any = _UNSET) -> str:
    """An option as messages name it: ``resume=True`` for Python, ``--resume`` for the CLI."""
    if _COMMAND_LINE.get() is None:
        return name if value is _UNSET else f"{name}={value!r}"
    flag = "--" + name.replace("_", "-")
    return flag if value is _UNSET or value is True else f"{flag} {value}"


def _options(**values: Any) -> str:
    """Options set together: ``resume=True, on_error='skip'`` or ``--resume --on-error skip``."""
    sep = ", " if _COMMAND_LINE.get() is None else " "
    return sep.join(_option(name, value) for name, value in values.items())


def _reason(text: str) -> str:
    """A failed row's reason as the user reads it (see :func:`command_line_messages`)."""
    translate = _COMMAND_LINE.get()
    return text if translate is None else translate(text)


# ----------------------------------------------------------------------------- paths


def parts_dir(out: str | os.PathLike) -> Path:
    """Folder of an unfinished run's part files: ``OUT.parts``."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def errors_path(out: str | os.PathLike) -> Path:
    """The errors file of an output: ``OUT.errors.csv``."""
    out = Path(out)
    return out.with_name(out.name + ".errors.csv")


def provenance_path(out: str | os.PathLike) -> Path:
    """The provenance sidecar of a CSV output: ``OUT.provenance.json``."""
    out = Path(out)
    return out.with_name(out.name + ".provenance.json")


def _output_format(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise ExtractError(f"{out}: output must end in .parquet or .csv (got {suffix or 'none'!r})")


def _require_pyarrow(what: str):
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        instead = "give a .csv table" if "table" in what else "write a .csv output"
        raise ExtractError(
            f"{what} needs the optional 'pyarrow' package: pip install 'skfmcib[parquet]' "
            f"(or {instead})"
        ) from exc
    return pyarrow


# ------------------------------------------------------------------- atomic writes


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=1, sort_keys=True)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# --------------------------------------------------------------------------- tables


def read_table(path: str | os.PathLike, image_root: str | os.PathLike | None = None):
    """Read a lesion table from CSV (or Parquet) and resolve relative image paths.

    In a CSV table the columns the package reads are parsed: ``image_path``,
    ``mask_path`` and ``series_uid`` as text, ``coordX``, ``coordY``, ``coordZ`` and
    ``mask_label`` as numbers, empty cells and ``NA`` as missing values. Every other
    column is read as text exactly as written (``007`` stays ``007``, ``NA`` stays
    ``NA``, an empty cell is ``""``), so that the output repeats it unchanged. A Parquet
    table's columns keep their types.

    Parameters
    ----------
    path : str or path-like
        A ``.csv`` file (or ``.parquet``, with pyarrow).
    image_root : str or path-like, optional
        Folder that relative ``image_path`` and ``mask_path`` values are relative to;
        the table's own folder when omitted.

    Returns
    -------
    table : DataFrame
        The table as read; this is what the output repeats.
    resolved : DataFrame
        The same with absolute ``image_path`` (and ``mask_path``) values.

    Examples
    --------
    >>> import os, tempfile
    >>> from pathlib import Path
    >>> from skfmcib.extract import read_table
    >>> d = tempfile.mkdtemp()
    >>> p = Path(d, "seeds.csv")
    >>> _ = p.write_text("image_path,coordX,coordY,coordZ\\nct.nii.gz,1,2,3\\n")
    >>> table, resolved = read_table(p)
    >>> resolved["image_path"][0] == os.path.join(d, "ct.nii.gz")
    True
    >>> _ = p.write_text("image_path,coordX,coordY,coordZ,pid,flag\\nct.nii.gz,1,2,3,007,NA\\n")
    >>> table, _ = read_table(p)
    >>> table["coordX"].tolist(), table["pid"].tolist(), table["flag"].tolist()
    ([1], ['007'], ['NA'])
    """
    path = _table_file(path)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            _require_pyarrow("reading a .parquet table")
            table = pd.read_parquet(path)
        else:
            table = _read_csv(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, pd.errors.EmptyDataError):
            raise ExtractError(f"{path}: the lesion table is empty (no header)") from exc
        raise ExtractError(f"{path}: cannot read the lesion table ({exc})") from exc
    root = Path(image_root) if image_root is not None else path.resolve().parent
    return table, resolve_paths(table, root)


def _table_file(path: str | os.PathLike) -> Path:
    """The lesion table file ``path`` names (``~`` is the home folder); an error if none."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ExtractError(f"{path}: no such lesion table")
    return path


def _read_csv(path: Path) -> pd.DataFrame:
    """A CSV lesion table: the columns the package reads parsed, the others as written."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    check_csv_header(path)
    parsed = pd.read_csv(path, dtype={c: str for c in _PATH_COLUMNS}, **EXACT_CSV)
    for col in table.columns:
        if col in _PATH_COLUMNS or col in _NUMBER_COLUMNS:
            table[col] = parsed[col]
    return table


def resolve_paths(table: pd.DataFrame, root: str | os.PathLike) -> pd.DataFrame:
    """Return a copy of ``table`` whose relative image and mask paths start at ``root``."""
    resolved = table.copy()
    root = Path(root).expanduser()
    for col in ("image_path", "mask_path"):
        if col in resolved.columns:
            resolved[col] = [_resolve(p, root) for p in resolved[col]]
    return resolved


def _resolve(p, root: Path):
    if not isinstance(p, str) or not p:
        return p
    return str(root / Path(p).expanduser())


def table_digest(table: pd.DataFrame) -> str:
    """SHA-256 of a table's columns, index and values (stable across processes).

    Parameters
    ----------
    table : DataFrame
        Any table; cells that pandas cannot hash (lists, dicts) are digested through
        their CSV text.

    Returns
    -------
    str
        The digest as 64 hexadecimal digits; the same for equal tables (same column
        names, types, index and values, in the same order).

    Examples
    --------
    >>> import pandas as pd
    >>> from skfmcib.extract import table_digest
    >>> a = pd.DataFrame({"x": [1.0, 2.0]})
    >>> table_digest(a) == table_digest(a.copy()), table_digest(a) == table_digest(a[::-1])
    (True, False)
    """
    h = hashlib.sha256()
    h.update(json.dumps([str(c) for c in table.columns]).encode())
    h.update(json.dumps([str(t) for t in table.dtypes]).encode())
    try:
        values = pd.util.hash_pandas_object(table, index=True).to_numpy()
        h.update(values.tobytes())
    except TypeError:  # unhashable cells (lists, dicts): fall back to their text
        h.update(table.to_csv().encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- chunks


def _plan_chunks(seeds: pd.DataFrame, chunk_size: int) -> list[np.ndarray]:
    """Positions of each chunk: whole images, in order of first appearance.

    Images are added to a chunk until it holds at least ``chunk_size`` rows, so every
    image is read once; an image with more rows than ``chunk_size`` is a chunk alone.
    """
    groups: dict[tuple, list[int]] = {}
    for pos, key in enumerate(zip(seeds["image_path"], seeds["series_uid"], strict=True)):
        groups.setdefault(key, []).append(pos)
    chunks, current = [], []
    for positions in groups.values():
        current.extend(positions)
        if len(current) >= chunk_size:
            chunks.append(np.asarray(current, dtype=np.int64))
            current = []
    if current:
        chunks.append(np.asarray(current, dtype=np.int64))
    return chunks


@dataclass
class ChunkResult:
    """Features and failures of one chunk (positions are 0-based table rows)."""

    positions: np.ndarray
    features: np.ndarray
    errors: dict[int, str]
    n_duplicates: int = 0
    weights_digest: str = ""


_ROW_MESSAGE = re.compile(r"^row (-?\d+) \(")


def _row_reason(message: str, pos: int, path: str) -> str:
    text = message.removesuffix("; its features are NaN")
    prefix = f"row {pos} ({path}): "
    return text.removeprefix(prefix) if text.startswith(prefix) else text


def _dedupe(sub: pd.DataFrame, seeds: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Keep the first of rows with the same image, series and seed; map back by index."""
    key = seeds.loc[sub.index, ["image_path", "series_uid", "x", "y", "z"]].astype(str)
    codes = pd.factorize(pd.MultiIndex.from_frame(key))[0]
    _, first = np.unique(codes, return_index=True)
    first = np.sort(first)
    remap = np.empty(codes.max() + 1, dtype=np.int64)
    remap[codes[first]] = np.arange(len(first))
    return sub.iloc[first], remap[codes]


def encode_chunk(
    transformer: FMCIBTransformer, sub: pd.DataFrame, seeds: pd.DataFrame | None = None
) -> ChunkResult:
    """Encode the rows of one chunk with a fitted transformer, collecting row failures.

    Parameters
    ----------
    transformer : FMCIBTransformer
        Fitted. Its ``on_error`` is ignored: failing rows are recorded, not raised.
    sub : DataFrame
        Rows of the table (absolute image paths), indexed by their 0-based position.
    seeds : DataFrame, optional
        :func:`~skfmcib.table.validate_table` of ``sub`` (computed when omitted).

    Returns
    -------
    ChunkResult
        Features (NaN for failed rows) and the reason for each failed position.
    """
    if seeds is None:
        seeds = validate_table(sub, transformer.coordinate_system)
    model = transformer.set_params(on_error="nan", progress=False)
    unique, back = _dedupe(sub, seeds)
    features, errors = _transform_isolating(model, unique, seeds)
    positions = sub.index.to_numpy(dtype=np.int64)
    reasons: dict[int, str] = {}
    unique_pos = unique.index.to_numpy(dtype=np.int64)
    for pos, u in zip(positions, back, strict=True):
        if unique_pos[u] in errors:
            reasons[int(pos)] = errors[int(unique_pos[u])]
    return ChunkResult(
        positions=positions,
        features=np.ascontiguousarray(features[back], dtype=np.float32),
        errors=reasons,
        n_duplicates=len(sub) - len(unique),
        weights_digest=transformer.weights_info_.digest,
    )


def _transform_isolating(
    model: FMCIBTransformer, sub: pd.DataFrame, seeds: pd.DataFrame
) -> tuple[np.ndarray, dict[int, str]]:
    """Transform ``sub``; an unexpected exception is pinned on the image that raised it."""
    try:
        return _transform_recording(model, sub, seeds)
    except Exception as exc:  # noqa: BLE001 - any failure of one image must not stop a run
        from .weights import CheckpointError  # imported already: the encoder is loaded

        if isinstance(exc, CheckpointError):
            raise  # the weights changed under the run: no row's fault, the run stops
        keys = seeds.loc[sub.index, "image_path"].to_numpy()
        if len(set(keys)) > 1:
            feats = np.full((len(sub), model.n_features_out_), np.nan, dtype=np.float32)
            errors: dict[int, str] = {}
            for key in dict.fromkeys(keys):
                mask = keys == key
                f, e = _transform_isolating(model, sub[mask], seeds)
                feats[mask] = f
                errors.update(e)
            return feats, errors
        reason = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        feats = np.full((len(sub), model.n_features_out_), np.nan, dtype=np.float32)
        return feats, {int(p): reason for p in sub.index}


def _transform_recording(
    model: FMCIBTransformer, sub: pd.DataFrame, seeds: pd.DataFrame
) -> tuple[np.ndarray, dict[int, str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RowWarning)
        features = np.asarray(model.transform(sub), dtype=np.float32)
    messages: dict[int, str] = {}
    for w in caught:
        if not issubclass(w.category, RowWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            continue
        error = getattr(w.message, "row_error", None)
        if error is not None:
            messages[int(error.row)] = str(error.reason)
            continue
        match = _ROW_MESSAGE.match(str(w.message))
        if match:
            pos = int(match.group(1))
            path = seeds.at[pos, "image_path"] if pos in seeds.index else ""
            messages[pos] = _row_reason(str(w.message), pos, path)
    errors = {}
    failed = ~np.isfinite(features).all(axis=1)
    for pos, bad in zip(sub.index, failed, strict=True):
        if bad:
            errors[int(pos)] = messages.get(
                int(pos), "features are not finite (does the image hold NaN voxels?)"
            )
    return features, errors


# ------------------------------------------------------------------------ manifest


def _save_part(directory: Path, index: int, result: ChunkResult) -> str:
    name = f"chunk-{index:05d}.npz"
    failed = np.asarray(sorted(result.errors), dtype=np.int64)
    reasons = np.asarray([result.errors[int(p)] for p in failed], dtype=str)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                positions=result.positions,
                features=result.features,
                failed=failed,
                reasons=reasons,
            )

    atomic_write(directory / name, write)
    return name


def _load_part(path: Path, expected: np.ndarray) -> ChunkResult:
    try:
        with np.load(path, allow_pickle=False) as npz:
            positions, features = npz["positions"], npz["features"]
            failed, reasons = npz["failed"], npz["reasons"]
    except (OSError, ValueError, KeyError) as exc:
        raise ExtractError(
            f"{path}: part file is unreadable ({exc}); delete it and continue with "
            f"{_option('resume', True)} to redo it"
        ) from exc
    if not np.array_equal(positions, expected):
        raise ExtractError(
            f"{path}: part file holds other rows than its chunk; delete it and continue "
            f"with {_option('resume', True)}"
        )
    return ChunkResult(
        positions=positions,
        features=features,
        errors={int(p): str(r) for p, r in zip(failed, reasons, strict=True)},
    )


def _fingerprint(provenance: Mapping[str, Any]) -> dict[str, Any]:
    return {k: provenance.get(k) for k in _FINGERPRINT_KEYS}


def _check_same_run(old: Mapping[str, Any], new: Mapping[str, Any], where: Path) -> None:
    a, b = _fingerprint(old), _fingerprint(new)
    diff = [line for k in _FINGERPRINT_KEYS for line in _differences(k, a[k], b[k])]
    if diff:
        raise ProvenanceMismatch(
            f"{where} was made by a different run ({'; '.join(diff)}); cannot resume it. Run "
            "with the original weights, parameters and table, or pass "
            f"{_option('overwrite', True)} to start over."
        )


def _differences(key: str, then: Any, now: Any) -> list[str]:
    """``key: THEN then, NOW now`` for each differing value; dicts name their sub-fields.

    >>> _differences("preprocessing", {"spacing_mm": 1.0, "coordinate_system": "LPS"},
    ...              {"spacing_mm": 1.0, "coordinate_system": "RAS"})
    ['preprocessing.coordinate_system: LPS then, RAS now']
    """
    if then == now:
        return []
    if isinstance(then, Mapping) and isinstance(now, Mapping):
        return [
            line
            for sub in sorted(set(then) | set(now), key=str)
            for line in _differences(f"{key}.{sub}", then.get(sub, _UNSET), now.get(sub, _UNSET))
        ]
    a, b = _short(then), _short(now)
    if a == b:  # the same beginning: show them whole
        a, b = _short(then, None), _short(now, None)
    return [f"{key}: {a} then, {b} now"]


def _short(value: Any, limit: int | None = 40) -> str:
    if value is _UNSET:
        return "(none)"
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if limit is None or len(text) <= limit else text[:16] + "..."


def read_provenance(out: str | os.PathLike) -> dict:
    """Read the provenance of an output written by :func:`extract`.

    Parameters
    ----------
    out : str or path-like
        A ``.parquet`` output (schema metadata) or ``.csv`` output (its sidecar).

    Returns
    -------
    dict
        Package version, weights source and digest, encoder configuration,
        preprocessing parameters, table digest, ...

    Examples
    --------
    >>> import numpy as np, pandas as pd, SimpleITK as sitk, tempfile, os
    >>> from skfmcib import FMCIBTransformer
    >>> from skfmcib.extract import extract, read_provenance
    >>> d = tempfile.mkdtemp()
    >>> hu = np.full((60, 60, 60), -1000, dtype=np.int16)
    >>> sitk.WriteImage(sitk.GetImageFromArray(hu), os.path.join(d, "ct.nii.gz"))
    >>> table = pd.DataFrame({"image_path": [os.path.join(d, "ct.nii.gz")],
    ...                       "coordX": [30.0], "coordY": [30.0], "coordZ": [30.0]})
    >>> tiny = FMCIBTransformer(weights=None, arch="resnet10", random_state=0, device="cpu")
    >>> _ = extract(table, os.path.join(d, "f.csv"), transformer=tiny)
    >>> prov = read_provenance(os.path.join(d, "f.csv"))
    >>> prov["encoder_config"]["arch"], prov["preprocessing"]["patch_size_voxels"]
    ('resnet10', 50)
    """
    out = Path(out)
    if _output_format(out) == "parquet":
        pa = _require_pyarrow("reading a .parquet output")
        meta = pa.parquet.read_schema(out).metadata or {}
        if METADATA_KEY not in meta:
            raise ExtractError(f"{out}: no skfmcib provenance in the file's metadata")
        return json.loads(meta[METADATA_KEY])
    side = provenance_path(out)
    if not side.is_file():
        raise ExtractError(f"{out}: no provenance sidecar {side.name}")
    return json.loads(side.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------- extract


def _batch_size_record(batch_size) -> int | str:
    """A batch size as provenance records it: an int, or "auto" (sized to GPU memory)."""
    return batch_size if batch_size == "auto" else int(batch_size)


def _provenance(
    transformer: FMCIBTransformer, table_sha: str, n_rows: int, chunk_size: int
) -> dict:
    from . import __version__

    info = transformer.weights_info_
    params = transformer.get_params()
    return {
        "skfmcib_version": __version__,
        "weights_source": str(info.source),
        "weights_digest": str(info.digest),
        "encoder_config": info.config.to_dict(),
        "n_features": int(transformer.n_features_out_),
        "precision": str(params["precision"]),
        "device": str(getattr(transformer, "device_", params["device"])),
        "batch_size": _batch_size_record(params["batch_size"]),
        "preprocessing": {
            "patch_size_voxels": PATCH_SIZE,
            "spacing_mm": 1.0,
            "interpolation": "trilinear",
            "intensity": f"(HU + {HU_OFFSET:g}) / {HU_SCALE:g}, no clipping",
            "outside_scan_hu": -HU_OFFSET,
            "grid": "reference 1 mm LPS grid, seed index truncated",
            "coordinate_system": str(params["coordinate_system"]),
        },
        "table_sha256": table_sha,
        "n_rows": int(n_rows),
        "chunk_size": int(chunk_size),
        "python": sys.version.split()[0],
        "torch": _version_of("torch"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _version_of(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - provenance must never fail a run
        return "unknown"


def prepare_table(
    table: pd.DataFrame | str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    mask_label: int | None = None,
    coordinate_system: str = "LPS",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a lesion table (or take a DataFrame), resolve paths, seed mask rows.

    A table with ``mask_path`` and no coordinates becomes one row per lesion
    (:func:`skfmcib.masks.seeds_from_masks`), its seeds written in
    ``coordinate_system`` like the coordinates of any other table.

    Parameters
    ----------
    table : DataFrame, str or path-like
        A lesion table, or the path of a CSV (or Parquet) file holding one (read with
        :func:`read_table`).
    image_root : str or path-like, optional
        Folder that relative ``image_path`` and ``mask_path`` values are relative to;
        by default the table file's folder, and for a DataFrame the paths as given.
    mask_label : int, optional
        With ``mask_path`` tables: the label value whose centroid is the seed (see
        :func:`skfmcib.masks.seeds_from_masks`).
    coordinate_system : {"LPS", "RAS"}, default="LPS"
        Convention of the table's coordinates, and of the seeds made from masks.

    Returns
    -------
    table : DataFrame
        The rows as the output repeats them (the user's paths).
    resolved : DataFrame
        The same rows with absolute paths, from which images are read.

    Raises
    ------
    ExtractError
        When ``table`` is neither a DataFrame nor a path, or seeds cannot be made from
        its masks.

    Examples
    --------
    >>> import pandas as pd
    >>> from pathlib import Path
    >>> from skfmcib.extract import prepare_table
    >>> t = pd.DataFrame({"image_path": ["ct.nii.gz"], "coordX": [1.0], "coordY": [2.0],
    ...                   "coordZ": [3.0]})
    >>> table, resolved = prepare_table(t, image_root="/data")
    >>> table["image_path"][0], Path(resolved["image_path"][0]) == Path("/data/ct.nii.gz")
    ('ct.nii.gz', True)
    """
    if isinstance(table, (str, os.PathLike)):
        table, resolved = read_table(table, image_root)
    elif isinstance(table, pd.DataFrame):
        table = _paths_as_text(table)
        resolved = resolve_paths(table, image_root) if image_root is not None else table.copy()
    else:
        raise ExtractError(f"table must be a DataFrame or a path, got {type(table).__name__}")
    original = table
    has_coords = all(c in table.columns for c in COORD_COLUMNS)
    if has_coords and "mask_path" in table.columns:
        has_coords = _coordinates_given(table)
        if not has_coords:  # empty coordinate columns beside masks: seed from the masks
            resolved = resolved.drop(columns=list(COORD_COLUMNS))
    if not has_coords and "mask_path" in table.columns:
        from .masks import seeds_from_masks

        # Rows by position (labels may repeat), named by their labels in errors.
        labels = original.index
        try:
            resolved = seeds_from_masks(resolved.reset_index(drop=True), label=mask_label)
        except RowError as exc:
            raise ExtractError(str(RowError(labels[exc.row], exc.path, exc.reason))) from exc
        except ValueError as exc:
            raise ExtractError(str(exc)) from exc
        positions = resolved["mask_row"].to_numpy()
        resolved["mask_row"] = labels[positions]
        if coordinate_system == "RAS":  # the centroids are LPS
            resolved[["coordX", "coordY"]] = -resolved[["coordX", "coordY"]]
        # The output repeats the user's paths; the seeds come from the resolved ones.
        table = resolved.copy()
        for col in ("image_path", "mask_path"):
            if col in table.columns:
                table[col] = original[col].iloc[positions].to_numpy()
    return table, resolved


def _coordinates_given(table: pd.DataFrame) -> bool:
    """Whether a table with ``mask_path`` gives seeds: False when every row's coordinates
    are empty (its seeds come from the masks); an error when only some rows' are."""
    empty = ~table[list(COORD_COLUMNS)].apply(lambda column: column.map(_given)).any(axis=1)
    if not empty.any():
        return True
    if empty.all():
        return False
    masked = table["mask_path"].map(_given)
    rows = list(table.index[(empty & masked).to_numpy()])
    if not rows:
        return True  # rows without seeds or masks: each is reported as a bad row
    raise ExtractError(
        f"row(s) {listing(rows)} give a mask_path and no coordinates, while other rows "
        "give coordinates: a table seeds every lesion from coordinates or every lesion "
        "from masks. Put the mask rows in a table of their own, or give their coordinates"
    )


def _paths_as_text(table: pd.DataFrame) -> pd.DataFrame:
    """The table with path objects in its path columns written as text."""
    columns = [c for c in ("image_path", "mask_path") if c in table.columns]
    if not any(isinstance(v, os.PathLike) for c in columns for v in table[c]):
        return table
    table = table.copy()
    for c in columns:
        table[c] = [os.fspath(v) if isinstance(v, os.PathLike) else v for v in table[c]]
    return table


def extract(
    table: pd.DataFrame | str | os.PathLike,
    out: str | os.PathLike,
    *,
    transformer: FMCIBTransformer | None = None,
    chunk_size: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_error: str = "skip",
    scheduler: Any = None,
    progress: bool | str = "auto",
    image_root: str | os.PathLike | None = None,
    mask_label: int | None = None,
    log: Callable[[str], None] | None = None,
) -> ExtractSummary:
    """Extract features for a lesion table into a Parquet or CSV file, resumably.

    Parameters
    ----------
    table : DataFrame or path
        One row per lesion: ``image_path`` and ``coordX``, ``coordY``, ``coordZ``
        (or ``mask_path`` instead of the coordinates: one row per connected lesion
        in each mask, see :func:`skfmcib.masks.seeds_from_masks`). A path is read
        with :func:`read_table`.
    out : path
        ``.parquet`` (needs pyarrow) or ``.csv``.
    transformer : FMCIBTransformer, optional
        The encoder's parameters (weights, architecture, device, batch size,
        precision, coordinate system, ...); FMCIB defaults when omitted. Its
        ``on_error`` and ``progress`` are replaced by this function's.
    chunk_size : int, optional
        Rows per part file (whole images are kept together); 64, or when resuming the
        interrupted run's (or the finished output's).
    resume : bool, default=False
        Continue an interrupted run from its part files, after checking that it was
        made with the same weights, parameters and table. On a finished output of the
        same job, do nothing (``already_complete`` in the summary). The provenance
        records each resumption's device and batch size under ``"resumed"``.
    overwrite : bool, default=False
        Start over, discarding an earlier output or unfinished run at ``out``.
    on_error : {"skip", "nan", "raise"}, default="skip"
        A row that fails (missing file, seed outside the scan, ...) is left out of the
        output (``skip``), kept with NaN features (``nan``), or stops the run
        (``raise``; the parts already written are kept). Failed rows are listed in
        ``OUT.errors.csv`` in every case.
    scheduler : str or distributed.Client, optional
        Run the chunks on a Dask cluster (a scheduler address, scheduler file or
        client); see :mod:`skfmcib.distributed`.
    progress : bool or "auto", default="auto"
        Progress line on stderr (lesions/s and time left); "auto" on a terminal.
    image_root : path, optional
        Folder for relative image paths (default: the table file's folder, or as
        given for a DataFrame).
    mask_label : int, optional
        With ``mask_path`` tables: the label value whose centroid is the seed.
    log : callable, optional
        Receives one-line status messages (the command line prints them).

    Returns
    -------
    ExtractSummary

    Raises
    ------
    ExtractError
        Bad usage, an output in the way, a resumption of a different run
        (:class:`ProvenanceMismatch`), or with ``on_error="raise"`` a failed row
        (``exit_status`` 1).

    Examples
    --------
    >>> import numpy as np, pandas as pd, SimpleITK as sitk, tempfile, os
    >>> from skfmcib import FMCIBTransformer
    >>> from skfmcib.extract import extract
    >>> d = tempfile.mkdtemp()
    >>> hu = np.full((60, 60, 60), -1000, dtype=np.int16)
    >>> hu[10:50, 10:50, 10:50] = 40
    >>> sitk.WriteImage(sitk.GetImageFromArray(hu), os.path.join(d, "ct.nii.gz"))
    >>> table = pd.DataFrame({"image_path": [os.path.join(d, "ct.nii.gz")] * 2,
    ...                       "coordX": [30.0, 99.0], "coordY": [30.0, 30.0],
    ...                       "coordZ": [30.0, 30.0]})
    >>> tiny = FMCIBTransformer(weights=None, arch={"arch": "resnet10",
    ...                         "widen_factor": 0.25}, random_state=0, device="cpu")
    >>> summary = extract(table, os.path.join(d, "features.csv"), transformer=tiny)
    >>> summary.n_written, summary.n_failed, summary.exit_status
    (1, 1, 1)
    >>> pd.read_csv(summary.errors_path)["reason"].str.contains("outside").tolist()
    [True]
    """
    out = Path(out).expanduser()
    if isinstance(table, (str, os.PathLike)):
        table = _table_file(table)  # before any folder is made for the output
    if out.is_dir():
        raise ExtractError(f"{out} is a folder; name the output file (.parquet or .csv)")
    if not out.parent.is_dir() and (out.parent.exists() or not _creatable(out.parent)):
        raise ExtractError(f"{out}: cannot create the folder {out.parent}")
    with _exclusive(out), _connected(scheduler, transformer) as scheduler:
        return _extract(
            table,
            out,
            transformer=transformer,
            chunk_size=chunk_size,
            resume=resume,
            overwrite=overwrite,
            on_error=on_error,
            scheduler=scheduler,
            progress=progress,
            image_root=image_root,
            mask_label=mask_label,
            log=log,
        )


@contextlib.contextmanager
def _connected(scheduler: Any, transformer: FMCIBTransformer | None) -> Iterator[Any]:
    """The Dask client of ``scheduler`` (None for a local run), connected before any
    part file is made, and closed at the end when made here."""
    if scheduler is None:
        yield None
        return
    params = (transformer or FMCIBTransformer()).get_params()
    if params["weights"] is None and params["random_state"] is None:
        raise ExtractError(
            "random weights without a random_state would differ on every worker: "
            "give the transformer a random_state"
        )
    from .distributed import get_client

    client, owned = get_client(scheduler)
    try:
        yield client
    finally:
        if owned:
            client.close()


def _creatable(folder: Path) -> bool:
    """Whether ``folder`` can be made: its nearest existing parent is a writable folder."""
    for parent in folder.parents:
        if parent.exists():
            return parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)
    return False


@contextlib.contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold a lock beside ``out`` so that two runs never write the same output.

    The lock is an ``flock`` on ``.OUT.lock``, removed at the end. An ``flock`` goes with
    its process: a killed run may leave the empty file behind, but never a held lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    path = out.with_name(f".{out.name}.lock")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = open(path, "a+b")
    except OSError as exc:
        raise ExtractError(
            f"{out}: cannot write beside it ({exc.strerror or exc}: {exc.filename or path})"
        ) from exc
    probe.close()
    while True:
        fh = open(path, "a+b")  # closed below, or by the with block
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            raise ExtractError(
                f"{out}: another skfmcib extract is writing it (lock {path.name}); wait "
                f"for it to finish, or stop it and continue with {_option('resume', True)}"
            ) from exc
        # The run before may have removed the file between our open and our lock: then
        # the lock is on a file nobody else can find, and the path must be locked anew.
        try:
            same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()
    with fh:
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def _extract(
    table,
    out: Path,
    *,
    transformer,
    chunk_size,
    resume,
    overwrite,
    on_error,
    scheduler,
    progress,
    image_root,
    mask_label,
    log,
) -> ExtractSummary:
    started = time.perf_counter()
    say = log or (lambda message: None)
    fmt = _output_format(out)
    if fmt == "parquet":
        _require_pyarrow("writing a .parquet output")
    if on_error not in ON_ERROR:
        raise ExtractError(f"{_option('on_error')} must be one of {ON_ERROR}, got {on_error!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ExtractError(
            f"{_option('chunk_size')} must be a positive integer, got {chunk_size!r}"
        )
    if resume and overwrite:
        raise ExtractError(
            f"{_option('resume', True)} and {_option('overwrite', True)} exclude each other"
        )
    is_path = isinstance(table, (str, os.PathLike))
    if is_path and Path(table).resolve() == out.resolve():
        raise ExtractError(f"{out}: the output would replace the lesion table")

    source = f"{table}: " if is_path else ""
    transformer = FMCIBTransformer() if transformer is None else transformer
    coordinate_system = transformer.get_params()["coordinate_system"]
    table, resolved = prepare_table(table, image_root, mask_label, coordinate_system)
    try:
        seeds = validate_table(resolved, coordinate_system)
    except (ValueError, TypeError) as exc:
        raise ExtractError(f"{source}{exc}") from exc
    feature_names = None
    parts = parts_dir(out)
    manifest_path = parts / "manifest.json"
    manifest = None
    if manifest_path.is_file():
        if overwrite:
            shutil.rmtree(parts)
        elif not resume:
            raise ExtractError(
                f"{parts} holds an unfinished run; pass {_option('resume', True)} to continue "
                f"it or {_option('overwrite', True)} to start over"
            )
        else:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if manifest.get("format") != PARTS_FORMAT:
                raise ExtractError(f"{manifest_path}: not a skfmcib parts manifest")
    elif parts.exists() and not resume and not overwrite and any(parts.iterdir()):
        raise ExtractError(f"{parts} exists; pass {_option('overwrite', True)} to start over")
    if out.exists() and manifest is None and not overwrite and not resume:
        raise ExtractError(
            f"{out} exists; pass {_option('overwrite', True)} to replace it, or choose "
            "another output"
        )
    # A finished output: resuming it checks that it is the same job, and does nothing.
    finished = read_provenance(out) if manifest is None and resume and out.exists() else None
    if chunk_size is None:
        recorded = manifest["provenance"] if manifest is not None else finished
        chunk_size = int(recorded["chunk_size"]) if recorded else DEFAULT_CHUNK_SIZE

    # The working table is indexed by position: the transformer's messages name rows by it.
    work = resolved.reset_index(drop=True)
    seeds = seeds.reset_index(drop=True)
    local = _fit(transformer)
    provenance = _provenance(local, table_digest(work), len(work), chunk_size)
    feature_names = [str(n) for n in local.get_feature_names_out()]
    clash = sorted(set(feature_names) & set(map(str, table.columns)))
    if clash:
        raise ExtractError(f"the table already has feature columns ({clash[:3]}...)")

    if manifest is not None:
        _check_same_run(manifest["provenance"], provenance, parts)
        # The device and batch size may change: each resumption records its own.
        this_run = {k: provenance[k] for k in ("created", "device", "batch_size")}
        provenance = manifest["provenance"]
        provenance["resumed"] = [*provenance.get("resumed", []), this_run]
        _write_json(manifest_path, manifest)
    elif finished is not None:
        _check_same_run(finished, provenance, out)
        summary = _summary_of_existing(out, started, finished)
        say(
            f"{out} is complete already ({summary.n_written} of "
            f"{counted(summary.n_rows, 'row')}); nothing to resume"
        )
        return summary
    chunks = _plan_chunks(seeds, chunk_size)
    if manifest is None:
        parts.mkdir(parents=True, exist_ok=True)
        manifest = {"format": PARTS_FORMAT, "provenance": provenance, "done": {}}
        _write_json(manifest_path, manifest)
    done = {
        int(k): v
        for k, v in manifest["done"].items()
        if int(k) < len(chunks) and (parts / v["file"]).is_file()
    }
    todo = [i for i in range(len(chunks)) if i not in done]
    n_todo = int(sum(len(chunks[i]) for i in todo))
    n_images = len(set(zip(seeds["image_path"], seeds["series_uid"], strict=True)))
    say(
        f"{counted(len(work), 'lesion')} in {counted(n_images, 'image')}, "
        f"{counted(len(chunks), 'chunk')}"
        + (f" ({len(done)} done already, {counted(n_todo, 'lesion')} to go)" if done else "")
    )

    n_duplicates = 0
    bar = Progress(n_todo, enabled=progress, unit="lesions", min_total=1)
    try:
        with bar:
            for index, result in _run_chunks(local, work, seeds, chunks, todo, scheduler):
                if result.weights_digest and result.weights_digest != local.weights_info_.digest:
                    raise ExtractError(
                        f"a worker loaded other weights (digest {result.weights_digest[:12]}"
                        f"... instead of {local.weights_info_.digest[:12]}...); every worker "
                        "must see the same checkpoint file"
                    )
                n_duplicates += result.n_duplicates
                if on_error == "raise" and result.errors:
                    _write_errors(out, work, table, result.errors)
                    raise _stopped_at(result.errors, table, work, len(done), parts)
                name = _save_part(parts, index, result)
                done[index] = {"file": name, "rows": len(result.positions)}
                manifest["done"] = {str(k): v for k, v in sorted(done.items())}
                _write_json(manifest_path, manifest)
                bar.update(len(result.positions))
    except KeyboardInterrupt:
        say(
            f"interrupted; {len(done)} of {counted(len(chunks), 'chunk')} kept in {parts}; "
            f"continue with {_option('resume', True)}"
        )
        raise
    except Exception as exc:
        from .weights import CheckpointError

        if not isinstance(exc, CheckpointError):
            raise
        raise ExtractError(
            f"{exc}. {counted(len(done), 'finished chunk')} (computed with the weights as "
            f"they were read) kept in {parts}; {_option('resume', True)} continues them "
            "only with the weights file as it was: restore it, or write the run with the "
            "new weights to a new output",
            exit_status=2,
        ) from exc

    summary = _assemble(out, fmt, table, work, chunks, parts, on_error, provenance, feature_names)
    shutil.rmtree(parts, ignore_errors=True)
    summary.n_chunks = len(chunks)
    summary.n_chunks_resumed = len(chunks) - len(todo)
    summary.n_duplicates = n_duplicates
    summary.seconds = time.perf_counter() - started
    return summary


def _label(table: pd.DataFrame, pos: int):
    return table.index[pos]


def _stopped_at(
    errors: Mapping[int, str], table: pd.DataFrame, work: pd.DataFrame, n_done: int, parts: Path
) -> ExtractError:
    """The error that stops a run with ``on_error="raise"``, at the chunk's first failed
    row (chunks are computed image by image, not in row order)."""
    pos = min(errors)
    resume = _option("resume", True)
    return ExtractError(
        f"row {_label(table, pos)} ({work.at[pos, 'image_path']}): {_reason(errors[pos])}. "
        f"{counted(n_done, 'finished chunk')} kept in {parts}. Once the cause is fixed "
        f"outside the table (the image file restored, for example), continue with {resume}; "
        f"to go past the failing rows, continue with "
        f"{_options(resume=True, on_error='skip')} (or {_option('on_error', 'nan')}). An "
        f"edited table is another job, which {resume} refuses: write it to a new output.",
        exit_status=1,
    )


def _fit(transformer: FMCIBTransformer) -> FMCIBTransformer:
    from sklearn.base import clone

    model = clone(transformer).set_params(on_error="nan", progress=False)
    try:
        return model.fit(None)
    except (OSError, ValueError, TypeError, RuntimeError) as exc:
        raise ExtractError(f"cannot load the encoder: {exc}") from exc


def _run_chunks(
    model: FMCIBTransformer,
    work: pd.DataFrame,
    seeds: pd.DataFrame,
    chunks: list[np.ndarray],
    todo: list[int],
    scheduler: Any,
) -> Iterator[tuple[int, ChunkResult]]:
    if scheduler is None:
        for i in todo:
            idx = chunks[i]
            yield i, encode_chunk(model, work.iloc[idx], seeds.iloc[idx])
        return
    from .distributed import map_chunks

    params = model.get_params()
    # Workers run in folders of their own: relative image paths (a DataFrame's, as
    # given) are made absolute here, where the run starts.
    work = resolve_paths(work, Path.cwd())
    subs = {i: work.iloc[chunks[i]] for i in todo}
    yield from map_chunks(scheduler, params, subs)


def _write_errors(
    out: Path, work: pd.DataFrame, table: pd.DataFrame, errors: Mapping[int, str]
) -> Path:
    path = errors_path(out)
    rows = sorted(errors)
    frame = pd.DataFrame(
        {
            "row": [_label(table, p) for p in rows],
            "image_path": [work.at[p, "image_path"] for p in rows],
            "reason": [_reason(errors[p]) for p in rows],
        },
        columns=ERROR_COLUMNS,
    )
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
    return path


def _assemble(
    out: Path,
    fmt: str,
    table: pd.DataFrame,
    work: pd.DataFrame,
    chunks: list[np.ndarray],
    parts: Path,
    on_error: str,
    provenance: dict,
    feature_names: list[str],
) -> ExtractSummary:
    manifest = json.loads((parts / "manifest.json").read_text(encoding="utf-8"))
    features = np.full((len(work), len(feature_names)), np.nan, dtype=np.float32)
    errors: dict[int, str] = {}
    for key, entry in manifest["done"].items():
        part = _load_part(parts / entry["file"], chunks[int(key)])
        features[part.positions] = part.features
        errors.update(part.errors)
    covered = np.zeros(len(work), dtype=bool)
    for key in manifest["done"]:
        covered[chunks[int(key)]] = True
    if not covered.all():
        raise ExtractError(
            f"{parts}: {counted(int((~covered).sum()), 'row')} without a part file; continue "
            f"with {_option('resume', True)}"
        )
    keep = np.ones(len(work), dtype=bool)
    if on_error == "skip" and errors:
        keep[sorted(errors)] = False
    frame = pd.concat(
        [
            table.iloc[keep],
            pd.DataFrame(features[keep], columns=feature_names, index=table.index[keep]),
        ],
        axis=1,
    )
    # The input's own index is written only if it has one (not 0, 1, 2, ...): rows left
    # out must not make one appear.
    own_index = not isinstance(table.index, pd.RangeIndex)
    # The errors file and the provenance (a CSV's sidecar) describe the output: the old
    # ones go first and the new ones are written after it, the sidecar last, so that a
    # run stopped in between never leaves an output beside another run's description
    # (the parts folder is still there, and --resume finishes the job).
    for stale in (provenance_path(out), errors_path(out)):
        stale.unlink(missing_ok=True)
    if fmt == "parquet":
        pa = _require_pyarrow("writing a .parquet output")
        try:
            arrow = pa.Table.from_pandas(frame, preserve_index=own_index)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ExtractError(f"cannot store the table's columns in Parquet ({exc})") from exc
        meta = dict(arrow.schema.metadata or {})
        meta[METADATA_KEY] = json.dumps(provenance, sort_keys=True).encode()
        arrow = arrow.replace_schema_metadata(meta)
        atomic_write(out, lambda tmp: pa.parquet.write_table(arrow, tmp))
        err_path = _write_errors(out, work, table, errors)
    else:
        atomic_write(out, lambda tmp: frame.to_csv(tmp, index=own_index))
        err_path = _write_errors(out, work, table, errors)
        _write_json(provenance_path(out), provenance)
    return ExtractSummary(
        out=out,
        errors_path=err_path,
        n_rows=len(work),
        n_written=int(keep.sum()),
        n_failed=len(errors),
        n_chunks=len(chunks),
        n_chunks_resumed=0,
        n_duplicates=0,
        seconds=0.0,
        provenance=provenance,
    )


def _summary_of_existing(out: Path, started: float, provenance: dict) -> ExtractSummary:
    """What a finished output holds, for a resumption that has nothing to do."""
    errs = errors_path(out)
    n_failed = len(pd.read_csv(errs)) if errs.is_file() else 0
    n_rows = int(provenance["n_rows"])
    if _output_format(out) == "parquet":
        n_written = (
            _require_pyarrow("reading a .parquet output").parquet.read_metadata(out).num_rows
        )
    else:
        n_written = len(pd.read_csv(out, usecols=[0]))
    return ExtractSummary(
        out=out,
        errors_path=errs,
        n_rows=n_rows,
        n_written=int(n_written),
        n_failed=n_failed,
        n_chunks=0,
        n_chunks_resumed=0,
        n_duplicates=0,
        seconds=time.perf_counter() - started,
        provenance=provenance,
        already_complete=True,
    )

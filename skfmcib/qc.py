"""Quality-control pictures of lesion seeds: is each seed on its lesion?

For each row of a lesion table, :func:`quality_control` draws the axial, coronal and
sagittal planes through the seed (whole scan on top, a close-up below), in CT
window/level, with the 50 mm box the encoder sees (computed with
:func:`skfmcib.patches.patch_grid`, so it is exactly the patch's extent) and the
seed marked. Planes are resampled onto a regular LPS-aligned millimetre grid, so
proportions are true and the orientation is the radiological one whatever the
scan's voxel spacing or direction. A red banner flags seeds outside the scan or
in air, the usual sign of RAS coordinates given as LPS. An ``index.html`` lists
every picture with its row.

Needs matplotlib: ``pip install 'skfmcib[plot]'``.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from numpy.typing import ArrayLike

from ._files import atomic_write
from ._progress import Progress
from .io import ImageReadError, Volume, read_image
from .patches import HU_OFFSET, HU_SCALE, PATCH_SIZE, _patch_at, _sample_plan, patch_grid
from .table import row_problem, validate_table

__all__ = ["WINDOWS", "QCSummary", "quality_control", "render_lesion"]

#: Named CT windows: (level, width) in HU.
WINDOWS = {"lung": (-600.0, 1500.0), "soft": (40.0, 400.0), "bone": (400.0, 1800.0)}
_AIR_HU = -950.0  # a seed's neighbourhood below this is air (or no tissue at all)
_TISSUE_HU = -500.0
_MAX_PIXELS = 400  # samples along the longer side of a whole-scan plane
_ZOOM_MARGIN_MM = 25.0
_OUTSIDE_COLOUR = "#23395d"  # beyond the scan's extent


def _require_matplotlib():
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError as exc:
        raise ImportError("QC pictures need matplotlib: pip install 'skfmcib[plot]'") from exc
    cmap = matplotlib.colormaps["gray"].with_extremes(bad=_OUTSIDE_COLOUR)
    return Figure, FigureCanvasAgg, Rectangle, cmap


@dataclass
class QCSummary:
    """What :func:`quality_control` wrote.

    Made by :func:`quality_control`; the attributes below are also the constructor's
    parameters, in this order.

    Attributes
    ----------
    index : pathlib.Path
        The ``index.html`` page.
    table : DataFrame
        One row per lesion: ``row``, ``image_path``, ``png`` (file name, empty when the
        image could not be read), ``window``, ``seed_hu``, ``flag`` (warning text or
        empty) and ``error``. Also written as ``qc.csv``.
    seconds : float
        Wall time.
    """

    index: Path
    table: pd.DataFrame
    seconds: float

    @property
    def n_flagged(self) -> int:
        """Lesions with a warning (seed outside the scan or in air, ...)."""
        return int((self.table["flag"] != "").sum())

    @property
    def n_failed(self) -> int:
        """Lesions that could not be drawn (unreadable image, bad row)."""
        return int((self.table["error"] != "").sum())


# ------------------------------------------------------------------- sampling planes

# (in-plane u axis, in-plane v axis, fixed axis), LPS axis numbers, and how to show it.
_VIEWS = {
    "axial": (0, 1, 2, "upper", ("R", "L", "A", "P")),
    "coronal": (0, 2, 1, "lower", ("R", "L", "I", "S")),
    "sagittal": (1, 2, 0, "lower", ("A", "P", "I", "S")),
}


def _as_sitk(volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(np.asarray(volume.array, dtype=np.float32))
    geom = volume.geometry
    image.SetOrigin(tuple(float(v) for v in geom.origin))
    image.SetSpacing(tuple(float(v) for v in geom.spacing))
    image.SetDirection(tuple(float(v) for v in geom.direction.ravel()))
    return image


def _sample_plane(
    image: sitk.Image,
    u: int,
    v: int,
    w: int,
    u_range: tuple[float, float],
    v_range: tuple[float, float],
    w_value: float,
    spacing: float,
) -> np.ndarray:
    """HU on the plane ``w = w_value`` of LPS axes ``u``, ``v``; array ``(v, u)``, NaN outside."""
    nu = max(2, int(np.ceil((u_range[1] - u_range[0]) / spacing)) + 1)
    nv = max(2, int(np.ceil((v_range[1] - v_range[0]) / spacing)) + 1)
    eye = np.eye(3)
    e_w = np.cross(eye[u], eye[v])  # keeps the direction a rotation
    direction = np.stack([eye[u], eye[v], e_w], axis=1)
    origin = np.zeros(3)
    origin[u], origin[v], origin[w] = u_range[0], v_range[0], w_value
    ref = sitk.Image([nu, nv, 1], sitk.sitkFloat32)
    ref.SetSpacing((spacing, spacing, 1.0))
    ref.SetOrigin(tuple(float(o) for o in origin))
    ref.SetDirection(tuple(float(d) for d in direction.ravel()))
    # Outside the scan is NaN, drawn in its own colour (not as air).
    out = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, float("nan"))
    return sitk.GetArrayFromImage(out)[0]


def _seed_stats(volume: Volume, seed: np.ndarray) -> tuple[float, float]:
    """Median HU within 2 mm of the seed, and the fraction of air-like samples among
    its patch's samples inside the scan (the fill beyond the scan's edge is not air
    around the lesion); 1.0 when none is inside."""
    grid = patch_grid(volume.geometry, seed)
    hu = _patch_at(volume, seed).astype(np.float64) * HU_SCALE - HU_OFFSET
    c = PATCH_SIZE // 2
    centre = hu[c - 2 : c + 3, c - 2 : c + 3, c - 2 : c + 3]
    # (x, y, z) index of each sample, samples in the patch's (z, y, x) order.
    index = _sample_plan(volume.geometry, grid.start).index()
    size = np.asarray(volume.geometry.size, dtype=np.float64)[:, None, None, None]
    inside = np.all((index >= 0) & (index <= size - 1), axis=0)
    air = float(np.mean(hu[inside] < -400.0)) if inside.any() else 1.0
    return float(np.median(centre)), air


def _pick_window(window: Any, air_fraction: float) -> tuple[str, float, float]:
    if isinstance(window, str) and window != "auto":
        if window not in WINDOWS:
            raise ValueError(f"window must be 'auto', {sorted(WINDOWS)} or (level, width)")
        return (window, *WINDOWS[window])
    if isinstance(window, (tuple, list)):
        level, width = (float(x) for x in window)
        return "custom", level, width
    name = "lung" if air_fraction > 0.25 else "soft"
    return (name, *WINDOWS[name])


def _inside_body(image: sitk.Image, volume: Volume, seed: np.ndarray) -> bool:
    """Whether the seed lies within the body outline on its axial plane.

    The body is what is denser than -500 HU with its holes filled, so lungs and bowel
    gas count as inside and only the air around the patient as outside.
    """
    from scipy import ndimage

    corners = volume.geometry.corner_points()
    lo, hi = corners.min(0), corners.max(0)
    step = max(1.0, float((hi - lo)[:2].max()) / 256.0)
    plane = _sample_plane(image, 0, 1, 2, (lo[0], hi[0]), (lo[1], hi[1]), seed[2], step)
    body = ndimage.binary_fill_holes(np.nan_to_num(plane, nan=-HU_OFFSET) > _TISSUE_HU)
    col, row = np.round((seed[:2] - lo[:2]) / step).astype(int)
    return bool(0 <= row < body.shape[0] and 0 <= col < body.shape[1] and body[row, col])


def _flags(
    image: sitk.Image, volume: Volume, seed: np.ndarray, seed_hu: float, hu_min: float
) -> list[str]:
    flags = []
    geom = volume.geometry
    mirrored = seed * np.array([-1.0, -1.0, 1.0])
    if not geom.contains(seed):
        flags.append("seed lies OUTSIDE the scan")
    elif seed_hu < _AIR_HU and not _inside_body(image, volume, seed):
        flags.append(f"seed lies in the air OUTSIDE the body ({seed_hu:.0f} HU)")
    if flags and geom.contains(mirrored):
        other_hu, _ = _seed_stats(volume, mirrored)
        if other_hu > _TISSUE_HU:
            flags.append(
                f"(-x, -y, z) lands in tissue ({other_hu:.0f} HU): coordinates look like RAS; "
                "give LPS or use coordinate_system='RAS'"
            )
        else:
            flags.append("check the coordinate system (RAS given as LPS?)")
    elif flags:
        flags.append("check the coordinate system (RAS given as LPS?)")
    if hu_min > -500.0:
        flags.append(f"image has no air (minimum {hu_min:.0f}): not a CT in HU?")
    return flags


def render_lesion(
    volume: Volume,
    seed_lps: ArrayLike,
    path: str | os.PathLike,
    *,
    title: str = "",
    window: Any = "auto",
    image: sitk.Image | None = None,
    hu_min: float | None = None,
    dpi: int = 72,
) -> dict:
    """Draw one lesion's QC picture (3 planes, whole scan and close-up) into a PNG.

    Parameters
    ----------
    volume : Volume
        The CT in HU.
    seed_lps : array-like of shape (3,)
        Seed in LPS millimetres.
    path : str or path-like
        Where to write the PNG.
    title : str, default=""
        First title line (row and file).
    window : "auto", "lung", "soft", "bone" or (level, width), default="auto"
        CT window; "auto" takes lung for seeds in aerated surroundings, else soft tissue.
    image : SimpleITK.Image, optional
        ``volume`` as a float SimpleITK image (made when omitted; pass it to draw
        several seeds of one scan faster).
    hu_min : float, optional
        The scan's minimum (computed when omitted).
    dpi : int, default=72
        Resolution of the PNG.

    Returns
    -------
    dict
        ``window`` (name), ``seed_hu`` (median HU within 2 mm) and ``flag`` (warnings
        joined by "; ", or "").

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from skfmcib.io import Geometry, Volume
    >>> from skfmcib.qc import render_lesion
    >>> geom = Geometry((60, 60, 30), np.zeros(3), np.array([1.0, 1.0, 2.0]), np.eye(3))
    >>> vol = Volume(np.full((30, 60, 60), 40, dtype=np.int16), geom)
    >>> info = render_lesion(vol, [30, 30, 30], os.path.join(tempfile.mkdtemp(), "a.png"))
    >>> info["window"], info["flag"]
    ('soft', 'image has no air (minimum 40): not a CT in HU?')
    """
    Figure, FigureCanvasAgg, Rectangle, cmap = _require_matplotlib()
    seed = np.asarray(seed_lps, dtype=np.float64)
    geom = volume.geometry
    image = _as_sitk(volume) if image is None else image
    hu_min = float(np.min(volume.array)) if hu_min is None else float(hu_min)
    seed_hu, air = _seed_stats(volume, seed)
    name, level, width = _pick_window(window, air)
    flags = _flags(image, volume, seed, seed_hu, hu_min)

    grid = patch_grid(geom, seed)
    box_lo = grid.start - 0.5  # samples are 1 mm voxel centres
    box_hi = grid.start + PATCH_SIZE - 0.5
    corners = geom.corner_points()
    half = geom.spacing.max() / 2.0
    scan_lo = np.minimum(corners.min(0) - half, box_lo)
    scan_hi = np.maximum(corners.max(0) + half, box_hi)
    scan_lo, scan_hi = np.minimum(scan_lo, seed - 5), np.maximum(scan_hi, seed + 5)
    fine = float(min(geom.spacing.min(), 1.0))
    coarse = max(fine, float((scan_hi - scan_lo).max()) / _MAX_PIXELS)

    fig = Figure(figsize=(12.0, 8.8), dpi=dpi, facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3, gridspec_kw={"hspace": 0.12, "wspace": 0.05})
    vmin, vmax = level - width / 2.0, level + width / 2.0
    for col, (view, (u, v, w, origin, letters)) in enumerate(_VIEWS.items()):
        for row_i, zoom in enumerate((False, True)):
            ax = axes[row_i, col]
            if zoom:
                lo, hi, step = box_lo - _ZOOM_MARGIN_MM, box_hi + _ZOOM_MARGIN_MM, fine
            else:
                lo, hi, step = scan_lo.copy(), scan_hi.copy(), coarse
                # A thin scan (a few slices) stays readable: at least half as tall as
                # wide, what lies beyond it shown as outside the scan.
                short = 0.5 * (hi[u] - lo[u]) - (hi[v] - lo[v])
                if short > 0:
                    lo[v], hi[v] = lo[v] - short / 2.0, hi[v] + short / 2.0
            plane = _sample_plane(image, u, v, w, (lo[u], hi[u]), (lo[v], hi[v]), seed[w], step)
            u1 = lo[u] + (plane.shape[1] - 1) * step
            v1 = lo[v] + (plane.shape[0] - 1) * step
            h = step / 2.0
            if origin == "upper":
                extent = (lo[u] - h, u1 + h, v1 + h, lo[v] - h)
            else:
                extent = (lo[u] - h, u1 + h, lo[v] - h, v1 + h)
            ax.imshow(
                plane,
                cmap=cmap,
                vmin=vmin,
                vmax=vmax,
                origin=origin,
                extent=extent,
                interpolation="nearest" if zoom else "antialiased",
            )
            ax.add_patch(
                Rectangle(
                    (box_lo[u], box_lo[v]),
                    PATCH_SIZE,
                    PATCH_SIZE,
                    fill=False,
                    edgecolor="#ffd21f",
                    linewidth=1.4,
                )
            )
            ax.plot(
                [seed[u]],
                [seed[v]],
                marker="+",
                color="#ff3b30",
                markersize=14 if zoom else 10,
                markeredgewidth=1.6,
            )
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color("#444444")
            style = {"color": "#8fd3ff", "fontsize": 10, "fontweight": "bold"}
            ax.text(0.01, 0.5, letters[0], transform=ax.transAxes, va="center", **style)
            ax.text(
                0.99, 0.5, letters[1], transform=ax.transAxes, va="center", ha="right", **style
            )
            ax.text(
                0.5,
                0.01,
                letters[2] if origin == "lower" else letters[3],
                transform=ax.transAxes,
                ha="center",
                va="bottom",
                **style,
            )
            ax.text(
                0.5,
                0.99,
                letters[3] if origin == "lower" else letters[2],
                transform=ax.transAxes,
                ha="center",
                va="top",
                **style,
            )
            label = f"{view}" + (" close-up" if zoom else "")
            label += f"  {'xyz'[w]} = {seed[w]:.1f} mm"
            ax.set_title(label, color="white", fontsize=10, pad=3)
    info = (
        f"seed LPS ({seed[0]:.1f}, {seed[1]:.1f}, {seed[2]:.1f}) mm    "
        f"HU at seed {seed_hu:.0f}    window {name} L{level:.0f}/W{width:.0f}    "
        f"yellow: the {PATCH_SIZE} mm patch    blue: outside the scan"
    )
    fig.text(
        0.5, 0.975, title, color="white", ha="center", va="top", fontsize=12, fontweight="bold"
    )
    fig.text(0.5, 0.945, info, color="#dddddd", ha="center", va="top", fontsize=10)
    if flags:
        fig.text(
            0.5,
            0.012,
            "WARNING: " + "; ".join(flags),
            color="white",
            ha="center",
            va="bottom",
            fontsize=10.5,
            fontweight="bold",
            wrap=True,
            bbox={"facecolor": "#c0392b", "edgecolor": "none", "pad": 4},
        )
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.09 if flags else 0.02)
    # Through a temporary file renamed into place, removed if the drawing fails or is
    # interrupted (and, if the process was killed, by the next run).
    atomic_write(
        Path(path),
        lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, facecolor=fig.get_facecolor()),
    )
    return {"window": name, "seed_hu": seed_hu, "flag": "; ".join(flags)}


# ---------------------------------------------------------------------- whole table


def quality_control(
    table: pd.DataFrame | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    coordinate_system: str = "LPS",
    window: Any = "auto",
    image_root: str | os.PathLike | None = None,
    mask_label: int | None = None,
    progress: bool | str = "auto",
    dpi: int = 72,
    log: Callable[[str], None] | None = None,
) -> QCSummary:
    """Draw a QC picture for every lesion of a table and an ``index.html`` to browse them.

    Parameters
    ----------
    table : DataFrame or path
        Lesion table (``image_path``, ``coordX/Y/Z`` or ``mask_path``), or a CSV or
        Parquet file (relative paths start at its folder, or at ``image_root``).
    out_dir : path
        Folder for ``row-00000.png``..., ``index.html`` and ``qc.csv``; created.
    coordinate_system : {"LPS", "RAS"}, default="LPS"
        Convention of the table's coordinates.
    window : "auto", "lung", "soft", "bone" or (level, width), default="auto"
        CT window (see :func:`render_lesion`).
    image_root : path, optional
        Folder of relative image paths.
    mask_label : int, optional
        For ``mask_path`` tables (see :func:`skfmcib.masks.seeds_from_masks`).
    progress : bool or "auto", default="auto"
        Progress line on stderr.
    dpi : int, default=72
        Resolution of the pictures.
    log : callable, optional
        Receives status lines.

    Returns
    -------
    QCSummary

    Examples
    --------
    >>> import numpy as np, pandas as pd, SimpleITK as sitk, tempfile, os
    >>> from skfmcib.qc import quality_control
    >>> d = tempfile.mkdtemp()
    >>> a = np.full((40, 80, 80), -1000, dtype=np.int16)
    >>> a[5:35, 10:70, 10:70] = 40                      # a body in air
    >>> sitk.WriteImage(sitk.GetImageFromArray(a), os.path.join(d, "ct.nii.gz"))
    >>> t = pd.DataFrame({"image_path": ["ct.nii.gz"] * 2, "coordX": [40.0, -40.0],
    ...                   "coordY": [40.0, -40.0], "coordZ": [20.0, 20.0]})
    >>> qc = quality_control(t, os.path.join(d, "qc"), image_root=d)
    >>> qc.table["flag"].str.startswith("seed lies OUTSIDE").tolist()
    [False, True]
    """
    from .extract import prepare_table

    started = time.perf_counter()
    say = log or (lambda message: None)
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file; the pictures need a folder")
    _require_matplotlib()
    _pick_window(window, 0.0)  # check it before any work
    table, resolved = prepare_table(table, image_root, mask_label, coordinate_system)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = validate_table(resolved, coordinate_system)
    records: list[dict] = [{} for _ in range(len(seeds))]
    groups: dict[tuple, list[int]] = {}
    for pos, key in enumerate(zip(seeds["image_path"], seeds["series_uid"], strict=True)):
        groups.setdefault(key, []).append(pos)
    say(f"{len(seeds)} lesions in {len(groups)} images -> {out_dir}")
    with Progress(len(seeds), enabled=progress, unit="lesions", min_total=1) as bar:
        for (path, series_uid), positions in groups.items():
            volume, error = None, ""
            try:
                if path:  # an empty path is the row's problem: nothing to read
                    volume = read_image(path, series_uid)
                    image, hu_min = _as_sitk(volume), float(np.min(volume.array))
            except ImageReadError as exc:
                error = str(exc).removeprefix(f"{path}: ")
            for pos in positions:
                rec = seeds.iloc[pos]
                label = table.index[pos]
                entry = {
                    "row": label,
                    "image_path": path,
                    "png": "",
                    "window": "",
                    "seed_hu": np.nan,
                    "flag": "",
                    "error": "",
                }
                problem = row_problem(rec)
                if problem or volume is None:
                    entry["error"] = problem or error
                else:
                    seed = rec[["x", "y", "z"]].to_numpy(dtype=np.float64)
                    name = f"row-{pos:05d}.png"
                    title = f"row {label}    {Path(path).name}"
                    entry.update(
                        render_lesion(
                            volume,
                            seed,
                            out_dir / name,
                            title=title,
                            window=window,
                            image=image,
                            hu_min=hu_min,
                            dpi=dpi,
                        )
                    )
                    entry["png"] = name
                records[pos] = entry
                bar.update(1)
    frame = pd.DataFrame(records)
    frame.to_csv(out_dir / "qc.csv", index=False)
    index = _write_index(out_dir, table, seeds, frame, coordinate_system)
    return QCSummary(index=index, table=frame, seconds=time.perf_counter() - started)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>skfmcib QC: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #111; color: #eee; margin: 1em; }}
h1 {{ font-size: 1.3em; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr));
  gap: 12px; }}
.card {{ background: #1d1d1d; border: 2px solid #333; border-radius: 6px; padding: 6px; }}
.card.flag {{ border-color: #c0392b; }}
.card.error {{ border-color: #e67e22; }}
.card img {{ width: 100%; height: auto; display: block; }}
.meta {{ font-size: 0.85em; word-break: break-all; margin-top: 4px; }}
.warn {{ color: #ff6b5e; font-weight: bold; }}
.err {{ color: #f0a050; font-weight: bold; }}
table.cols td {{ padding: 0 6px 0 0; vertical-align: top; }}
a {{ color: #8fd3ff; }}
</style>
<script>
function onlyFlagged(box) {{
  for (const c of document.querySelectorAll('.card'))
    c.style.display = (!box.checked || c.classList.contains('flag') ||
                       c.classList.contains('error')) ? '' : 'none';
}}
</script>
</head><body>
<h1>Lesion seeds: {title}</h1>
<p>{n} lesions, coordinates read as {cs}; <span class="warn">{n_flag} flagged</span>,
<span class="err">{n_err} not drawn</span>.
Each picture shows the axial, coronal and sagittal planes through the seed (red +),
whole scan on top and close-up below, with the {size} mm patch the encoder sees
(yellow). Seeds outside the body usually mean RAS coordinates given as LPS.
<label><input type="checkbox" onchange="onlyFlagged(this)"> show only flagged</label></p>
<div class="grid">
{cards}
</div></body></html>
"""


def _write_index(
    out_dir: Path,
    table: pd.DataFrame,
    seeds: pd.DataFrame,
    frame: pd.DataFrame,
    coordinate_system: str,
) -> Path:
    esc = html.escape
    cards = []
    for pos, entry in frame.iterrows():
        cls = "card" + (" flag" if entry["flag"] else "") + (" error" if entry["error"] else "")
        cols = "".join(
            f"<tr><td>{esc(str(c))}</td><td>{esc(str(v))}</td></tr>"
            for c, v in table.iloc[int(pos)].items()
        )
        parts = [f'<div class="{cls}" id="row-{int(pos)}">']
        if entry["png"]:
            src = esc(entry["png"])
            parts.append(
                f'<a href="{src}"><img src="{src}" loading="lazy" '
                f'alt="QC of row {esc(str(entry["row"]))}"></a>'
            )
        parts.append(f'<div class="meta"><b>row {esc(str(entry["row"]))}</b>')
        if entry["flag"]:
            parts.append(f'<div class="warn">{esc(entry["flag"])}</div>')
        if entry["error"]:
            parts.append(f'<div class="err">not drawn: {esc(entry["error"])}</div>')
        if entry["png"]:
            parts.append(
                f"<div>window {esc(entry['window'])}, HU at seed {entry['seed_hu']:.0f}</div>"
            )
        parts.append(f'<table class="cols">{cols}</table></div></div>')
        cards.append("".join(parts))
    page = _PAGE.format(
        title=esc(str(out_dir.name)),
        n=len(frame),
        cs=esc(coordinate_system),
        n_flag=int((frame["flag"] != "").sum()),
        n_err=int((frame["error"] != "").sum()),
        size=PATCH_SIZE,
        cards="\n".join(cards),
    )
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path

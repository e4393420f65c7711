"""A synthetic, labelled cohort of CT lesions written as NIfTI files.

Each patient gets one contrast-enhanced CT of the lower chest and upper abdomen
(a phantom built from analytic shapes, in Hounsfield units) with a few lesions in
it. Lesion properties are drawn first; the labels (malignancy, a site class and a
time-to-event endpoint) follow from them through the models documented in
:func:`make_lesion_cohort`. The voxels are then rendered from a per-patient random
stream, so the table and the images are reproducible for a given ``random_state``.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy import ndimage

from .._text import listing

__all__ = ["DENSITIES", "MARGINS", "SITES", "make_lesion_cohort"]

#: Anatomical sites, the ``site`` label.
SITES = ("lung", "liver", "kidney", "bone", "lymph_node")
#: Lesion density classes.
DENSITIES = ("solid", "part_solid", "ground_glass", "calcified", "cystic")
#: Lesion margin classes.
MARGINS = ("smooth", "lobulated", "spiculated")

# ---------------------------------------------------------------------------
# Generative model of the lesion table. docs/datasets.md repeats these numbers;
# keep the two in step.
# ---------------------------------------------------------------------------
_SITE_P = {"lung": 0.35, "liver": 0.2, "kidney": 0.15, "bone": 0.1, "lymph_node": 0.2}
_DIAMETER_RANGE = {
    "lung": (5.0, 30.0),
    "liver": (5.0, 30.0),
    "kidney": (8.0, 30.0),
    "bone": (6.0, 20.0),
    "lymph_node": (8.0, 30.0),
}
_DENSITY_P = {
    "lung": {"solid": 0.55, "part_solid": 0.15, "ground_glass": 0.15, "calcified": 0.15},
    "liver": {"solid": 0.6, "cystic": 0.3, "calcified": 0.1},
    "kidney": {"solid": 0.6, "cystic": 0.3, "calcified": 0.1},
    "bone": {"solid": 0.7, "calcified": 0.3},
    "lymph_node": {"solid": 0.85, "calcified": 0.15},
}
_MARGIN_P = {
    "cystic": {"smooth": 1.0},
    "calcified": {"smooth": 0.7, "lobulated": 0.3},
    "other": {"smooth": 0.45, "lobulated": 0.3, "spiculated": 0.25},
}
# malignancy: logit = intercept + per-mm slope * (diameter - 12) + class terms + N(0, sd^2)
_MAL_INTERCEPT = -1.0
_MAL_DIAMETER = 0.15
_MAL_TERMS = {
    "spiculated": 1.5,
    "lobulated": 0.7,
    "part_solid": 1.0,
    "ground_glass": 0.4,
    "calcified": -3.0,
    "cystic": -2.5,
}
_MAL_SITE = {"lung": 0.0, "liver": 0.3, "kidney": 0.3, "bone": 0.8, "lymph_node": 0.2}
_MAL_NOISE_SD = 0.5
# time to event: Weibull proportional hazards, S(t | eta) = exp(-(t / scale)^shape * exp(eta))
_SURV_SCALE = 30.0
_SURV_SHAPE = 1.2
_SURV_DIAMETER = 0.04
_SURV_TERMS = {
    "spiculated": 0.6,
    "lobulated": 0.3,
    "part_solid": 0.4,
    "calcified": -0.5,
    "cystic": -0.5,
}
_SURV_SITE = {"lung": 0.0, "liver": 0.5, "kidney": -0.2, "bone": 0.6, "lymph_node": 0.3}
_SURV_MALIGNANT = 1.0
_SURV_FRAILTY_SD = 0.3
_CENSOR_RANGE = (3.0, 48.0)  # independent censoring time, uniform, months

# ---------------------------------------------------------------------------
# Phantom: field of view and tissue values (HU, portal-venous contrast phase).
# ---------------------------------------------------------------------------
_FOV_XY = (240.0, 200.0)
_Z_EXTENT = (110.0, 150.0)
_BORDER_MM = 25.0
_CSV_NAME = "cohort.csv"

_AIR, _TABLE, _SKIN, _SUBCUT, _MUSCLE, _FAT = 0, 1, 2, 3, 4, 5
_LUNG, _HEART, _AORTA, _IVC, _LIVER, _SPLEEN = 6, 7, 8, 9, 10, 11
_STOMACH, _KIDNEY, _VERTEBRA, _BONE, _BOWEL, _CANAL, _LESION = 12, 13, 14, 15, 16, 17, 18
_SITE_LABEL = {
    "lung": _LUNG,
    "liver": _LIVER,
    "kidney": _KIDNEY,
    "bone": _VERTEBRA,
    "lymph_node": _FAT,
}


@dataclass
class _Lesion:
    """One lesion's generating properties and labels (no position yet)."""

    lesion_id: str
    site: str
    diameter_mm: float
    density: str
    margin: str
    malignant: int
    time: float
    event: bool
    centre: tuple[float, float, float] | None = None


@dataclass
class _Patient:
    patient_id: str
    image_seed: np.random.SeedSequence
    lesions: list[_Lesion] = field(default_factory=list)


# ---------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------
def make_lesion_cohort(
    n_lesions: int = 60,
    directory: str | os.PathLike[str] | None = None,
    *,
    lesions_per_scan: int | tuple[int, int] = (2, 4),
    random_state: int | np.random.Generator | np.random.RandomState | None = None,
    spacing: Sequence[float] = (0.8, 0.8, 2.0),
    overwrite: bool = False,
) -> pd.DataFrame:
    """Generate a synthetic, labelled cohort of CT lesions as NIfTI files.

    Real labelled cohorts cannot be redistributed, so this draws one: every patient
    gets a contrast-enhanced (portal venous phase) CT of the lower chest and upper
    abdomen in Hounsfield units, holding a few lesions. The anatomy is built from
    analytic shapes: air (-1000 HU), skin, subcutaneous fat (about -100 HU), muscle
    (about 50 HU), lungs (about -865 HU, with parenchymal texture and branching
    vessels), heart, aorta, liver (about 105 HU, with brighter vessels), spleen,
    stomach with an air-fluid level, kidneys (cortex about 175 HU) in perirenal
    fat, bowel loops, vertebrae (cancellous about 200 HU, cortex and ribs about
    550-900 HU), a scanner table; then Gaussian blur for the scanner's resolution
    and correlated noise of 10-18 HU standard deviation (less in the air). Voxels
    outside the circular reconstruction field of view hold -1024. The table says
    where each lesion is, in the reference package's format, together with the
    lesion's generating properties and labels for classification and survival
    tasks.

    Parameters
    ----------
    n_lesions : int, default=60
        Number of lesions (rows), at least 1.
    directory : str or path-like, optional
        Folder the images are written to (created if needed). By default a new
        temporary folder (``tempfile.mkdtemp``), which is not deleted afterwards.
        One ``<patient_id>.nii.gz`` per patient is written, and ``cohort.csv``: the
        returned table with image paths relative to the folder (readable with
        :func:`read_reference_csv`).
    lesions_per_scan : int or (int, int), default=(2, 4)
        Lesions per scan, drawn uniformly from the inclusive range; an int fixes it.
        The last scan holds fewer when ``n_lesions`` runs out. At most 10.
    random_state : int, numpy Generator, RandomState or SeedSequence, optional
        Seed. A given int gives the same table and byte-identical files on every
        run (with the same versions of numpy, scipy and SimpleITK); None draws
        fresh entropy. Patients are drawn one after the other, each from its own
        child seed, so a larger ``n_lesions`` with the same seed extends a smaller
        cohort (only the last patient of the smaller one may differ).
    spacing : (float, float, float), default=(0.8, 0.8, 2.0)
        Voxel size in mm along x, y, z (SimpleITK order), each between 0.5 and 5.
        The field of view is fixed at 240 x 200 mm in-plane and drawn between 110
        and 150 mm in z; the axes are LPS (identity direction), int16 voxels.
    overwrite : bool, default=False
        Replace files of the same names in ``directory``. When False, any clash
        raises :class:`FileExistsError` before anything is written. Other files in
        ``directory`` are never touched.

    Returns
    -------
    DataFrame
        One row per lesion, ordered by patient, with columns

        - ``patient_id`` (str): one scan per patient, e.g. ``"P0003"``.
        - ``lesion_id`` (str): e.g. ``"P0003_L2"``.
        - ``image_path`` (str): absolute path of the patient's ``.nii.gz``.
        - ``coordX``, ``coordY``, ``coordZ`` (float): the lesion centre in LPS
          millimetres, inside the image and at least 25 mm from its borders, so a
          50 mm patch around it lies inside the scan (relaxed to the lesion radius
          plus 3 mm, at least 10 mm, only if an organ leaves no room, which does
          not happen at the default spacing).
        - ``site`` (str): ``"lung"``, ``"liver"``, ``"kidney"``, ``"bone"`` (a
          vertebral body) or ``"lymph_node"`` (mediastinal or para-aortic fat). The
          lesion lies in that organ, so the surrounding tissue shows the site.
        - ``diameter_mm`` (float): nominal diameter, 5 to 30 mm.
        - ``density`` (str): ``"solid"`` (about 40 HU), ``"part_solid"`` (lung:
          ground glass with a solid core), ``"ground_glass"`` (lung, about -550
          HU), ``"calcified"`` (350 HU and up) or ``"cystic"`` (about 8 HU).
        - ``margin`` (str): ``"smooth"`` (ellipsoid), ``"lobulated"`` (union of
          spheres) or ``"spiculated"`` (core with spikes).
        - ``malignant`` (int, 0 or 1), ``time`` (float, months) and ``event``
          (bool): the labels, generated as described in the Notes.

    Raises
    ------
    ValueError
        For an invalid ``n_lesions``, ``lesions_per_scan``, ``spacing``,
        ``random_state`` or ``overwrite``; nothing is written then.
    FileExistsError
        When a file to be written already exists and ``overwrite`` is False.
    NotADirectoryError
        When ``directory`` names an existing file.

    See Also
    --------
    read_reference_csv : Read a lesion table such as the ``cohort.csv`` written here.

    Notes
    -----
    Lesion properties, per lesion, independently:

    - ``site``: lung 0.35, liver 0.2, kidney 0.15, bone 0.1, lymph_node 0.2.
    - ``diameter_mm``: log-uniform on [5, 30] mm (kidney and lymph node [8, 30],
      bone [6, 20]), rounded to 0.1 mm.
    - ``density``, given the site: lung solid 0.55, part_solid 0.15, ground_glass
      0.15, calcified 0.15; liver and kidney solid 0.6, cystic 0.3, calcified 0.1;
      bone solid 0.7 (lytic), calcified 0.3 (sclerotic); lymph node solid 0.85,
      calcified 0.15.
    - ``margin``, given the density: cystic always smooth; calcified smooth 0.7,
      lobulated 0.3; otherwise smooth 0.45, lobulated 0.3, spiculated 0.25.

    Malignancy: ``malignant ~ Bernoulli(sigmoid(logit))`` with ::

        logit = -1.0 + 0.15 * (diameter_mm - 12)
                + 1.5 [spiculated] + 0.7 [lobulated]
                + 1.0 [part_solid] + 0.4 [ground_glass]
                - 3.0 [calcified] - 2.5 [cystic]
                + site term (lung 0, liver 0.3, kidney 0.3, bone 0.8, lymph_node 0.2)
                + e,  e ~ Normal(0, 0.5^2)

    Time to event (a lesion-level endpoint, such as time to progression, in
    months): Weibull proportional hazards with shape 1.2 and scale 30 months,
    ``S(t) = exp(-(t / 30)^1.2 * exp(eta))``, with ::

        eta = 0.04 * (diameter_mm - 12)
              + 0.6 [spiculated] + 0.3 [lobulated] + 0.4 [part_solid]
              - 0.5 [calcified] - 0.5 [cystic]
              + site term (lung 0, liver 0.5, kidney -0.2, bone 0.6, lymph_node 0.3)
              + 1.0 * malignant
              + u,  u ~ Normal(0, 0.3^2) shared by the lesions of one patient

    The event time is censored by an independent ``Uniform(3, 48)`` months time:
    ``time = min(T, C)`` (rounded to 0.1 month, at least 0.1) and ``event = T <= C``;
    about 30 % of the lesions are censored.

    Lesions are placed at random in their organ (in a vertebral body for bone, in
    the fat next to the aorta for lymph nodes), mostly surrounded by it, apart from
    each other and at least 25 mm from the image borders. Their position and the
    anatomy do not enter the labels. Lesion intensities: solid 40 HU, ground glass
    -550 HU (raising the lung's density, vessels stay visible), part-solid a
    ground-glass lesion with a solid core of 40-60 % of its radius, calcified
    600 HU (at least 350), cystic 8 HU; each with a random offset and texture.

    Generating 60 lesions (about 20 scans of 300 x 250 x 55-75 voxels, 4-5 MB
    each, mostly the noise) takes about 15 seconds of CPU time.

    Examples
    --------
    >>> import tempfile
    >>> import SimpleITK as sitk
    >>> from skfmcib.datasets import make_lesion_cohort
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     cohort = make_lesion_cohort(3, tmp, lesions_per_scan=3, random_state=0)
    ...     image = sitk.ReadImage(cohort.loc[0, "image_path"])
    >>> len(cohort), cohort["patient_id"].nunique()
    (3, 1)
    >>> sorted(cohort.columns[:6])
    ['coordX', 'coordY', 'coordZ', 'image_path', 'lesion_id', 'patient_id']
    >>> [round(s, 4) for s in image.GetSpacing()]  # NIfTI stores float32
    [0.8, 0.8, 2.0]
    """
    n_lesions = _check_n_lesions(n_lesions)
    lo, hi = _check_lesions_per_scan(lesions_per_scan)
    spacing_xyz = _check_spacing(spacing)
    root = _seed_sequence(random_state)
    if not isinstance(overwrite, bool | np.bool_):
        raise ValueError(f"overwrite must be a bool, got {overwrite!r}")

    patients = _sample_patients(n_lesions, lo, hi, root)

    if directory is None:
        out_dir = Path(tempfile.mkdtemp(prefix="skfmcib-cohort-"))
    else:
        out_dir = Path(os.fspath(directory)).expanduser().absolute()
        if out_dir.exists() and not out_dir.is_dir():
            raise NotADirectoryError(f"directory {str(out_dir)!r} exists and is not a folder")
    names = [f"{p.patient_id}.nii.gz" for p in patients] + [_CSV_NAME]
    if not overwrite and out_dir.is_dir():
        clashes = [n for n in names if (out_dir / n).exists()]
        if clashes:
            raise FileExistsError(
                f"{len(clashes)} file(s) to be written already exist in {str(out_dir)!r} "
                f"({listing(clashes, limit=5)}); pass overwrite=True to replace them or choose "
                "another directory"
            )
    out_dir.mkdir(parents=True, exist_ok=True)

    rows = []
    for patient in patients:
        path = out_dir / f"{patient.patient_id}.nii.gz"
        rng = np.random.default_rng(patient.image_seed)
        image = _render_patient(patient.lesions, spacing_xyz, rng)
        _write_image(image, path)
        for lesion in patient.lesions:
            assert lesion.centre is not None
            rows.append(
                {
                    "patient_id": patient.patient_id,
                    "lesion_id": lesion.lesion_id,
                    "image_path": str(path),
                    "coordX": lesion.centre[0],
                    "coordY": lesion.centre[1],
                    "coordZ": lesion.centre[2],
                    "site": lesion.site,
                    "diameter_mm": lesion.diameter_mm,
                    "density": lesion.density,
                    "margin": lesion.margin,
                    "malignant": lesion.malignant,
                    "time": lesion.time,
                    "event": lesion.event,
                }
            )
    table = _as_table(rows)
    relative = table.assign(image_path=[Path(p).name for p in table["image_path"]])
    tmp_csv = out_dir / f".{_CSV_NAME}.partial"
    relative.to_csv(tmp_csv, index=False, float_format="%.10g", lineterminator="\n")
    os.replace(tmp_csv, out_dir / _CSV_NAME)
    return table


_COLUMNS = {
    "patient_id": str,
    "lesion_id": str,
    "image_path": str,
    "coordX": np.float64,
    "coordY": np.float64,
    "coordZ": np.float64,
    "site": str,
    "diameter_mm": np.float64,
    "density": str,
    "margin": str,
    "malignant": np.int64,
    "time": np.float64,
    "event": bool,
}


def _as_table(rows: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=list(_COLUMNS))
    return table.astype(_COLUMNS)


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------
def _check_n_lesions(n_lesions) -> int:
    if isinstance(n_lesions, bool) or not isinstance(n_lesions, int | np.integer):
        raise ValueError(f"n_lesions must be an int >= 1, got {n_lesions!r}")
    if n_lesions < 1:
        raise ValueError(f"n_lesions must be >= 1, got {n_lesions}")
    return int(n_lesions)


def _check_lesions_per_scan(value) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int | np.integer) else value
    try:
        lo, hi = pair
        ok = all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in (lo, hi))
    except (TypeError, ValueError):
        ok = False
    if not ok or not 1 <= lo <= hi <= 10:
        raise ValueError(
            "lesions_per_scan must be an int or a pair (low, high) of ints with "
            f"1 <= low <= high <= 10, got {value!r}"
        )
    return int(lo), int(hi)


def _check_spacing(spacing) -> tuple[float, float, float]:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(0.5 <= s <= 5.0 for s in values):
        raise ValueError(
            f"spacing must be three voxel sizes in mm (x, y, z), each in [0.5, 5], got {spacing!r}"
        )
    return values  # type: ignore[return-value]


def _seed_sequence(random_state) -> np.random.SeedSequence:
    if random_state is None:
        return np.random.SeedSequence()
    if isinstance(random_state, np.random.SeedSequence):
        return random_state
    if isinstance(random_state, np.random.Generator):
        return np.random.SeedSequence(int(random_state.integers(0, 2**63)))
    if isinstance(random_state, np.random.RandomState):
        return np.random.SeedSequence(int(random_state.randint(0, 2**31 - 1)))
    if isinstance(random_state, int | np.integer) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be a non-negative int, got {random_state}")
        return np.random.SeedSequence(int(random_state))
    raise ValueError(
        "random_state must be None, a non-negative int, or a numpy Generator, RandomState or "
        f"SeedSequence, got {random_state!r}"
    )


# ---------------------------------------------------------------------------
# The lesion table (properties and labels)
# ---------------------------------------------------------------------------
def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _choice(rng: np.random.Generator, probs: dict[str, float]) -> str:
    keys = list(probs)
    p = np.array([probs[k] for k in keys])
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _sample_lesion(rng: np.random.Generator, lesion_id: str, frailty: float) -> _Lesion:
    site = _choice(rng, _SITE_P)
    dmin, dmax = _DIAMETER_RANGE[site]
    diameter = round(float(np.exp(rng.uniform(np.log(dmin), np.log(dmax)))), 1)
    density = _choice(rng, _DENSITY_P[site])
    margin = _choice(rng, _MARGIN_P.get(density, _MARGIN_P["other"]))
    flags = {density: 1.0, margin: 1.0}

    logit = (
        _MAL_INTERCEPT
        + _MAL_DIAMETER * (diameter - 12.0)
        + sum(w * flags.get(k, 0.0) for k, w in _MAL_TERMS.items())
        + _MAL_SITE[site]
        + rng.normal(0.0, _MAL_NOISE_SD)
    )
    malignant = int(rng.random() < _sigmoid(logit))

    eta = (
        _SURV_DIAMETER * (diameter - 12.0)
        + sum(w * flags.get(k, 0.0) for k, w in _SURV_TERMS.items())
        + _SURV_SITE[site]
        + _SURV_MALIGNANT * malignant
        + frailty
    )
    t_event = _SURV_SCALE * (rng.exponential() * math.exp(-eta)) ** (1.0 / _SURV_SHAPE)
    t_censor = rng.uniform(*_CENSOR_RANGE)
    event = bool(t_event <= t_censor)
    time = max(round(min(t_event, t_censor), 1), 0.1)
    return _Lesion(lesion_id, site, diameter, density, margin, malignant, time, event)


def _sample_patients(
    n_lesions: int, lo: int, hi: int, root: np.random.SeedSequence
) -> list[_Patient]:
    """Draw patients one after the other, each from its own child seed."""
    patients: list[_Patient] = []
    remaining = n_lesions
    while remaining > 0:
        table_seed, image_seed = root.spawn(1)[0].spawn(2)
        rng = np.random.default_rng(table_seed)
        pid = f"P{len(patients):04d}"
        k = min(int(rng.integers(lo, hi + 1)), remaining)
        frailty = float(rng.normal(0.0, _SURV_FRAILTY_SD))
        lesions = [_sample_lesion(rng, f"{pid}_L{j + 1}", frailty) for j in range(k)]
        patients.append(_Patient(pid, image_seed, lesions))
        remaining -= k
    return patients


def _sample_table(
    n_lesions: int,
    lesions_per_scan: int | tuple[int, int] = (2, 4),
    random_state: int | None = None,
) -> pd.DataFrame:
    """The label table of :func:`make_lesion_cohort` without images or positions."""
    lo, hi = _check_lesions_per_scan(lesions_per_scan)
    patients = _sample_patients(_check_n_lesions(n_lesions), lo, hi, _seed_sequence(random_state))
    rows = [
        {"patient_id": p.patient_id, **{k: v for k, v in vars(les).items() if k != "centre"}}
        for p in patients
        for les in p.lesions
    ]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------
# Phantom
# ---------------------------------------------------------------------------
def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _superellipse(u: np.ndarray, v: np.ndarray, a: float, b: float, p: float = 2.4) -> np.ndarray:
    return (np.abs(u / a) ** p + np.abs(v / b) ** p) ** (1.0 / p)


class _Phantom:
    """Voxel grid, HU and organ-label volumes, and painting helpers."""

    def __init__(self, spacing: tuple[float, float, float], rng: np.random.Generator) -> None:
        self.rng = rng
        self.spacing = spacing
        sx, sy, sz = spacing
        z_len = rng.uniform(*_Z_EXTENT)
        self.shape = (
            max(int(round(z_len / sz)), 1),
            int(round(_FOV_XY[1] / sy)),
            int(round(_FOV_XY[0] / sx)),
        )
        nz, ny, nx = self.shape
        # field of view centred on x = 0, y = +8 (the body is near y = 0, the table
        # behind it); z arbitrary
        self.origin = (
            round(-0.5 * (nx - 1) * sx + rng.uniform(-3, 3), 2),
            round(-0.5 * (ny - 1) * sy + 8.0 + rng.uniform(-3, 3), 2),
            round(rng.uniform(-300.0, -100.0), 2),
        )
        self.xs = self.origin[0] + sx * np.arange(nx)
        self.ys = self.origin[1] + sy * np.arange(ny)
        self.zs = self.origin[2] + sz * np.arange(nz)
        self.hu = np.full(self.shape, -1000.0, dtype=np.float32)
        self.lab = np.zeros(self.shape, dtype=np.uint8)
        self.texture = self._texture()
        self.h = float(max(sx, sy))  # edge width for anti-aliased shapes

    # -- helpers ------------------------------------------------------------
    def _texture(self) -> np.ndarray:
        """Smooth unit-variance noise shared by all tissues (parenchymal texture)."""
        sx, sy, sz = self.spacing
        white = self.rng.standard_normal(self.shape, dtype=np.float32)
        tex = ndimage.gaussian_filter(white, sigma=(1.5 / sz, 1.8 / sy, 1.8 / sx), truncate=2.5)
        tex /= max(float(tex[::3, ::3, ::3].std()), 1e-6)
        return tex

    def index_box(self, centre, half: float | Sequence[float]):
        """Slices covering centre +- half (mm) clipped to the grid, or None."""
        half = np.broadcast_to(np.asarray(half, dtype=float), (3,))
        out = []
        for axis, grid, c, hw in zip(
            (2, 1, 0), (self.xs, self.ys, self.zs), centre, half, strict=True
        ):
            s = self.spacing[2 - axis]
            i0 = max(int(math.floor((c - hw - grid[0]) / s)), 0)
            i1 = min(int(math.ceil((c + hw - grid[0]) / s)) + 1, self.shape[axis])
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        sx_, sy_, sz_ = out
        return (sz_, sy_, sx_)

    def local_coords(self, box, centre):
        sz_, sy_, sx_ = box
        px = (self.xs[sx_] - centre[0]).astype(np.float32)[None, None, :]
        py = (self.ys[sy_] - centre[1]).astype(np.float32)[None, :, None]
        pz = (self.zs[sz_] - centre[2]).astype(np.float32)[:, None, None]
        return px, py, pz

    def ellipsoid_alpha(self, centre, semi, rot=None, box=None):
        """Anti-aliased coverage (0..1) of a rotated ellipsoid on its bounding box."""
        semi = np.asarray(semi, dtype=float)
        if box is None:
            box = self.index_box(centre, semi.max() + 2 * self.h)
        if box is None:
            return None, None
        px, py, pz = self.local_coords(box, centre)
        rot = None if rot is None else rot.astype(np.float32)
        semi = semi.astype(np.float32)
        if rot is None:
            qa, qb, qc = px, py, pz
        else:  # coordinates in the ellipsoid's frame: R^T p
            qa = rot[0, 0] * px + rot[1, 0] * py + rot[2, 0] * pz
            qb = rot[0, 1] * px + rot[1, 1] * py + rot[2, 1] * pz
            qc = rot[0, 2] * px + rot[1, 2] * py + rot[2, 2] * pz
        rho = np.sqrt((qa / semi[0]) ** 2 + (qb / semi[1]) ** 2 + (qc / semi[2]) ** 2)
        alpha = np.clip(0.5 - (rho - 1.0) * (semi.min() / self.h), 0.0, 1.0)
        return box, alpha.astype(np.float32, copy=False)

    def paint(self, box, alpha, label, value, where=None, amp: float = 0.0):
        """Blend ``value`` (+ amp * texture) into the box with coverage alpha."""
        if box is None:
            return
        alpha = np.asarray(alpha, dtype=np.float32)
        if where is not None:
            alpha = alpha * where
        hu = self.hu[box]
        target = value + amp * self.texture[box] if amp else np.float32(value)
        hu += alpha * (target - hu)
        self.lab[box][np.broadcast_to(alpha > 0.5, hu.shape)] = label

    def fill(self, mask, label, value, amp: float = 0.0):
        """Hard fill of a boolean mask (broadcast against the volume) within its bounding box."""
        mask = np.asarray(mask)
        box = []
        for axis in range(3):
            if mask.shape[axis] == 1:
                box.append(slice(None))
                continue
            other = tuple(a for a in range(3) if a != axis)
            hit = np.flatnonzero(mask.any(axis=other))
            if hit.size == 0:
                return
            box.append(slice(int(hit[0]), int(hit[-1]) + 1))
        sub = tuple(slice(None) if mask.shape[a] == 1 else box[a] for a in range(3))
        view = tuple(box[a] if mask.shape[a] > 1 else slice(None) for a in range(3))
        m = mask[sub]
        hu, lab = self.hu[view], self.lab[view]
        m = np.broadcast_to(m, hu.shape)
        if np.ndim(value):
            value = np.broadcast_to(value, self.shape)[view]
        np.copyto(hu, value + amp * self.texture[view] if amp else value, where=m)
        np.copyto(lab, np.uint8(label), where=m)

    def label_at(self, point) -> int:
        """Organ label of the voxel nearest to a physical point; -1 outside the grid."""
        idx = [
            int(round((c - o) / s))
            for c, o, s in zip(point, self.origin, self.spacing, strict=True)
        ]
        if not all(0 <= i < n for i, n in zip(idx, self.shape[::-1], strict=True)):
            return -1
        return int(self.lab[idx[2], idx[1], idx[0]])

    def tube(self, p0, p1, radius: float, label, value, where_label=None, amp=0.0):
        """Anti-aliased cylinder with round ends from p0 to p1 (mm)."""
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        lo = np.minimum(p0, p1) - radius - self.h
        hi = np.maximum(p0, p1) + radius + self.h
        box = self.index_box((lo + hi) / 2, (hi - lo) / 2)
        if box is None:
            return
        px, py, pz = self.local_coords(box, p0)
        d = p1 - p0
        length2 = float(d @ d) or 1e-9
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / length2, 0.0, 1.0)
        dist = np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)
        alpha = np.clip(0.5 + (radius - dist) / self.h, 0.0, 1.0).astype(np.float32)
        where = None
        if where_label is not None:
            where = self.lab[box] == where_label
        self.paint(box, alpha, label, value, where=where, amp=amp)

    def vessel_tree(self, root, direction, radius, generations, length, label, value):
        """A random bifurcating tree of tubes, painted only into voxels of ``label``."""
        rng = self.rng
        stack = [(np.asarray(root, float), np.asarray(direction, float), radius, 0)]
        while stack:
            p, d, r, g = stack.pop()
            seg = length * (0.8**g) * rng.uniform(0.7, 1.3)
            d = d + rng.normal(0.0, 0.25, 3)
            d /= np.linalg.norm(d)
            q = p + seg * d
            self.tube(p, q, r, label, value, where_label=label)
            # branches that leave the organ end there
            if g + 1 < generations and r > 0.45 and self.label_at(q) == label:
                for _ in range(2):
                    nd = d + rng.normal(0.0, 0.55, 3)
                    stack.append((q, nd / np.linalg.norm(nd), r * 0.75, g + 1))


def _build_anatomy(ph: _Phantom) -> dict:
    """Paint the body into the phantom; return the geometry needed for lesion placement."""
    rng = ph.rng
    nz, ny, nx = ph.shape
    # body coordinates: u (left +), v (posterior +), z (superior +)
    bx, by = rng.uniform(-3, 3), rng.uniform(-3, 3)
    a_body, b_body = rng.uniform(94, 106), rng.uniform(70, 80)
    skin, fat, wall = 2.0, rng.uniform(7, 15), rng.uniform(7, 10)
    u = (ph.xs - bx)[None, :]
    v = (ph.ys - by)[:, None]
    z = ph.zs[:, None, None]
    z_top, z_bottom = ph.zs[-1], ph.zs[0]
    z_d = z_bottom + 0.45 * (z_top - z_bottom) + rng.uniform(-4, 4)  # diaphragm level
    ac, bc = a_body - skin - fat - wall, b_body - skin - fat - wall  # cavity semi-axes

    rho_skin = _superellipse(u, v, a_body, b_body)
    rho_fat = _superellipse(u, v, a_body - skin, b_body - skin)
    rho_wall = _superellipse(u, v, a_body - skin - fat, b_body - skin - fat)
    rho_cav = _superellipse(u, v, ac, bc)
    cavity = rho_cav <= 1.0

    # scanner table, a curved carbon-fibre band below the patient
    table_top = b_body + 6.0 + 0.002 * u**2
    band = (v >= table_top) & (v <= table_top + 4.0) & (np.abs(u) < 0.95 * a_body)
    ph.fill(band[None], _TABLE, 150.0, amp=10.0)
    ph.fill((rho_skin <= 1.0)[None], _SKIN, 30.0, amp=5.0)
    ph.fill((rho_fat <= 1.0)[None], _SUBCUT, -100.0 + rng.uniform(-8, 8), amp=8.0)
    ph.fill((rho_wall <= 1.0)[None], _MUSCLE, 50.0 + rng.uniform(-5, 5), amp=8.0)
    ph.fill(cavity[None], _FAT, -90.0 + rng.uniform(-8, 8), amp=10.0)

    # spine geometry
    v_canal = bc - 20.0
    r_canal = 6.0
    r_vb = rng.uniform(12.5, 14.0)
    v_vb = v_canal - r_canal - 2.5 - r_vb
    # paraspinal muscles
    for side in (-1, 1):
        m = (((u - side * 21.0) / 17.0) ** 2 + ((v - (bc - 6.0)) / 15.0) ** 2 <= 1.0) & (
            rho_wall <= 1.0
        )
        ph.fill(m[None], _MUSCLE, 55.0, amp=8.0)

    # diaphragm: two domes; thorax above, abdomen below
    h_r, h_l = rng.uniform(15, 22), rng.uniform(8, 14)
    dome_r = h_r * (1 - ((u + 0.45 * ac) / (0.55 * ac)) ** 2 - ((v + 0.1 * bc) / (0.9 * bc)) ** 2)
    dome_l = h_l * (1 - ((u - 0.45 * ac) / (0.55 * ac)) ** 2 - ((v + 0.1 * bc) / (0.9 * bc)) ** 2)
    z_dia = z_d + np.maximum(dome_r, dome_l)  # (ny, nx)
    thorax = z > z_dia[None]
    abdomen = ~thorax

    # lungs, with a gravity-dependent density gradient
    foot = (
        ((np.abs(u) - 0.5 * ac) / (0.48 * ac)) ** 2 + ((v - 0.02 * bc) / (0.92 * bc)) ** 2 <= 1
    ) & (np.abs(u) > 14.0)
    gradient = (-865.0 + 35.0 * (v / bc) + 0.0 * u).astype(np.float32)[None]
    ph.fill((foot & cavity)[None] & thorax, _LUNG, gradient, amp=22.0)

    # heart with pericardial fat, sitting on the diaphragm
    rot_h = _rot_z(rng.uniform(0.35, 0.6))
    c_h = (bx + 10.0, by - 0.35 * bc, z_d + rng.uniform(22, 30))
    semi_h = np.array([0.45 * ac, 0.5 * bc, 36.0])
    where = None
    box, alpha = ph.ellipsoid_alpha(c_h, semi_h * 1.1, rot_h)
    if box is not None:
        where = thorax[box[0]].astype(np.float32)[:, box[1], box[2]]
        ph.paint(box, alpha, _FAT, -95.0, where=where, amp=8.0)
        box2, alpha2 = ph.ellipsoid_alpha(c_h, semi_h, rot_h, box=box)
        ph.paint(box2, alpha2, _HEART, 75.0, where=where, amp=5.0)
        box3, alpha3 = ph.ellipsoid_alpha(c_h, semi_h * 0.78, rot_h, box=box)
        ph.paint(box3, alpha3, _HEART, 165.0, where=where, amp=4.0)

    # liver (right upper quadrant, under the right dome)
    liver_hu = 105.0 + rng.uniform(-10, 10)
    foot = (
        ((u + 0.3 * ac) / (0.78 * ac)) ** 2 + ((v + 0.05 * bc) / (0.98 * bc)) ** 2 <= 1
    ) & cavity
    liver_bottom = z_d - 68.0 + 0.3 * (u + ac)
    liver = foot[None] & abdomen & (z > liver_bottom[None])
    ph.fill(liver, _LIVER, liver_hu, amp=7.0)
    porta = (bx - 0.25 * ac, by + 0.05 * bc, z_d - 28.0)
    for _ in range(3):
        d = rng.normal(size=3) + np.array([-0.6, -0.2, 0.3])
        ph.vessel_tree(porta, d, 3.5, 5, 18.0, _LIVER, liver_hu + 60.0)
    hv_root = (bx - 0.05 * ac, by + 0.2 * bc, z_d + 5.0)
    for _ in range(2):
        d = rng.normal(size=3) + np.array([-0.7, -0.3, -0.6])
        ph.vessel_tree(hv_root, d, 3.0, 5, 16.0, _LIVER, liver_hu + 45.0)

    # stomach (left, anterior) with an air-fluid level, and the spleen
    c_st = (bx + 0.32 * ac, by - 0.32 * bc, z_d - rng.uniform(15, 25))
    semi_st = np.array([0.32 * ac, 0.4 * bc, 28.0])
    box, alpha = ph.ellipsoid_alpha(c_st, semi_st, _rot_z(rng.uniform(-0.4, 0.2)))
    if box is not None:
        allowed = abdomen[box[0]][:, box[1], box[2]] & cavity[box[1], box[2]][None]
        allowed = allowed.astype(np.float32)
        ph.paint(box, alpha, _STOMACH, 60.0, where=allowed, amp=6.0)
        _, inner = ph.ellipsoid_alpha(c_st, semi_st - 4.0, _rot_z(0.0), box=box)
        ph.paint(box, inner, _STOMACH, 12.0, where=allowed, amp=3.0)
        gas_level = c_st[1] - 0.3 * semi_st[1]
        gas = (ph.ys[box[1]] < gas_level)[None, :, None].astype(np.float32)
        ph.paint(box, inner * gas, _STOMACH, -1000.0, where=allowed)
    c_sp = (bx + 0.62 * ac, by + 0.3 * bc, z_d - rng.uniform(8, 18))
    box, alpha = ph.ellipsoid_alpha(c_sp, (0.22 * ac, 0.45 * bc, 32.0), _rot_z(-0.5))
    if box is not None:
        allowed = abdomen[box[0]][:, box[1], box[2]] & ((rho_cav[box[1], box[2]] <= 0.97)[None])
        ph.paint(box, alpha, _SPLEEN, liver_hu + 10.0, where=allowed.astype(np.float32), amp=5.0)

    # bowel loops in the lower abdominal fat
    low = (z < z_d - 35.0) & (v < 0.2 * bc)[None]
    loops = low & (ph.lab == _FAT) & (ph.texture > 0.9)
    ph.fill(loops, _BOWEL, 35.0, amp=12.0)

    # aorta course; the fat around it (posterior mediastinum, retroperitoneum) holds the
    # lymph nodes
    r_ao = rng.uniform(9.0, 11.0)
    blend = 1.0 / (1.0 + np.exp(-(ph.zs - z_d) / 12.0))  # 1 in chest, 0 in abdomen
    ao_u = bx + blend * (r_vb + r_ao - 3.0) + (1 - blend) * 6.0
    ao_v = by + v_vb + blend * (-3.0) + (1 - blend) * (-(r_vb + r_ao + 2.0))
    pad_a = r_ao + 16.0 - 7.0 * blend  # thinner in the chest
    pad_b = r_ao + 12.0 - 4.0 * blend
    soft = np.array([_FAT, _LIVER, _LUNG, _STOMACH, _SPLEEN, _BOWEL], dtype=np.uint8)
    for k in range(nz):
        box = ph.index_box((ao_u[k], ao_v[k], ph.zs[k]), (pad_a[k], pad_b[k], 0.0))
        if box is None:
            continue
        uu = ph.xs[box[2]][None, :] - ao_u[k]
        vv = ph.ys[box[1]][:, None] - ao_v[k]
        m = ((uu / pad_a[k]) ** 2 + (vv / pad_b[k]) ** 2 <= 1.0) & (vv + ao_v[k] < by + v_vb)
        m &= cavity[box[1], box[2]] & np.isin(ph.lab[k, box[1], box[2]], soft)
        ph.hu[k, box[1], box[2]][m] = -95.0 + 8.0 * ph.texture[k, box[1], box[2]][m]
        ph.lab[k, box[1], box[2]][m] = _FAT

    # kidneys in perirenal fat
    for side in (-1, 1):
        c_k = (
            bx + side * (r_vb + 26.0),
            by + v_vb + 4.0,
            z_d - rng.uniform(32, 40) - (6.0 if side < 0 else 0.0),
        )
        rot = _rot_z(side * rng.uniform(0.4, 0.7)) @ _rot_y(side * rng.uniform(0.1, 0.25))
        semi = np.array([rng.uniform(16, 19), rng.uniform(20, 24), rng.uniform(34, 40)])
        box, alpha = ph.ellipsoid_alpha(c_k, semi * 1.25, rot)
        if box is None:
            continue
        ph.paint(box, alpha, _FAT, -95.0, amp=8.0)
        _, a_k = ph.ellipsoid_alpha(c_k, semi, rot, box=box)
        ph.paint(box, a_k, _KIDNEY, 175.0, amp=8.0)
        _, a_m = ph.ellipsoid_alpha(c_k, semi * 0.7, rot, box=box)
        ph.paint(box, a_m, _KIDNEY, 145.0, amp=10.0)
        c_sinus = np.asarray(c_k) - rot @ np.array([side * 0.75 * semi[0], 0.0, 0.0])
        _, a_s = ph.ellipsoid_alpha(c_sinus, semi * np.array([0.55, 0.35, 0.5]), rot, box=box)
        ph.paint(box, a_s, _KIDNEY, -70.0, amp=10.0)

    # psoas muscles, lower abdomen
    for side in (-1, 1):
        m = ((u - side * (r_vb + 8.0)) / 9.0) ** 2 + ((v - v_vb - 3.0) / 10.0) ** 2 <= 1.0
        ph.fill(m[None] & (z < z_d - 30.0), _MUSCLE, 50.0, amp=8.0)

    # aorta (descending: left paravertebral in the chest, anterior in the abdomen), IVC
    for k in range(nz):
        box = ph.index_box((ao_u[k], ao_v[k], ph.zs[k]), (r_ao + 1.0, r_ao + 1.0, 0.0))
        if box is None:
            continue
        d2 = (ph.xs[box[2]][None, :] - ao_u[k]) ** 2 + (ph.ys[box[1]][:, None] - ao_v[k]) ** 2
        m = d2 <= r_ao**2
        ph.hu[k, box[1], box[2]][m] = 165.0 + 4.0 * ph.texture[k, box[1], box[2]][m]
        ph.lab[k, box[1], box[2]][m] = _AORTA
    ivc = ((u + 20.0) / 10.0) ** 2 + ((v - v_vb + r_vb + 8.0) / 8.0) ** 2 <= 1.0
    ph.fill(ivc[None] & (z < z_d + 5.0), _IVC, 130.0, amp=4.0)

    # esophagus (chest)
    eso = ((u + 2.0) / 6.0) ** 2 + ((v - v_vb + r_vb + 6.0) / 5.0) ** 2 <= 1.0
    ph.fill(eso[None] & thorax, _MUSCLE, 40.0, amp=6.0)

    # spine: vertebral bodies with discs, canal, posterior elements
    vb = (u**2 + (v - v_vb) ** 2) <= r_vb**2
    vb_core = (u**2 + (v - v_vb) ** 2) <= (r_vb - 1.2) ** 2
    phase_v = ((ph.zs - rng.uniform(0, 26.0)) % 26.0)[:, None, None]
    disc = phase_v < 5.0
    ph.fill(vb[None], _VERTEBRA, 900.0, amp=40.0)
    ph.fill(vb_core[None], _VERTEBRA, 200.0, amp=40.0)
    ph.fill(vb_core[None] & disc, _VERTEBRA, 90.0, amp=6.0)
    ring = (u**2 + (v - v_canal) ** 2 <= (r_canal + 2.5) ** 2) & (v > v_canal - r_canal - 4.0)
    spinous = (np.abs(u) < 2.5) & (v > v_canal) & (v < b_body - skin - fat - 6.0)
    transverse = (np.abs(u) < r_vb + 8.0) & (np.abs(v - v_canal + 2.0) < 2.5)
    pedicles = (np.abs(u) < r_canal + 2.5) & (v > v_vb) & (v < v_canal)
    ph.fill((ring | spinous | pedicles)[None] & ~vb[None], _BONE, 600.0, amp=80.0)
    ph.fill(transverse[None] & (phase_v > 9.0) & (phase_v < 17.0), _BONE, 600.0, amp=80.0)
    ph.fill((u**2 + (v - v_canal) ** 2 <= r_canal**2)[None], _CANAL, 20.0, amp=5.0)

    # ribs (descending anteriorly) in the chest wall, sternum in front
    rib_out = _superellipse(u, v, a_body - skin - fat - 1.5, b_body - skin - fat - 1.5)
    rib_in = _superellipse(u, v, a_body - skin - fat - 5.5, b_body - skin - fat - 5.5)
    phi = np.abs(np.arctan2(u, v))  # 0 at the posterior midline
    ring2d = (rib_out <= 1.0) & (rib_in > 1.0) & (phi > 0.3) & (phi < 2.55)
    rj, ri = np.nonzero(ring2d)
    arc = phi[rj, ri] * 0.5 * (a_body + b_body)
    z_rib0 = rng.uniform(0, 22.0)
    wobble = 2.0 * np.sin(arc / 23.0 + rng.uniform(0, 6.3))
    phase = (ph.zs[:, None] + 0.45 * arc[None, :] + wobble[None, :] - z_rib0) % 22.0
    rib = (phase < 6.0) & (ph.zs[:, None] > z_d - 45.0 + 12.0 * phi[rj, ri][None, :])
    sub_hu = ph.hu[:, rj, ri]
    sub_lab = ph.lab[:, rj, ri]
    sub_hu[rib] = 550.0 + 80.0 * ph.texture[:, rj, ri][rib]
    sub_lab[rib] = _BONE
    ph.hu[:, rj, ri] = sub_hu
    ph.lab[:, rj, ri] = sub_lab
    sternum = (np.abs(u) < 11.0) & (rib_out <= 1.0) & (rib_in > 1.0) & (v < 0)
    ph.fill(sternum[None] & (z > z_d + 15.0), _BONE, 400.0, amp=50.0)

    # pulmonary vessels: short branching trees through both lungs, pointing away from
    # the hila, thicker near them
    zi, yi, xi = np.nonzero(ph.lab[:, ::4, ::4] == _LUNG)
    if zi.size:
        for j in rng.choice(zi.size, size=min(70, zi.size), replace=False):
            root = np.array([ph.xs[4 * xi[j]], ph.ys[4 * yi[j]], ph.zs[zi[j]]])
            side = 1.0 if root[0] > bx else -1.0
            hilum = np.array([bx + side * 12.0, by, z_d + 45.0])
            d = root - hilum
            radius = float(np.clip(0.4 + 2.4 * (1.0 - np.linalg.norm(d) / 90.0), 0.5, 2.6))
            d = d / np.linalg.norm(d) + rng.normal(0.0, 0.3, 3)
            ph.vessel_tree(root, d, radius, 4, 12.0, _LUNG, 60.0)

    return {"aorta": (ao_u, ao_v, r_ao)}


# ---------------------------------------------------------------------------
# Lesions
# ---------------------------------------------------------------------------
def _sphere_directions(n: int = 32) -> np.ndarray:
    """Quasi-uniform unit vectors (Fibonacci sphere), shape (n, 3)."""
    i = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * i / n)
    azimuth = np.pi * (1 + 5**0.5) * i
    return np.stack(
        [np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], 1
    )


_DIRECTIONS = _sphere_directions()


def _labels_at(ph: _Phantom, points: np.ndarray) -> np.ndarray:
    """Organ labels at physical points (nearest voxel); 255 outside the grid."""
    origin = np.array(ph.origin)
    spacing = np.array(ph.spacing)
    idx = np.rint((points - origin) / spacing).astype(int)  # (n, 3) x, y, z
    nz, ny, nx = ph.shape
    inside = (
        (idx[:, 0] >= 0)
        & (idx[:, 0] < nx)
        & (idx[:, 1] >= 0)
        & (idx[:, 1] < ny)
        & (idx[:, 2] >= 0)
        & (idx[:, 2] < nz)
    )
    out = np.full(len(points), 255, dtype=np.int64)
    i = idx[inside]
    out[inside] = ph.lab[i[:, 2], i[:, 1], i[:, 0]]
    return out


def _place(ph: _Phantom, anatomy: dict, lesion: _Lesion, placed: list) -> tuple:
    """Pick a lesion centre in its organ, clear of other lesions and the borders."""
    rng = ph.rng
    r = lesion.diameter_mm / 2.0
    organ = _SITE_LABEL[lesion.site]
    sx, sy, sz = ph.spacing
    nz, ny, nx = ph.shape
    zi, yi, xi = np.nonzero(ph.lab == organ)
    if lesion.site == "lymph_node":
        ao_u, ao_v, r_ao = anatomy["aorta"]
        dist = np.hypot(ph.xs[xi] - ao_u[zi], ph.ys[yi] - ao_v[zi])
        keep = (dist > r_ao + 0.6 * r + 1.0) & (dist < r_ao + r + 12.0)
        zi, yi, xi = zi[keep], yi[keep], xi[keep]
    lo = np.array([ph.xs[0], ph.ys[0], ph.zs[0]])
    hi = np.array([ph.xs[-1], ph.ys[-1], ph.zs[-1]])
    # the share of points on a sphere of radius factor * r + pad around the centre that
    # must lie in the organ; relaxed step by step with the border and the gap to other
    # lesions: (border mm, sphere radius, share, gap factor)
    inside_share = {"lung": 0.75, "liver": 0.85, "kidney": 0.6, "bone": 0.95, "lymph_node": 0.55}
    forbidden = [_VERTEBRA, _BONE, _CANAL] if lesion.site == "lymph_node" else []
    factor, pad = {
        "lung": (1.0, 4.0),
        "liver": (1.0, 4.0),
        "kidney": (0.6, 0.0),
        "lymph_node": (1.0, 3.0),
    }.get(lesion.site, (1.0, 0.0))
    stages = [
        (_BORDER_MM, factor * r + pad, inside_share[lesion.site], 1.0),
        (_BORDER_MM, 0.7 * factor * r, 0.5 * inside_share[lesion.site], 0.5),
        (max(r + 3.0, 10.0), 0.0, 0.0, 0.0),
    ]
    for border, surround, share, gap in stages:
        ok = (
            (xi * sx >= border)
            & ((nx - 1 - xi) * sx >= border)
            & (yi * sy >= border)
            & ((ny - 1 - yi) * sy >= border)
            & (zi * sz >= border)
            & ((nz - 1 - zi) * sz >= border)
        )
        cand = np.flatnonzero(ok)
        if cand.size == 0:
            continue
        for _ in range(150):
            j = cand[rng.integers(cand.size)]
            centre = np.array(
                [
                    ph.xs[xi[j]] + rng.uniform(-0.5, 0.5) * sx,
                    ph.ys[yi[j]] + rng.uniform(-0.5, 0.5) * sy,
                    ph.zs[zi[j]] + rng.uniform(-0.5, 0.5) * sz,
                ]
            ).round(2)
            if np.any(centre - lo < border) or np.any(hi - centre < border):
                continue
            if any(
                np.linalg.norm(centre - c) < gap * (r + rr) + 3.0 + r * 0.3 + rr * 0.3
                for c, rr in placed
            ):
                continue
            if share > 0:
                labels = _labels_at(ph, centre + surround * _DIRECTIONS)
                if np.mean(labels == organ) < share or np.isin(labels, forbidden).any():
                    continue
            return tuple(float(c) for c in centre)
    raise RuntimeError(
        f"could not place a {lesion.diameter_mm} mm {lesion.site} lesion in a scan of "
        f"{ph.shape[::-1]} voxels at spacing {ph.spacing}; try a finer spacing"
    )


def _lesion_hu(density: str, rng: np.random.Generator) -> tuple[float, float]:
    """(mean HU, texture amplitude) for a density class."""
    if density == "solid":
        return 40.0 + rng.normal(0.0, 8.0), 12.0
    if density == "ground_glass" or density == "part_solid":
        return -550.0 + rng.normal(0.0, 40.0), 40.0
    if density == "calcified":
        return max(600.0 + rng.normal(0.0, 120.0), 350.0), 40.0
    return 8.0 + rng.normal(0.0, 4.0), 3.0  # cystic


def _render_lesion(ph: _Phantom, lesion: _Lesion) -> None:
    rng = ph.rng
    centre = np.asarray(lesion.centre)
    r = lesion.diameter_mm / 2.0
    spikes = []
    if lesion.margin == "spiculated":
        for _ in range(int(rng.integers(10, 21))):
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            t1 = r * rng.uniform(1.3, 2.2) + 2.0
            spikes.append((d, 0.5 * r, t1, 0.15 * r + 0.7))
    reach = max([r * 1.3] + [s[2] for s in spikes]) + 2.0 * ph.h
    box = ph.index_box(centre, reach)
    if box is None:
        return
    px, py, pz = ph.local_coords(box, centre)
    shape = np.broadcast_shapes(px.shape, py.shape, pz.shape)

    def ellipsoid(c, semi, rot):
        qa = px - c[0]
        qb = py - c[1]
        qc = pz - c[2]
        ea = rot[0, 0] * qa + rot[1, 0] * qb + rot[2, 0] * qc
        eb = rot[0, 1] * qa + rot[1, 1] * qb + rot[2, 1] * qc
        ec = rot[0, 2] * qa + rot[1, 2] * qb + rot[2, 2] * qc
        rho = np.sqrt((ea / semi[0]) ** 2 + (eb / semi[1]) ** 2 + (ec / semi[2]) ** 2)
        return np.clip(0.5 - (rho - 1.0) * min(semi) / ph.h, 0.0, 1.0)

    rot = _random_rotation(rng)
    axes = rng.uniform(0.8, 1.25, 3)
    axes /= np.prod(axes) ** (1 / 3)
    zero = np.zeros(3)
    if lesion.margin == "smooth":
        alpha = ellipsoid(zero, r * axes, rot)
    elif lesion.margin == "lobulated":
        alpha = ellipsoid(zero, 0.78 * r * axes, rot)
        for _ in range(int(rng.integers(3, 7))):
            d = rng.normal(size=3)
            d *= r * rng.uniform(0.4, 0.6) / np.linalg.norm(d)
            alpha = np.maximum(alpha, ellipsoid(d, np.full(3, r * rng.uniform(0.35, 0.5)), rot))
    else:  # spiculated
        alpha = ellipsoid(zero, 0.85 * r * axes, rot)
        for d, t0, t1, r0 in spikes:
            t = px * d[0] + py * d[1] + pz * d[2]
            dist = np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)
            frac = np.clip((t - t0) / (t1 - t0), 0.0, 1.0)
            radius = r0 + (0.3 - r0) * frac
            a = np.clip(0.5 + (radius - dist) / ph.h, 0.0, 1.0)
            a *= np.clip(0.5 + (t1 - t) / ph.h, 0.0, 1.0) * (t > 0)
            alpha = np.maximum(alpha, a)
    alpha = np.broadcast_to(alpha, shape).astype(np.float32)

    sx, sy, sz = ph.spacing
    tex = rng.standard_normal(shape, dtype=np.float32)
    tex = ndimage.gaussian_filter(tex, sigma=(1.2 / sz, 1.2 / sy, 1.2 / sx))
    tex /= max(float(tex.std()), 1e-6)
    hu = ph.hu[box]
    mean, amp = _lesion_hu(lesion.density, rng)
    if lesion.density in ("ground_glass", "part_solid"):
        # a ground-glass opacity raises the lung's density; vessels stay visible
        np.maximum(hu, hu + alpha * (mean + amp * tex - hu), out=hu)
        if lesion.density == "part_solid":
            core_r = r * rng.uniform(0.4, 0.6)
            core = ellipsoid(zero, core_r * axes, rot)
            core = np.broadcast_to(core, shape).astype(np.float32)
            solid = 35.0 + rng.normal(0.0, 8.0) + 12.0 * tex
            hu += core * (solid - hu)
    else:
        hu += alpha * (mean + amp * tex - hu)
    ph.lab[box][alpha > 0.5] = _LESION


def _render_patient(
    lesions: list[_Lesion], spacing: tuple[float, float, float], rng: np.random.Generator
) -> sitk.Image:
    ph = _Phantom(spacing, rng)
    anatomy = _build_anatomy(ph)
    placed: list[tuple[np.ndarray, float]] = []
    for lesion in lesions:
        lesion.centre = _place(ph, anatomy, lesion, placed)
        placed.append((np.asarray(lesion.centre), lesion.diameter_mm / 2.0))
        _render_lesion(ph, lesion)
    sx, sy, sz = spacing
    # scanner resolution, then noise with a fine-grained texture
    image = ndimage.gaussian_filter(ph.hu, sigma=(0.7 / sz, 0.6 / sy, 0.6 / sx), truncate=3.0)
    noise = rng.standard_normal(ph.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0.0, 0.5 / sy, 0.5 / sx), truncate=3.0)
    noise *= rng.uniform(10.0, 18.0) / max(float(noise[::3, ::3, ::3].std()), 1e-6)
    noise[ph.lab == _AIR] *= 0.3  # less noise in the air around the patient
    image += noise
    np.rint(image, out=image)
    np.clip(image, -1024, 3071, out=image)
    # outside the circular reconstruction field of view: padding value
    r_fov = 0.5 * _FOV_XY[0] - 4.0
    x0, y0 = ph.xs.mean(), ph.ys.mean()
    outside = (ph.xs[None, :] - x0) ** 2 + (ph.ys[:, None] - y0) ** 2 > r_fov**2
    image[:, outside] = -1024.0
    img = sitk.GetImageFromArray(image.astype(np.int16))
    img.SetSpacing(spacing)
    img.SetOrigin(ph.origin)
    img.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return img


def _write_image(image: sitk.Image, path: Path) -> None:
    tmp = path.with_name(f".{path.name[: -len('.nii.gz')]}.partial.nii.gz")
    try:
        sitk.WriteImage(image, str(tmp), useCompression=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()

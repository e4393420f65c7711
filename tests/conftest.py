"""Shared test fixtures: the real-CT data beside the checkout, generated images."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """The shared real-CT data: $SKFMCIB_SHARED_DATA, else ../shared/data beside the repo."""
    env = os.environ.get("SKFMCIB_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if (c / "ct").is_dir() and (c / "fixtures").is_dir():
            return c
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the shared data folder; skips the test when it is absent."""
    d = shared_data_dir()
    if d is None:
        pytest.skip(
            "real-CT data not found: set SKFMCIB_SHARED_DATA or place it at ../shared/data"
        )
    return d


def run_python(args: list[str], cwd: Path, env: dict, timeout: float = 300):
    """Run a fresh interpreter with ``args`` in ``cwd``; the completed process (text)."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
    )


def run_example(script: str, tmp_path: Path, *python_args: str) -> str:
    """Run ``examples/<script>`` in its quick mode in a fresh interpreter; its stdout."""
    env = {**os.environ, "SKFMCIB_QUICK": "1", "TMPDIR": str(tmp_path), "MPLBACKEND": "Agg"}
    proc = run_python([*python_args, str(REPO / "examples" / script)], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def rotation(axis_angles) -> np.ndarray:
    """Direction matrix of rotations about the x (0), y (1) and z (2) axes, in degrees,
    applied in the order given: ``[(axis, degrees), ...]``."""
    r = np.eye(3)
    for axis, deg in axis_angles:
        a = np.deg2rad(deg)
        c, s = np.cos(a), np.sin(a)
        i, j = [k for k in range(3) if k != axis]
        m = np.eye(3)
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        r = m @ r
    return r


def write_image(
    path: Path,
    array: np.ndarray,
    spacing=(1.0, 1.0, 1.0),
    origin=(0.0, 0.0, 0.0),
    direction=None,
) -> Path:
    """Write a (z, y, x) array as an image with the given LPS geometry."""
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    if direction is not None:
        img.SetDirection(tuple(float(d) for d in np.asarray(direction).ravel()))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def read_with_simpleitk(path, series_uid=None):
    """The :class:`~skfmcib.io.Volume` SimpleITK reads: the truth skfmcib's readers match.

    ``read_image`` reads most NIfTI files without SimpleITK, so tests that compare a
    reader of skfmcib's with SimpleITK read through this instead. A DICOM directory
    is read by SimpleITK's series reader, from the files of the series that
    GDCM's series listing gives (``skfmcib.io._read_dicom_directory``).
    """
    from skfmcib.io import Volume, _geometry_of, _read_dicom_directory

    path = Path(path)
    if path.is_dir():
        return _read_dicom_directory(path, series_uid)
    image = sitk.ReadImage(str(path))
    return Volume(sitk.GetArrayFromImage(image), _geometry_of(image), str(path))


@pytest.fixture
def ramp_ct(tmp_path) -> Path:
    """A 3D CT whose HU vary linearly with position, so any interpolation is exact."""
    z, y, x = np.meshgrid(np.arange(70), np.arange(64), np.arange(60), indexing="ij")
    hu = (-1000 + 3 * x + 5 * y + 7 * z).astype(np.int16)
    return write_image(tmp_path / "ramp.nii.gz", hu, spacing=(0.8, 0.9, 1.5), origin=(-20, 10, 5))


def write_dicom_series(
    directory: Path,
    array: np.ndarray,
    spacing=(0.8, 0.8, 2.0),
    origin=(-100.0, -120.0, 40.0),
    series_uid: str = "1.2.826.0.1.3680043.8.498.1",
    prefix: str = "slice",
) -> Path:
    """Write a (z, y, x) int16 array as an axial CT DICOM series, one file per slice."""
    directory.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    study = "1.2.826.0.1.3680043.8.498.2"
    for k in range(array.shape[0]):
        sl = sitk.GetImageFromArray(array[k : k + 1].astype(np.int16))
        sl.SetSpacing(tuple(float(s) for s in spacing))
        pos = (origin[0], origin[1], origin[2] + k * spacing[2])
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|000d": study,
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{p:.4f}" for p in pos),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": f"{spacing[1]:.4f}\\{spacing[0]:.4f}",
            "0018|0050": f"{spacing[2]:.4f}",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(directory / f"{prefix}{k:03d}.dcm"))
        writer.Execute(sl)
    return directory


def patch_transformer_expected_failures(verb: str) -> dict[str, str]:
    """scikit-learn checks a transformer of CT patches cannot pass, with the reason.

    ``verb`` says what the transformer does with patches ("encodes", "describes").
    """
    needs_patches = (
        f"transform {verb} 50^3 CT patches or lesion tables; the check's small generic "
        "arrays are rejected with a ValueError naming the accepted shapes"
    )
    no_n_features = (
        "the input is a lesion table or a stack of patch volumes, not a feature matrix, so "
        "n_features_in_ is not defined"
    )
    checks = [
        "check_fit_score_takes_y",
        "check_estimators_dtypes",
        "check_dtype_object",
        "check_pipeline_consistency",
        "check_estimators_nan_inf",
        "check_estimators_pickle",
        "check_f_contiguous_array_estimator",
        "check_transformer_data_not_an_array",
        "check_transformer_general",
        "check_transformer_preserve_dtypes",
        "check_methods_sample_order_invariance",
        "check_methods_subset_invariance",
        "check_dict_unchanged",
        "check_fit_idempotent",
        "check_fit2d_predict1d",
    ]
    failures = {name: needs_patches for name in checks}
    if verb == "encodes":
        # On real patches this holds only to float32 rounding: a lesion's features move by
        # a few 1e-7 relative with the batch it is encoded in, above the check's rtol=1e-7.
        failures["check_methods_subset_invariance"] += (
            "; on patches, the batch moves features by a few 1e-7 relative (float32)"
        )
    return {
        **failures,
        "check_n_features_in": no_n_features,
        "check_n_features_in_after_fitting": no_n_features,
    }


def rewrite_keeping_size_and_mtime(path: Path, data: bytes) -> None:
    """Overwrite ``path`` in place (same inode) with ``data`` and put its old
    modification time back, as a copy that keeps timestamps, or a second save within
    a coarse file system's time resolution, leaves it."""
    before = os.stat(path)
    assert len(data) == before.st_size
    with open(path, "r+b") as fh:
        fh.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    # The status-change time comes from the kernel's coarse clock: wait for it to move.
    while os.stat(path).st_ctime_ns == before.st_ctime_ns:
        time.sleep(0.005)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )

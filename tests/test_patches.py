"""Patches: parity with the reference package, geometry, formats and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import rotation, write_dicom_series, write_image

import skfmcib.patches as patches_mod
from skfmcib import load_patches
from skfmcib.io import Geometry, ImageReadError, Volume, read_image
from skfmcib.patches import (
    PATCH_SIZE,
    RowWarning,
    check_patch_array,
    extract_patch,
    patch_grid,
    reference_grid,
)
from skfmcib.table import RowError


def _table(path, seeds):
    seeds = np.atleast_2d(seeds)
    return pd.DataFrame(
        {
            "image_path": [str(path)] * len(seeds),
            "coordX": seeds[:, 0],
            "coordY": seeds[:, 1],
            "coordZ": seeds[:, 2],
        }
    )


def _reference_table(shared_data, name="seeds.csv"):
    t = pd.read_csv(shared_data / "ct" / name)
    t["image_path"] = [str(shared_data / "ct" / p) for p in t["image_path"]]
    return t


# --- parity with the reference package -------------------------------------------------


def test_interior_patches_match_reference(shared_data):
    ref = np.load(shared_data / "fixtures" / "reference_outputs.npz")["patches"]
    table = _reference_table(shared_data)
    ours = load_patches(table)
    assert ours.shape == ref.shape == (9, 1, 50, 50, 50)
    interior = np.flatnonzero(table["case"] == "interior")
    assert len(interior) == 6
    for i in interior:
        diff = np.abs(ours[i] - ref[i])
        # Normalised in float32 as the reference normalises: a few hundred of the
        # 125,000 samples differ, by a float32 rounding step (1.2e-7 at most).
        assert diff.max() <= 1.2e-7, (i, diff.max())
        assert np.count_nonzero(diff) <= 1000, (i, np.count_nonzero(diff))


def test_oblique_patches_match_reference(shared_data):
    ref = np.load(shared_data / "fixtures" / "reference_oblique.npz")["patches"]
    table = _reference_table(shared_data, "seeds_oblique.csv")
    volume = read_image(table["image_path"][0])
    direction = volume.geometry.direction
    assert not np.allclose(np.abs(direction), np.eye(3)), "fixture should be oblique"
    ours = load_patches(table)
    np.testing.assert_array_equal(ours, ref)  # bit for bit


def _reference_crop_alignment(volume, seed):
    """Where the reference's clamped-and-padded crop sits relative to our centred patch."""
    grid = reference_grid(volume.geometry)
    c = np.trunc(seed - grid.first).astype(int)
    lo = np.maximum(c - 25, 0)
    n = np.minimum(c + 25, grid.shape) - lo
    before = (PATCH_SIZE - n) // 2
    ours = tuple(slice(lo[a] - c[a] + 25, lo[a] - c[a] + 25 + n[a]) for a in (2, 1, 0))
    theirs = tuple(slice(before[a], before[a] + n[a]) for a in (2, 1, 0))
    return ours, theirs


@pytest.mark.parametrize("row", [2, 7, 8])
def test_border_patches_keep_seed_centred_and_match_inside_the_scan(shared_data, row):
    """Rows at the scan's border (and the 20-slice DICOM series, read as DICOM)."""
    ref = np.load(shared_data / "fixtures" / "reference_outputs.npz")["patches"][row, 0]
    table = _reference_table(shared_data).iloc[[row]]
    volume = read_image(table["image_path"].iloc[0])
    seed = table[["coordX", "coordY", "coordZ"]].to_numpy(float)[0]
    assert not patch_grid(volume.geometry, seed).inside
    ours = load_patches(table)[0, 0]
    sl_ours, sl_ref = _reference_crop_alignment(volume, seed)
    np.testing.assert_allclose(ours[sl_ours], ref[sl_ref], atol=1e-6)
    # Samples a voxel or more beyond the scan are air (-1024 HU -> 0.0); the seed stays
    # in the central voxel.
    points = _sample_points(volume, seed)
    idx = volume.geometry.physical_to_continuous_index(points)
    beyond = np.any((idx <= -1) | (idx >= np.array(volume.geometry.size)), axis=-1)
    assert np.all(ours[beyond] == 0.0)
    assert np.all(np.abs(seed - points[25, 25, 25]) < 1.0)


# --- geometry on generated images --------------------------------------------------------


def _linear_hu(volume, points):
    """HU of the ramp image at LPS points (trilinear interpolation of a linear ramp is exact)."""
    idx = volume.geometry.physical_to_continuous_index(points)
    return -1000 + 3 * idx[..., 0] + 5 * idx[..., 1] + 7 * idx[..., 2]


def _sample_points(volume, seed):
    start = patch_grid(volume.geometry, seed).start
    k = np.arange(PATCH_SIZE, dtype=float)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    return start + np.stack([kx, ky, kz], axis=-1)


def _ramp(shape=(70, 64, 60)):
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return (-1000 + 3 * x + 5 * y + 7 * z).astype(np.int16)


@pytest.mark.parametrize(
    "direction",
    [
        np.eye(3),
        np.diag([-1.0, 1.0, -1.0]),  # flipped axes
        np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, -1]]),  # permuted and flipped
        rotation([(0, 20)]),  # gantry tilt
        rotation([(0, 15), (2, 30), (1, -10)]),  # fully oblique
    ],
    ids=["identity", "flipped", "permuted", "tilted", "oblique"],
)
def test_samples_sit_on_a_1mm_lps_grid_around_the_seed(tmp_path, direction):
    path = write_image(
        tmp_path / "ramp.nii.gz",
        _ramp(),
        spacing=(0.8, 0.9, 1.5),
        origin=(-20, 10, 5),
        direction=direction,
    )
    volume = read_image(path)
    centre = volume.geometry.origin + volume.geometry.index_to_physical @ np.array([30, 32, 35])
    for seed in (centre, centre + [1.3, -2.7, 0.4]):
        patch = extract_patch(volume, seed)
        points = _sample_points(volume, seed)
        # Every sample is the ramp's value at its point: the grid is where we say it is.
        inside = np.all(
            (volume.geometry.physical_to_continuous_index(points) >= 0)
            & (
                volume.geometry.physical_to_continuous_index(points)
                <= np.array(volume.geometry.size) - 1
            ),
            axis=-1,
        )
        expected = (_linear_hu(volume, points) + 1024) / 3072
        np.testing.assert_allclose(patch[inside], expected[inside], atol=2e-6)
        # The seed is in the patch's central voxel (to within the reference's truncation).
        offset = seed - points[25, 25, 25]
        assert np.all(np.abs(offset) < 1.0 + 1e-9), offset


def _trilinear_oracle(geometry, hu, start):
    """The reference's sampling written out plainly: per-corner weights, 0.0 outside."""
    inv = np.linalg.inv(geometry.index_to_physical)
    k = np.arange(PATCH_SIZE, dtype=np.float64)
    idx = (
        (inv @ (start - geometry.origin))[None, None, None, :]
        + k[None, None, :, None] * inv[:, 0]
        + k[None, :, None, None] * inv[:, 1]
        + k[:, None, None, None] * inv[:, 2]
    )
    floor = np.floor(idx)
    frac = idx - floor
    floor = floor.astype(np.int64)
    # Normalised in float32 (MONAI's NormalizeIntensityd), interpolated in double.
    normalised = (hu.astype(np.float32) + np.float32(1024.0)) / np.float32(3072.0)
    padded = np.pad(normalised.astype(np.float64), 1)  # (z, y, x), fill 0.0
    size = np.array(padded.shape[::-1])
    out = np.zeros(floor.shape[:3])
    for corner in np.ndindex(2, 2, 2):  # (dx, dy, dz)
        at = np.clip(floor + corner + 1, 0, size - 1)
        weight = np.prod(np.where(corner, frac, 1.0 - frac), axis=-1)
        out += weight * padded[at[..., 2], at[..., 1], at[..., 0]]
    return out.astype(np.float32)


def test_sampling_equals_plain_trilinear_interpolation_in_float32():
    """Oblique, flipped and axis-aligned grids, samples inside, astride and outside the scan."""
    rng = np.random.default_rng(7)
    for case in range(40):
        size = tuple(int(v) for v in rng.integers(20, 80, 3))
        angles = rng.uniform(-40, 40, 3)
        direction = rotation(list(enumerate(angles))) if case % 2 else np.eye(3)
        direction = direction @ np.diag(rng.choice([-1.0, 1.0], 3))
        geometry = Geometry(
            size=size,
            origin=rng.uniform(-80, 80, 3),
            spacing=rng.uniform(0.5, 3.0, 3),
            direction=direction,
        )
        hu = rng.integers(-3000, 3000, size[::-1]).astype(np.int16)
        point = geometry.index_to_physical @ (np.array(size) * rng.uniform(-0.2, 1.2, 3))
        start = patch_grid(geometry, geometry.origin + point).start
        if case % 4 == 0:
            start = np.round(start)  # samples on voxel planes: weights of exactly 0 and 1
        patch = patches_mod._sample_normalized(Volume(hu, geometry), start).astype(np.float32)
        assert np.array_equal(patch, _trilinear_oracle(geometry, hu, start)), case


def test_flipped_copy_of_an_image_gives_the_same_patch(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1500, size=(40, 70, 66)).astype(np.int16)
    spacing, origin = np.array([0.7, 0.8, 1.25]), np.array([-30.0, 12.0, 50.0])
    a = write_image(tmp_path / "a.nrrd", hu, spacing, origin)
    # The same voxels stored with x and z reversed: a different file, the same patient.
    far = origin + spacing * (np.array(hu.shape[::-1]) - 1) * [1, 0, 1]
    b = write_image(
        tmp_path / "b.nrrd", hu[::-1, :, ::-1].copy(), spacing, far, np.diag([-1.0, 1.0, -1.0])
    )
    seeds = origin + spacing * np.array([[33, 35, 20], [20.4, 30.2, 19.7]])
    pa, pb = load_patches(_table(a, seeds)), load_patches(_table(b, seeds))
    # Trilinear weights are computed from mirrored fractions: equal to rounding error.
    np.testing.assert_allclose(pa, pb, atol=1e-6)


def test_formats_give_identical_patches(tmp_path):
    hu = _ramp((40, 60, 60))
    spacing, origin = (0.8, 0.8, 2.0), (-100.0, -120.0, 40.0)
    files = [
        write_image(tmp_path / f"ct.{ext}", hu, spacing, origin)
        for ext in ("nii.gz", "nii", "nrrd", "mha", "mhd")
    ]
    files.append(write_dicom_series(tmp_path / "dicom", hu, spacing, origin))
    seed = np.array(origin) + np.array([24.3, 23.9, 40.2])
    results = [load_patches(_table(f, seed)) for f in files]
    for f, r in zip(files[1:], results[1:], strict=True):
        # NIfTI stores the geometry in float32: equal to that rounding.
        np.testing.assert_allclose(results[0], r, atol=1e-6, err_msg=str(f))


def test_dicom_directory_with_two_series_is_an_error_or_a_choice(tmp_path):
    hu = _ramp((12, 30, 30))
    d = tmp_path / "mixed"
    write_dicom_series(d, hu, series_uid="1.2.3.4.1", prefix="a")
    write_dicom_series(d, hu + 100, series_uid="1.2.3.4.2", prefix="b")
    seed = np.array([-100 + 12, -120 + 12, 40 + 11.0])
    with pytest.raises(RowError, match="2 DICOM series.*series_uid"):
        load_patches(_table(d, seed))
    table = pd.concat([_table(d, seed)] * 2, ignore_index=True)
    table["series_uid"] = ["1.2.3.4.2", "1.2.3.4.1"]
    alone = write_dicom_series(tmp_path / "alone", hu + 100, series_uid="1.2.3.4.9")
    p = load_patches(table)
    np.testing.assert_array_equal(p[0], load_patches(_table(alone, seed))[0])
    assert not np.array_equal(p[0], p[1])


@pytest.mark.parametrize(
    "missing", [pd.array([None], dtype="string"), pd.array([pd.NA], dtype=object), [""], [None]]
)
def test_a_missing_series_uid_of_any_kind_is_not_given(tmp_path, missing):
    hu = _ramp((12, 30, 30))
    d = write_dicom_series(tmp_path / "one", hu, series_uid="1.2.3.4.1")
    seed = np.array([-100 + 12, -120 + 12, 40 + 11.0])
    table = _table(d, seed)
    expected = load_patches(table)
    table["series_uid"] = missing  # nullable text (convert_dtypes, Parquet), "" or None
    np.testing.assert_array_equal(load_patches(table), expected)
    # Beside a given one (pandas 3 made NaN of the missing one in a text column).
    both = pd.concat([_table(d, seed)] * 2, ignore_index=True)
    both["series_uid"] = pd.array(["1.2.3.4.1", missing[0]], dtype=object)
    np.testing.assert_array_equal(load_patches(both), np.concatenate([expected, expected]))


def test_each_image_is_read_once_whatever_the_row_order(tmp_path, monkeypatch):
    a = write_image(tmp_path / "a.nii.gz", _ramp((40, 40, 40)))
    b = write_image(tmp_path / "b.nii.gz", _ramp((40, 40, 40)) + 10)
    seeds = np.array([[20.0, 20, 20], [15, 18, 22], [21, 22, 19]])
    table = pd.concat(
        [_table(a, seeds[0]), _table(b, seeds[1]), _table(a, seeds[2]), _table(b, seeds[0])],
        ignore_index=True,
    )
    calls = []
    real = patches_mod.open_image
    monkeypatch.setattr(patches_mod, "open_image", lambda *a: calls.append(a) or real(*a))
    grouped = load_patches(table)
    assert sorted(str(c[0]) for c in calls) == [str(a), str(b)]
    one_by_one = np.concatenate([load_patches(table.iloc[[i]]) for i in range(4)])
    np.testing.assert_array_equal(grouped, one_by_one)


def test_ras_coordinates_negate_x_and_y(ramp_ct):
    lps = np.array([-20 + 24.0, 10 + 28.0, 5 + 50.0])
    ras = lps * [-1, -1, 1]
    table = _table(ramp_ct, ras)
    np.testing.assert_array_equal(
        load_patches(table, coordinate_system="RAS"), load_patches(_table(ramp_ct, lps))
    )


# --- bad input ----------------------------------------------------------------------------


def test_bad_rows_name_row_file_and_problem(tmp_path, ramp_ct):
    good = np.array([-20 + 24.0, 10 + 28.0, 5 + 50.0])
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip")
    flat = write_image(tmp_path / "flat.nrrd", np.zeros((30, 30), np.int16))
    cases = [
        (_table(tmp_path / "missing.nii.gz", good), "missing.nii.gz.*no such file"),
        (_table(corrupt, good), "corrupt.nii.gz.*cannot read image"),
        (_table(flat, good), "flat.nrrd.*2D"),
        (_table(ramp_ct, good * [1, 1, 100]), "outside the scan.*RAS"),
        (_table(ramp_ct, good).assign(coordY=np.nan), "coordY is missing"),
        (_table(ramp_ct, good).assign(coordZ="abc"), "coordZ is missing or not a finite"),
    ]
    for table, pattern in cases:
        table.index = [41]
        with pytest.raises(RowError, match="row 41 .*" + pattern):
            load_patches(table)


def test_missing_column_and_empty_table():
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['coordZ'\]"):
        load_patches(pd.DataFrame({"image_path": ["a"], "coordX": [0], "coordY": [0]}))
    with pytest.raises(ValueError, match="empty"):
        load_patches(pd.DataFrame(columns=["image_path", "coordX", "coordY", "coordZ"]))


def test_on_error_nan_keeps_good_rows(ramp_ct, tmp_path):
    good = np.array([-20 + 24.0, 10 + 28.0, 5 + 50.0])
    table = pd.concat(
        [_table(ramp_ct, good), _table(tmp_path / "nope.nii", good)], ignore_index=True
    )
    with pytest.warns(RowWarning, match="row 1 .*nope.nii"):
        out = load_patches(table, on_error="nan")
    assert np.isnan(out[1]).all()
    np.testing.assert_array_equal(out[0], load_patches(table.iloc[[0]])[0])


def test_read_image_rejects_vector_images(tmp_path):
    img = sitk.Image([10, 10, 10], sitk.sitkVectorFloat32, 3)
    sitk.WriteImage(img, str(tmp_path / "vec.nrrd"))
    with pytest.raises(ImageReadError, match="3 components"):
        read_image(tmp_path / "vec.nrrd")


def test_check_patch_array_shapes():
    assert check_patch_array(np.zeros((2, 50 * 50 * 50))).shape == (2, 1, 50, 50, 50)
    assert check_patch_array(np.zeros((2, 1, 50, 50, 50), np.float64)).dtype == np.float32
    with pytest.raises(ValueError, match=r"got an array of shape \(4, 3\)"):
        check_patch_array(np.zeros((4, 3)))


# --- voxels and seeds that are not numbers -----------------------------------------------------


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_nan_or_infinite_voxels_around_a_seed_fail_that_row(tmp_path, suffix):
    hu = np.full((40, 60, 60), 40.0, dtype=np.float32)
    hu[:, :5] = -1000.0  # air in every slice: a CT
    hu[30, 50, 50] = np.nan  # near the second seed only (voxel x=50, y=50, z=30)
    hu[31, 50, 50] = np.inf
    path = write_image(tmp_path / f"ct{suffix}", hu)
    table = pd.DataFrame(
        {"image_path": [str(path)] * 2, "coordX": [10.0, 50.0], "coordY": [10.0, 50.0],
         "coordZ": [10.0, 30.0]}
    )  # fmt: skip
    nan = r"row 1 \(.*ct\.(nrrd|mha)\): the image has NaN or infinite voxels around the seed"
    with pytest.raises(RowError, match=nan):
        load_patches(table)
    with pytest.warns(RowWarning, match="row 1"):
        patches = load_patches(table, on_error="nan")
    assert np.isfinite(patches[0]).all() and np.isnan(patches[1]).all()


def test_extract_patch_refuses_a_seed_outside_the_scan_or_not_a_number():
    geom = Geometry((20, 20, 20), np.zeros(3), np.ones(3), np.eye(3))
    vol = Volume(np.zeros((20, 20, 20), dtype=np.int16), geom)
    with pytest.raises(
        ValueError, match=r"seed \(1000000\.00, 0\.00, 0\.00\) LPS mm lies outside"
    ):
        extract_patch(vol, [1e6, 0.0, 0.0])
    with pytest.raises(ValueError, match="seed is not a finite number"):
        extract_patch(vol, [np.nan, 0.0, 0.0])

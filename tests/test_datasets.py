"""Tests for skfmcib.datasets: the synthetic lesion cohort and the reference CSV reader."""

from __future__ import annotations

import doctest
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from skfmcib.datasets import (
    DENSITIES,
    MARGINS,
    SITES,
    _cohort,
    _csv,
    make_lesion_cohort,
    read_reference_csv,
)
from skfmcib.table import validate_table

COARSE = (1.6, 1.6, 3.0)  # fast scans for tests that do not look at the anatomy
BORDER_MM = 25.0


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> pd.DataFrame:
    """20 lesions at the default spacing, shared by the read-only tests."""
    directory = tmp_path_factory.mktemp("cohort")
    return make_lesion_cohort(20, directory, lesions_per_scan=(3, 4), random_state=0)


@pytest.fixture(scope="module")
def images(cohort) -> dict[str, tuple[sitk.Image, np.ndarray]]:
    return {
        p: (img := sitk.ReadImage(p), sitk.GetArrayFromImage(img))
        for p in cohort["image_path"].unique()
    }


def _hu_at(image: sitk.Image, array: np.ndarray, points: np.ndarray) -> np.ndarray:
    idx = np.array([image.TransformPhysicalPointToIndex(tuple(map(float, p))) for p in points])
    return array[idx[:, 2], idx[:, 1], idx[:, 0]].astype(float)


def _shell_median(image, array, row, extra_mm: float = 5.0) -> float:
    """Median HU on a sphere just outside the lesion."""
    dirs = np.random.default_rng(0).normal(size=(200, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    centre = row[["coordX", "coordY", "coordZ"]].to_numpy(float)
    radius = 1.3 * row["diameter_mm"] / 2 + extra_mm
    return float(np.median(_hu_at(image, array, centre + radius * dirs)))


def _seed_hu(image, array, row) -> float:
    """Mean HU of the 3 x 3 in-plane neighbourhood of the seed voxel."""
    i, j, k = image.TransformPhysicalPointToIndex((row["coordX"], row["coordY"], row["coordZ"]))
    return float(array[k, j - 1 : j + 2, i - 1 : i + 2].mean())


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- table --------------------------------------------------------------------------------
def test_table_schema_and_dtypes(cohort):
    expected = [
        "patient_id",
        "lesion_id",
        "image_path",
        "coordX",
        "coordY",
        "coordZ",
        "site",
        "diameter_mm",
        "density",
        "margin",
        "malignant",
        "time",
        "event",
    ]
    assert list(cohort.columns) == expected
    assert len(cohort) == 20
    assert isinstance(cohort.index, pd.RangeIndex)
    for col in ("patient_id", "lesion_id", "image_path", "site", "density", "margin"):
        assert pd.api.types.is_string_dtype(cohort[col]), col
    for col in ("coordX", "coordY", "coordZ", "diameter_mm", "time"):
        assert cohort[col].dtype == np.float64, col
    assert cohort["malignant"].dtype == np.int64
    assert cohort["event"].dtype == bool
    assert cohort["lesion_id"].is_unique
    assert set(cohort["malignant"]) <= {0, 1}
    assert set(cohort["site"]) <= set(SITES)
    assert set(cohort["density"]) <= set(DENSITIES)
    assert set(cohort["margin"]) <= set(MARGINS)
    assert cohort["diameter_mm"].between(5, 30).all()
    assert (cohort["time"] > 0).all()


def test_one_scan_per_patient_with_several_lesions(cohort):
    per_patient = cohort.groupby("patient_id")
    assert (per_patient["image_path"].nunique() == 1).all()
    assert cohort.groupby("image_path")["patient_id"].nunique().eq(1).all()
    counts = per_patient.size()
    assert counts.iloc[:-1].between(3, 4).all()  # the last scan takes the rest
    assert 1 <= counts.iloc[-1] <= 4
    for path in cohort["image_path"]:
        assert os.path.isabs(path) and path.endswith(".nii.gz") and os.path.isfile(path)


def test_labels_are_balanced_enough_to_learn(cohort):
    assert set(cohort["malignant"]) == {0, 1}
    assert cohort["site"].nunique() >= 3
    assert 0 < cohort["event"].sum() < len(cohort) or len(cohort) < 10


def test_lesion_properties_follow_site_rules():
    table = _cohort._sample_table(2000, random_state=1)
    lung_only = table["density"].isin(["part_solid", "ground_glass"])
    assert (table.loc[lung_only, "site"] == "lung").all()
    assert (table.loc[table["density"] == "cystic", "margin"] == "smooth").all()
    assert table.loc[table["site"] == "bone", "diameter_mm"].max() <= 20
    assert set(table["site"]) == set(SITES)
    assert set(table["density"]) == set(DENSITIES)
    assert set(table["margin"]) == set(MARGINS)


def test_malignancy_depends_on_properties_with_noise():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    table = _cohort._sample_table(1500, random_state=2)
    assert 0.3 < table["malignant"].mean() < 0.55
    by_margin = table.groupby("margin")["malignant"].mean()
    assert by_margin["spiculated"] > by_margin["smooth"]
    by_density = table.groupby("density")["malignant"].mean()
    assert by_density["calcified"] < 0.2 < by_density["solid"]
    x = pd.get_dummies(
        table[["diameter_mm", "site", "density", "margin"]], drop_first=True, dtype=float
    )
    y = table["malignant"]
    model = LogisticRegression(max_iter=2000).fit(x[:1000], y[:1000])
    auc = roc_auc_score(y[1000:], model.predict_proba(x[1000:])[:, 1])
    assert 0.7 < auc < 0.97  # learnable, but not trivial


def test_survival_censoring_and_cox_concordance():
    from sksurv.linear_model import CoxPHSurvivalAnalysis
    from sksurv.util import Surv

    table = _cohort._sample_table(600, random_state=0)
    censored = 1.0 - table["event"].mean()
    assert 0.2 < censored < 0.4
    x = pd.get_dummies(
        table[["diameter_mm", "site", "density", "margin"]], drop_first=True, dtype=float
    )
    y = Surv.from_arrays(table["event"].to_numpy(), table["time"].to_numpy())
    model = CoxPHSurvivalAnalysis().fit(x[:400], y[:400])
    assert model.score(x[400:], y[400:]) > 0.6  # held-out concordance index
    # larger lesions progress sooner
    coef = dict(zip(x.columns, model.coef_, strict=True))
    assert coef["diameter_mm"] > 0


def test_table_matches_sampled_labels(cohort):
    labels = _cohort._sample_table(20, lesions_per_scan=(3, 4), random_state=0)
    cols = ["patient_id", "lesion_id", "site", "diameter_mm", "density", "margin", "malignant"]
    pd.testing.assert_frame_equal(
        cohort[cols + ["time", "event"]].reset_index(drop=True),
        labels[cols + ["time", "event"]].astype(cohort[cols + ["time", "event"]].dtypes),
    )


def test_larger_cohort_extends_smaller_one():
    small = _cohort._sample_table(9, lesions_per_scan=3, random_state=4)
    large = _cohort._sample_table(15, lesions_per_scan=3, random_state=4)
    pd.testing.assert_frame_equal(small, large.iloc[:9])


@pytest.mark.parametrize(
    "state", [np.random.default_rng(3), np.random.RandomState(3), np.random.SeedSequence(3)]
)
def test_random_state_objects_are_accepted(state):
    table = _cohort._sample_table(5, random_state=state)
    assert len(table) == 5


# -- geometry and voxels -----------------------------------------------------------------
def test_images_are_int16_ct_in_lps_geometry(images):
    for image, array in images.values():
        assert image.GetPixelID() == sitk.sitkInt16
        assert image.GetDimension() == 3
        assert np.allclose(image.GetSpacing(), (0.8, 0.8, 2.0))
        assert np.allclose(image.GetDirection(), np.eye(3).ravel())
        nx, ny, nz = image.GetSize()
        assert (nx, ny) == (300, 250) and 55 <= nz <= 75
        assert array.min() >= -1024 and array.max() <= 3071


def test_seeds_inside_image_and_away_from_borders(cohort, images):
    for _, row in cohort.iterrows():
        image, _ = images[row["image_path"]]
        lo = np.array(image.GetOrigin())
        hi = lo + (np.array(image.GetSize()) - 1) * np.array(image.GetSpacing())
        seed = row[["coordX", "coordY", "coordZ"]].to_numpy(float)
        assert np.all(seed - lo >= BORDER_MM - 1e-6), row["lesion_id"]
        assert np.all(hi - seed >= BORDER_MM - 1e-6), row["lesion_id"]


def test_air_lungs_and_bone_have_ct_values(cohort, images):
    for _, array in images.values():
        _, _, nx = array.shape
        air = array[:, 1:4, nx // 2 - 20 : nx // 2 + 20]  # in front of the patient
        assert abs(np.median(air) + 1000) <= 10
        assert array[0, 0, 0] == -1024  # outside the reconstruction circle
        assert 400 <= array.max() <= 1500  # cortical bone, ribs, calcifications
        assert np.percentile(array, 1) < -850  # lungs and air
        body = array[array > -500]
        assert -150 < np.median(body) < 150  # soft tissue
    for _, row in cohort.iterrows():
        image, array = images[row["image_path"]]
        shell = _shell_median(image, array, row)
        if row["site"] == "lung":
            assert shell < -400, row["lesion_id"]
        else:
            assert shell > -150, row["lesion_id"]
        if row["site"] == "bone":
            assert shell > 120, row["lesion_id"]  # cancellous bone around it


def test_seed_voxels_show_the_lesion(cohort, images):
    checked = 0
    for _, row in cohort.iterrows():
        image, array = images[row["image_path"]]
        seed = _seed_hu(image, array, row)
        if row["density"] == "calcified" and row["diameter_mm"] >= 6:
            assert seed > 250, row["lesion_id"]
        elif row["density"] == "ground_glass" and row["diameter_mm"] >= 8:
            assert -750 < seed < -300, row["lesion_id"]
        elif row["density"] == "solid" and row["diameter_mm"] >= 8:
            assert -30 < seed < 110, row["lesion_id"]
            assert abs(seed - _shell_median(image, array, row)) > 40, row["lesion_id"]
            checked += 1
    assert checked >= 3


def test_site_is_visible_in_the_patch(cohort, images):
    """The 50 mm cube around lung lesions is mostly lung; elsewhere mostly tissue."""
    medians = {}
    for _, row in cohort.iterrows():
        image, array = images[row["image_path"]]
        i, j, k = image.TransformPhysicalPointToIndex(
            (row["coordX"], row["coordY"], row["coordZ"])
        )
        hx, hy, hz = (25 / np.array(image.GetSpacing())).astype(int)
        cube = array[k - hz : k + hz, j - hy : j + hy, i - hx : i + hx]
        assert cube.shape == (2 * hz, 2 * hy, 2 * hx)
        medians.setdefault(row["site"], []).append(float(np.median(cube)))
    if "lung" in medians:
        assert np.median(medians["lung"]) < -500
    others = [m for site, ms in medians.items() if site != "lung" for m in ms]
    assert np.median(others) > -100


# -- reproducibility and files -------------------------------------------------------------
def test_same_seed_gives_identical_files_and_table(cohort, tmp_path):
    # regenerate the first patient of the shared cohort: same seed, same lesion count
    first = cohort[cohort["patient_id"] == "P0000"]
    again = make_lesion_cohort(len(first), tmp_path, lesions_per_scan=(3, 4), random_state=0)
    pd.testing.assert_frame_equal(
        again.drop(columns="image_path"), first.drop(columns="image_path")
    )
    pa, pb = first["image_path"].iloc[0], again["image_path"].iloc[0]
    assert Path(pa).name == Path(pb).name == "P0000.nii.gz"
    assert _digest(pa) == _digest(pb)
    ia, ib = sitk.ReadImage(pa), sitk.ReadImage(pb)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ia), sitk.GetArrayFromImage(ib))
    assert ia.GetOrigin() == ib.GetOrigin() and ia.GetSpacing() == ib.GetSpacing()
    # and twice in a row, with the CSV written beside the images
    b = make_lesion_cohort(2, tmp_path / "b", lesions_per_scan=2, random_state=3, spacing=COARSE)
    c = make_lesion_cohort(2, tmp_path / "c", lesions_per_scan=2, random_state=3, spacing=COARSE)
    pd.testing.assert_frame_equal(b.drop(columns="image_path"), c.drop(columns="image_path"))
    assert _digest(b.loc[0, "image_path"]) == _digest(c.loc[0, "image_path"])
    assert (tmp_path / "b" / "cohort.csv").read_bytes() == (
        tmp_path / "c" / "cohort.csv"
    ).read_bytes()


def test_different_seed_gives_different_cohort(tmp_path):
    a = make_lesion_cohort(3, tmp_path / "a", lesions_per_scan=3, random_state=11, spacing=COARSE)
    b = make_lesion_cohort(3, tmp_path / "b", lesions_per_scan=3, random_state=12, spacing=COARSE)
    assert not a.drop(columns="image_path").equals(b.drop(columns="image_path"))
    xa = sitk.GetArrayFromImage(sitk.ReadImage(a.loc[0, "image_path"]))
    xb = sitk.GetArrayFromImage(sitk.ReadImage(b.loc[0, "image_path"]))
    assert xa.shape != xb.shape or not np.array_equal(xa, xb)


def test_cohort_csv_round_trips_through_the_reader(tmp_path):
    table = make_lesion_cohort(
        5, tmp_path, lesions_per_scan=(2, 3), random_state=5, spacing=COARSE
    )
    csv = tmp_path / "cohort.csv"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["cohort.csv", *{Path(p).name for p in table["image_path"]}]
    )
    raw = pd.read_csv(csv)
    assert not any(os.path.isabs(p) for p in raw["image_path"])  # relocatable folder
    pd.testing.assert_frame_equal(read_reference_csv(csv), table, check_dtype=False)
    # the folder can be moved: paths resolve against the CSV's new location
    moved = shutil.move(str(tmp_path), str(tmp_path.parent / (tmp_path.name + "_moved")))
    again = read_reference_csv(Path(moved) / "cohort.csv")
    assert all(p.startswith(moved + os.sep) and os.path.isfile(p) for p in again["image_path"])


def test_existing_files_are_not_overwritten_unless_asked(tmp_path):
    first = make_lesion_cohort(2, tmp_path, lesions_per_scan=2, random_state=1, spacing=COARSE)
    path = first.loc[0, "image_path"]
    before = _digest(path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_lesion_cohort(2, tmp_path, lesions_per_scan=2, random_state=2, spacing=COARSE)
    assert _digest(path) == before
    second = make_lesion_cohort(
        2, tmp_path, lesions_per_scan=2, random_state=2, spacing=COARSE, overwrite=True
    )
    assert second.loc[0, "image_path"] == path and _digest(path) != before
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


def test_unrelated_files_do_not_clash(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    make_lesion_cohort(1, tmp_path, random_state=0, spacing=COARSE)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_default_directory_is_a_new_temporary_folder():
    table = make_lesion_cohort(1, random_state=0, spacing=COARSE)
    folder = Path(table.loc[0, "image_path"]).parent
    try:
        assert folder.is_dir() and (folder / "cohort.csv").is_file()
    finally:
        shutil.rmtree(folder)


# -- argument errors -----------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, -3, 2.5, True, "10", None])
def test_invalid_n_lesions(n, tmp_path):
    with pytest.raises(ValueError, match="n_lesions"):
        make_lesion_cohort(n, tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("value", [0, (3, 2), (0, 2), (1, 11), 2.0, (1, 2, 3), "2"])
def test_invalid_lesions_per_scan(value, tmp_path):
    with pytest.raises(ValueError, match="lesions_per_scan"):
        make_lesion_cohort(3, tmp_path, lesions_per_scan=value)


@pytest.mark.parametrize("value", [(1.0, 1.0), (0.1, 1, 1), (1, 1, 9), "abc", 1.0, (1, 1, np.nan)])
def test_invalid_spacing(value, tmp_path):
    with pytest.raises(ValueError, match="spacing"):
        make_lesion_cohort(3, tmp_path, spacing=value)


@pytest.mark.parametrize("value", [-1, 1.5, "seed"])
def test_invalid_random_state(value, tmp_path):
    with pytest.raises(ValueError, match="random_state"):
        make_lesion_cohort(3, tmp_path, random_state=value)


def test_directory_that_is_a_file(tmp_path):
    target = tmp_path / "file.nii.gz"
    target.write_text("")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        make_lesion_cohort(2, target, spacing=COARSE)


# -- read_reference_csv --------------------------------------------------------------------
def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_reader_resolves_relative_paths_against_the_csv_folder(tmp_path, monkeypatch):
    csv = _write(
        tmp_path / "tables" / "seeds.csv",
        "image_path,coordX,coordY,coordZ,label\n"
        "ct/a.nii.gz,1.5,-2,3e1,0\n"
        "\n"
        "../b.nrrd,4,5,6,1\n"
        "/data/c.nii.gz,7,8,9,1\n",
    )
    monkeypatch.chdir(tmp_path)  # a relative CSV path and a different working directory
    table = read_reference_csv(os.path.join("tables", "seeds.csv"))
    assert list(table["image_path"]) == [
        str(tmp_path / "tables" / "ct" / "a.nii.gz"),
        str(tmp_path / "b.nrrd"),
        os.path.normpath("/data/c.nii.gz"),
    ]
    assert list(table.columns) == ["image_path", "coordX", "coordY", "coordZ", "label"]
    assert table[["coordX", "coordY", "coordZ"]].dtypes.eq(np.float64).all()
    assert table.loc[0, ["coordX", "coordY", "coordZ"]].tolist() == [1.5, -2.0, 30.0]
    assert table["label"].tolist() == [0, 1, 1]
    assert isinstance(table.index, pd.RangeIndex)
    assert csv.is_file()


def test_reader_accepts_the_shared_seed_table_format(tmp_path):
    csv = _write(
        tmp_path / "seeds.csv",
        "image_path,coordX,coordY,coordZ,case\nexample_ct.nii.gz,-64.35,-185.03,150.14,interior\n",
    )
    table = read_reference_csv(csv)
    assert table.loc[0, "image_path"] == str(tmp_path / "example_ct.nii.gz")
    assert table.loc[0, "case"] == "interior"


def test_reader_names_missing_columns_and_the_file(tmp_path):
    csv = _write(tmp_path / "bad.csv", "image_path,coordx,coordY\na.nii.gz,1,2\n")
    with pytest.raises(ValueError) as info:
        read_reference_csv(csv)
    message = str(info.value)
    assert str(csv) in message
    assert "coordX" in message and "coordZ" in message
    assert "case" in message  # hints at the near miss 'coordx'


def test_reader_names_the_row_of_a_non_numeric_coordinate(tmp_path):
    csv = _write(
        tmp_path / "bad.csv",
        "image_path,coordX,coordY,coordZ\na.nii.gz,1,2,3\n\nb.nii.gz,1,two,3\n",
    )
    with pytest.raises(ValueError) as info:
        read_reference_csv(csv)
    message = str(info.value)
    assert str(csv) in message and "coordY" in message and "'two'" in message
    assert "data row 1 (0-based" in message and "line 4" in message


@pytest.mark.parametrize(
    ("body", "pattern"),
    [
        ("a.nii.gz,1,2,\n", "coordZ is missing"),
        ("a.nii.gz,1,inf,3\n", "coordY is not a finite number"),
        (",1,2,3\n", "image_path is empty"),
    ],
)
def test_reader_rejects_missing_values(tmp_path, body, pattern):
    csv = _write(tmp_path / "bad.csv", "image_path,coordX,coordY,coordZ\n" + body)
    with pytest.raises(ValueError, match=pattern):
        read_reference_csv(csv)


def test_reader_errors_for_empty_and_absent_files(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        read_reference_csv(_write(tmp_path / "empty.csv", ""))
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        read_reference_csv(tmp_path / "missing.csv")
    header_only = read_reference_csv(
        _write(tmp_path / "header.csv", "image_path,coordX,coordY,coordZ\n")
    )
    assert header_only.empty and list(header_only.columns)[:4] == [
        "image_path",
        "coordX",
        "coordY",
        "coordZ",
    ]


def test_reader_parses_other_columns_as_pandas_does_whatever_the_blank_lines(tmp_path):
    body = "a.nii.gz,1,2,3,007,NA,4\nb.nii.gz,1,2,3,8,x,5\n"
    header = "image_path,coordX,coordY,coordZ,pid,flag,label\n"
    plain = _write(tmp_path / "plain.csv", header + body)
    # A blank line, a line of spaces and a line of commas: skipped, and not seen in types.
    spaced = _write(tmp_path / "spaced.csv", header + "\n   \n,,,,,,\n" + body + "\n")
    expected = pd.read_csv(plain)
    for csv in (plain, spaced):
        table = read_reference_csv(csv)
        pd.testing.assert_frame_equal(
            table.drop(columns=["image_path", "coordX", "coordY", "coordZ"]),
            expected.drop(columns=["image_path", "coordX", "coordY", "coordZ"]),
        )
        assert table["label"].dtype == np.int64 and table["pid"].tolist() == [7, 8]
    with pytest.raises(ValueError, match="data row 2 .*line 7 of the file"):
        read_reference_csv(_write(tmp_path / "bad.csv", header + "\n  \n,,,\n" + body + "c,1"))


def test_a_missing_coordinate_is_called_missing_however_written(tmp_path):
    for cell in ("", "   ", "NA", "nan", "null"):
        csv = _write(tmp_path / "na.csv", f"image_path,coordX,coordY,coordZ\na,1,2,{cell}\n")
        with pytest.raises(ValueError, match="coordZ is missing in data row 0"):
            read_reference_csv(csv)


def test_csv_readers_refuse_a_column_named_twice_and_spot_semicolons(tmp_path):
    from skfmcib.extract import ExtractError, read_table

    twice = _write(tmp_path / "twice.csv", "image_path,coordX,coordY,coordZ,coordX\na,1,2,3,4\n")
    with pytest.raises(ValueError, match=r"twice\.csv: the header names column\(s\) coordX more"):
        read_reference_csv(twice)
    with pytest.raises(ExtractError, match="coordX more than once"):
        read_table(twice)
    late = _write(tmp_path / "late.csv", "\n  \n" + twice.read_text())  # blank lines first
    with pytest.raises(ExtractError, match="coordX more than once"):
        read_table(late)
    semi = _write(tmp_path / "semi.csv", "image_path;coordX;coordY;coordZ\na;1;2;3\n")
    with pytest.raises(ValueError, match="separated by semicolons"):
        read_reference_csv(semi)
    with pytest.raises(ValueError, match="separated by semicolons"):
        validate_table(read_table(semi)[0])


# -- documentation -------------------------------------------------------------------------
@pytest.mark.parametrize("module", [_cohort, _csv])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_csv_readers_read_17_digit_seeds_exactly(tmp_path):
    # Seeds on voxel centres, written with every digit (as float's repr writes them):
    # pandas before 3 read about one in six of such numbers as a neighbouring float,
    # enough to move a truncated index down one voxel.
    from skfmcib.datasets import read_reference_csv
    from skfmcib.extract import read_table

    rng = np.random.default_rng(0)
    values = rng.uniform(-1200, 1200, (300, 3))
    csv = tmp_path / "seeds.csv"
    lines = ["image_path,coordX,coordY,coordZ"]
    lines += ["ct.nii.gz," + ",".join(repr(float(v)) for v in row) for row in values]
    csv.write_text("\n".join(lines) + "\n")
    for table in (read_reference_csv(csv), read_table(csv)[0]):
        np.testing.assert_array_equal(table[["coordX", "coordY", "coordZ"]].to_numpy(), values)

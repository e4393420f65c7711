"""Bad input, one test per kind: each is a clear error naming the row and the file.

Through the public entry points (``load_patches``, ``FMCIBTransformer``, ``skfmcib
extract``), and with property-based tests of the table validation.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import write_dicom_series, write_image

from skfmcib import FMCIBTransformer, load_patches
from skfmcib.cli import main
from skfmcib.encoder import EncoderConfig
from skfmcib.extract import errors_path, extract
from skfmcib.table import COORD_COLUMNS, RowError, row_problem, validate_table
from skfmcib.weights import CheckpointError, load_encoder, save_checkpoint

TINY = {"arch": "resnet10", "widen_factor": 0.25}


def tiny(**kwargs) -> FMCIBTransformer:
    return FMCIBTransformer(weights=None, arch=TINY, random_state=0, device="cpu", **kwargs)


def ct_array(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(-300, 300, (30, 60, 60)).astype(np.int16)


@pytest.fixture(scope="module")
def good_ct(tmp_path_factory) -> Path:
    return write_image(tmp_path_factory.mktemp("ct") / "good.nii.gz", ct_array())


def table_of(path, seed=(30.0, 30.0, 15.0), n=1, **extra) -> pd.DataFrame:
    data = {"image_path": [str(path)] * n}
    for col, value in zip(COORD_COLUMNS, seed, strict=True):
        data[col] = [value] * n
    data.update(extra)
    return pd.DataFrame(data)


def row_error(table: pd.DataFrame) -> RowError:
    with pytest.raises(RowError) as info:
        load_patches(table)
    return info.value


# --- the table -------------------------------------------------------------------------------


def test_empty_table(tmp_path):
    empty = table_of("x.nii.gz").iloc[:0]
    with pytest.raises(ValueError, match="lesion table is empty"):
        load_patches(empty)
    with pytest.raises(ValueError, match="lesion table is empty"):
        tiny().fit(empty)
    empty.to_csv(tmp_path / "header_only.csv", index=False)
    (tmp_path / "zero_bytes.csv").write_bytes(b"")
    for name in ("header_only.csv", "zero_bytes.csv"):
        assert main(["extract", str(tmp_path / name), "-o", str(tmp_path / "f.csv")]) == 2
    assert not (tmp_path / "f.csv").exists()


def test_missing_column_names_it():
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['coordZ'\]"):
        load_patches(table_of("x.nii.gz").drop(columns="coordZ"))


def test_duplicate_rows_are_computed_once_and_returned_for_each(good_ct, tmp_path):
    table = pd.concat([table_of(good_ct), table_of(good_ct, (20.0, 25.0, 10.0))] * 2)
    table = table.reset_index(drop=True)
    feats = tiny().fit().transform(table)
    np.testing.assert_array_equal(feats[0], feats[2])
    summary = extract(table, tmp_path / "f.csv", transformer=tiny())
    assert summary.n_duplicates == 2 and summary.n_written == 4
    out = pd.read_csv(summary.out)
    np.testing.assert_array_equal(out.iloc[0, 4:], out.iloc[2, 4:])


def test_nan_coordinates_name_row_and_column(good_ct):
    table = table_of(good_ct, n=3)
    table.loc[1, "coordY"] = np.nan
    table.index = ["a", "b", "c"]
    err = row_error(table)
    assert (err.row, err.path) == ("b", str(good_ct))
    assert "coordY is missing or not a finite number" in str(err)
    assert str(err).startswith(f"row b ({good_ct})")


def test_seed_outside_the_scan_suggests_ras(good_ct):
    err = row_error(table_of(good_ct, (-30.0, -30.0, 15.0)))
    assert "outside the scan" in err.reason and "RAS" in err.reason


def test_seeds_are_accepted_up_to_the_voxel_edges_that_the_message_gives(tmp_path):
    path = write_image(tmp_path / "ct.nii.gz", ct_array(), spacing=(2.0, 1.0, 1.0))
    nx = ct_array().shape[2]  # x voxel centres at 0, 2, ..., 2 * (nx - 1)
    edge = 2.0 * (nx - 1) + 1.0
    load_patches(table_of(path, (edge - 0.01, 30.0, 15.0)))
    err = row_error(table_of(path, (edge + 0.01, 30.0, 15.0)))
    assert f"whose voxels span [-1.0, {edge:.1f}] x " in err.reason


# --- the files -------------------------------------------------------------------------------


def test_missing_file_and_broken_symlink(tmp_path):
    err = row_error(table_of(tmp_path / "nope.nii.gz"))
    assert err.path.endswith("nope.nii.gz") and "no such file" in err.reason
    os.symlink(tmp_path / "gone.nii.gz", tmp_path / "link.nii.gz")
    assert "no such file" in row_error(table_of(tmp_path / "link.nii.gz")).reason
    write_image(tmp_path / "ct.nii.gz", ct_array())
    err = row_error(table_of(f"{tmp_path / 'ct.nii.gz'} "))  # a space after the name
    assert "no such file or directory (the path starts or ends with a space)" in err.reason


def test_symlink_to_an_image_reads_the_image(good_ct, tmp_path):
    os.symlink(good_ct, tmp_path / "link.nii.gz")
    np.testing.assert_array_equal(
        load_patches(table_of(tmp_path / "link.nii.gz")), load_patches(table_of(good_ct))
    )


def test_unreadable_file(tmp_path):
    (tmp_path / "garbage.nii.gz").write_bytes(b"not an image" * 50)
    err = row_error(table_of(tmp_path / "garbage.nii.gz"))
    assert err.path.endswith("garbage.nii.gz") and "cannot read image" in err.reason


def test_truncated_gzip_is_an_error_naming_row_and_file(good_ct, tmp_path):
    data = good_ct.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    err = row_error(table_of(tmp_path / "cut.nii.gz"))
    assert err.row == 0 and err.path.endswith("cut.nii.gz")


def test_truncated_gzip_says_so_even_when_only_the_end_is_missing(good_ct, tmp_path):
    data = good_ct.read_bytes()
    for name, size in (("half.nii.gz", len(data) // 2), ("tail.nii.gz", len(data) - 20)):
        (tmp_path / name).write_bytes(data[:size])
        err = row_error(table_of(tmp_path / name))
        assert "truncated" in err.reason, err.reason


@pytest.mark.parametrize(
    "suffix, says",
    [
        (".nii", "shorter than its header says"),
        (".nrrd", "fread got only"),  # teem's own message: read whole, the shortfall named
        (".mha", "shorter than its header says"),
        (".mhd", "shorter than its header says"),
    ],
)
def test_truncated_uncompressed_file_is_refused_for_every_lesion(good_ct, tmp_path, suffix, says):
    whole = tmp_path / f"ct{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(good_ct)), str(whole))
    data_file = whole.with_suffix(".raw") if suffix == ".mhd" else whole
    data_file.write_bytes(data_file.read_bytes()[:-3000])  # the last slice is cut
    err = row_error(table_of(whole))  # the seed's patch lies in the part still there
    assert err.path == str(whole), err
    assert says in err.reason, err.reason


def test_2d_image(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(ct_array()[0]), str(tmp_path / "slice.nii.gz"))
    assert "image is 2D" in row_error(table_of(tmp_path / "slice.nii.gz")).reason


def test_4d_image(tmp_path):
    series = sitk.JoinSeries([sitk.GetImageFromArray(ct_array())] * 2)
    sitk.WriteImage(series, str(tmp_path / "dynamic.nii.gz"))
    assert "image is 4D" in row_error(table_of(tmp_path / "dynamic.nii.gz")).reason


@pytest.mark.parametrize("kind", ["mr", "pet", "raw_ct_without_rescale"])
def test_non_ct_intensities_warn(tmp_path, kind):
    hu = ct_array().astype(np.float32)
    values = {
        "mr": np.clip(hu + 1300, 0, None),
        "pet": np.clip(hu / 200 + 2, 0, None),
        "raw_ct_without_rescale": np.clip(hu, -1024, None) + 1024,
    }[kind]
    path = write_image(tmp_path / f"{kind}.nii.gz", values.astype(np.float32))
    with pytest.warns(UserWarning, match=r"not a CT in HU"):
        load_patches(table_of(path))


def test_ct_intensities_do_not_warn(good_ct, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_patches(table_of(good_ct))
        # Cropped tightly to the body: no air anywhere, fat (-100 HU) at the edges.
        cropped = np.maximum(ct_array(), -100).astype(np.int16)
        load_patches(table_of(write_image(tmp_path / "cropped.nii.gz", cropped)))


def test_non_ascii_paths(tmp_path):
    folder = tmp_path / "Patiënt Ødegård 患者"
    path = write_image(folder / "CT thorax é.nii.gz", ct_array())
    assert np.isfinite(load_patches(table_of(path))).all()
    table = pd.concat([table_of(path), table_of(folder / "manquant é.nii.gz")])
    table.to_csv(folder / "seeds é.csv", index=False)
    out = folder / "features é.csv"
    assert (
        main(
            [
                "extract",
                str(folder / "seeds é.csv"),
                "-o",
                str(out),
                "--weights",
                "random",
                "--arch",
                "resnet10",
                "--widen-factor",
                "0.25",
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 1
    )
    assert pd.read_csv(out)["image_path"].tolist() == [str(path)]
    errors = pd.read_csv(errors_path(out), encoding="utf-8")
    assert errors["image_path"].str.endswith("manquant é.nii.gz").all()


# --- DICOM -----------------------------------------------------------------------------------


def test_dicom_directory_with_several_series(tmp_path):
    hu = ct_array()[:10]
    write_dicom_series(tmp_path / "dcm", hu, series_uid="1.2.826.0.1.1", prefix="a")
    write_dicom_series(tmp_path / "dcm", hu, series_uid="1.2.826.0.1.2", prefix="b")
    seed = (-90.0, -100.0, 50.0)
    err = row_error(table_of(tmp_path / "dcm", seed))
    assert "2 DICOM series ('1.2.826.0.1.1', '1.2.826.0.1.2')" in err.reason
    assert "series_uid" in err.reason
    chosen = table_of(tmp_path / "dcm", seed, series_uid=["1.2.826.0.1.2"])
    assert np.isfinite(load_patches(chosen)).all()


def test_dicom_series_with_missing_slices(tmp_path):
    write_dicom_series(tmp_path / "dcm", ct_array()[:12])
    (tmp_path / "dcm" / "slice005.dcm").unlink()  # a gap of 4 mm in 2 mm slices
    err = row_error(table_of(tmp_path / "dcm", (-90.0, -100.0, 50.0)))
    assert "missing slice" in err.reason, err.reason


# --- weights ---------------------------------------------------------------------------------


def test_checkpoint_for_another_architecture(tmp_path, good_ct):
    net, _ = load_encoder(None, config=EncoderConfig("resnet18", 0.25), random_state=0)
    path = save_checkpoint(net, tmp_path / "resnet18.torch")
    with pytest.raises(CheckpointError, match="resnet18.torch"):
        FMCIBTransformer(weights=path, arch=TINY).fit()
    pd.concat([table_of(good_ct)]).to_csv(tmp_path / "seeds.csv", index=False)
    assert (
        main(
            [
                "extract",
                str(tmp_path / "seeds.csv"),
                "-o",
                str(tmp_path / "f.csv"),
                "--weights",
                str(path),
                "--arch",
                "resnet10",
                "--widen-factor",
                "0.25",
            ]
        )
        == 2
    )


# --- nothing computed is lost ----------------------------------------------------------------


def test_a_table_of_every_bad_kind_keeps_the_good_rows(good_ct, tmp_path):
    (tmp_path / "garbage.nii.gz").write_bytes(b"x" * 100)
    sitk.WriteImage(sitk.GetImageFromArray(ct_array()[0]), str(tmp_path / "2d.nii.gz"))
    rows = [
        (good_ct, (30.0, 30.0, 15.0)),
        (tmp_path / "missing.nii.gz", (1.0, 1.0, 1.0)),
        (tmp_path / "garbage.nii.gz", (1.0, 1.0, 1.0)),
        (tmp_path / "2d.nii.gz", (1.0, 1.0, 1.0)),
        (good_ct, (500.0, 30.0, 15.0)),
        (good_ct, (np.nan, 30.0, 15.0)),
        (good_ct, (20.0, 25.0, 10.0)),
    ]
    table = pd.concat([table_of(p, s) for p, s in rows], ignore_index=True)
    summary = extract(table, tmp_path / "f.csv", transformer=tiny(), chunk_size=1)
    errors = pd.read_csv(summary.errors_path)
    assert errors["row"].tolist() == [1, 2, 3, 4, 5]
    assert errors["reason"].str.len().min() > 10
    out = pd.read_csv(summary.out)
    assert len(out) == 2 and summary.exit_status == 1
    direct = tiny().fit().transform(table.iloc[[0, 6]])
    np.testing.assert_allclose(out.iloc[:, 4:].to_numpy(np.float32), direct, rtol=1e-5, atol=1e-6)


# --- property-based tests of the table validation --------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

finite = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e6, max_value=1e6)
coordinate = st.one_of(
    finite,
    st.just(float("nan")),
    st.just(float("inf")),
    st.just(float("-inf")),
    st.none(),
    st.sampled_from(["abc", "", "1,5"]),
)
path = st.one_of(st.text(min_size=1, max_size=12).filter(str.strip), st.just(""), st.none())


@st.composite
def tables(draw, values=coordinate, paths=path):
    n = draw(st.integers(1, 12))
    labels = draw(
        st.lists(
            st.one_of(st.integers(-50, 50), st.text(max_size=4)),
            min_size=n,
            max_size=n,
            unique_by=str,
        )
    )
    data = {"image_path": draw(st.lists(paths, min_size=n, max_size=n))}
    for col in COORD_COLUMNS:
        data[col] = draw(st.lists(values, min_size=n, max_size=n))
    return pd.DataFrame(data, index=pd.Index(labels, dtype=object))


def _is_path(v) -> bool:
    return isinstance(v, str) and v != ""


def _is_finite_number(v) -> bool:
    return isinstance(v, float) and np.isfinite(v)


@settings(max_examples=60, deadline=None)
@given(
    tables(values=finite, paths=st.text(min_size=1, max_size=12)), st.sampled_from(["LPS", "RAS"])
)
def test_valid_tables_keep_rows_and_coordinates(table, system):
    seeds = validate_table(table, system)
    assert len(seeds) == len(table) and list(seeds.index) == list(table.index)
    sign = np.array([-1.0, -1.0, 1.0]) if system == "RAS" else np.ones(3)
    np.testing.assert_array_equal(
        seeds[["x", "y", "z"]].to_numpy(), table[list(COORD_COLUMNS)].to_numpy(float) * sign
    )
    assert seeds["image_path"].tolist() == table["image_path"].tolist()
    assert all(row_problem(rec) == "" for _, rec in seeds.iterrows())


@settings(max_examples=80, deadline=None)
@given(tables())
def test_every_bad_row_is_named_with_its_problem(table):
    seeds = validate_table(table)
    assert len(seeds) == len(table)
    for label, rec in table.iterrows():
        problem = row_problem(seeds.loc[label])
        bad_cols = [c for c in COORD_COLUMNS if not _is_finite_number(rec[c])]
        if not _is_path(rec["image_path"]):
            assert problem == "image_path is empty"
        elif bad_cols:
            assert problem == f"coordinate {', '.join(bad_cols)} is missing or not a finite number"
        else:
            assert problem == ""
        if problem:
            err = RowError(label, seeds.loc[label, "image_path"], problem)
            assert str(err).startswith(f"row {label} (") and err.row == label


@settings(max_examples=30, deadline=None)
@given(tables(values=st.just(float("nan"))))
def test_rows_without_coordinates_fail_without_reading_images(table):
    # Every row is bad, so no image is opened (the paths do not exist): each yields a
    # RowError naming its own row and file.
    table["image_path"] = [f"/nonexistent/{i}.nii.gz" for i in range(len(table))]
    with pytest.raises(RowError) as info:
        load_patches(table)
    assert info.value.row == table.index[0]
    assert info.value.path == "/nonexistent/0.nii.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(load_patches(table, on_error="nan")).all()


@settings(max_examples=30, deadline=None)
@given(tables(), st.sets(st.sampled_from(["image_path", *COORD_COLUMNS]), min_size=1))
def test_missing_columns_are_named(table, drop):
    with pytest.raises(ValueError) as info:
        validate_table(table.drop(columns=sorted(drop)))
    for col in drop:
        assert repr(col) in str(info.value)


def test_missing_data_file_of_a_header_is_named(good_ct, tmp_path):
    header = tmp_path / "ct.mhd"
    sitk.WriteImage(sitk.ReadImage(str(good_ct)), str(header))
    (tmp_path / "ct.raw").unlink()
    err = row_error(table_of(header))
    assert f"the data file its header names, {tmp_path / 'ct.raw'}, does not exist" in err.reason


# --- the progress line -----------------------------------------------------------------------


def test_progress_line_blanks_what_a_shorter_line_leaves():
    import io

    from skfmcib._progress import Progress

    stream = io.StringIO()
    bar = Progress(1000, enabled=True, unit="items", stream=stream)
    bar._start -= 1.0  # 1000 items a second, then far fewer
    bar.update(1000)
    bar._start -= 1000.0
    bar._last = 0.0
    bar.update(1)  # overshoot: no time left, not a negative one
    drawn = stream.getvalue().split("\r")[1:]
    assert len(drawn) == 2 and len(drawn[1]) >= len(drawn[0])
    assert drawn[1].rstrip().endswith("ETA 00:00")
    with pytest.raises(ValueError, match="progress must be True, False or 'auto', got 'false'"):
        Progress(10, enabled="false")

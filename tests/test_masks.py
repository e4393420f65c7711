"""Seeds from label images: centroids in LPS, components, labels, bad masks, DICOM SEG."""

from __future__ import annotations

import doctest
import sys

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import write_dicom_series, write_image

from skfmcib import masks
from skfmcib.extract import ExtractError, extract
from skfmcib.masks import seeds_from_masks
from skfmcib.table import RowError

OBLIQUE = np.array(
    [[-1.0, 0.0, 0.0], [0.0, -0.94, 0.34202014], [0.0, 0.34202014, 0.94]]
)  # flipped x, tilted about x


def lps_centroid(path, value, where=None) -> np.ndarray:
    """Centroid of a label through SimpleITK's own index -> physical mapping."""
    image = sitk.ReadImage(str(path))
    idx = np.argwhere(sitk.GetArrayFromImage(image) == value) if where is None else where
    centre = idx.mean(axis=0)[::-1]  # (x, y, z) continuous index
    return np.array(image.TransformContinuousIndexToPhysicalPoint(centre.tolist()))


@pytest.fixture
def two_lesions(tmp_path):
    a = np.zeros((20, 30, 40), dtype=np.uint8)
    a[2:6, 3:8, 4:9] = 1
    a[12:15, 20:26, 30:33] = 1
    a[10:12, 5:8, 20:22] = 2
    direction = OBLIQUE / np.linalg.norm(OBLIQUE, axis=0)
    path = write_image(
        tmp_path / "mask.nrrd",
        a,
        spacing=(0.7, 0.8, 2.5),
        origin=(10, -20, 30),
        direction=direction,
    )
    return path, a


def test_one_seed_per_connected_lesion_at_its_lps_centroid(two_lesions):
    path, a = two_lesions
    seeds = seeds_from_masks(pd.DataFrame({"mask_path": [str(path)], "pid": ["p1"]}))
    assert seeds["mask_label"].tolist() == [1, 1, 2]
    assert seeds["mask_component"].tolist() == [1, 2, 1]
    assert seeds["mask_voxels"].tolist() == [100, 54, 12]
    assert seeds["pid"].tolist() == ["p1"] * 3 and seeds["mask_row"].tolist() == [0, 0, 0]
    lab = np.zeros_like(a)
    lab[2:6, 3:8, 4:9] = 1
    expected = [
        lps_centroid(path, 1, np.argwhere(lab == 1)),
        lps_centroid(path, 1, np.argwhere((a == 1) & (lab == 0))),
        lps_centroid(path, 2),
    ]
    np.testing.assert_allclose(
        seeds[["coordX", "coordY", "coordZ"]].to_numpy(), expected, atol=1e-6
    )
    np.testing.assert_allclose(seeds["mask_volume_mm3"], seeds["mask_voxels"] * 0.7 * 0.8 * 2.5)


def test_label_value_gives_its_centroid(two_lesions):
    path, _ = two_lesions
    seeds = seeds_from_masks(pd.DataFrame({"mask_path": [str(path)]}), label=1)
    assert len(seeds) == 1 and seeds["mask_voxels"][0] == 154
    np.testing.assert_allclose(
        seeds[["coordX", "coordY", "coordZ"]].to_numpy()[0], lps_centroid(path, 1), atol=1e-6
    )
    per_row = seeds_from_masks(pd.DataFrame({"mask_path": [str(path)] * 2, "mask_label": [2, 1]}))
    assert per_row["mask_label"].tolist() == [2, 1] and per_row["mask_row"].tolist() == [0, 1]


def test_connectivity_and_specks(tmp_path):
    a = np.zeros((10, 10, 10), dtype=np.int16)
    a[2, 2, 2] = a[3, 3, 3] = 1  # corner-touching voxels
    a[7:9, 7:9, 7:9] = 1
    path = write_image(tmp_path / "m.nii.gz", a)
    table = pd.DataFrame({"mask_path": [str(path)]})
    assert len(seeds_from_masks(table)) == 2
    assert len(seeds_from_masks(table, connectivity=6)) == 3
    assert seeds_from_masks(table, min_voxels=3)["mask_voxels"].tolist() == [8]
    with pytest.raises(ValueError, match="connectivity"):
        seeds_from_masks(table, connectivity=4)


def test_hollow_lesion_centroid_is_flagged(tmp_path):
    a = np.zeros((15, 15, 15), dtype=np.uint8)
    a[2:13, 2:13, 2:13] = 1
    a[4:11, 4:11, 4:11] = 0
    path = write_image(tmp_path / "ring.nii.gz", a)
    seeds = seeds_from_masks(pd.DataFrame({"mask_path": [str(path)]}))
    assert seeds["centroid_in_lesion"].tolist() == [False]


def test_bad_masks_name_row_and_file(tmp_path):
    empty = write_image(tmp_path / "empty.nii.gz", np.zeros((5, 5, 5), dtype=np.uint8))
    prob = write_image(tmp_path / "prob.nii.gz", np.full((5, 5, 5), 0.4, dtype=np.float32))
    table = pd.DataFrame({"mask_path": [str(empty)]}, index=["lesionA"])
    with pytest.raises(RowError, match=r"row lesionA \(.*empty.nii.gz\): mask holds no"):
        seeds_from_masks(table)
    with pytest.raises(RowError, match="whole numbers"):
        seeds_from_masks(pd.DataFrame({"mask_path": [str(prob)]}))
    ct = np.full((5, 5, 5), -1000, dtype=np.int16)  # a CT in HU, given as its mask
    ct[2, 2, 2] = 40
    ct_path = write_image(tmp_path / "ct.nii.gz", ct)
    with pytest.raises(RowError, match=r"row 0 \(.*ct.nii.gz\): .* values down to -1000"):
        seeds_from_masks(pd.DataFrame({"mask_path": [str(ct_path)]}))
    with pytest.raises(RowError, match=r"row 0 \(.*nope.nii.gz\): no such file"):
        seeds_from_masks(pd.DataFrame({"mask_path": [str(tmp_path / "nope.nii.gz")]}))
    with pytest.raises(ValueError, match="mask_path"):
        seeds_from_masks(pd.DataFrame({"image_path": ["x"]}))


def _write_seg(tmp_path, mask):
    hd = pytest.importorskip("highdicom")
    pydicom = pytest.importorskip("pydicom")
    from pydicom.sr.codedict import codes

    ct = write_dicom_series(tmp_path / "ct", np.full(mask.shape, -1000, dtype=np.int16))
    sources = [pydicom.dcmread(f) for f in sorted(ct.glob("*.dcm"))]
    for s in sources:
        s.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.3"
        s.PatientID, s.PatientName = "p1", "Doe^Jane"
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )
    seg.save_as(tmp_path / "seg.dcm")
    return ct, tmp_path / "seg.dcm"


def test_dicom_seg_through_highdicom(tmp_path):
    mask = np.zeros((12, 40, 48), dtype=bool)
    mask[3:6, 10:14, 20:26] = True
    ct, seg = _write_seg(tmp_path, mask)
    seeds = seeds_from_masks(pd.DataFrame({"mask_path": [str(seg)]}))
    image = sitk.ReadImage([str(p) for p in sorted(ct.glob("*.dcm"))])
    centre = np.argwhere(mask).mean(axis=0)[::-1]
    expected = image.TransformContinuousIndexToPhysicalPoint(centre.tolist())
    np.testing.assert_allclose(
        seeds[["coordX", "coordY", "coordZ"]].to_numpy()[0], expected, atol=1e-6
    )
    assert seeds["mask_voxels"][0] == 72


def test_dicom_seg_without_highdicom_is_a_clear_error(tmp_path, monkeypatch):
    # A DICOM file whose modality is SEG, written without highdicom.
    img = sitk.GetImageFromArray(np.zeros((1, 8, 8), dtype=np.uint8))
    img.SetMetaData("0008|0060", "SEG")
    sitk.WriteImage(img, str(tmp_path / "seg.dcm"))
    monkeypatch.setitem(sys.modules, "highdicom", None)
    with pytest.raises(RowError, match=r"needs the optional 'highdicom' package"):
        seeds_from_masks(pd.DataFrame({"mask_path": [str(tmp_path / "seg.dcm")]}))


def test_extract_accepts_a_mask_table(tmp_path):
    rng = np.random.default_rng(0)
    ct = write_image(tmp_path / "ct.nii.gz", rng.normal(-300, 300, (40, 60, 60)).astype(np.int16))
    a = np.zeros((40, 60, 60), dtype=np.uint8)
    a[10:14, 20:25, 20:25] = 3
    a[25:30, 40:44, 35:40] = 3
    write_image(tmp_path / "seg.nii.gz", a)
    pd.DataFrame({"image_path": ["ct.nii.gz"], "mask_path": ["seg.nii.gz"]}).to_csv(
        tmp_path / "masks.csv", index=False
    )
    from skfmcib import FMCIBTransformer

    tiny = FMCIBTransformer(
        weights=None, arch={"arch": "resnet10", "widen_factor": 0.25}, random_state=0, device="cpu"
    )
    summary = extract(tmp_path / "masks.csv", tmp_path / "f.csv", transformer=tiny)
    frame = pd.read_csv(summary.out)
    assert summary.n_written == 2 and frame["image_path"].tolist() == ["ct.nii.gz"] * 2
    assert frame["mask_path"].tolist() == ["seg.nii.gz"] * 2  # as the user wrote them
    np.testing.assert_allclose(frame["coordZ"], [11.5, 27.0])
    assert str(ct)  # the CT was read through the resolved path


def test_examples_run():
    assert doctest.testmod(masks).failed == 0


@pytest.fixture
def mask_table(tmp_path):
    rng = np.random.default_rng(0)
    write_image(tmp_path / "ct.nii.gz", rng.normal(-300, 300, (40, 60, 60)).astype(np.int16))
    a = np.zeros((40, 60, 60), dtype=np.uint8)
    a[10:14, 20:25, 20:25] = 1
    a[25:30, 40:44, 35:40] = 1
    write_image(tmp_path / "seg.nii.gz", a)
    return pd.DataFrame({"image_path": ["ct.nii.gz"], "mask_path": ["seg.nii.gz"]})


def _tiny(**kwargs):
    from skfmcib import FMCIBTransformer

    params = dict(weights=None, arch={"arch": "resnet10", "widen_factor": 0.25}, random_state=0)
    return FMCIBTransformer(device="cpu", **params, **kwargs)


def _features(frame: pd.DataFrame) -> np.ndarray:
    features = frame.filter(like="fmcib_").to_numpy()
    assert features.shape[1] == 128
    return features


def test_mask_seeds_are_written_in_the_table_s_coordinate_system(tmp_path, mask_table):
    lps = extract(mask_table, tmp_path / "lps.csv", transformer=_tiny(), image_root=tmp_path)
    ras = extract(mask_table, tmp_path / "ras.csv", transformer=_tiny(coordinate_system="RAS"),
                  image_root=tmp_path)  # fmt: skip
    a, b = pd.read_csv(lps.out), pd.read_csv(ras.out)
    np.testing.assert_array_equal(_features(a), _features(b))  # the same lesions
    np.testing.assert_array_equal(b[["coordX", "coordY"]], -a[["coordX", "coordY"]])
    np.testing.assert_array_equal(b["coordZ"], a["coordZ"])


@pytest.mark.parametrize("index", [["p1"], [7]])
def test_mask_tables_keep_their_row_labels(tmp_path, mask_table, index):
    doubled = pd.concat([mask_table, mask_table]).set_axis(index * 2)  # labels repeat
    summary = extract(doubled, tmp_path / "f.csv", transformer=_tiny(), image_root=tmp_path)
    frame = pd.read_csv(summary.out)
    assert summary.n_written == 4 and frame["mask_row"].astype(str).tolist() == [str(index[0])] * 4
    with pytest.raises(Exception, match=rf"row {index[0]} \("):
        broken = doubled.copy()
        broken["mask_path"] = ["seg.nii.gz", "missing.nii.gz"]
        extract(broken, tmp_path / "g.csv", transformer=_tiny(), image_root=tmp_path)


def test_path_objects_in_a_table(tmp_path, mask_table):
    pytest.importorskip("pyarrow")
    from pathlib import Path

    table = mask_table.map(Path)  # relative Path objects, resolved against image_root
    summary = extract(table, tmp_path / "f.parquet", transformer=_tiny(), image_root=tmp_path)
    frame = pd.read_parquet(summary.out)
    assert summary.n_written == 2 and frame["image_path"].tolist() == ["ct.nii.gz"] * 2


def test_label_settings_are_checked(two_lesions):
    path, _ = two_lesions
    table = pd.DataFrame({"mask_path": [str(path)]})
    for kwargs, says in (
        ({"label": 0}, "label must be a positive whole number"),
        ({"label": 1.5}, "label must be a positive whole number"),
        ({"min_voxels": 0}, "min_voxels must be a positive integer"),
    ):
        with pytest.raises(ValueError, match=says):
            seeds_from_masks(table, **kwargs)
    with pytest.raises(RowError, match=r"row 0 .*mask_label 1\.7 is not a positive whole"):
        seeds_from_masks(table.assign(mask_label=[1.7]))
    with pytest.raises(RowError, match=r"mask holds no label 9$"):
        seeds_from_masks(table, label=9)  # no "(at least 1 voxels)"


def test_a_rows_mask_label_and_the_label_for_every_row_must_agree(two_lesions, tmp_path):
    path, _ = two_lesions
    table = pd.DataFrame({"mask_path": [str(path)] * 3, "mask_label": [1, np.nan, 2]})
    with pytest.raises(RowError, match=r"row 2 .*mask_label 2 differs from the label given"):
        seeds_from_masks(table, label=1)
    agreed = seeds_from_masks(table.iloc[:2], label=1)  # an empty cell takes the label
    assert agreed["mask_label"].tolist() == [1, 1]
    mixed = pd.DataFrame({"mask_path": [str(path)] * 2, "mask_label": ["", 2]})
    assert seeds_from_masks(mixed)["mask_label"].tolist() == [1, 1, 2, 2]
    csv = tmp_path / "masks.csv"
    table.to_csv(csv, index=False)
    from skfmcib.cli import main

    assert main(["qc", str(csv), "-o", str(tmp_path / "qc"), "--mask-label", "1"]) == 2
    with pytest.raises(SystemExit):  # refused by the parser, before any work
        main(["qc", str(csv), "-o", str(tmp_path / "qc2"), "--mask-label", "0"])
    assert not (tmp_path / "qc2").exists()


def test_empty_coordinate_columns_beside_masks_seed_from_the_masks(tmp_path, mask_table):
    blank = mask_table.assign(coordX=np.nan, coordY="", coordZ=None)
    summary = extract(blank, tmp_path / "f.csv", transformer=_tiny(), image_root=tmp_path)
    plain = extract(mask_table, tmp_path / "g.csv", transformer=_tiny(), image_root=tmp_path)
    a, b = pd.read_csv(summary.out), pd.read_csv(plain.out)
    np.testing.assert_array_equal(_features(a), _features(b))
    np.testing.assert_array_equal(
        a[["coordX", "coordY", "coordZ"]], b[["coordX", "coordY", "coordZ"]]
    )
    some = pd.concat([mask_table.assign(coordX=1.0, coordY=2.0, coordZ=3.0), blank])
    some.index = ["a", "b"]
    with pytest.raises(ExtractError, match=r"row\(s\) b give a mask_path and no coordinates"):
        extract(some, tmp_path / "h.csv", transformer=_tiny(), image_root=tmp_path)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint32, np.float32])
def test_label_images_of_any_type_give_the_same_lesions(tmp_path, dtype):
    boxes = {
        "first": (slice(2, 6), slice(3, 8), slice(4, 9)),
        "other": (slice(10, 12), slice(5, 8), slice(20, 22)),
        "second": (slice(12, 15), slice(20, 26), slice(30, 33)),
    }
    a = np.zeros((20, 30, 40), dtype=np.int64)
    a[boxes["first"]] = a[boxes["second"]] = 1
    other = 70_000 if dtype == np.uint32 else 2  # above the boxed range: listed by value
    a[boxes["other"]] = other
    path = write_image(tmp_path / "m.nrrd", a.astype(dtype), spacing=(0.7, 0.8, 2.5))
    labels, _ = masks.read_label_image(path)
    assert labels.dtype == (np.int64 if dtype == np.float32 else dtype)  # no copy to int64
    seeds = seeds_from_masks(pd.DataFrame({"mask_path": [str(path)]}))
    assert seeds["mask_label"].tolist() == [1, 1, other]
    assert seeds["mask_component"].tolist() == [1, 2, 1]
    expected = []
    for name in ("first", "second", "other"):
        inside = np.zeros(a.shape, dtype=bool)
        inside[boxes[name]] = True
        expected.append(lps_centroid(path, None, np.argwhere(inside)))
    np.testing.assert_allclose(
        seeds[["coordX", "coordY", "coordZ"]].to_numpy(), expected, atol=1e-6
    )

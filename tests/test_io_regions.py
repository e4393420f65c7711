"""Region reads: every format's fast path gives exactly what a full read gives."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from conftest import read_with_simpleitk, rotation, write_dicom_series, write_image

from skfmcib import load_patches
from skfmcib.io import (
    ImageReadError,
    Volume,
    image_identity,
    open_image,
    read_geometry,
    read_image,
)
from skfmcib.patches import extract_patch

OBLIQUE = rotation(enumerate((12.0, -7.0, 25.0)))


def _noise(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 2000, size=shape).astype(np.int16)


def _boxes(size, n=6, seed=1):
    rng = np.random.default_rng(seed)
    size = np.asarray(size)
    yield np.zeros(3, int), size  # the whole image
    yield size - 1, size  # the last voxel
    for _ in range(n):
        lo = rng.integers(0, size - 1)
        hi = np.minimum(size, lo + rng.integers(1, size // 2 + 2))
        yield lo, hi


def _assert_same_geometry(a, b):
    assert a.size == b.size
    for name in ("origin", "spacing", "direction"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def _assert_regions_equal_full_read(path, series_uid=None):
    full = read_with_simpleitk(path, series_uid)
    with open_image(path, series_uid) as source:
        _assert_same_geometry(source.geometry, full.geometry)
        for lo, hi in _boxes(full.geometry.size):
            got = source.read_region(lo, hi)
            want = full.array[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
            assert got.shape == want.shape
            np.testing.assert_array_equal(got, want, err_msg=f"{path} box {lo}-{hi}")
        # The same boxes asked together: each once, as read one by one, in the order
        # given (one pass through a gzipped NIfTI: in the order of their last slice).
        boxes = list(_boxes(full.geometry.size))
        together = list(source.iter_regions(boxes))
        order = list(range(len(boxes)))
        if source.strategy == "inflate":
            order.sort(key=lambda k: int(boxes[k][1][2]))
        assert [k for k, _ in together] == order
        for k, got in together:
            (x0, y0, z0), (x1, y1, z1) = boxes[k]
            np.testing.assert_array_equal(got, full.array[z0:z1, y0:y1, x0:x1])
        return source.strategy


# --- files -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, strategy",
    [
        ("ct.nii", "raw"),
        ("ct.nii.gz", "inflate"),
        ("ct.mha", "stream"),
        ("ct.mhd", "stream"),
        ("ct.nrrd", "raw"),
    ],
)
@pytest.mark.parametrize("direction", [np.eye(3), OBLIQUE], ids=["axial", "oblique"])
def test_file_regions_equal_full_reads(tmp_path, name, strategy, direction):
    path = write_image(
        tmp_path / name,
        _noise((23, 31, 37)),
        spacing=(0.7, 0.8, 1.25),
        origin=(-50.0, 20.0, 7.5),
        direction=direction,
    )
    assert _assert_regions_equal_full_read(path) == strategy
    with open_image(path) as source:
        assert source.sequential == name.endswith(".gz")


def test_compressed_metaimage_is_sequential(tmp_path):
    path = tmp_path / "ct.mha"
    sitk.WriteImage(sitk.GetImageFromArray(_noise((9, 10, 11))), str(path), useCompression=True)
    assert _assert_regions_equal_full_read(path) == "stream"
    with open_image(path) as source:
        assert source.sequential


@pytest.mark.parametrize("name, strategy", [("ct.nii.gz", "inflate"), ("ct.mha", "stream")])
def test_lesions_of_a_gzipped_image_come_from_one_read(tmp_path, monkeypatch, name, strategy):
    import skfmcib.patches as patches_mod

    path = tmp_path / name
    image = sitk.GetImageFromArray(_noise((40, 70, 66)))
    image.SetSpacing((0.7, 0.8, 1.25))
    sitk.WriteImage(image, str(path), useCompression=True)
    seeds = np.array([[10.0, 12.0, 20.0], [30.0, 40.0, 30.0], [20.0, 25.0, 15.0]])
    table = pd.DataFrame(seeds, columns=["coordX", "coordY", "coordZ"])
    table.insert(0, "image_path", str(path))
    reads = []  # (boxes read in one pass through the file)
    real = patches_mod.open_image

    def recording_open(*args):
        source = real(*args)
        assert source.strategy == strategy
        read, passes = source.read_region, source.iter_regions
        source.read_region = lambda lo, hi: reads.append([(lo, hi)]) or read(lo, hi)
        source.iter_regions = lambda boxes: reads.append(list(boxes)) or passes(boxes)
        return source

    monkeypatch.setattr(patches_mod, "open_image", recording_open)
    patches = load_patches(table)
    # One pass for the three lesions (besides the 1-slice intensity probe): three boxes
    # cut while inflating, or one box holding them all.
    lesion_reads = [boxes for boxes in reads if boxes[0][1][2] - boxes[0][0][2] > 1]
    assert len(lesion_reads) == 1
    assert len(lesion_reads[0]) == (3 if strategy == "inflate" else 1)
    volume = read_with_simpleitk(path)
    for i, seed in enumerate(seeds):
        np.testing.assert_array_equal(patches[i, 0], extract_patch(volume, seed))


def test_many_lesions_of_one_image_hold_bounded_memory(tmp_path, monkeypatch):
    # A lesion's plan holds a few numbers, not its samples' indices (3 MB each, which
    # 1,000 lesions of one image held at once); a gzipped image's boxes are read in
    # passes of bounded size.
    import skfmcib.patches as patches_mod

    path = tmp_path / "ct.nii.gz"
    image = sitk.GetImageFromArray(_noise((40, 70, 66)))
    image.SetSpacing((0.7, 0.8, 1.25))
    sitk.WriteImage(image, str(path), useCompression=True)
    rng = np.random.default_rng(0)
    seeds = rng.uniform([5, 5, 5], [40, 50, 45], (7, 3))
    table = pd.DataFrame(seeds, columns=["coordX", "coordY", "coordZ"])
    table.insert(0, "image_path", str(path))
    geometry = read_geometry(path)
    plan = patches_mod._sample_plan(geometry, seeds[0])
    held = sum(np.asarray(v).nbytes for v in vars(plan).values())
    assert held < 1000, held
    one_pass = load_patches(table)
    box = int(np.prod(plan.hi - plan.lo))
    monkeypatch.setattr(patches_mod, "_PASS_VOXELS", 2 * box)  # about 2 boxes a pass
    passes = []
    real = patches_mod._pass
    monkeypatch.setattr(
        patches_mod, "_pass", lambda s, p, f: passes.append(len(p)) or real(s, p, f)
    )
    np.testing.assert_array_equal(load_patches(table), one_pass)
    assert len(passes) >= 3 and sum(passes) == 7


def test_union_boxes_fill_the_top_pass_first(monkeypatch):
    import skfmcib.patches as patches_mod

    monkeypatch.setattr(patches_mod, "_UNION_VOXELS", 10 * 10 * 60)

    def plan(z0, z1):
        return SimpleNamespace(lo=np.array([0, 0, z0]), hi=np.array([10, 10, z1]))

    # Five lesions; any grouping needs a pass up to slice 100. Filled from the bottom
    # up, the passes would end at slices 55 and 100; from the top down, at 30 and 100.
    plans = [(i, f"row {i}", plan(*z)) for i, z in
             enumerate([(0, 20), (10, 30), (40, 55), (50, 80), (70, 100)])]  # fmt: skip
    groups = patches_mod._union_groups(plans)
    assert [int(hi[2]) for _, hi, _ in groups] == [30, 100]
    assert [sorted(pos for pos, _, _ in members) for _, _, members in groups] == [
        [0, 1], [2, 3, 4]
    ]  # fmt: skip
    for lo, hi, members in groups:
        assert np.prod(hi - lo) <= patches_mod._UNION_VOXELS
        for _, _, p in members:
            assert (lo <= p.lo).all() and (p.hi <= hi).all()


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32, np.float64])
def test_raw_nrrd_of_other_types_and_big_endian(tmp_path, dtype):
    arr = (np.random.default_rng(3).random((9, 11, 13)) * 200).astype(dtype)
    path = write_image(tmp_path / "ct.nrrd", arr)
    assert _assert_regions_equal_full_read(path) == "raw"
    # The same voxels stored big-endian, header written by hand.
    big = tmp_path / "big.nrrd"
    kind = {np.uint8: "uchar", np.int32: "int", np.float32: "float", np.float64: "double"}
    header = (
        f"NRRD0004\ntype: {kind[dtype]}\ndimension: 3\nsizes: 13 11 9\n"
        "endian: big\nencoding: raw\nspace: left-posterior-superior\n"
        "space directions: (1,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\n\n"
    )
    big.write_bytes(header.encode() + arr.astype(np.dtype(dtype).newbyteorder(">")).tobytes())
    with open_image(big) as source:
        assert source.strategy == "raw"
        np.testing.assert_array_equal(source.read_region((0, 0, 0), (13, 11, 9)), arr)


def test_compressed_nrrd_is_read_whole_once(tmp_path):
    hu = _noise((12, 14, 16))
    path = tmp_path / "ct.nrrd"
    img = sitk.GetImageFromArray(hu)
    sitk.WriteImage(img, str(path), useCompression=True)
    assert _assert_regions_equal_full_read(path) == "whole"
    with open_image(path) as source:
        source.read_region((0, 0, 0), (4, 4, 4))
        source.read_region((5, 5, 5), (9, 9, 9))
        assert source.files_read == [str(path)]


def test_nifti_scaling_is_applied_like_simpleitk(tmp_path):
    path = write_image(tmp_path / "scaled.nii", _noise((10, 12, 14)))
    raw = bytearray(path.read_bytes())
    raw[112:120] = struct.pack("<ff", 0.5, -1000.25)  # scl_slope, scl_inter
    path.write_bytes(bytes(raw))
    assert read_image(path).array.dtype.kind == "f"
    assert _assert_regions_equal_full_read(path) == "raw"


def test_region_bounds_are_checked(tmp_path):
    path = write_image(tmp_path / "ct.nii", _noise((5, 6, 7)))
    with open_image(path) as source:
        for lo, hi in [((-1, 0, 0), (2, 2, 2)), ((0, 0, 0), (8, 6, 5)), ((3, 3, 3), (3, 4, 4))]:
            with pytest.raises(ValueError, match="region"):
                source.read_region(lo, hi)
    volume = read_image(path)
    np.testing.assert_array_equal(
        volume.read_region((1, 2, 3), (4, 5, 5)), volume.array[3:5, 2:5, 1:4]
    )


# --- DICOM -------------------------------------------------------------------------------


def _write_series(directory: Path, array, spacing, origin, direction, step=None, **tags):
    """An int16 CT series with any orientation; ``step``: offset between slices."""
    directory.mkdir(parents=True, exist_ok=True)
    row, col = direction[:, 0], direction[:, 1]
    step = direction[:, 2] * spacing[2] if step is None else np.asarray(step, float)
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")  # files without an extension, as scanners write them
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.8.498.77"
    order = np.random.default_rng(5).permutation(array.shape[0])  # file names shuffled
    for k in range(array.shape[0]):
        sl = sitk.GetImageFromArray(array[k : k + 1])
        pos = np.asarray(origin) + k * step
        meta = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.8.498.78",
            "0020|000e": uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{p:.5f}" for p in pos),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*row, *col)),
            "0028|0030": f"{spacing[1]:.4f}\\{spacing[0]:.4f}",
            "0028|1052": "-1024",
            "0028|1053": "1",
            **tags,
        }
        for tag, value in meta.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(directory / f"im{order[k]:04d}"))
        writer.Execute(sl)
    return directory


@pytest.mark.parametrize(
    "direction, step",
    [
        (np.eye(3), None),
        (OBLIQUE, None),
        (np.diag([1.0, 1.0, -1.0]) @ np.eye(3), None),  # slices stacked feet-first
        (np.eye(3), (0.0, 0.6, 1.5)),  # gantry tilt: slices sheared along y
    ],
    ids=["axial", "oblique", "reversed", "tilted"],
)
def test_dicom_series_geometry_and_regions_equal_simpleitk(tmp_path, direction, step):
    hu = _noise((14, 20, 18)).clip(0, None)  # stored unsigned-looking values, HU after rescale
    d = _write_series(tmp_path / "s", hu, (0.7, 0.75, 1.5), (-80.0, 30.0, 12.0), direction, step)
    assert _assert_regions_equal_full_read(d) == "dicom"


def test_dicom_series_from_conftest_writer_and_series_choice(tmp_path):
    hu = _noise((10, 16, 12))
    d = tmp_path / "two"
    write_dicom_series(d, hu, series_uid="1.2.3.4.1", prefix="a")
    write_dicom_series(d, hu[:, ::-1].copy(), series_uid="1.2.3.4.2", prefix="b")
    for uid in ("1.2.3.4.1", "1.2.3.4.2"):
        assert _assert_regions_equal_full_read(d, uid) == "dicom"
    with pytest.raises(OSError, match="2 DICOM series"):
        open_image(d)
    with pytest.raises(OSError, match="no DICOM series '9.9'"):
        open_image(d, "9.9")


def test_dicom_rescale_slope_and_intercept_per_file(tmp_path):
    hu = _noise((6, 10, 10)).clip(0, None)
    d = _write_series(tmp_path / "s", hu, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    for i, f in enumerate(sorted(d.iterdir())):
        ds = pydicom.dcmread(f)
        ds.RescaleSlope = "0.5" if i % 2 else "2"
        ds.RescaleIntercept = "-1000.25"
        ds.save_as(f)
    assert _assert_regions_equal_full_read(d) == "dicom"


def test_real_dicom_series_geometry_and_pixels_equal_simpleitk(shared_data):
    d = shared_data / "ct" / "example_ct_dicom"  # JPEG 2000 compressed
    assert _assert_regions_equal_full_read(d) == "dicom"
    _assert_same_geometry(read_geometry(d), read_with_simpleitk(d).geometry)


def test_one_lesion_reads_the_pixels_of_under_a_third_of_a_300_slice_series(tmp_path):
    hu = _noise((300, 256, 256))
    d = write_dicom_series(tmp_path / "long", hu, spacing=(0.7, 0.7, 1.0))
    total = sum(f.stat().st_size for f in d.iterdir())
    before = _bytes_read()
    with open_image(d) as source:
        g = source.geometry
        seed = g.origin + g.index_to_physical @ np.array([128.0, 100.0, 170.0])
        patch = extract_patch(source, seed)
        opened = list(source.files_read)
    read = _bytes_read() - before
    # The 50 mm cube touches 51 of the 1 mm slices: only their pixel data are read.
    assert len(opened) == len(set(opened)) <= 52
    assert 0 < read < total / 3, (read, total)
    np.testing.assert_array_equal(patch, extract_patch(read_with_simpleitk(d), seed))


def _bytes_read() -> int:
    try:
        with open("/proc/self/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("rchar"))
    except OSError:
        pytest.skip("/proc/self/io is not available to count bytes read")


# --- patches through sources ---------------------------------------------------------------


def test_patches_from_sources_equal_patches_from_full_reads(tmp_path):
    hu = _noise((40, 70, 66))
    spacing, origin = (0.7, 0.8, 1.25), (-30.0, 12.0, 50.0)
    files = [
        write_image(tmp_path / f"ct.{e}", hu, spacing, origin, OBLIQUE) for e in ("nii", "nrrd")
    ]
    files.append(_write_series(tmp_path / "dcm", hu, spacing, origin, OBLIQUE))
    for path in files:
        volume = read_with_simpleitk(path)
        g = volume.geometry
        for index in ([33, 35, 20], [2.0, 60.5, 38.0], [64.9, 1.0, 0.2]):
            seed = g.origin + g.index_to_physical @ np.asarray(index)
            with open_image(path) as source:
                np.testing.assert_array_equal(
                    extract_patch(source, seed), extract_patch(volume, seed), err_msg=str(path)
                )
    table = pd.DataFrame({"image_path": [str(files[0])], "coordX": [0.0], "coordY": [30.0]})
    table["coordZ"] = 60.0
    np.testing.assert_array_equal(
        load_patches(table)[0, 0], extract_patch(read_with_simpleitk(files[0]), [0.0, 30.0, 60.0])
    )


def test_volume_is_a_source_too():
    vol = Volume(np.arange(24, dtype=np.int16).reshape(2, 3, 4), _unit_geometry((4, 3, 2)))
    np.testing.assert_array_equal(vol.read_region((1, 1, 0), (3, 3, 1)), [[[5, 6], [9, 10]]])


def _unit_geometry(size):
    from skfmcib.io import Geometry

    return Geometry(size, np.zeros(3), np.ones(3), np.eye(3))


# --- identity ------------------------------------------------------------------------------


def test_image_identity_changes_with_content_time_and_data_files(tmp_path):
    nii = write_image(tmp_path / "a.nii.gz", _noise((4, 5, 6)))
    first = image_identity(nii)
    assert image_identity(str(nii)) == first
    st = nii.stat()
    os.utime(nii, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert image_identity(nii) != first
    mhd = write_image(tmp_path / "b.mhd", _noise((4, 5, 6)))
    before = image_identity(mhd)
    raw = tmp_path / "b.raw"
    raw.write_bytes(raw.read_bytes()[::-1])  # the voxels change, the header does not
    assert image_identity(mhd) != before
    d = write_dicom_series(tmp_path / "dcm", _noise((3, 6, 6)))
    before = image_identity(d)
    f = sorted(d.iterdir())[1]
    f.write_bytes(f.read_bytes())
    assert image_identity(d) != before
    assert image_identity(tmp_path / "absent.nii") is None


def test_image_identity_follows_listed_and_patterned_data_files(tmp_path):
    # MetaImage headers may name one file per slice: a LIST, or a printf pattern.
    volume = _noise((3, 5, 6)).astype(np.int16)
    for k in range(3):
        (tmp_path / f"s{k}.raw").write_bytes(volume[k].tobytes())
    common = (
        "ObjectType = Image\nNDims = 3\nDimSize = 6 5 3\nElementType = MET_SHORT\n"
        "ElementSpacing = 1 1 1\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
    )
    listed = tmp_path / "listed.mhd"
    listed.write_text(common + "ElementDataFile = LIST 2D\ns0.raw\ns1.raw\ns2.raw\n")
    patterned = tmp_path / "patterned.mhd"
    patterned.write_text(common + "ElementDataFile = s%d.raw 0 2 1\n")
    for header in (listed, patterned):
        np.testing.assert_array_equal(read_image(header).array, volume)
    before = [image_identity(listed), image_identity(patterned)]
    (tmp_path / "unrelated.raw").write_bytes(b"0")
    assert [image_identity(listed), image_identity(patterned)] == before
    last = tmp_path / "s2.raw"
    last.write_bytes(last.read_bytes()[::-1])
    assert image_identity(listed) != before[0]
    assert image_identity(patterned) != before[1]
    last.unlink()  # a missing data file: not cachable
    assert image_identity(listed) is None and image_identity(patterned) is None


# --- DICOM series as scanners and archives write them ----------------------------------


def _series(tmp_path, n=8, seed=3) -> tuple[Path, np.ndarray]:
    hu = _noise((n, 20, 24), seed)
    return write_dicom_series(tmp_path / "series", hu, spacing=(1.0, 1.0, 2.0)), hu


def _rewrite(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def _same_as_simpleitk(directory: Path) -> None:
    source = open_image(directory)
    expected = read_with_simpleitk(directory)
    assert source.geometry.size == expected.geometry.size
    np.testing.assert_allclose(source.geometry.origin, expected.geometry.origin)
    size = np.array(source.geometry.size)
    np.testing.assert_array_equal(source.read_region([0, 0, 0], size), expected.array)
    whole = read_image(directory)  # read as extraction reads it, the same values
    _assert_same_geometry(whole.geometry, expected.geometry)
    np.testing.assert_array_equal(whole.array, expected.array)
    assert whole.array.dtype == expected.array.dtype


def test_slices_without_preamble_or_file_meta_are_part_of_the_series(tmp_path):
    directory, _ = _series(tmp_path)
    for f in sorted(directory.iterdir())[-2:]:  # raw data sets, as GDCM also reads them
        ds = pydicom.dcmread(f)
        ds.preamble = None
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        pydicom.dcmwrite(f, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(sorted(directory.iterdir())[-1])
    assert open_image(directory).strategy == "dicom"
    _same_as_simpleitk(directory)


def test_files_that_are_not_images_do_not_count_as_series(tmp_path):
    directory, _ = _series(tmp_path)
    report = pydicom.dcmread(sorted(directory.iterdir())[0])
    for name in ("PixelData", "Rows", "Columns"):
        delattr(report, name)
    report.SeriesInstanceUID = "1.2.3.4"  # a dose report in a series of its own
    report.save_as(directory / "dose_report.dcm")
    (directory / "fake.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(64))
    _same_as_simpleitk(directory)  # no series_uid needed


@pytest.mark.parametrize("reader", [open_image, read_image])
def test_a_slice_of_another_orientation_is_refused_naming_it(tmp_path, reader):
    directory, _ = _series(tmp_path)
    _rewrite(directory / "slice003.dcm", lambda ds: setattr(ds, "ImageOrientationPatient",
                                                            [1, 0, 0, 0, 0, -1]))  # fmt: skip
    with pytest.raises(ImageReadError, match=r"1 slice of the series has another orientation .*"
                                         r"slice003\.dcm.*localizer"):  # fmt: skip
        reader(directory)


@pytest.mark.parametrize("reader", [open_image, read_image])
def test_two_slices_at_one_position_are_refused_naming_them(tmp_path, reader):
    directory, _ = _series(tmp_path)
    same = pydicom.dcmread(directory / "slice002.dcm").ImagePositionPatient
    _rewrite(directory / "slice005.dcm", lambda ds: setattr(ds, "ImagePositionPatient", same))
    with pytest.raises(ImageReadError, match=r"two slices at one position \(slice002\.dcm and "
                                         r"slice005\.dcm"):  # fmt: skip
        reader(directory)


def test_monochrome1_series_are_read_as_simpleitk_reads_them(tmp_path):
    directory, _ = _series(tmp_path)
    for f in directory.iterdir():
        _rewrite(f, lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"))
    assert open_image(directory).strategy == "whole"
    _same_as_simpleitk(directory)


def test_a_folder_holding_one_multi_frame_file_is_read_as_that_file(tmp_path):
    hu = _noise((6, 20, 24))
    directory = write_dicom_series(tmp_path / "enhanced", hu[:1])
    only = directory / "slice000.dcm"
    _rewrite(
        only, lambda ds: (setattr(ds, "NumberOfFrames", 6), setattr(ds, "PixelData", hu.tobytes()))
    )
    # SimpleITK's series reader makes it a 4D image; the file alone is the 3D volume.
    series = sitk.ImageSeriesReader()
    series.SetFileNames(series.GetGDCMSeriesFileNames(str(directory)))
    assert series.Execute().GetDimension() == 4
    np.testing.assert_array_equal(read_image(directory).array, hu)
    np.testing.assert_array_equal(open_image(directory).read_region([0, 0, 0], [24, 20, 6]), hu)


def test_hidden_files_are_not_slices_as_for_gdcm(tmp_path):
    directory, _ = _series(tmp_path)
    top = pydicom.dcmread(directory / "slice007.dcm")
    top.ImagePositionPatient = [*top.ImagePositionPatient[:2], top.ImagePositionPatient[2] + 2]
    top.SOPInstanceUID = top.SOPInstanceUID + ".9"
    top.save_as(directory / ".slice008.dcm")  # a hidden slice beyond the top
    data = (directory / "slice003.dcm").read_bytes()
    (directory / ".slice003.dcm.Xy12ab").write_bytes(data[: len(data) // 2])  # rsync's copy
    (directory / "._slice004.dcm").write_bytes(data[:4096])  # AppleDouble
    assert open_image(directory).geometry.size[2] == 8
    assert open_image(directory).strategy == "dicom"
    _same_as_simpleitk(directory)


def _move(directory: Path, name: str, dz: float) -> None:
    def shift(ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + dz]

    _rewrite(directory / name, shift)


@pytest.mark.parametrize("reader", [open_image, read_image])
@pytest.mark.parametrize(
    ("dz", "step", "what"),
    [
        (-1.0, "1.00", "an extra or repeated slice"),  # a step of 1 mm among 2 mm
        (-1.999, "0.00", "an extra or repeated slice"),  # nearly at the slice below
        (0.9, "2.90", "missing slices"),  # 1.45 times the spacing (then 1.10)
    ],
)
def test_uneven_slice_steps_are_refused_naming_the_files(tmp_path, reader, dz, step, what):
    directory, _ = _series(tmp_path)
    _move(directory, "slice004.dcm", dz)
    with pytest.raises(ImageReadError, match=rf"\({what}\?\): their positions step {step} mm "
                                         r"\(slice003\.dcm to slice004\.dcm"):  # fmt: skip
        reader(directory)


def test_a_series_of_two_spacings_is_refused_as_such(tmp_path):
    directory, _ = _series(tmp_path)
    for k in range(4, 8):  # 2 mm apart up to slice003, 2.6 mm after
        _move(directory, f"slice{k:03d}.dcm", 0.6 * (k - 3))
    with pytest.raises(ImageReadError, match=r"\(slices of two spacings\?\): their positions "
                                         r"step 2\.00 mm"):  # fmt: skip
        open_image(directory)


def test_positions_rounded_in_the_headers_are_one_spacing(tmp_path):
    directory, _ = _series(tmp_path)
    for k, dz in ((2, 0.01), (5, -0.01), (6, 0.005)):  # as written with two decimals
        _move(directory, f"slice{k:03d}.dcm", dz)
    assert open_image(directory).strategy == "dicom"
    _same_as_simpleitk(directory)
    # 0.625 mm slices whose positions are written with one decimal: steps of 0.6 and
    # 0.7 mm, every slice within 0.05 mm of the evenly spaced stack
    thin = write_dicom_series(tmp_path / "thin", _noise((12, 20, 24)), spacing=(1.0, 1.0, 0.625))

    def one_decimal(ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, f"{z:.1f}"]

    for f in thin.iterdir():
        _rewrite(f, one_decimal)
    assert open_image(thin).strategy == "dicom"
    _same_as_simpleitk(thin)


@pytest.mark.parametrize(
    "sop_class",
    [
        "1.2.840.10008.5.1.4.1.1.1",  # computed radiography: ImagerPixelSpacing to GDCM
        "1.2.840.10008.5.1.4.1.1.481.1",  # RT Image
        "1.2.840.10008.5.1.4.1.1.20",  # nuclear medicine: no origin from the headers
    ],
)
def test_storage_classes_with_other_geometry_are_read_by_simpleitk(tmp_path, sop_class):
    directory, _ = _series(tmp_path)
    for f in directory.iterdir():

        def change(ds):
            ds.SOPClassUID = sop_class
            ds.file_meta.MediaStorageSOPClassUID = sop_class

        _rewrite(f, change)
    assert open_image(directory).strategy == "whole"
    _same_as_simpleitk(directory)


def test_a_truncated_slice_is_named_with_pydicoms_reason(tmp_path):
    directory, _ = _series(tmp_path)
    data = (directory / "slice003.dcm").read_bytes()
    (directory / "slice003.dcm").write_bytes(data[:-200])
    with pytest.raises(ImageReadError, match=r"slice003\.dcm: cannot read DICOM pixels \(The "
                                         r"number of bytes of pixel data is less than "
                                         r"expected.*; GDCM: "):  # fmt: skip
        open_image(directory).read_region([0, 0, 0], [24, 20, 8])


def test_a_series_without_uid_beside_another_is_explained(tmp_path):
    directory, _ = _series(tmp_path)
    for f in directory.iterdir():
        _rewrite(f, lambda ds: setattr(ds, "SeriesInstanceUID", ""))
    write_dicom_series(directory, _noise((4, 20, 24)), series_uid="1.2.826.0.1.7", prefix="b")
    explained = r"without a SeriesInstanceUID \(''\) cannot be named in a table: move it"
    with pytest.raises(ImageReadError, match=explained):
        open_image(directory)
    assert open_image(directory, "").geometry.size[2] == 8


# --- headers and files that SimpleITK reads, read the same way ----------------------------


def _ramp(shape=(12, 30, 34)) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return (x + 7 * y + 301 * z - 1000).astype(np.int16)  # every voxel distinct


def _nifti_bytes(array: np.ndarray, code: int = 4, bitpix: int = 16, slope=0.0) -> bytes:
    nz, ny, nx = array.shape
    h = bytearray(348)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, 3, nx, ny, nz, 1, 1, 1, 1)
    struct.pack_into("<2h", h, 70, code, bitpix)
    struct.pack_into("<8f", h, 76, 1, 0.7, 0.8, 2.5, 1, 1, 1, 1)
    struct.pack_into("<3f", h, 108, 352, slope, -3.0 if slope else 0.0)
    h[123] = 2
    struct.pack_into("<2h", h, 252, 1, 0)  # qform code 1, identity quaternion
    h[344:348] = b"n+1\0"
    return bytes(h) + b"\0" * 4 + array.tobytes()


@pytest.mark.parametrize("suffix", ["nii", "nii.gz"])
@pytest.mark.parametrize("slope", [0.0, 2.0])
def test_non_finite_float_voxels_are_zero_as_simpleitk_reads_them(tmp_path, suffix, slope):
    values = _ramp().astype(np.float32)
    values[5, 10, 11], values[0, 0, 0], values[-1, -1, -1] = np.nan, np.inf, -np.inf
    blob = _nifti_bytes(values, code=16, bitpix=32, slope=slope)
    path = tmp_path / f"ct.{suffix}"
    path.write_bytes(gzip.compress(blob) if suffix.endswith("gz") else blob)
    assert open_image(path).strategy in ("raw", "inflate")  # read without SimpleITK
    _assert_regions_equal_full_read(path)
    whole = read_image(path).array
    assert np.isfinite(whole).all()
    np.testing.assert_array_equal(whole, read_with_simpleitk(path).array)


def _meta(path: Path, array: np.ndarray, binary="True", compressed=None, size=True) -> Path:
    nz, ny, nx = array.shape
    head = (
        f"ObjectType = Image\nNDims = 3\nBinaryData = {binary}\nBinaryDataByteOrderMSB = False\n"
        + (f"CompressedData = {compressed}\n" if compressed else "")
        + "TransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\nElementSpacing = 1 1 2\n"
        f"DimSize = {nx} {ny} {nz}\nElementType = MET_SHORT\n"
    )
    if binary == "False":
        body = (" ".join(map(str, array.ravel())) + "\n").encode()
    elif compressed:
        body = zlib.compress(array.tobytes())
        head += f"CompressedDataSize = {len(body)}\n" if size else ""
    else:
        body = array.tobytes()
    path.write_bytes((head + "ElementDataFile = LOCAL\n").encode() + body)
    return path


def test_a_metaimage_of_text_voxels_is_read_whole(tmp_path):
    # SimpleITK reads boxes of text voxels wrong (and can corrupt memory doing so).
    path = _meta(tmp_path / "ct.mha", _ramp(), binary="False")
    assert open_image(path).strategy == "whole"
    _assert_regions_equal_full_read(path)
    np.testing.assert_array_equal(read_with_simpleitk(path).array, _ramp())


@pytest.mark.parametrize("flag", ["True", "1", "T"])
def test_compressed_metaimage_flag_spellings(tmp_path, flag):
    path = _meta(tmp_path / "ct.mha", _ramp(), compressed=flag)
    np.testing.assert_array_equal(read_with_simpleitk(path).array, _ramp())
    assert open_image(path).sequential  # read as compressed data, not refused as short
    _assert_regions_equal_full_read(path)


def test_a_compressed_metaimage_without_its_size_is_refused(tmp_path):
    path = _meta(tmp_path / "ct.mha", _ramp(), compressed="True", size=False)
    for reader in (open_image, read_image):
        with pytest.raises(ImageReadError, match=r"ct\.mha: compressed MetaImage without "
                                             r"CompressedDataSize"):  # fmt: skip
            reader(path)


def test_a_metaimage_header_that_cannot_be_read_is_an_image_read_error(tmp_path):
    if not os.path.exists("/proc/self/mem"):
        pytest.skip("needs /proc/self/mem, a file whose reads fail")
    (tmp_path / "mem.mha").symlink_to("/proc/self/mem")  # reading it fails (EIO)
    for reader in (open_image, read_image):
        with pytest.raises(ImageReadError, match=r"mem\.mha: cannot read image header"):
            reader(tmp_path / "mem.mha")


@pytest.mark.parametrize("length", [65535, 65536, 3 * 65536])
def test_raw_nrrd_with_a_long_header_line(tmp_path, length):
    nz, ny, nx = _ramp().shape
    header = (
        f"NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
        f"sizes: {nx} {ny} {nz}\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n"
        "endian: little\nencoding: raw\nspace origin: (0,0,0)\n#" + "x" * (length - 1) + "\n\n"
    )
    path = tmp_path / "ct.nrrd"
    path.write_bytes(header.encode() + _ramp().tobytes())
    assert open_image(path).strategy == "raw"
    _assert_regions_equal_full_read(path)


@pytest.mark.parametrize("tail", ["content", "bytes"])
def test_gzipped_nifti_with_more_after_its_data_is_not_truncated(tmp_path, tail):
    blob = _nifti_bytes(_ramp())
    path = tmp_path / "ct.nii.gz"
    if tail == "content":  # bytes after the voxels, inside the gzip stream
        path.write_bytes(gzip.compress(blob + b"\1" * 100))
    else:  # bytes after the gzip stream that do not start another member
        path.write_bytes(gzip.compress(blob[:1000]) + gzip.compress(blob[1000:]) + b"garbage!")
    np.testing.assert_array_equal(read_with_simpleitk(path).array, _ramp())
    _assert_regions_equal_full_read(path)
    np.testing.assert_array_equal(read_image(path).array, _ramp())
    # Short content is still refused, whatever follows it.
    path.write_bytes(gzip.compress(blob[:-10]) + b"garbage!")
    with pytest.raises(ImageReadError, match="truncated: its gzip stream holds"):
        read_image(path)


@pytest.mark.parametrize("suffix", ["mha", "nrrd", "nii"])
def test_a_negative_voxel_size_in_the_header_gives_simpleitk_geometry(tmp_path, suffix):
    path = write_image(tmp_path / f"ct.{suffix}", _ramp(), spacing=(0.5, 0.7, 2.0))
    data = path.read_bytes()
    if suffix == "mha":
        data = data.replace(b"ElementSpacing = 0.5", b"ElementSpacing = -0.5")
    elif suffix == "nrrd":  # per-axis spacings, no space directions
        nz, ny, nx = _ramp().shape
        data = (
            f"NRRD0004\ntype: short\ndimension: 3\nsizes: {nx} {ny} {nz}\n"
            "spacings: -0.5 0.7 2\nendian: little\nencoding: raw\n\n"
        ).encode() + _ramp().tobytes()
    else:
        h = bytearray(data)
        struct.pack_into("<f", h, 80, -0.5)  # pixdim[1]
        data = bytes(h)
    path.write_bytes(data)
    truth = read_with_simpleitk(path)
    assert truth.geometry.spacing[0] == 0.5  # SimpleITK turns the axis around
    _assert_same_geometry(read_geometry(path), truth.geometry)
    _assert_regions_equal_full_read(path)


def test_rounding_in_one_slices_orientation_is_not_another_orientation(tmp_path):
    directory, _ = _series(tmp_path)
    _rewrite(directory / "slice003.dcm", lambda ds: setattr(ds, "ImageOrientationPatient",
                                                            [1, 1e-5, 0, 0, 1, 2e-6]))  # fmt: skip
    assert open_image(directory).strategy == "dicom"
    _same_as_simpleitk(directory)


# --- a file corrupt near its end: each lesion gets what reading it alone gives --------------


def _corrupt_near_the_end(path: Path, back: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) - back, len(data) - back + 200):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _two_lesions(path: Path) -> pd.DataFrame:
    # A in the middle of the scan, B in its last slices (its read reaches the corruption).
    return pd.DataFrame(
        {
            "image_path": [str(path)] * 2,
            "coordX": [30.0] * 2,
            "coordY": [30.0] * 2,
            "coordZ": [26.0, 75.0],
        }  # fmt: skip
    )


@pytest.mark.parametrize("suffix", ["nii.gz", "mha"])
def test_a_lesion_read_with_others_gets_what_it_gets_alone(tmp_path, suffix):
    z, y, x = np.meshgrid(np.arange(80), np.arange(60), np.arange(60), indexing="ij")
    hu = ((7 * x + 13 * y + 29 * z) % 2000 - 1000).astype(np.int16)
    path = tmp_path / f"ct.{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(hu), str(path), useCompression=True)
    # .nii.gz: bytes flipped where the data still inflate; only the gzip check sum at
    # the file's end finds them. .mha: zlib data that stop inflating near the end.
    _corrupt_near_the_end(path, 600 if suffix == "mha" else 3000)
    table = _two_lesions(path)
    with pytest.warns(UserWarning, match=r"row 1 .*cannot read image"):
        both = load_patches(table, on_error="nan")
    alone = load_patches(table.iloc[[0]], on_error="nan")
    assert np.isfinite(alone).all() and not np.isfinite(both[1]).any()
    np.testing.assert_array_equal(both[0], alone[0])

"""NIfTI files read without SimpleITK give exactly SimpleITK's geometry and voxels."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import read_with_simpleitk, rotation, write_image

from skfmcib._nifti import read_layout
from skfmcib.io import ImageReadError, open_image, read_image
from skfmcib.patches import extract_patch, iter_patches
from skfmcib.table import RowError

DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4"}


def write_nifti(
    path: Path,
    array: np.ndarray,
    *,
    spacing=(1.0, 1.0, 1.0),
    quatern=None,
    qfac=1.0,
    srow=None,
    qform_code=0,
    sform_code=0,
    slope=0.0,
    inter=0.0,
    order="<",
    extension=b"",
    dim=None,
    xyzt_units=10,
) -> Path:
    """Write a NIfTI-1 file byte by byte: ``array`` in (z, y, x) order, any header."""
    h = bytearray(348)
    struct.pack_into(order + "i", h, 0, 348)
    dims = list(dim) if dim is not None else [3, *array.shape[::-1]]
    struct.pack_into(order + "8h", h, 40, *(dims + [1] * (8 - len(dims))))
    code = next(c for c, t in DTYPES.items() if np.dtype(t) == array.dtype.newbyteorder("="))
    struct.pack_into(order + "3h", h, 68, 0, code, array.dtype.itemsize * 8)
    struct.pack_into(order + "8f", h, 76, qfac, *spacing, 0, 0, 0, 0)
    struct.pack_into(order + "3f", h, 108, 352 + len(extension), slope, inter)
    h[123] = xyzt_units
    struct.pack_into(order + "2h", h, 252, qform_code, sform_code)
    if quatern is not None:
        struct.pack_into(order + "6f", h, 256, *quatern)
    if srow is not None:
        struct.pack_into(order + "12f", h, 280, *np.ravel(srow))
    h[344:348] = b"n+1\x00"
    body = bytes(h) + b"\0\0\0\0" + extension
    body += array.astype(array.dtype.newbyteorder(order)).tobytes()
    if path.name.endswith(".gz"):
        body = gzip.compress(body, 1)
    path.write_bytes(body)
    return path


def _quaternion(r: np.ndarray) -> tuple[np.ndarray, float]:
    """NIfTI's (b, c, d) and qfac for a rotation or reflection matrix."""
    qfac = 1.0 if np.linalg.det(r) > 0 else -1.0
    r = r.copy()
    r[:, 2] *= qfac
    w = np.sqrt(max(0.0, 1 + np.trace(r))) / 2
    if w > 1e-3:
        bcd = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / (4 * w)
    else:  # 180-degree rotations: the largest diagonal term
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = np.sqrt(max(0.0, 1 + r[i, i] - r[j, j] - r[k, k])) * 2
        bcd = np.zeros(3)
        bcd[i] = s / 4
        bcd[j] = (r[j, i] + r[i, j]) / s
        bcd[k] = (r[k, i] + r[i, k]) / s
        if (r[k, j] - r[j, k]) / s < 0:
            bcd = -bcd
    return bcd, qfac


def _assert_geometry_is_simpleitks(g, image: sitk.Image) -> None:
    assert g.size == image.GetSize()
    assert tuple(g.origin) == image.GetOrigin()
    assert tuple(g.spacing) == image.GetSpacing()
    assert tuple(g.direction.ravel()) == image.GetDirection()


def _assert_like_simpleitk(path: Path) -> str:
    """open_image and read_image give SimpleITK's geometry and voxels; returns how
    open_image read them."""
    image = sitk.ReadImage(str(path))
    want = sitk.GetArrayFromImage(image)
    with open_image(path) as source:
        g = source.geometry
        _assert_geometry_is_simpleitks(g, image)
        got = source.read_region((0, 0, 0), g.size)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        lo = np.asarray(g.size) // 3
        hi = np.maximum(lo + 1, 2 * np.asarray(g.size) // 3)
        np.testing.assert_array_equal(
            source.read_region(lo, hi), want[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
        )
        strategy = source.strategy
    # read_image reads the whole file the same way.
    volume = read_image(path)
    _assert_geometry_is_simpleitks(volume.geometry, image)
    assert volume.array.dtype == want.dtype
    np.testing.assert_array_equal(volume.array, want)
    return strategy


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", sorted(set(DTYPES.values())))
@pytest.mark.parametrize(
    "scaling", [(0.0, 0.0), (0.0, 5.0), (1.0, 0.0), (1.0, -1024.0), (0.37, 3.5)]
)
def test_every_type_and_scaling_reads_like_simpleitk(tmp_path, order, suffix, dtype, scaling):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    low, high = (info.min, info.max) if info else (-3000.0, 3000.0)
    array = rng.uniform(max(low, -3000), min(high, 3000), (7, 9, 11)).astype(dtype)
    path = write_nifti(
        tmp_path / f"ct{suffix}",
        array,
        spacing=(0.7, 0.8, 1.25),
        quatern=(0, 0, 0, -10.5, 20.25, 7.0),
        qform_code=1,
        slope=scaling[0],
        inter=scaling[1],
        order=order,
    )
    assert _assert_like_simpleitk(path) == ("inflate" if suffix == ".nii.gz" else "raw")


def test_random_headers_read_like_simpleitk(tmp_path):
    """qform/sform codes, rotations, reflections, noise and shear: wherever the header
    is read without SimpleITK, the geometry and voxels are SimpleITK's, bit for bit;
    the rest is read by SimpleITK."""
    rng = np.random.default_rng(7)
    native = {"qform": 0, "sform": 0, "oblique": 0}
    fallback = 0
    for i in range(160):
        spacing = tuple(float(np.float32(v)) for v in rng.uniform(0.3, 3.0, 3))
        if i % 4 == 0:
            spacing = (spacing[0],) * 3
        if i % 3:
            r = rotation(enumerate(rng.uniform(-60, 60, 3)))
        else:
            r = np.eye(3)[:, rng.permutation(3)] * rng.choice([-1.0, 1.0], 3)
        bcd, qfac = _quaternion(r)
        offset = rng.uniform(-300, 300, 3)
        srow = np.c_[r * np.asarray(spacing), offset]
        kind = i % 5
        if kind == 1:
            srow = srow + rng.normal(0, 1e-6, srow.shape)  # the qform's rounding, not the sform's
        elif kind == 2:
            srow[:, 3] += rng.normal(0, 5, 3)  # another space
        elif kind == 3:
            srow[0, 1] += 0.3  # sheared
        codes = [(1, 1), (1, 0), (0, 1), (0, 2), (2, 2), (1, 4), (2, 1)][i % 7]
        gz = i % 4 == 1
        path = write_nifti(
            tmp_path / f"r{i}.nii{'.gz' if gz else ''}",
            rng.integers(-1024, 3000, (5, 6, 7)).astype(np.int16),
            spacing=spacing,
            quatern=(*bcd, *offset),
            qfac=qfac,
            srow=srow,
            qform_code=codes[0],
            sform_code=codes[1],
            order="<>"[i % 2],
        )
        try:
            sitk.ReadImage(str(path))
        except RuntimeError:
            assert read_layout(path) is None  # SimpleITK's refusal is reported as before
            with pytest.raises(ImageReadError, match=f"r{i}"):
                open_image(path)
            continue
        layout = read_layout(path)
        strategy = _assert_like_simpleitk(path)
        if layout is None:
            fallback += 1
            assert strategy == "stream"
            continue
        assert strategy == ("inflate" if gz else "raw")
        native["sform" if codes[1] and (codes[0] == 0 or codes[1] == 1) else "qform"] += 1
        native["oblique"] += bool(i % 3)
    assert min(native.values()) >= 15, native
    assert fallback >= 10


def test_extensions_and_a_4d_header_of_one_volume(tmp_path):
    array = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8)
    quatern = (0.1, -0.2, 0.3, 1.0, 2.0, 3.0)
    ext = struct.pack("<ii", 32, 0) + b"x" * 24  # one NIfTI extension of 32 bytes
    for name, kwargs in {
        "ext.nii": {"extension": ext},
        "t1.nii": {"dim": [4, 8, 7, 6, 1]},
    }.items():
        path = write_nifti(tmp_path / name, array, quatern=quatern, qform_code=1, **kwargs)
        assert read_layout(path) is not None, name
        _assert_like_simpleitk(path)


def test_headers_it_leaves_to_simpleitk(tmp_path):
    array = np.zeros((4, 5, 6), dtype=np.int16)
    q = (0.0, 0.0, 0.0, 1.0, 2.0, 3.0)
    srow = np.c_[np.eye(3), (4.0, 5.0, 6.0)]
    cases = {
        "no_transform": {},
        "two_spaces": {"quatern": q, "srow": srow, "qform_code": 1, "sform_code": 2},
        "metres": {"quatern": q, "qform_code": 1, "xyzt_units": 1},
        "negative_pixdim": {"quatern": q, "qform_code": 1, "spacing": (-1.0, 1.0, 1.0)},
        "time_series": {"quatern": q, "qform_code": 1, "dim": [4, 6, 5, 4, 3]},
    }
    for name, kwargs in cases.items():
        if name == "time_series":
            array = np.zeros((3, 4, 5, 6), dtype=np.int16)
        path = write_nifti(tmp_path / f"{name}.nii", array, **kwargs)
        assert read_layout(path) is None, name
    assert _assert_like_simpleitk(tmp_path / "two_spaces.nii") == "stream"
    with pytest.raises(ImageReadError, match="time_series.nii.*4D"):
        open_image(tmp_path / "time_series.nii")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize(
    "quatern",
    [
        (float("nan"), 0.0, 1.0, 1.0, 2.0, 3.0),  # nifti_clib reads these as 0
        (0.0, float("inf"), 0.0, 1.0, 2.0, 3.0),
        (0.0, 0.0, 1.0, float("nan"), 2.0, 3.0),
        (0.0, 0.0, 1.0, 1.0, float("-inf"), 3.0),
    ],
)
def test_a_quaternion_or_offset_that_is_not_a_number_reads_as_zero(tmp_path, suffix, quatern):
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    path = write_nifti(tmp_path / f"q{suffix}", array, quatern=quatern, qform_code=1)
    _assert_like_simpleitk(path)
    assert np.isfinite(read_image(path).geometry.direction).all()


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_voxel_offset_that_is_not_a_number_is_left_to_simpleitk(tmp_path, suffix):
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    path = write_nifti(tmp_path / f"o{suffix}", array, quatern=(0,) * 6, qform_code=1)
    raw = bytearray(
        gzip.decompress(path.read_bytes()) if suffix == ".nii.gz" else path.read_bytes()
    )
    struct.pack_into("<f", raw, 108, float("nan"))
    path.write_bytes(gzip.compress(bytes(raw)) if suffix == ".nii.gz" else bytes(raw))
    assert read_layout(path) is None
    _assert_like_simpleitk(path)


def test_a_gzipped_file_is_sized_by_its_datatype_not_bitpix(tmp_path):
    array = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8)
    path = write_nifti(tmp_path / "b.nii.gz", array, quatern=(0,) * 6, qform_code=1)
    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<h", raw, 72, 64)  # bitpix says 8 bytes a voxel; int16 has 2
    path.write_bytes(gzip.compress(bytes(raw)))
    _assert_like_simpleitk(path)


def test_corrupt_gzip_data_is_an_image_read_error(tmp_path):
    array = np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8)
    path = write_nifti(tmp_path / "c.nii.gz", array, quatern=(0,) * 6, qform_code=1)
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF  # the first deflate block's header
    path.write_bytes(bytes(data))
    for reader in (open_image, read_image):
        with pytest.raises(ImageReadError, match=r"c\.nii\.gz.*corrupt"):
            reader(path)
    # A bad member after a complete one: the content it should add is missing.
    whole = write_nifti(tmp_path / "w.nii.gz", array, quatern=(0,) * 6, qform_code=1)
    raw = gzip.decompress(whole.read_bytes())
    second = bytearray(gzip.compress(raw[1000:]))
    second[10] ^= 0xFF
    whole.write_bytes(gzip.compress(raw[:1000]) + bytes(second))
    for reader in (open_image, read_image):
        corrupt = r"w\.nii\.gz: cannot read image \(file is corrupt: the gzip member at byte"
        with pytest.raises(ImageReadError, match=corrupt):
            reader(whole)


def test_truncated_file_names_the_file(tmp_path):
    path = write_nifti(
        tmp_path / "cut.nii", np.ones((8, 9, 10), np.int16), quatern=(0,) * 6, qform_code=1
    )
    path.write_bytes(path.read_bytes()[:-500])
    # Refused when opened, though the first slices are there: as for a .nii.gz, a
    # truncated file is an error for every lesion in it, not only for those it cuts.
    with pytest.raises(ImageReadError, match=r"cut.nii.*shorter than its header says \(1"):
        open_image(path)
    with pytest.raises(ImageReadError, match="cut.nii.*shorter"):
        read_image(path)


def test_simpleitk_written_oblique_file(tmp_path):
    hu = np.random.default_rng(3).integers(-1024, 2000, (30, 20, 25)).astype(np.int16)
    direction = rotation(enumerate((10.0, -5.0, 30.0)))
    path = write_image(tmp_path / "ct.nii", hu, (0.7, 0.7, 1.25), (-3.0, 4.0, 5.0), direction)
    assert _assert_like_simpleitk(path) == "raw"


def test_real_scans_read_like_simpleitk(shared_data, tmp_path):
    # The shared scans, inflated: an sform-only int32 CT, a tilted CT with both
    # transforms, and a segmentation with a header extension.
    for name in ("example_ct.nii.gz", "example_ct_tilted.nii.gz", "example_seg.nii.gz"):
        path = tmp_path / name.removesuffix(".gz")
        path.write_bytes(gzip.decompress((shared_data / "ct" / name).read_bytes()))
        assert read_layout(path) is not None, name
        assert _assert_like_simpleitk(path) == "raw"
        with open_image(shared_data / "ct" / name) as source:
            assert source.strategy == "inflate"
            np.testing.assert_array_equal(
                source.read().array, read_with_simpleitk(shared_data / "ct" / name).array
            )


def test_extracting_patches_from_nifti_does_not_import_simpleitk(tmp_path):
    hu = np.random.default_rng(0).integers(-1024, 2000, (40, 60, 60)).astype(np.int16)
    for suffix in ("nii", "nii.gz"):
        write_image(tmp_path / f"ct.{suffix}", hu, (0.8, 0.8, 1.5), (-20.0, -20.0, 0.0))
    table = pd.DataFrame(
        {"image_path": [str(tmp_path / "ct.nii"), str(tmp_path / "ct.nii.gz")],
         "coordX": [3.0, -5.0], "coordY": [4.0, 10.0], "coordZ": [30.0, 20.0]}
    )  # fmt: skip
    table.to_csv(tmp_path / "table.csv", index=False)
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np, pandas as pd
        from skfmcib import FMCIBTransformer, load_patches
        from skfmcib.io import read_image
        patches = load_patches(pd.read_csv({str(tmp_path / "table.csv")!r}))
        np.save({str(tmp_path / "patches.npy")!r}, patches)
        for suffix in ("nii", "nii.gz"):
            read_image({str(tmp_path)!r} + "/ct." + suffix)
        print("SimpleITK" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    # The patches cut from the volumes SimpleITK reads.
    want = [
        extract_patch(
            read_with_simpleitk(row.image_path), np.array([row.coordX, row.coordY, row.coordZ])
        )
        for row in table.itertuples()
    ]
    np.testing.assert_array_equal(np.load(tmp_path / "patches.npy"), np.stack(want)[:, None])


def test_a_compressed_file_beside_its_uncompressed_twin_is_read_itself(tmp_path):
    # nifti_clib, under SimpleITK, looks for ct.nii before ct.nii.gz whatever name it is
    # given; skfmcib reads the file named, inflating it itself or through SimpleITK.
    write_image(tmp_path / "ct.nii", np.zeros((6, 7, 8), np.int16), (1.0, 1.0, 1.0))
    gz = write_image(
        tmp_path / "ct.nii.gz",
        np.full((6, 7, 8), -500, np.int16),
        (0.5, 0.5, 2.0),
        (3.0, 4.0, 5.0),
    )
    volume = read_image(gz)
    assert volume.array.min() == volume.array.max() == -500
    assert tuple(volume.geometry.spacing) == (0.5, 0.5, 2.0)
    with open_image(gz) as source:
        assert source.strategy == "inflate"
        assert tuple(source.geometry.origin) == (3.0, 4.0, 5.0)
        assert (source.read_region((1, 1, 1), (5, 4, 3)) == -500).all()
    with open_image(tmp_path / "ct.nii") as source:
        assert source.read().array.max() == 0
    # A header SimpleITK decides (two different transforms): streamed through a link.
    srow = np.c_[np.eye(3), (4.0, 5.0, 6.0)]
    q = (0.0, 0.0, 0.0, 1.0, 2.0, 3.0)
    two = {"quatern": q, "srow": srow, "qform_code": 1, "sform_code": 2}
    write_nifti(tmp_path / "two.nii", np.zeros((6, 7, 8), np.int16), **two)
    gz = write_nifti(tmp_path / "two.nii.gz", np.full((6, 7, 8), 7, np.int16), **two)
    with open_image(gz) as source:
        assert source.strategy == "stream"
        assert (source.read_region((1, 1, 1), (5, 4, 3)) == 7).all()


def _gz_scan(tmp_path, name="ct.nii.gz", shape=(60, 50, 40)):
    hu = np.random.default_rng(5).integers(-1024, 2000, shape).astype(np.int16)
    path = write_nifti(
        tmp_path / name, hu, spacing=(0.8, 0.8, 1.5), quatern=(0, 0, 0, -20.0, -20.0, 0.0),
        qform_code=1,
    )  # fmt: skip
    return path, hu


def test_gzipped_boxes_come_from_one_pass_in_the_order_of_their_last_slice(tmp_path):
    path, hu = _gz_scan(tmp_path)
    boxes = [((0, 0, 30), (10, 12, 55)), ((5, 6, 2), (30, 40, 9)), ((1, 2, 20), (3, 4, 21))]
    with open_image(path) as source:
        assert source.strategy == "inflate"
        got = list(source.iter_regions(boxes))
        assert source.files_read == [str(path)]  # one pass through the file
    assert [k for k, _ in got] == [1, 2, 0]
    for k, voxels in got:
        (x0, y0, z0), (x1, y1, z1) = boxes[k]
        np.testing.assert_array_equal(voxels, hu[z0:z1, y0:y1, x0:x1])


def test_gzip_members_written_one_after_another(tmp_path):
    path, hu = _gz_scan(tmp_path)
    content = gzip.decompress(path.read_bytes())
    cut = len(content) // 3
    path.write_bytes(gzip.compress(content[:cut]) + gzip.compress(content[cut:]))
    assert _assert_like_simpleitk(path) == "inflate"


@pytest.mark.parametrize("fill, found", [(b"\xff", "Invalid deflate block"), (b"\0", "check")])
def test_corrupt_compressed_data_names_the_file_and_spares_the_lesions_before_it(
    tmp_path, monkeypatch, fill, found
):
    from skfmcib import _inflate

    path, hu = _gz_scan(tmp_path, "bad.nii.gz")
    monkeypatch.setattr(_inflate, "BLOCK_BYTES", 8 * 50 * 40 * 2)  # 8 slices a call
    data = bytearray(path.read_bytes())
    at = len(data) * 3 // 4
    data[at : at + 64] = fill * 64  # the end (and the size it records) intact
    path.write_bytes(bytes(data))
    with open_image(path) as source:
        np.testing.assert_array_equal(source.read_region((0, 0, 0), (40, 50, 5)), hu[:5])
        # Found on the way (a broken block), or by the check sums at the end.
        with pytest.raises(ImageReadError, match=f"bad.nii.gz.*corrupt.*{found}"):
            source.read_region((0, 0, 0), (40, 50, 60))
    table = pd.DataFrame(
        {"image_path": [str(path)] * 2, "coordX": [0.0, 0.0], "coordY": [0.0, 0.0],
         "coordZ": [10.0, 80.0]}
    )  # fmt: skip
    got = dict(iter_patches(table))
    assert isinstance(got[0], np.ndarray)
    assert isinstance(got[1], RowError) and "corrupt" in str(got[1])


def test_gzipped_nifti_without_isal_is_streamed_by_simpleitk(tmp_path, monkeypatch):
    # Where isal is not installed (a platform without its wheels), SimpleITK reads
    # .nii.gz files.
    from skfmcib import _inflate

    path, hu = _gz_scan(tmp_path)
    monkeypatch.setattr(_inflate, "igzip_lib", None)
    assert read_layout(path) is None
    assert _assert_like_simpleitk(path) == "stream"

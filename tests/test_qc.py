"""skfmcib qc: pictures, flags for misplaced seeds, index page, command line."""

from __future__ import annotations

import doctest
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import write_image

from skfmcib.cli import main

pytest.importorskip("matplotlib")

from skfmcib import qc  # noqa: E402


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A body (40 HU ellipse, air-filled 'lung' on one side) in air, off the origin."""
    folder = tmp_path_factory.mktemp("phantom")
    z, y, x = np.meshgrid(np.arange(40), np.arange(90), np.arange(100), indexing="ij")
    hu = np.full(x.shape, -1000, dtype=np.int16)
    body = ((x - 50) / 42.0) ** 2 + ((y - 45) / 35.0) ** 2 <= 1
    hu[body] = 40
    lung = ((x - 32) / 12.0) ** 2 + ((y - 45) / 15.0) ** 2 <= 1
    hu[lung] = -850
    hu[((x - 32) ** 2 + (y - 45) ** 2 + (z - 20) ** 2) <= 16] = 30  # a nodule in the lung
    # 2 mm pixels: x spans [0, 198] mm, y [10, 188] mm, z [0, 117] mm (3 mm slices).
    path = write_image(
        folder / "ct ü&<1>.nii.gz", hu, spacing=(2.0, 2.0, 3.0), origin=(0.0, 10.0, 0.0)
    )
    table = pd.DataFrame(
        {
            "image_path": [path.name] * 4 + ["missing.nii.gz"],
            "coordX": [100.0, 64.0, -100.0, 100.0, 1.0],
            "coordY": [100.0, 100.0, -100.0, 15.0, 1.0],
            "coordZ": [60.0, 60.0, 60.0, 60.0, 1.0],
            "what": ["tissue", "nodule", "RAS", "air", "missing"],
        }
    )
    table.to_csv(folder / "seeds.csv", index=False)
    return folder


def test_pictures_flags_and_index(phantom, tmp_path):
    out = tmp_path / "qc"
    summary = qc.quality_control(phantom / "seeds.csv", out)
    t = summary.table
    assert t["png"].tolist() == [f"row-{i:05d}.png" for i in range(4)] + [""]
    for name in t["png"][:4]:
        from matplotlib.image import imread

        picture = imread(out / name)
        assert picture.ndim == 3 and picture.shape[1] > 600
    assert t["flag"][0] == "" and t["flag"][1] == ""
    assert t["window"].tolist()[:2] == ["soft", "lung"]  # the nodule sits in aerated lung
    assert t["flag"][2].startswith("seed lies OUTSIDE the scan; (-x, -y, z) lands in tissue")
    assert "air OUTSIDE the body" in t["flag"][3]
    assert "no such file" in t["error"][4]
    assert (summary.n_flagged, summary.n_failed) == (2, 1)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count('class="card') == 5 and page.count("<img ") == 4
    assert "ct ü&amp;&lt;1&gt;.nii.gz" in page and "<1>" not in page  # escaped
    assert "2 flagged" in page and "1 not drawn" in page
    assert pd.read_csv(out / "qc.csv")["flag"].notna().sum() == 2


def test_a_picture_that_cannot_be_written_leaves_no_temporary_file(phantom, tmp_path):
    out = tmp_path / "qc"
    (out / "row-00000.png").mkdir(parents=True)  # the rename onto it fails
    with pytest.raises(OSError):
        qc.quality_control(phantom / "seeds.csv", out)
    assert sorted(p.name for p in out.iterdir()) == ["row-00000.png"]


def test_box_is_the_patch_grid_of_the_seed(monkeypatch, tmp_path):
    calls = []
    real = qc.patch_grid

    def spy(geometry, seed):
        calls.append(np.asarray(seed).tolist())
        return real(geometry, seed)

    monkeypatch.setattr(qc, "patch_grid", spy)
    from skfmcib.io import Geometry, Volume

    geom = Geometry((60, 60, 30), np.zeros(3), np.array([1.0, 1.0, 2.0]), np.eye(3))
    vol = Volume(np.full((30, 60, 60), -1000, dtype=np.int16), geom)
    info = qc.render_lesion(vol, [30.0, 31.0, 32.0], tmp_path / "a.png", window=(40, 400))
    assert calls and all(c == [30.0, 31.0, 32.0] for c in calls) and info["window"] == "custom"
    assert (tmp_path / "a.png").stat().st_size > 1000


@pytest.mark.parametrize("z", [30.0, 12.0, 3.0])
def test_auto_window_ignores_the_fill_beyond_the_scan(tmp_path, z):
    from skfmcib.io import Geometry, Volume

    hu = np.full((60, 100, 100), 40, dtype=np.int16)  # soft tissue, the scan 60 mm deep
    hu[:, :5, :] = -1000
    vol = Volume(hu, Geometry((100, 100, 60), np.zeros(3), np.ones(3), np.eye(3)))
    assert qc.render_lesion(vol, [50.0, 50.0, z], tmp_path / "a.png")["window"] == "soft"
    hu[:, :, :50] = -900  # half of it aerated lung: the lung window
    assert qc.render_lesion(vol, [50.0, 50.0, z], tmp_path / "b.png")["window"] == "lung"


def test_an_empty_image_path_is_the_rows_error_and_nothing_is_read(phantom, tmp_path, monkeypatch):
    read = []
    real = qc.read_image
    monkeypatch.setattr(qc, "read_image", lambda *a: read.append(a) or real(*a))
    table = pd.read_csv(phantom / "seeds.csv").iloc[:2]
    table["image_path"] = [str(phantom / table["image_path"][0]), ""]
    summary = qc.quality_control(table, tmp_path / "qc")
    assert summary.table["error"].tolist() == ["", "image_path is empty"]
    assert [a[0] for a in read] == [table["image_path"][0]]


def test_cli_exit_status(phantom, tmp_path, capsys):
    assert main(["qc", str(phantom / "seeds.csv"), "-o", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert "1 not drawn" in err and "missing.nii.gz" in err
    ok = pd.read_csv(phantom / "seeds.csv").iloc[:2]
    ok["image_path"] = [str(phantom / p) for p in ok["image_path"]]
    ok.to_csv(tmp_path / "ok.csv", index=False)
    assert (
        main(["qc", str(tmp_path / "ok.csv"), "-o", str(tmp_path / "b"), "--window=-600/1500"])
        == 0
    )
    with pytest.raises(SystemExit):
        main(["qc", str(tmp_path / "ok.csv"), "-o", str(tmp_path / "c"), "--window", "wide"])
    assert main(["qc", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "d")]) == 2


def test_missing_matplotlib_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'skfmcib\[plot\]'"):
        qc.quality_control(pd.DataFrame(), tmp_path)


def test_examples_run():
    assert doctest.testmod(qc).failed == 0

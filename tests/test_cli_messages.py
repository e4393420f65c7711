"""The command line words the library's messages for its users: flags, not parameters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import write_image

from skfmcib.cli import main
from skfmcib.commands import as_flags, counted
from skfmcib.encoder import EncoderConfig
from skfmcib.weights import load_encoder, save_checkpoint


def test_as_flags_and_counted():
    reason = "lies outside the scan; if the coordinates are RAS, use coordinate_system='RAS'"
    assert as_flags(reason).endswith("use --coordinate-system RAS")
    assert as_flags("no such file or directory") == "no such file or directory"
    assert [counted(n, "row") for n in (0, 1, 2)] == ["0 rows", "1 row", "2 rows"]


def test_qc_prints_the_flag_for_ras_coordinates(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    z, y, x = np.meshgrid(np.arange(20), np.arange(60), np.arange(60), indexing="ij")
    hu = np.full(x.shape, -1000, dtype=np.int16)
    hu[((x - 30) / 25.0) ** 2 + ((y - 30) / 25.0) ** 2 <= 1] = 40  # a body in air
    write_image(tmp_path / "ct.nii.gz", hu, spacing=(2.0, 2.0, 3.0))
    # A seed in the body, given in RAS: as LPS it lies outside the scan.
    pd.DataFrame(
        {"image_path": ["ct.nii.gz"], "coordX": [-60.0], "coordY": [-60.0], "coordZ": [30.0]}
    ).to_csv(tmp_path / "seeds.csv", index=False)
    assert main(["qc", str(tmp_path / "seeds.csv"), "-o", str(tmp_path / "qc")]) == 0
    err = capsys.readouterr().err
    assert "(1 lesion, 1 flagged, 0 not drawn)" in err
    assert "use --coordinate-system RAS" in err and "coordinate_system=" not in err


def test_pretrain_names_restart_for_an_existing_checkpoint(tmp_path, capsys):
    net, _ = load_encoder(None, config=EncoderConfig("resnet10", 0.25), random_state=0)
    existing = save_checkpoint(net, tmp_path / "encoder.pt")  # not a pretraining checkpoint
    write_image(tmp_path / "ct.nii.gz", np.zeros((20, 40, 40), dtype=np.int16))
    pd.DataFrame(
        {"image_path": ["ct.nii.gz"], "coordX": [20.0], "coordY": [20.0], "coordZ": [10.0]}
    ).to_csv(tmp_path / "seeds.csv", index=False)
    argv = ["pretrain", str(tmp_path / "seeds.csv"), "-o", str(existing), "--arch", "resnet10"]
    assert main([*argv, "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert "pass --restart to overwrite it" in err and "resume=" not in err

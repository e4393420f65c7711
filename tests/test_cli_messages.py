"""The command line words the library's messages for its users: flags, not parameters."""

from __future__ import annotations

import os
import sys

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


# --- outputs the commands cannot write: said in one line, before any work -----------------


@pytest.fixture
def one_lesion(tmp_path):
    hu = np.full((20, 40, 40), -1000, dtype=np.int16)
    hu[5:15, 10:30, 10:30] = 40  # tissue in air
    write_image(tmp_path / "ct.nii.gz", hu)
    pd.DataFrame(
        {"image_path": ["ct.nii.gz"], "coordX": [20.0], "coordY": [20.0], "coordZ": [10.0]}
    ).to_csv(tmp_path / "seeds.csv", index=False)
    return tmp_path / "seeds.csv"


TINY_FLAGS = ["--weights", "random", "--arch", "resnet10", "--widen-factor", "0.125"]


def _one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and all(w in err for w in words), err
    return err


def test_extract_outputs_it_cannot_write(one_lesion, tmp_path, capsys):
    (tmp_path / "folder.csv").mkdir()
    argv = ["extract", str(one_lesion), *TINY_FLAGS, "--device", "cpu", "-q", "-o"]
    assert main([*argv, str(tmp_path / "folder.csv"), "--overwrite"]) == 2
    _one_line_error(capsys, "is a folder")
    (tmp_path / "file").write_text("")
    assert main([*argv, str(tmp_path / "file" / "f.csv")]) == 2
    _one_line_error(capsys, "cannot create the folder")
    # A usage error creates nothing.
    assert main(["extract", str(tmp_path / "nosuch.csv"), "-o", str(tmp_path / "a/b/f.csv")]) == 2
    _one_line_error(capsys, "no such lesion table")
    assert not (tmp_path / "a").exists()
    assert main([*argv, str(tmp_path / "f.csv"), "--widen-factor", "0"]) == 2
    _one_line_error(capsys, "widen_factor must be a number of at least 1/64")


def test_a_tilde_in_paths_is_the_home_folder(one_lesion, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    argv = ["extract", "~/seeds.csv", "-o", "~/out/f.csv", *TINY_FLAGS, "--device", "cpu", "-q"]
    assert main(argv) == 0
    assert (tmp_path / "out" / "f.csv").is_file()


def test_qc_and_pretrain_outputs_it_cannot_write(one_lesion, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    (tmp_path / "file").write_text("")
    assert main(["qc", str(one_lesion), "-o", str(tmp_path / "file"), "-q"]) == 2
    _one_line_error(capsys, "is a file")
    argv = ["pretrain", str(one_lesion), "--arch", "resnet10", "--device", "cpu", "-q", "-o"]
    assert main([*argv, str(tmp_path)]) == 2
    _one_line_error(capsys, "is a folder")
    assert main([*argv, str(tmp_path / "file" / "s.pt")]) == 2
    _one_line_error(capsys, "cannot create the folder")


def test_demo_keeps_an_earlier_demos_results(tmp_path, capsys):
    (tmp_path / "results.csv").write_text("earlier")
    argv = ["demo", "--weights", "random", "--quick", "--out", str(tmp_path)]
    assert main(argv) == 2
    _one_line_error(capsys, "holds an earlier demo's results; pass --overwrite")
    assert (tmp_path / "results.csv").read_text() == "earlier"
    out = tmp_path / "new"
    assert main(["demo", "--weights", "random", "--arch", "bogus", "--out", str(out)]) == 2
    _one_line_error(capsys, "architecture 'bogus'")


def test_an_interrupt_while_the_commands_load_is_one_line(monkeypatch, capsys):
    import skfmcib.cli as cli

    def interrupted():
        raise KeyboardInterrupt  # Ctrl-C while the commands (and torch) are imported

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["qc", "seeds.csv", "-o", "qc"]) == 130
    assert capsys.readouterr().err.strip() == "skfmcib: interrupted"


@pytest.mark.parametrize("event, status", [(KeyboardInterrupt, 130), (BrokenPipeError, 141)])
def test_an_interrupt_or_a_closed_pipe_ends_a_command_without_a_traceback(
    monkeypatch, capsys, event, status
):
    import skfmcib.cli as cli

    def stopped(args):
        raise event  # Ctrl-C, or the reader of stdout gone, in the middle of a command

    real = cli.build_parser

    def build():
        parser = real()
        for action in parser._subparsers._group_actions:
            action.choices["qc"].set_defaults(func=stopped)
        return parser

    monkeypatch.setattr(cli, "build_parser", build)
    if event is BrokenPipeError:  # main points stdout at /dev/null: give it a file to do so
        stdout = open(os.devnull, "w")  # noqa: SIM115
        monkeypatch.setattr("sys.stdout", stdout)
        request_close = stdout.close
    else:
        request_close = None
    assert cli.main(["qc", "seeds.csv", "-o", "qc"]) == status
    err = capsys.readouterr().err.strip()
    assert err == ("skfmcib qc: interrupted" if event is KeyboardInterrupt else "")
    if request_close is not None:
        request_close()


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--epochs-this-run", "0"], "--epochs-this-run must"),
        (["--num-workers", "-1"], "--num-workers must"),
        (["--lr", "-1"], "--lr must"),
        (["--batch-size", "0"], "--batch-size must"),
        (["--warmup-epochs", "-1"], "--warmup-epochs must be 0 or a positive number"),
        (["--temperature", "nan"], "--temperature must be a positive number"),
        (["--seed", "-1"], "--seed must be 0 or a positive integer"),
        (["--volume-cache", "0"], "--volume-cache must"),
    ],
)
def test_pretrain_names_its_flags_in_refused_values(one_lesion, tmp_path, capsys, flags, named):
    argv = ["pretrain", str(one_lesion), "-o", str(tmp_path / "s.pt"), "--arch", "resnet10"]
    assert main([*argv, "--device", "cpu", "-q", *flags]) == 2
    err = _one_line_error(capsys, named)
    assert "_" not in err.split("must")[0], err  # no Python spelling before "must"


def test_weights_messages_name_the_flags(one_lesion, tmp_path, capsys, monkeypatch):
    from skfmcib import weights

    monkeypatch.setattr(weights, "_NOTICES_SHOWN", set())  # shown once a process: again here
    # The official weights cannot be cached under a file: the way out is worded as flags.
    (tmp_path / "file").write_text("")
    cache = str(tmp_path / "file" / "sub")
    argv = ["extract", str(one_lesion), "-o", str(tmp_path / "f.csv"), "-q", "--cache-dir", cache]
    with pytest.warns(UserWarning, match="licensed"):  # the licence notice, before any download
        assert main(argv) == 2
    err = _one_line_error(capsys, "pass --cache-dir", "pass --weights <path to the file>")
    assert "weights=" not in err and "cache_dir" not in err


def test_a_diverged_loss_is_worded_with_flags():
    from skfmcib import _training
    from skfmcib.commands.pretrain import message

    with pytest.raises(ValueError) as info:
        _training.check_finite_loss(float("nan"), 1, 2, 0.3, "bf16")
    assert "--precision bf16 may be the cause: try --precision fp32; else lower --lr" in message(
        str(info.value)
    )


def test_missing_optional_packages_are_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"12345678{}")
    assert main(["weights", "info", str(weights)]) == 1
    _one_line_error(capsys, "pip install 'skfmcib[safetensors]'")
    table = tmp_path / "seeds.parquet"
    table.write_bytes(b"PAR1")
    assert main(["pretrain", str(table), "-o", str(tmp_path / "p.pt")]) == 2
    _one_line_error(capsys, "pip install 'skfmcib[parquet]' (or give a .csv table)")

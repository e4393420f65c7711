"""skfmcib extract: outputs, provenance, errors file, exit codes, resume (with a real kill)."""

from __future__ import annotations

import doctest
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, write_dicom_series, write_image

from skfmcib import FMCIBTransformer
from skfmcib.cli import main
from skfmcib.encoder import EncoderConfig
from skfmcib.extract import (
    ExtractError,
    ProvenanceMismatch,
    errors_path,
    extract,
    parts_dir,
    provenance_path,
    read_provenance,
    read_table,
)
from skfmcib.weights import file_digest, load_encoder, save_checkpoint

TINY = EncoderConfig(arch="resnet10", widen_factor=0.25)


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    net, _ = load_encoder(None, config=TINY, random_state=seed)
    return save_checkpoint(net, path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.torch")


def make_images(folder: Path, n_images: int, rows_per_image: int, seed: int = 0) -> pd.DataFrame:
    """CTs of noise and a table of interior seeds; paths relative to ``folder``."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_images):
        hu = rng.normal(-300, 300, size=(30, 64, 64)).astype(np.int16)
        write_image(folder / f"ct{k:02d}.nii.gz", hu, spacing=(1.0, 1.0, 2.0))
        for j in range(rows_per_image):
            seed_pt = rng.uniform([20, 20, 20], [44, 44, 40])
            rows.append((f"ct{k:02d}.nii.gz", *seed_pt, f"patient{k}", j))
    return pd.DataFrame(rows, columns=["image_path", "coordX", "coordY", "coordZ", "pid", "j"])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """6 images x 2 lesions, written as seeds.csv beside the images."""
    folder = tmp_path_factory.mktemp("study")
    table = make_images(folder, 6, 2)
    table.to_csv(folder / "seeds.csv", index=False)
    return folder


def tiny(checkpoint, **kwargs) -> FMCIBTransformer:
    return FMCIBTransformer(weights=checkpoint, device="cpu", **kwargs)


def absolute(table: pd.DataFrame, folder: Path) -> pd.DataFrame:
    table = table.copy()
    table["image_path"] = [str(folder / p) for p in table["image_path"]]
    return table


def as_written(path: Path, *columns: str) -> pd.DataFrame:
    """A CSV file read as text: every cell as written."""
    return pd.read_csv(path, dtype=str, keep_default_na=False, usecols=list(columns) or None)


def feature_block(frame: pd.DataFrame) -> np.ndarray:
    cols = [c for c in frame.columns if str(c).startswith("fmcib_")]
    return frame[cols].to_numpy(dtype=np.float32)


# --- outputs -------------------------------------------------------------------------------


def test_parquet_output_has_input_columns_features_and_provenance(study, checkpoint, tmp_path):
    pytest.importorskip("pyarrow")
    out = tmp_path / "features.parquet"
    summary = extract(study / "seeds.csv", out, transformer=tiny(checkpoint), chunk_size=3)
    # The columns the package does not read are carried as the CSV has them: as text.
    table = pd.read_csv(study / "seeds.csv", dtype={"pid": str, "j": str})
    frame = pd.read_parquet(out)
    assert summary.exit_status == 0 and summary.n_written == len(table) == 12
    assert list(frame.columns[:6]) == list(table.columns)
    pd.testing.assert_frame_equal(frame[table.columns], table)
    assert [c for c in frame.columns if c.startswith("fmcib_")] == [
        f"fmcib_{i}" for i in range(128)
    ]
    # Same numbers as the transformer on the whole table at once.
    direct = tiny(checkpoint).fit().transform(absolute(table, study))
    np.testing.assert_allclose(feature_block(frame), direct, rtol=1e-5, atol=1e-6)
    prov = read_provenance(out)
    assert prov["weights_digest"] == file_digest(checkpoint)
    assert prov["encoder_config"]["arch"] == "resnet10"
    assert prov["preprocessing"]["patch_size_voxels"] == 50
    assert prov["skfmcib_version"] and prov["n_rows"] == 12 and prov["chunk_size"] == 3
    # Parts are gone, no temporary file is left, the errors file has its header only.
    assert not parts_dir(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "features.parquet",
        "features.parquet.errors.csv",
    ]
    assert list(pd.read_csv(errors_path(out)).columns) == ["row", "image_path", "reason"]
    assert len(pd.read_csv(errors_path(out))) == 0


def test_csv_output_round_trips_float32_exactly_and_has_a_sidecar(study, checkpoint, tmp_path):
    out = tmp_path / "features.csv"
    extract(study / "seeds.csv", out, transformer=tiny(checkpoint), chunk_size=4)
    frame = pd.read_csv(out)
    direct = tiny(checkpoint).fit().transform(absolute(pd.read_csv(study / "seeds.csv"), study))
    np.testing.assert_allclose(feature_block(frame), direct, rtol=1e-5, atol=1e-6)
    prov = json.loads(provenance_path(out).read_text())
    assert prov == read_provenance(out) and prov["weights_digest"] == file_digest(checkpoint)
    if pytest.importorskip("pyarrow"):
        pq = tmp_path / "features.parquet"
        extract(study / "seeds.csv", pq, transformer=tiny(checkpoint), chunk_size=4)
        np.testing.assert_array_equal(feature_block(frame), feature_block(pd.read_parquet(pq)))


def test_chunking_does_not_change_the_numbers(study, checkpoint, tmp_path):
    a = extract(
        study / "seeds.csv", tmp_path / "a.csv", transformer=tiny(checkpoint), chunk_size=1
    )
    b = extract(
        study / "seeds.csv", tmp_path / "b.csv", transformer=tiny(checkpoint), chunk_size=100
    )
    assert (a.n_chunks, b.n_chunks) == (6, 1)  # whole images per chunk
    np.testing.assert_allclose(
        feature_block(pd.read_csv(a.out)),
        feature_block(pd.read_csv(b.out)),
        rtol=1e-5,
        atol=1e-6,
    )


# --- failing rows --------------------------------------------------------------------------


@pytest.fixture
def bad_study(study, tmp_path):
    table = pd.read_csv(study / "seeds.csv").iloc[:4]
    bad = pd.DataFrame(
        {
            "image_path": ["missing.nii.gz", "ct01.nii.gz"],
            "coordX": [1.0, 900.0],
            "coordY": [2.0, 30.0],
            "coordZ": [3.0, 30.0],
            "pid": ["x", "y"],
            "j": [0, 1],
        }
    )
    table = pd.concat([table.iloc[:2], bad, table.iloc[2:]], ignore_index=True)
    table["image_path"] = [str(study / p) for p in table["image_path"]]
    path = tmp_path / "bad.csv"
    table.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("on_error", ["skip", "nan"])
def test_failed_rows_go_to_the_errors_file(bad_study, checkpoint, tmp_path, on_error):
    out = tmp_path / "f.csv"
    summary = extract(bad_study, out, transformer=tiny(checkpoint), on_error=on_error)
    assert (summary.n_failed, summary.exit_status) == (2, 1)
    errors = pd.read_csv(errors_path(out))
    assert errors["row"].tolist() == [2, 3]
    assert errors["image_path"].str.endswith(("missing.nii.gz", "ct01.nii.gz")).all()
    assert "no such file" in errors["reason"][0]
    assert "outside the scan" in errors["reason"][1]
    frame = pd.read_csv(out)
    if on_error == "skip":
        assert frame["j"].tolist() == [0, 1, 0, 1] and np.isfinite(feature_block(frame)).all()
    else:
        assert len(frame) == 6
        finite = np.isfinite(feature_block(frame)).all(axis=1)
        assert finite.tolist() == [True, True, False, False, True, True]


def test_on_error_raise_stops_keeps_parts_and_resumes(bad_study, checkpoint, tmp_path):
    out = tmp_path / "f.csv"
    with pytest.raises(ExtractError, match=r"row 2 \(.*missing.nii.gz\)") as info:
        extract(bad_study, out, transformer=tiny(checkpoint), on_error="raise", chunk_size=1)
    assert info.value.exit_status == 1
    assert not out.exists()
    manifest = json.loads((parts_dir(out) / "manifest.json").read_text())
    assert len(manifest["done"]) == 1  # the first image's chunk is kept
    assert pd.read_csv(errors_path(out))["row"].tolist() == [2]
    summary = extract(bad_study, out, transformer=tiny(checkpoint), on_error="skip", resume=True)
    assert summary.n_chunks_resumed == 1 and summary.n_written == 4


def test_duplicate_rows_are_computed_once_and_returned_for_each(study, checkpoint, tmp_path):
    table = absolute(pd.read_csv(study / "seeds.csv"), study).iloc[:3]
    table = pd.concat([table, table.iloc[[0, 0]]], ignore_index=True)
    summary = extract(table, tmp_path / "d.csv", transformer=tiny(checkpoint))
    feats = feature_block(pd.read_csv(summary.out))
    assert summary.n_duplicates == 2 and len(feats) == 5
    np.testing.assert_array_equal(feats[3], feats[0])
    np.testing.assert_array_equal(feats[4], feats[0])


# --- resume and refusals ---------------------------------------------------------------------


def test_existing_output_or_parts_need_resume_or_overwrite(study, checkpoint, tmp_path):
    out = tmp_path / "f.csv"
    extract(study / "seeds.csv", out, transformer=tiny(checkpoint))
    with pytest.raises(ExtractError, match="exists; pass overwrite"):
        extract(study / "seeds.csv", out, transformer=tiny(checkpoint))
    # Resuming a finished run of the same job does nothing.
    again = extract(study / "seeds.csv", out, transformer=tiny(checkpoint), resume=True)
    assert again.n_written == 12 and again.exit_status == 0 and again.already_complete
    extract(study / "seeds.csv", out, transformer=tiny(checkpoint), overwrite=True)
    with pytest.raises(ExtractError, match="would replace the lesion table"):
        extract(
            study / "seeds.csv", study / "seeds.csv", transformer=tiny(checkpoint), overwrite=True
        )
    with pytest.raises(ExtractError, match="exclude each other"):
        extract(
            study / "seeds.csv", out, transformer=tiny(checkpoint), overwrite=True, resume=True
        )


def _unfinished_run(study, checkpoint, out) -> None:
    """Leave an unfinished run: stop after the first chunk by failing on row 2."""
    table = absolute(pd.read_csv(study / "seeds.csv"), study)
    table.loc[2, "coordX"] = 1e4
    with pytest.raises(ExtractError):
        extract(table, out, transformer=tiny(checkpoint), on_error="raise", chunk_size=2)
    return table


def test_resume_refuses_other_weights_parameters_or_table(study, checkpoint, tmp_path):
    out = tmp_path / "f.csv"
    table = _unfinished_run(study, checkpoint, out)
    other = make_checkpoint(tmp_path / "other.torch", seed=1)
    with pytest.raises(ProvenanceMismatch, match="weights_digest"):
        extract(table, out, transformer=tiny(other), resume=True)
    with pytest.raises(ProvenanceMismatch, match="precision"):
        extract(table, out, transformer=tiny(checkpoint, precision="bf16"), resume=True)
    with pytest.raises(ProvenanceMismatch, match="table_sha256"):
        extract(table.iloc[::-1], out, transformer=tiny(checkpoint), resume=True)
    with pytest.raises(ExtractError, match="unfinished run"):
        extract(table, out, transformer=tiny(checkpoint))
    # The parts survived every refusal.
    assert len(json.loads((parts_dir(out) / "manifest.json").read_text())["done"]) == 1
    finished = extract(table, out, transformer=tiny(checkpoint), resume=True)
    assert finished.n_chunks_resumed == 1 and finished.n_failed == 1


def test_a_corrupt_part_is_a_clear_error(study, checkpoint, tmp_path):
    out = tmp_path / "f.csv"
    table = _unfinished_run(study, checkpoint, out)
    (parts_dir(out) / "chunk-00000.npz").write_bytes(b"garbage")
    with pytest.raises(ExtractError, match="chunk-00000.npz: part file is unreadable"):
        extract(table, out, transformer=tiny(checkpoint), resume=True, on_error="skip")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "skfmcib.cli", *args]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_output(tmp_path, checkpoint):
    """SIGKILL a real ``skfmcib extract`` process after its first chunks, then --resume."""
    pytest.importorskip("pyarrow")
    table = make_images(tmp_path, 12, 2, seed=5)
    table.to_csv(tmp_path / "seeds.csv", index=False)
    common = ["--weights", str(checkpoint), "--device", "cpu", "--chunk-size", "2", "-q"]
    full = tmp_path / "full.parquet"
    done = subprocess.run(
        _cli("extract", str(tmp_path / "seeds.csv"), "-o", str(full), *common),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr

    out = tmp_path / "killed.parquet"
    manifest = parts_dir(out) / "manifest.json"
    proc = subprocess.Popen(
        _cli("extract", str(tmp_path / "seeds.csv"), "-o", str(out), *common),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        n_done = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest.is_file():
                n_done = len(json.loads(manifest.read_text())["done"])
                if n_done >= 2:
                    break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    kept = len(json.loads(manifest.read_text())["done"])
    assert 2 <= kept < 12

    resumed = subprocess.run(
        _cli("extract", str(tmp_path / "seeds.csv"), "-o", str(out), *common[:-1], "--resume"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"{kept} chunks from the earlier run" in resumed.stderr
    a, b = pd.read_parquet(full), pd.read_parquet(out)
    # Every row once, in the table's order, with the same numbers as the uninterrupted run.
    assert len(b) == len(table) == 24 and not b.duplicated(["image_path", "j"]).any()
    pd.testing.assert_frame_equal(b[table.columns], table.astype({"pid": str, "j": str}))
    np.testing.assert_array_equal(feature_block(a), feature_block(b))
    assert not parts_dir(out).exists()
    # The killed run may leave the empty lock file; the resumed run took the lock and removed it.
    assert not (tmp_path / ".killed.parquet.lock").exists()


# --- command line ------------------------------------------------------------------------------


def test_cli_exit_status_and_random_weights(study, bad_study, tmp_path, capsys):
    random = [
        "--weights",
        "random",
        "--arch",
        "resnet10",
        "--widen-factor",
        "0.25",
        "--device",
        "cpu",
    ]
    ok = tmp_path / "ok.csv"
    assert main(["extract", str(study / "seeds.csv"), "-o", str(ok), *random]) == 0
    prov = read_provenance(ok)
    assert prov["weights_digest"].startswith("random:") and prov["n_features"] == 128
    assert prov["batch_size"] == 8
    # Batches sized to GPU memory ("auto": 8 on the CPU) give the same features.
    auto = tmp_path / "auto.csv"
    args = ["extract", str(study / "seeds.csv"), "-o", str(auto), "--batch-size", "auto"]
    assert main([*args, *random]) == 0
    assert read_provenance(auto)["batch_size"] == "auto"
    pd.testing.assert_frame_equal(pd.read_csv(auto), pd.read_csv(ok))
    with pytest.raises(SystemExit):
        main(["extract", str(study / "seeds.csv"), "-o", str(auto), "--batch-size", "0"])
    assert "positive integer or 'auto'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["extract", str(study / "seeds.csv"), "-o", str(auto), "--precision", "fp64"])
    err = capsys.readouterr().err
    assert "--precision: invalid choice: 'fp64'" in err and "'bf16'" in err
    assert main(["extract", str(bad_study), "-o", str(tmp_path / "bad_out.csv"), *random]) == 1
    assert "2 rows failed" in capsys.readouterr().err
    assert (
        main(["extract", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "x.csv"), *random]) == 2
    )
    assert "no such lesion table" in capsys.readouterr().err
    assert main(["extract", str(study / "seeds.csv"), "-o", str(tmp_path / "x.txt"), *random]) == 2
    assert (
        main(
            [
                "extract",
                str(study / "seeds.csv"),
                "-o",
                str(tmp_path / "y.csv"),
                "--weights",
                str(tmp_path / "none.torch"),
            ]
        )
        == 2
    )
    assert "cannot load the encoder" in capsys.readouterr().err


def test_module_examples_run():
    import skfmcib.commands.extract
    import skfmcib.distributed
    import skfmcib.extract
    import skfmcib.masks

    modules = (
        skfmcib.extract,
        skfmcib.masks,
        skfmcib.distributed,
        skfmcib.commands,
        skfmcib.commands.extract,
    )
    for module in modules:
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__


def test_two_runs_never_write_the_same_output(study, checkpoint, tmp_path):
    from skfmcib.extract import _exclusive

    out = tmp_path / "f.csv"
    with _exclusive(out):  # as another process's run would hold it
        with pytest.raises(ExtractError, match="another skfmcib extract is writing it"):
            extract(study / "seeds.csv", out, transformer=tiny(checkpoint))
    assert not out.exists() and not parts_dir(out).exists()
    extract(study / "seeds.csv", out, transformer=tiny(checkpoint))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "f.csv",
        "f.csv.errors.csv",
        "f.csv.provenance.json",
    ]


def test_a_lock_taken_on_a_removed_lock_file_is_taken_again(tmp_path, monkeypatch):
    # The race cannot be timed in a test: a finishing run removes the lock file between
    # this run's open and its flock, as simulated here in the first flock call.
    import fcntl

    from skfmcib.extract import _exclusive

    out = tmp_path / "f.csv"
    lock = tmp_path / ".f.csv.lock"
    real_flock, calls = fcntl.flock, []

    def flock(fh, op):
        calls.append(op)
        if len(calls) == 1:
            lock.unlink()  # the other run's clean-up ...
            lock.touch()  # ... and a third run's new lock file
        return real_flock(fh, op)

    monkeypatch.setattr(fcntl, "flock", flock)
    with _exclusive(out):
        assert len(calls) == 2  # the first lock, on the removed file, was not kept
        with open(lock, "a+b") as other, pytest.raises(OSError):
            real_flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the file at the path is held
    assert not lock.exists()


# --- tables carried as written --------------------------------------------------------------


def test_csv_columns_other_than_the_seed_are_carried_as_written(checkpoint, tmp_path):
    pytest.importorskip("pyarrow")
    hu = np.random.default_rng(3).normal(-300, 300, size=(12, 64, 64)).astype(np.int16)
    write_dicom_series(tmp_path / "0042", hu)  # a folder whose name looks like a number
    write_image(tmp_path / "ct.nii.gz", hu, spacing=(1.0, 1.0, 2.0))
    (tmp_path / "seeds.csv").write_text(
        "image_path,coordX,coordY,coordZ,series_uid,pid,flag,note,dose\n"
        "ct.nii.gz,30,30,10,,007,NA,,1.50\n"
        "0042,-74.4,-94.4,52,1.2.826.0.1.3680043.8.498.1,0100,n/a,a b,2\n"
    )
    table, resolved = read_table(tmp_path / "seeds.csv")
    assert resolved["image_path"].tolist() == [str(tmp_path / "ct.nii.gz"), str(tmp_path / "0042")]
    assert table["coordZ"].tolist() == [10, 52]
    assert table["series_uid"].isna().tolist() == [True, False]
    # Paths are text even when every one of them looks like a number.
    (tmp_path / "dicom.csv").write_text("image_path,coordX,coordY,coordZ\n0042,-74.4,-94.4,52\n")
    assert read_table(tmp_path / "dicom.csv")[1]["image_path"][0] == str(tmp_path / "0042")
    carried = ["pid", "flag", "note", "dose"]
    written = as_written(tmp_path / "seeds.csv", *carried)
    assert written["pid"].tolist() == ["007", "0100"] and written["flag"][0] == "NA"

    outputs = {}
    for suffix in (".csv", ".parquet"):
        out = tmp_path / f"f{suffix}"
        summary = extract(tmp_path / "seeds.csv", out, transformer=tiny(checkpoint))
        assert summary.exit_status == 0 and summary.n_written == 2
        outputs[suffix] = as_written(out, *carried) if suffix == ".csv" else pd.read_parquet(out)
    # The CSV output repeats the cells as written, and the Parquet output holds the same text.
    pd.testing.assert_frame_equal(outputs[".csv"], written, check_dtype=False)
    pd.testing.assert_frame_equal(outputs[".parquet"][carried], written, check_dtype=False)
    np.testing.assert_array_equal(
        feature_block(pd.read_csv(tmp_path / "f.csv")),
        feature_block(pd.read_parquet(tmp_path / "f.parquet")),
    )


# --- resuming: finished outputs, what differs, what each run used ---------------------------


def test_resume_of_a_finished_output_takes_its_chunk_size_and_writes_nothing(
    study, checkpoint, tmp_path, capsys
):
    out = tmp_path / "f.parquet"
    common = ["extract", str(study / "seeds.csv"), "-o", str(out), "--weights", str(checkpoint)]
    common += ["--device", "cpu"]
    assert main([*common, "--chunk-size", "2"]) == 0
    assert read_provenance(out)["chunk_size"] == 2
    before = out.stat().st_mtime_ns
    capsys.readouterr()
    assert main([*common, "--resume"]) == 0
    err = capsys.readouterr().err
    assert "is complete already (12 of 12 rows); nothing to resume" in err
    assert "wrote" not in err and out.stat().st_mtime_ns == before
    # Another chunk size, given, is another job.
    assert main([*common, "--resume", "--chunk-size", "5"]) == 2
    assert "chunk_size: 2 then, 5 now" in capsys.readouterr().err
    summary = extract(study / "seeds.csv", out, transformer=tiny(checkpoint), resume=True)
    assert summary.already_complete and summary.n_chunks == 0 and summary.n_written == 12


def test_a_resume_mismatch_names_the_sub_fields_that_differ(study, checkpoint, tmp_path):
    out = tmp_path / "f.csv"
    table = _unfinished_run(study, checkpoint, out)
    with pytest.raises(ProvenanceMismatch) as info:
        extract(table, out, transformer=tiny(checkpoint, coordinate_system="RAS"), resume=True)
    message = str(info.value)
    assert "preprocessing.coordinate_system: LPS then, RAS now" in message
    assert "spacing_mm" not in message and "..." not in message
    wider = EncoderConfig(arch="resnet10", widen_factor=0.5)
    net, _ = load_encoder(None, config=wider, random_state=0)
    other = save_checkpoint(net, tmp_path / "wider.torch")
    with pytest.raises(ProvenanceMismatch) as info:
        extract(table, out, transformer=tiny(other), resume=True)
    message = str(info.value)
    assert "encoder_config.widen_factor: 0.25 then, 0.5 now" in message
    assert "encoder_config.arch" not in message and "n_features: 128 then, 256 now" in message


def test_each_resumption_records_its_device_and_batch_size(study, checkpoint, tmp_path):
    out = tmp_path / "f.csv"
    table = _unfinished_run(study, checkpoint, out)  # batch size 8
    with pytest.raises(ExtractError, match=r"row 2 \("):  # stops again at the same row
        extract(
            table, out, transformer=tiny(checkpoint, batch_size=3), on_error="raise", resume=True
        )
    extract(table, out, transformer=tiny(checkpoint, batch_size=5), resume=True)
    prov = read_provenance(out)
    assert (prov["device"], prov["batch_size"]) == ("cpu", 8)  # the run that started it
    assert [(r["device"], r["batch_size"]) for r in prov["resumed"]] == [("cpu", 3), ("cpu", 5)]
    assert all(r["created"] >= prov["created"] for r in prov["resumed"])


def test_a_failure_resumes_once_fixed_outside_the_table(study, checkpoint, tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    table = make_images(folder, 3, 2, seed=1)
    table.to_csv(folder / "seeds.csv", index=False)
    hidden = folder / "ct01.nii.gz.away"
    (folder / "ct01.nii.gz").rename(hidden)
    out = tmp_path / "f.csv"
    with pytest.raises(ExtractError) as info:
        extract(
            folder / "seeds.csv", out, transformer=tiny(checkpoint), on_error="raise", chunk_size=1
        )
    message = str(info.value)
    assert "1 finished chunk kept in" in message and "continue with resume=True;" in message
    assert "resume=True, on_error='skip'" in message and "new output" in message
    # Editing the table makes another job, which resume refuses ...
    table.iloc[[0, 1, 4, 5]].to_csv(folder / "seeds.csv", index=False)
    with pytest.raises(ProvenanceMismatch, match="table_sha256"):
        extract(folder / "seeds.csv", out, transformer=tiny(checkpoint), resume=True)
    # ... while restoring the image file (and the table) resumes.
    table.to_csv(folder / "seeds.csv", index=False)
    hidden.rename(folder / "ct01.nii.gz")
    summary = extract(
        folder / "seeds.csv", out, transformer=tiny(checkpoint), on_error="raise", resume=True
    )
    assert (summary.n_chunks_resumed, summary.n_written, summary.n_failed) == (1, 6, 0)


# --- the command line's wording ---------------------------------------------------------------


def test_cli_messages_name_the_flags(bad_study, checkpoint, tmp_path, capsys):
    out = tmp_path / "f.csv"
    common = ["extract", str(bad_study), "-o", str(out), "--weights", str(checkpoint)]
    common += ["--device", "cpu", "--chunk-size", "1"]
    assert main([*common, "--on-error", "raise"]) == 1
    err = capsys.readouterr().err
    assert "continue with --resume;" in err and "--resume --on-error skip" in err
    assert "=" not in err
    assert main(common) == 2
    err = capsys.readouterr().err
    assert "pass --resume to continue it or --overwrite to start over" in err
    assert main([*common, "--resume", "--overwrite"]) == 2
    assert "--resume and --overwrite exclude each other" in capsys.readouterr().err
    assert main([*common, "--resume", "--coordinate-system", "RAS"]) == 2
    assert "pass --overwrite to start over" in capsys.readouterr().err
    assert main([*common, "--resume"]) == 1
    reasons = pd.read_csv(errors_path(out))["reason"]
    assert "use --coordinate-system RAS" in reasons[1] and "coordinate_system=" not in reasons[1]
    assert main(common) == 2
    assert "exists; pass --overwrite to replace it" in capsys.readouterr().err
    # The Python API keeps its own spelling.
    api = extract(bad_study, tmp_path / "api.csv", transformer=tiny(checkpoint))
    assert "use coordinate_system='RAS'" in pd.read_csv(api.errors_path)["reason"][1]


def test_cli_messages_count_in_the_singular_and_name_the_table(
    checkpoint, study, tmp_path, capsys
):
    table = pd.read_csv(study / "seeds.csv").iloc[:1]
    table["image_path"] = [str(study / p) for p in table["image_path"]]
    table.to_csv(tmp_path / "one.csv", index=False)
    args = ["--weights", str(checkpoint), "--device", "cpu"]
    assert main(["extract", str(tmp_path / "one.csv"), "-o", str(tmp_path / "f.csv"), *args]) == 0
    err = capsys.readouterr().err
    assert "1 lesion in 1 image, 1 chunk\n" in err and "1 of 1 row in" in err
    table.iloc[:0].to_csv(tmp_path / "empty.csv", index=False)
    assert (
        main(["extract", str(tmp_path / "empty.csv"), "-o", str(tmp_path / "e.csv"), *args]) == 2
    )
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'empty.csv'}: lesion table is empty" in err
    assert "lesion table: lesion table" not in err


def test_weights_rewritten_during_a_run_stop_it(study, tmp_path, monkeypatch):
    # Not a failure of the rows that follow: the run stops, its finished chunks kept.
    import skfmcib.extract as extract_module

    weights = make_checkpoint(tmp_path / "w.torch", seed=0)
    save_part = extract_module._save_part

    def save_then_rewrite(parts, index, result):
        name = save_part(parts, index, result)
        if index == 0:  # in place, as torch.save(..., same path) writes
            net, _ = load_encoder(None, config=TINY, random_state=1)
            import torch

            torch.save({"trunk_state_dict": net.state_dict()}, weights)
        return name

    monkeypatch.setattr(extract_module, "_save_part", save_then_rewrite)
    out = tmp_path / "f.csv"
    with pytest.raises(ExtractError, match=r"w\.torch was rewritten .* 1 finished chunk"):
        extract(study / "seeds.csv", out, transformer=tiny(weights), chunk_size=2)
    assert not out.exists() and not errors_path(out).exists()
    manifest = json.loads((parts_dir(out) / "manifest.json").read_text())
    assert list(manifest["done"]) == ["0"]


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_rows_left_out_add_no_index_column(bad_study, checkpoint, tmp_path, suffix):
    # Rows 2 and 3 fail and are left out: the rows kept (0, 1, 4, 5) are not evenly
    # spaced, which once made the table's index a column of the output.
    out = tmp_path / f"f.{suffix}"
    extract(bad_study, out, transformer=tiny(checkpoint), on_error="skip")
    columns = list(pd.read_csv(bad_study, nrows=0).columns)
    if suffix == "csv":
        written = list(pd.read_csv(out, nrows=0).columns)
    else:
        import pyarrow.parquet as pq

        written = pq.read_schema(out).names
    assert written[: len(columns)] == columns
    assert all(c.startswith("fmcib_") for c in written[len(columns) :])


def test_an_output_is_never_left_beside_another_runs_provenance(study, tmp_path, monkeypatch):
    import skfmcib.extract as extract_module

    out = tmp_path / "f.csv"
    extract(study / "seeds.csv", out, transformer=tiny(make_checkpoint(tmp_path / "a.torch")))
    old = out.read_bytes()
    write = extract_module.atomic_write

    def stopped_at_the_output(path, writer):
        if Path(path) == out:
            raise KeyboardInterrupt  # the process stopped as the output was written
        return write(path, writer)

    monkeypatch.setattr(extract_module, "atomic_write", stopped_at_the_output)
    other = tiny(make_checkpoint(tmp_path / "b.torch", seed=1))
    with pytest.raises(KeyboardInterrupt):
        extract(study / "seeds.csv", out, transformer=other, overwrite=True)
    # The old output stays, without a description that is not its own; the parts are kept.
    assert out.read_bytes() == old
    assert not provenance_path(out).exists() and not errors_path(out).exists()
    monkeypatch.setattr(extract_module, "atomic_write", write)
    extract(study / "seeds.csv", out, transformer=other, resume=True)
    assert read_provenance(out)["weights_digest"] == file_digest(tmp_path / "b.torch")

"""``skfmcib demo``: a quick run prints the table and writes the figures; offline help."""

from __future__ import annotations

import socket
from dataclasses import replace

import pandas as pd
import pytest

from skfmcib import weights
from skfmcib.cli import main
from skfmcib.commands.demo import FIGURES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_demo_prints_the_table_and_writes_the_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    stdout = captured.out
    assert "RANDOM weights" in stdout  # results of a random encoder say so
    header = next(line for line in stdout.splitlines() if line.startswith("task"))
    assert "FMCIB (random weights)" in header and "radiomics baseline" in header
    for row in ("malignancy  AUC", "balanced accuracy", "C-index (Harrell)", "C-index (Uno"):
        assert row in stdout
    assert "2-year AUC" in stdout
    for name in FIGURES:
        png = out / name
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000, name
        assert name in stdout
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 3 + 2 + 3
    assert ((table["fmcib_low"] <= table["fmcib"]) & (table["fmcib"] <= table["fmcib_high"])).all()
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 40 and "fmcib_survival_risk" in predictions
    # progress goes to stderr, numbered
    assert "[1/8] Loading the encoder" in captured.err and "[8/8]" in captured.err
    # small classes are one note, not a scikit-learn warning from every inner split
    assert "least populated class" not in captured.err


def _unreachable_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/model_weights.torch"


@pytest.mark.filterwarnings("ignore::skfmcib.weights.WeightsLicenseNotice")
def test_offline_official_weights_explain_how_to_run_anyway(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SKFMCIB_CACHE_DIR", str(tmp_path / "cache"))
    offline = replace(weights.FMCIB_WEIGHTS, url=_unreachable_url())
    monkeypatch.setitem(weights.REGISTRY, "fmcib", offline)
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 1
    err = capsys.readouterr().err
    assert "official FMCIB weights are not available" in err
    assert "--weights random" in err and "--weights PATH" in err
    assert str(tmp_path / "cache") in err  # where to put a file downloaded by hand
    assert not (tmp_path / "demo").exists()  # failed before generating anything


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nowhere.torch"
    assert main(["demo", "--weights", str(missing), "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "nowhere.torch" in err and "--weights random" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-lesions", "10"], "at least 30"),
        (["--folds", "1"], "--folds"),
        (["--folds", "2"], "--folds must be at least 3"),
        (["--widen-factor", "0.5"], "--widen-factor needs --arch"),
    ],
)
def test_bad_arguments_exit_with_status_2(argv, message, tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_help_shows_percent_signs_as_written(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "95% intervals" in capsys.readouterr().out


def test_incomplete_intervals_are_marked_with_a_footnote():
    from skfmcib.commands.demo import _format_table

    def row(incomplete: bool, method: str = "bca") -> dict:
        out = {"task": "survival", "metric": "2-year AUC"}
        for prefix in ("fmcib", "radiomics", "difference"):
            out |= {prefix: 0.6, f"{prefix}_low": 0.4, f"{prefix}_high": 0.8}
            out |= {f"{prefix}_interval": method, f"{prefix}_incomplete": incomplete}
        return out

    text = _format_table(pd.DataFrame([row(True)]), "FMCIB")
    assert (
        "0.60 [0.40, 0.80]#" in text and "\n# likely too narrow, or from part of the data" in text
    )
    text = _format_table(pd.DataFrame([row(False, "basic")]), "FMCIB")
    assert "]#" not in text and "# likely" not in text and "0.80]*" in text

"""The downstream examples run on a generated cohort, in their quick mode."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "expected", "figure"),
    [
        ("malignancy.py", "FMCIB - radiomics: AUC", "malignancy_roc.png"),
        ("anatomical_site.py", "radiomics: balanced accuracy", None),
        ("survival.py", "C-index (Uno, IPCW)", "survival_kaplan_meier.png"),
        ("label_efficiency.py", "mean AUC by fraction of training labels", "label_efficiency.png"),
        ("own_csv.py", "features per lesion written to features.csv", None),
    ],
)
def test_example_runs_in_quick_mode(script, expected, figure, tmp_path):
    env = {**os.environ, "SKFMCIB_QUICK": "1", "TMPDIR": str(tmp_path), "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expected in proc.stdout
    if figure is not None:
        assert (tmp_path / figure).stat().st_size > 10_000

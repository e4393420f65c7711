"""The downstream examples run on a generated cohort, in their quick mode."""

from __future__ import annotations

import pytest
from conftest import run_example


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
    assert expected in run_example(script, tmp_path, "-W", "error")
    if figure is not None:
        assert (tmp_path / figure).stat().st_size > 10_000

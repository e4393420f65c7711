"""The downstream examples run on a generated cohort, in their quick mode."""

from __future__ import annotations

import os
import socket

import pytest
from conftest import REPO, run_example, run_python


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


def _unreachable_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/model_weights.torch"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "advice"),
    [
        ("malignancy.py", "SKFMCIB_WEIGHTS=random"),
        ("anatomical_site.py", "SKFMCIB_WEIGHTS=random"),
        ("survival.py", "SKFMCIB_WEIGHTS=random"),
        ("label_efficiency.py", "SKFMCIB_WEIGHTS=random"),
        ("own_csv.py", "SKFMCIB_WEIGHTS=random"),
        ("finetune_classifier.py", "SKFMCIB_QUICK=1"),
    ],
)
def test_offline_default_weights_stop_the_example_at_once_with_advice(script, advice, tmp_path):
    """Without the official weights, an example says what to do before generating anything."""
    patch = (
        "import runpy, sys; from dataclasses import replace; from skfmcib import weights; "
        f"weights.REGISTRY['fmcib'] = replace(weights.FMCIB_WEIGHTS, url={_unreachable_url()!r}); "
        # As `python examples/<script>` does: the script's folder first on the path.
        f"sys.argv = [{script!r}]; sys.path.insert(0, {str(REPO / 'examples')!r}); "
        f"runpy.run_path({str(REPO / 'examples' / script)!r}, run_name='__main__')"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("SKFMCIB_QUICK", "SKFMCIB_WEIGHTS")}
    env |= {"SKFMCIB_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp_path)}
    env["MPLBACKEND"] = "Agg"
    proc = run_python(["-c", patch], tmp_path, env, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "weights could not be downloaded" in proc.stderr and advice in proc.stderr
    assert not list(tmp_path.rglob("cohort*"))  # stopped before generating the cohort

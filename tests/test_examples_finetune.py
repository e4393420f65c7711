"""The fine-tuning and pretraining examples run (in their quick mode)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("finetune_classifier.py", "held-out accuracy:"),
        ("pretrain.py", "features of shape (6, 64)"),
    ],
)
def test_example_runs_in_quick_mode(script, expected, tmp_path):
    env = {**os.environ, "SKFMCIB_QUICK": "1", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expected in proc.stdout

"""The fine-tuning and pretraining examples run (in their quick mode)."""

from __future__ import annotations

import pytest
from conftest import run_example


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("finetune_classifier.py", "held-out accuracy:"),
        ("pretrain.py", "features of shape (6, 64)"),
    ],
)
def test_example_runs_in_quick_mode(script, expected, tmp_path):
    assert expected in run_example(script, tmp_path)

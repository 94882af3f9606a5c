"""GRPO must actually teach: a short run raises held-out greedy accuracy beyond noise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    spec = importlib.util.spec_from_file_location("grpo_math_recipe", ROOT / "recipes" / "grpo_math.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_short_grpo_run_improves_heldout_accuracy(tiny_path, tmp_path):
    summary = _recipe().main([
        "--model_name_or_path", str(tiny_path), "--output_dir", str(tmp_path / "run"),
        "--max_steps", "30", "--learning_rate", "1e-4", "--final_eval_size", "300", "--eval_steps", "0",
        "--save_steps", "0", "--progress", "false", "--num_threads", "2",
    ])
    # The warm-up model copies its teacher's dropped carries; 30 steps of answer-only reward
    # must fix enough of them to move 300 held-out problems by more than the noise.
    assert summary["heldout_n"] == 300
    assert summary["gain"] >= 0.08, summary
    assert summary["gain_ci95"][0] > 0, summary

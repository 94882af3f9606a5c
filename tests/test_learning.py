"""GRPO must actually teach: a short run raises held-out greedy accuracy beyond noise."""

from __future__ import annotations

import _recipes
import pytest


@pytest.mark.slow
def test_short_grpo_run_improves_heldout_accuracy(tiny_path, tmp_path):
    summary = _recipes.grpo([
        "--model_name_or_path", str(tiny_path), "--output_dir", str(tmp_path / "run"),
        "--max_steps", "30", "--learning_rate", "1e-4", "--final_eval_size", "300", "--eval_steps", "0",
        "--save_steps", "0", "--progress", "false", "--num_threads", "1",
    ])
    # The warm-up model copies its teacher's dropped carries; 30 steps of answer-only reward
    # must fix enough of them to move 300 held-out problems by more than the noise.
    assert summary["heldout_n"] == 300
    assert summary["gain"] >= 0.08, summary
    assert summary["gain_ci95"][0] > 0, summary

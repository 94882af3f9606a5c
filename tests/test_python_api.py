"""README's "From Python" block runs as written: a TRL notebook with only the import changed
(rlreason.GRPOTrainer), and the recipe's run built by the same code (rlreason.build.grpo)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# small enough for a test; everything else is the block's own
FAST = dict(num_generations=4, per_device_train_batch_size=16, gradient_accumulation_steps=1,
            max_completion_length=24, final_eval_size=16, eval_size=16, eval_steps=0, save_steps=0, progress=False,
            max_prompt_length=128, learning_rate=1e-5)


def _block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_python_block_runs(tiny_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its output_dirs are relative
    code = _block().replace("max_steps=20", "max_steps=2")
    assert code.count("GRPOConfig(") == 2
    code = code.replace("GRPOConfig(", "GRPOConfig(**FAST, ")
    scope = {"FAST": FAST}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["result"].global_step == 2
    notebook = tmp_path / "runs" / "notebook"
    assert (notebook / "final_model" / "config.json").exists() and (notebook / "summary.json").exists()
    rows = [json.loads(x) for x in (notebook / "metrics.jsonl").read_text().splitlines()]
    assert all(r["rewards/reward_len/mean"] <= 0 for r in rows)  # the notebook's reward scored its dataset
    recipe_run = json.loads((tmp_path / "runs" / "api" / "summary.json").read_text())
    assert recipe_run["steps"] == 2 and "heldout_after" in recipe_run
    assert (tmp_path / "runs" / "api" / "final_model" / "config.json").exists()
    assert scope["summary"]["steps"] == 2

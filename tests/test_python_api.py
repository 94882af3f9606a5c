"""README's "From Python" block runs as written: the recipe's run built step by step, and the
trainer around a caller's own model, tokenizer, dataset and reward (rlreason.build.assemble)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
# small enough for a test; everything else is the block's own
FAST = dict(num_generations=4, per_device_train_batch_size=16, max_completion_length=24,
            final_eval_size=16, eval_size=16, eval_steps=0, save_steps=0, progress=False)


def _block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_python_block_runs(tiny_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its output_dirs are relative
    code = _block().replace("max_steps=20", "max_steps=2")
    code = code.replace("GRPOConfig(", f"GRPOConfig(model_name_or_path={str(tiny_path)!r}, **FAST, ")
    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    def my_reward(completions, answer, **kw):
        return [float(str(a) in str(c)) for c, a in zip(completions, answer, strict=True)]

    scope = {"FAST": FAST, "model": AutoModelForCausalLM.from_pretrained(tiny_path), "tokenizer": tokenizer,
             "my_dataset": datasets.Dataset.from_dict({"prompt": [f"{i}+{i}=" for i in range(8)],
                                                       "answer": [str(2 * i) for i in range(8)]}),
             "my_reward": my_reward}
    exec(compile(code, "README.md", "exec"), scope)
    recipe_run = json.loads((tmp_path / "runs" / "api" / "summary.json").read_text())
    assert recipe_run["steps"] == 2 and "heldout_after" in recipe_run
    assert (tmp_path / "runs" / "api" / "final_model" / "config.json").exists()
    assert scope["summary"]["steps"] == 2
    rows = [json.loads(x) for x in (tmp_path / "runs" / "mine" / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/my_reward/mean" in r for r in rows)  # the caller's reward scored the caller's dataset

"""The tool-calling demo (make demo-tools): the embedded multiplication task as a dataset, and
recipes/configs/tiny_tools_cpu.yaml run end to end from its YAML on a quickly built tiny-tools
(its architecture, tokenizer and template; 40 warm-up steps: for the wiring, not for learning). What the
demo starts from, the built tiny-tools (how often it calls, whether it is right when it calls and in its
head), is measured by benchmarks/tools_warmup.py (README, "Tools"): its 800-step build takes 4 minutes,
too long for the suite."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from rlreason import tiny
from rlreason.build.data import load_data
from rlreason.config import GRPOConfig
from rlreason.data.tasks import mul

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "configs" / "tiny_tools_cpu.yaml"


@pytest.fixture(scope="module")
def tools_tok():
    return tiny.build_spec_tokenizer(tiny.TINY_TOOLS)


@pytest.fixture(scope="module")
def tiny_tools_quick_path() -> Path:
    return tiny.ensure(dataclasses.replace(tiny.TINY_TOOLS, name="tiny-tools-test", sft_steps=40, sft_batch=16),
                       log=lambda *a: None)


def test_dataset_mul_has_conversational_prompts_and_its_own_heldout_problems(tools_tok):
    cfg = GRPOConfig(dataset_name="mul", mul_train_size=300, final_eval_size=50, eval_size=20, seed=5)
    train, held = load_data(cfg, tools_tok)
    assert len(train) == 300 and len(held) == 50
    assert train[0]["prompt"] == [{"role": "user", "content": train[0]["prompt"][0]["content"]}]
    assert not {r["prompt"][0]["content"] for r in train} & {r["prompt"][0]["content"] for r in held}
    for r in [*train.select(range(20)), *held[:20]]:
        a, b = map(int, r["prompt"][0]["content"].split("*"))
        assert r["answer"] == str(a * b)
    # the held-out problems do not depend on the training seed: every run scores the same ones
    _, held_other_seed = load_data(dataclasses.replace(cfg, seed=6), tools_tok)
    assert [r["answer"] for r in held_other_seed] == [r["answer"] for r in held]
    # the eval CLI's suite 'mul' is the same held-out problems, as plain questions
    from rlreason.eval.suites import SUITES

    assert SUITES["mul"].generator(50) == [{"prompt": r["prompt"][0]["content"], "answer": r["answer"]} for r in held]
    with pytest.raises(ValueError, match="mul_difficulty"):
        load_data(GRPOConfig(dataset_name="mul", mul_difficulty={"min_a": 500, "max_a": 400}), tools_tok)
    with pytest.raises(ValueError, match="mul_difficulty"):
        load_data(GRPOConfig(dataset_name="mul", mul_difficulty={"digits": 3}), tools_tok)
    with pytest.raises(ValueError, match="eval_holdout_size"):
        GRPOConfig(dataset_name="mul", eval_holdout_size=10)


def test_the_recipe_names_the_task_the_tool_and_the_final_answer_reward_only():
    cfg = yaml.safe_load(RECIPE.read_text())
    assert cfg["model_name_or_path"] == "tiny-tools" and cfg["dataset_name"] == "mul"
    assert cfg["tools"] == ["rlreason.data.tasks.mul:multiply"] and cfg["reward_funcs"] == ["accuracy"]
    assert cfg["num_threads"] == 1


@pytest.mark.slow
def test_the_tools_recipe_runs_from_its_yaml_with_tool_turns_logged(tiny_tools_quick_path, tmp_path):
    import _recipes

    out = tmp_path / "run"
    _recipes.grpo(["--config", str(RECIPE), "--model_name_or_path", str(tiny_tools_quick_path),
                   "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "16",
                   "--gradient_accumulation_steps", "1", "--num_generations", "8", "--max_completion_length", "64",
                   "--learning_rate", "1e-4", "--loss_type", "dapo", "--mul_train_size", "200",
                   "--eval_steps", "1", "--eval_size", "8", "--final_eval_size", "8", "--save_steps", "0",
                   "--logging_steps", "1", "--progress", "false", "--reward_num_workers", "0"])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "clip_frac" in r]
    assert [r["step"] for r in train] == [1, 2]
    for r in train:
        assert 0.0 <= r["tools/call_frequency"] <= 1.0 and r["tools/failure_frequency"] == 0.0
    assert any("eval/tools/call_frequency" in r for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["heldout_n"] == 8 and summary["steps"] == 2
    # a completion that called the tool carries the exchange: the call, the tool's product, the answer turn
    called = [c for c in map(json.loads, (out / "completions.jsonl").read_text().splitlines())
              if c.get("tool_stats") and c["tool_stats"]["calls"]]
    for c in called:
        call = c["messages"][0]["tool_calls"][0]["function"]
        assert c["messages"][1]["role"] == "tool"
        if call["name"] == "multiply" and set(call["arguments"]) == {"a", "b"}:
            assert c["messages"][1]["content"] == str(mul.multiply(**call["arguments"]))
    assert (out / "tools.png").stat().st_size > 0 and "tools.png" in (out / "report.html").read_text()

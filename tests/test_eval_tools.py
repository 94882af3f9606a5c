"""Evaluation with tools (issue 32, item 6): the eval CLI runs a suite with the model calling the
same tool as in training and scores pass@k / maj@k on each exchange's final answer; a task's
reward gets the whole exchange; the trainer's held-out evaluation uses the run's tools.

Real pieces throughout: the embedded tool-calling model (``tiny-tools``: it calls the calculator on
about a third of its samples), the multiplication task's ``multiply`` run in the tool executor's
worker processes, the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlreason.eval.report import read_results, read_samples
from rlreason.rollout.base import Sample

ROOT = Path(__file__).resolve().parents[1]
ANSWER = re.compile(r"<answer>\s*(-?\d+)\s*</answer>")


@pytest.fixture(scope="module")
def tools_model(tiny_tools_path) -> Path:
    return tiny_tools_path  # tiny-tools with a shorter warm-up (tests/conftest.py)


def _problems(n: int, seed: int = 3) -> list[dict]:
    from rlreason.data.tasks import mul

    return [{"problem": p.question, "answer": str(p.answer)} for p in mul.generate(n, seed, "heldout")]


def _tool_turns(messages: list[dict]) -> list[tuple[dict, str]]:
    """(the call's arguments, the tool's answer) of every call in an exchange, in order."""
    calls = [c["function"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    answers = [m["content"] for m in messages if m["role"] == "tool"]
    args = [c["arguments"] if isinstance(c["arguments"], dict) else json.loads(c["arguments"]) for c in calls]
    return list(zip(args, answers, strict=False))


def test_final_text_is_the_last_assistant_turn_not_a_tool_answer():
    from rlreason.eval.core import final_text

    exchange = [{"role": "assistant", "content": "", "tool_calls": [
                    {"type": "function", "function": {"name": "multiply", "arguments": {"a": 12, "b": 34}}}]},
                {"role": "tool", "name": "multiply", "content": "<answer>408</answer>"},
                {"role": "assistant", "content": "<answer>407</answer>"}]
    assert final_text(Sample([1], "whole text", messages=exchange)) == "<answer>407</answer>"
    # a tool answer the model never wrote down is no answer
    assert final_text(Sample([1], "whole text", messages=exchange[:2])) == ""
    assert final_text(Sample([1], "plain completion")) == "plain completion"


def test_episode_messages_follow_trls_rule():
    from rlreason.rollout.tools.rollouts import episode_messages

    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "Go."}]
    assert episode_messages(msgs, " Target 3.") == [msgs[0], {"role": "user", "content": "Go. Target 3."}]
    assert msgs[1]["content"] == "Go."  # the row's messages are left as they are
    assert episode_messages(msgs, None) == msgs
    assert episode_messages(None, "Increment by 2.") == [{"role": "user", "content": "Increment by 2."}]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "rlreason.eval", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_cli_scores_a_suite_on_each_exchanges_final_answer(tools_model, tmp_path):
    problems = _problems(6)
    (tmp_path / "mul.jsonl").write_text("".join(json.dumps(p) + "\n" for p in problems))
    (tmp_path / "suites.yaml").write_text(textwrap.dedent("""\
        - name: mul
          local_path: mul.jsonl
          default_template: plain
        """))
    res = _cli("--model", str(tools_model), "--suite-file", "suites.yaml", "--suites", "mul", "--no-hub",
               "--n", "4", "--temperature", "1.0", "--top-p", "1.0", "--k", "1,4", "--max-tokens", "48",
               "--tools", "rlreason.data.tasks.mul:multiply", "--max-tool-calling-iterations", "2",
               "--reward-num-workers", "1", "--out", "out", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    results = read_results(tmp_path / "out")["rlreason"]
    metrics = results["suites"]["mul"]
    assert {"pass@1", "pass@4", "maj@4"} <= set(metrics)
    records = read_samples(tmp_path / "out")
    assert len(records) == 6
    calls = 0
    for rec, problem in zip(records, problems, strict=True):
        assert "tools: multiply(a, b)" in rec["prompt"]  # the prompt was rendered with the tool list
        assert len(rec["messages"]) == 4
        for messages, answer, correct, n_calls in zip(rec["messages"], rec["answers"], rec["correct"],
                                                      rec["tool_calls"], strict=True):
            turns = _tool_turns(messages)
            assert n_calls == len(turns)
            calls += n_calls
            for args, tool_answer in turns:  # the tool really ran on what the model wrote
                assert tool_answer == str(int(args["a"]) * int(args["b"]))
            # the answer is the final assistant turn's, never the tool's output
            last = [m for m in messages if m["role"] == "assistant"][-1]["content"] or ""
            if last.count("<answer>") > 1:  # a malformed turn (nested tags): the extractor's own rule decides
                continue
            found = ANSWER.search(last)
            if found:
                assert answer == found.group(1)
            assert correct == (found is not None and found.group(1) == problem["answer"])
    assert calls >= 2  # the model called the calculator on some of its 24 samples
    # pass@1 is the mean correctness of the samples (n=4 per problem)
    mean = sum(sum(r["correct"]) for r in records) / 24
    assert metrics["pass@1"] == pytest.approx(mean)
    assert results["config"]["tools"]["tools"] == ["rlreason.data.tasks.mul:multiply"]  # recorded with the numbers


def test_the_cli_refuses_tool_settings_without_tools(tmp_path):
    res = _cli("--model", "tiny", "--max-tool-calling-iterations", "2", cwd=tmp_path)
    assert res.returncode == 2 and "--tools or --environment-factory" in res.stderr


def test_the_cli_names_a_tool_spec_that_does_not_load(tools_model, tmp_path):
    res = _cli("--model", str(tools_model), "--suites", "arith", "--tools", "no_such_module_xyz:fn", cwd=tmp_path)
    assert res.returncode == 1 and "--tools" in res.stderr and "no_such_module_xyz" in res.stderr, res.stderr


def test_the_trainers_heldout_eval_runs_with_the_runs_tools(tools_model, tmp_path):
    import datasets

    import rlreason
    from rlreason.data.tasks import mul

    rows = mul.to_records(mul.generate(16, 0, "train"))
    heldout = mul.to_records(mul.generate(8, 0, "heldout"))
    args = rlreason.GRPOConfig(output_dir=str(tmp_path / "run"), max_steps=1, num_generations=4,
                               per_device_train_batch_size=8, gradient_accumulation_steps=1,
                               max_completion_length=48, max_tool_calling_iterations=2, learning_rate=1e-5,
                               num_generations_eval=4, eval_steps=1, logging_steps=1,
                               save_steps=0, log_completions_steps=1, reward_num_workers=0, progress=False, seed=0)
    trainer = rlreason.GRPOTrainer(model=str(tools_model), reward_funcs="accuracy", args=args,
                                   train_dataset=datasets.Dataset.from_list(rows),
                                   eval_dataset=datasets.Dataset.from_list(heldout), tools=[mul.multiply])
    trainer.train()
    evals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "eval/accuracy" in r]
    assert evals and all(r["eval/n"] == 32 for r in evals)  # 8 held-out problems x 4 samples
    assert all(0 <= r["eval/tools/call_frequency"] <= 2 and 0 <= r["eval/tools/failure_frequency"] <= 1
               for r in evals)
    assert any(r["eval/tools/call_frequency"] > 0 for r in evals)  # the held-out rollouts called the tool

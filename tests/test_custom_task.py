"""A task of one's own, written as a user would, outside the package: Countdown (reach a target
with the given numbers, each used at most once). Its data generator, reward, config and recipe
live in a temporary folder; it trains with a held-out split scored by its own reward, and the
eval CLI scores its checkpoint with that reward too. Nothing under rlreason/, rewards/ or eval/
knows of it (issue 30's acceptance)."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlreason.eval.report import read_results, read_samples

ROOT = Path(__file__).resolve().parents[1]

TASK = textwrap.dedent('''
    """Countdown: combine the numbers with + - * to reach the target; each number at most once."""
    import ast
    import json
    import os
    import random
    import re
    from collections import Counter


    def write_problems(path, n, seed):
        rng = random.Random(seed)
        rows = []
        for _ in range(n):
            nums = [rng.randint(1, 9) for _ in range(3)]
            a, b, c = nums
            rows.append({"prompt": f"Using {a}, {b}, {c} reach {a * b + c}. Answer:", "nums": nums,
                         "target": a * b + c})
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\\n" for r in rows)


    def _value(node):
        if isinstance(node, ast.Expression):
            return _value(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
            left, right = _value(node.left), _value(node.right)
            return left + right if isinstance(node.op, ast.Add) else (
                left - right if isinstance(node.op, ast.Sub) else left * right)
        raise ValueError("not + - * of integers")


    def score(text, nums, target):
        expr = text.strip().splitlines()[0] if text.strip() else ""
        used = [int(x) for x in re.findall(r"\\d+", expr)]
        if not used or Counter(used) - Counter(nums):
            return 0.0
        try:
            return 1.0 if _value(ast.parse(expr, mode="eval")) == target else 0.0
        except (SyntaxError, ValueError, RecursionError):
            return 0.0


    def countdown_reward(prompts, completions, nums, target, **kwargs):
        """1 when the first line is an expression of the numbers that equals the target."""
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        with open(os.environ["COUNTDOWN_CALLS"], "a") as f:  # which columns each call got, for the test
            f.write(json.dumps({"n": len(texts), "nums": nums, "target": target}) + "\\n")
        return [score(t, n, g) for t, n, g in zip(texts, nums, target)]
''')

CONFIG = textwrap.dedent('''
    dataset_name: {data}
    prompt_column: prompt
    use_chat_template: false
    reward_funcs: ["{task}:countdown_reward"]
    eval_holdout_size: 8
    final_eval_size: 8
    eval_size: 8
    eval_steps: 2
    max_steps: 2
    logging_steps: 1
    num_generations: 4
    per_device_train_batch_size: 8
    gradient_accumulation_steps: 1
    max_prompt_length: 64
    max_completion_length: 16
    save_steps: 2
    progress: false
    reward_num_workers: 1
''')

RECIPE = textwrap.dedent('''
    """My Countdown recipe: the library's builders, my data and my reward."""
    from pathlib import Path

    from countdown_task import write_problems

    from rlreason.build import assemble, dataset_rewards, load_data, load_policy, start
    from rlreason.build.scoring import heldout_rewards
    from rlreason.config import parse_args
    from rlreason.loop.trainer import GRPOTrainer
    from rlreason.run import finish, lock

    if __name__ == "__main__":
        cfg = parse_args(default_config=Path(__file__).parent / "countdown.yaml")
        write_problems(cfg.dataset_name, 72, seed=0)
        acc, run_dir = start(cfg)
        model, tokenizer = load_policy(cfg, acc)
        train, heldout = load_data(cfg, tokenizer)  # eval_holdout_size rows held out by prompt hash
        funcs, weights = dataset_rewards(cfg, train)
        scorer, fmt = heldout_rewards(cfg, funcs)  # no built-in accuracy here: my reward scores the held-out eval
        parts = assemble(cfg, model, tokenizer, train, funcs, weights, eval_rows=heldout, eval_accuracy_fn=scorer,
                         eval_format_fn=fmt, accelerator=acc, run_dir=run_dir)
        trainer = GRPOTrainer(cfg, parts)
        try:
            with finish.training(trainer):
                summary = trainer.train()
            finish.finish(trainer, summary, Path(cfg.output_dir))
        finally:
            lock.release(cfg.output_dir)
''')


@pytest.mark.slow
def test_a_countdown_task_written_outside_the_package_trains_with_heldout_eval_and_the_cli_scores_it(
        tiny_path, tmp_path):
    task_dir = tmp_path / "countdown"
    task_dir.mkdir()
    (task_dir / "countdown_task.py").write_text(TASK)
    data = task_dir / "problems.jsonl"
    (task_dir / "countdown.yaml").write_text(CONFIG.format(data=data, task=task_dir / "countdown_task.py"))
    (task_dir / "countdown_recipe.py").write_text(RECIPE)
    calls = tmp_path / "calls.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COUNTDOWN_CALLS": str(calls),
           "PYTHONPATH": str(task_dir)}  # the user's folder, as `cd countdown && python countdown_recipe.py`
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, str(task_dir / "countdown_recipe.py"), "--model_name_or_path",
                          str(tiny_path), "--output_dir", str(out)],
                         env=env, cwd=task_dir, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]

    # trained on the rows not held out, evaluated on the 8 held out, by the task's own reward
    problems = [json.loads(x) for x in data.read_text().splitlines()]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward/mean" in r] == [1, 2]
    evals = [r for r in rows if "eval/accuracy" in r]
    assert evals and all(r["eval/n"] == 8 and r["eval/score_failures"] == 0 for r in evals), evals
    summary = json.loads((out / "summary.json").read_text())
    assert summary["heldout_n"] == 8 and 0.0 <= summary["heldout_before"] <= 1.0
    got = [json.loads(x) for x in calls.read_text().splitlines()]
    assert {c["n"] for c in got} >= {8}, got  # the held-out eval called it with its 8 completions at once
    held_targets = {json.dumps(c["target"]) for c in got if c["n"] == 8}
    assert held_targets, got
    # a held-out call's problems are problems of the file, with their own columns (nums, target)
    by_target = {tuple(p["nums"]): p["target"] for p in problems}
    for c in got:
        assert all(by_target[tuple(n)] == t for n, t in zip(c["nums"], c["target"], strict=True))

    # the eval CLI scores the final model on the held-out problems with the same reward
    heldout_file = task_dir / "heldout.jsonl"
    heldout_file.write_text("".join(json.dumps(p) + "\n" for p in problems[:8]))
    calls.write_text("")
    results = tmp_path / "eval"
    res = subprocess.run([sys.executable, "-m", "rlreason.eval", "--model", str(out / "final_model"),
                          "--data", str(heldout_file), "--reward", f"{task_dir / 'countdown_task.py'}:countdown_reward",
                          "--prompt_column", "prompt", "--chat-template", "off", "--max-tokens", "16", "--out",
                          str(results)],
                         env=env, cwd=task_dir, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = [json.loads(x) for x in calls.read_text().splitlines()]
    assert sum(c["n"] for c in got) == 8 and sorted(t for c in got for t in c["target"]) == sorted(
        p["target"] for p in problems[:8])
    # each completion got the score the task's own function gives it, and pass@1 is their mean
    task = runpy.run_path(str(task_dir / "countdown_task.py"))
    records = read_samples(results)
    assert len(records) == 8 and all(r["prompt"].startswith("Using ") for r in records)  # as trained: no chat template
    scores = [task["score"](r["completions"][0], r["columns"]["nums"], r["columns"]["target"]) for r in records]
    assert [r["rewards"]["countdown_reward"][0] for r in records] == scores
    suite = read_results(results)["rlreason"]["suites"]["heldout"]
    assert suite["pass@1"] == sum(scores) / 8 and suite["score_failures"] == 0


# ----------------------------------------------------------------------------- the pieces, fast

def _reward(prompts, completions, target, **kw):
    return [0.0 for _ in completions]


@settings(deadline=None, derandomize=True, max_examples=200)  # a fixed-seed slice: the same cases every run
@given(st.lists(st.text(min_size=1, max_size=6), min_size=2, max_size=40), st.integers(1, 10), st.randoms())
def test_the_holdout_split_depends_on_the_prompts_only_and_never_splits_a_prompt(prompts, n, rnd):
    from rlreason.data.split import holdout_split

    if n >= len(set(prompts)):
        with pytest.raises(ValueError, match="eval_holdout_size"):
            holdout_split(prompts, n)
        return
    train, held = holdout_split(prompts, n)
    assert sorted(train + held) == list(range(len(prompts)))
    assert len({prompts[i] for i in held}) == n  # n distinct prompts held out
    assert not {prompts[i] for i in held} & {prompts[i] for i in train}
    shuffled = prompts[:]
    rnd.shuffle(shuffled)
    _, held_again = holdout_split(shuffled, n)
    assert {shuffled[i] for i in held_again} == {prompts[i] for i in held}  # whatever the file's order


def test_the_heldout_scorer_is_the_tasks_own_reward_unless_configured(tmp_path):
    from rlreason.build.run_dir import start
    from rlreason.build.scoring import heldout_rewards
    from rlreason.config import GRPOConfig
    from rlreason.rewards import RewardSpecError, accuracy_reward, format_reward

    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "target": 1}\n')
    assert heldout_rewards(GRPOConfig(), [accuracy_reward]) == (accuracy_reward, format_reward)  # the embedded task
    own = GRPOConfig(dataset_name=str(data), reward_funcs=[f"{__file__}:_reward"])
    assert heldout_rewards(own, [_reward]) == (_reward, None)
    assert heldout_rewards(own, [accuracy_reward, _reward]) == (accuracy_reward, format_reward)
    chosen = GRPOConfig(dataset_name=str(data), eval_reward_funcs=["accuracy", f"{__file__}:_reward"])
    scorer, fmt = heldout_rewards(chosen, [_reward])
    assert scorer is accuracy_reward and fmt.__name__ == "_reward"
    with pytest.raises(RewardSpecError, match="no_such_reward"):  # refused at start-up, before any model loads
        start(GRPOConfig(output_dir=str(tmp_path / "run"), dataset_name=str(data), eval_reward_funcs=["no_such_reward"],
                         progress=False))

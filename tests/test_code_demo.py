"""The code demo (make demo-code): the embedded code task (rlreason/data/tasks/code.py), its held-out
split, its sloppy teacher, and recipes/configs/tiny_code_cpu.yaml run from its YAML with the real
sandbox reward on a quickly built tiny-code (``tiny_code_path``: its tokenizer and teacher with a quarter
of its warm-up: for the wiring, not for learning). What the demo's model itself starts from is measured
by benchmarks/code_warmup.py (README, "Code")."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import yaml

from rlreason.build.data import load_data
from rlreason.config import GRPOConfig
from rlreason.data.tasks import code
from rlreason.rewards.code import code_tests, extract_code

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "configs" / "tiny_code_cpu.yaml"
FORMS = (code.RIGHT, *code.WRONG_FORMS)


def test_prompts_show_three_values_and_the_tests_check_others():
    p = code.Problem(4, 3)
    assert p.question == "f(0)=3, f(1)=7, f(2)=11"
    assert code.tests(p) == ["assert f(3) == 15", "assert f(7) == 31", "assert f(10) == 43", "assert f(25) == 103"]
    assert not set(code.HIDDEN_X) & set(code.SHOWN_X)
    assert len(code.universe()) == 29 * 100 == len({q.question for q in code.universe()})
    with pytest.raises(ValueError, match="min_a"):
        code.CodeDifficulty(min_a=0)
    with pytest.raises(ValueError, match="form"):
        code.program(p, "guess")


def test_only_the_right_program_passes_the_hidden_tests_in_the_sandbox():
    """Every form of the teacher on 12 problems, scored by the real ``code_tests`` reward (bubblewrap):
    the line passes all hidden asserts; the table (which fits the shown values) and the wrong
    intercept pass none. The shown values themselves are checked by running the programs too."""
    problems = random.Random(0).sample(code.universe(), 12)
    completions = [[{"role": "assistant", "content": code.answer(p, form)}] for p in problems for form in FORMS]
    rows = [p for p in problems for _ in FORMS]
    assert [extract_code(c) for c in completions] == [code.program(p, f) for p in problems for f in FORMS]
    hidden = code_tests(prompts=[code.prompt(p) for p in rows], completions=completions,
                        test_list=[code.tests(p) for p in rows], mode="fraction")
    assert hidden == [1.0, 0.0, 0.0] * len(problems)
    shown = [[f"assert f({x}) == {p.value(x)}" for x in code.SHOWN_X] for p in rows]
    fits = code_tests(prompts=[code.prompt(p) for p in rows], completions=completions, test_list=shown,
                      mode="fraction")
    assert fits == [1.0, 1.0, 0.0] * len(problems)  # the table overfits: right where it was shown


def test_heldout_split_is_what_eval_holdout_size_holds_out_of_the_task_file(tmp_path):
    """The recipe reads the task as a data file with eval_holdout_size: the rows it holds out are the
    task's held-out problems, disjoint from training, and the warm-up draws only training problems."""
    from rlreason import tiny

    path = code.write_jsonl(tmp_path / "code_task.jsonl")
    tok = tiny.build_spec_tokenizer(tiny.TINY_CODE)
    cfg = GRPOConfig(dataset_name=str(path), eval_holdout_size=code.HELDOUT_SIZE, model_name_or_path="tiny-code")
    train, held = load_data(cfg, tok)
    split = code.split()
    assert len(held) == code.HELDOUT_SIZE and len(train) == len(code.universe()) - code.HELDOUT_SIZE
    assert [r["prompt"] for r in held] == [code.prompt(p) for p in split["heldout"]]
    assert [r["test_list"] for r in held] == [code.tests(p) for p in split["heldout"]]
    heldout_questions = {p.question for p in split["heldout"]}
    assert not heldout_questions & {r["prompt"][0]["content"] for r in train}
    assert not heldout_questions & {p.question for p in code.generate(20_000, seed=0)}
    assert {p.question for p in code.generate(200, seed=1, split_name="heldout")} <= heldout_questions
    # the prompt the model sees is the chat template's rendering of the user's message, as in the warm-up
    assert tok.decode(held[0]["prompt_ids"]) == tiny.prompt_text(tok, split["heldout"][0].question)


def test_the_teacher_is_right_about_p_right_of_the_time_and_likeliest_wrong():
    """Measured on 4,000 draws at the demo's p_right (0.3): right 0.3 (binomial 4-sigma band), the
    table the most frequent answer, the wrong intercept the rarest."""
    rng = random.Random(7)
    p = code.Problem(5, 12)
    counts = {form: 0 for form in FORMS}
    for _ in range(4000):
        completion = code.teacher(p, 0.3, rng)
        counts[next(f for f in FORMS if completion == code.answer(p, f))] += 1
    assert abs(counts[code.RIGHT] / 4000 - 0.3) < 4 * (0.3 * 0.7 / 4000) ** 0.5
    assert counts["table"] > counts[code.RIGHT] > counts["intercept"] > 0
    with pytest.raises(ValueError, match="p_right"):
        code.teacher(p, 1.5, rng)


def test_the_recipe_names_a_data_file_and_the_code_tests_reward_only():
    cfg = yaml.safe_load(RECIPE.read_text())
    assert cfg["model_name_or_path"] == "tiny-code" and cfg["dataset_name"] == "runs/code_task.jsonl"
    assert [r["name"] for r in cfg["reward_funcs"]] == ["code_tests"]
    assert cfg["eval_holdout_size"] == code.HELDOUT_SIZE and cfg["num_threads"] == 1
    assert "python -m rlreason.data.tasks.code runs/code_task.jsonl" in (ROOT / "Makefile").read_text()


@pytest.mark.slow
def test_the_code_recipe_runs_from_its_yaml_with_the_sandbox_reward(tiny_code_path, tmp_path):
    """Two GRPO steps of the demo recipe, its YAML as written but smaller batches, on the task file
    written by the task's CLI: every completion scored by the real sandbox (no unknown rewards), the
    held-out eval scored by code_tests too."""
    import _recipes

    data = tmp_path / "code_task.jsonl"
    code.main([str(data)])
    out = tmp_path / "run"
    _recipes.grpo(["--config", str(RECIPE), "--model_name_or_path", str(tiny_code_path),
                   "--dataset_name", str(data), "--output_dir", str(out), "--max_steps", "2",
                   "--per_device_train_batch_size", "16", "--gradient_accumulation_steps", "1",
                   "--eval_steps", "1", "--eval_size", "8", "--final_eval_size", "8", "--save_steps", "0",
                   "--progress", "false", "--reward_num_workers", "0"])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "clip_frac" in r]
    assert [r["step"] for r in train] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["heldout_n"] == 8 and summary["steps"] == 2
    sampled = [json.loads(x) for x in (out / "completions.jsonl").read_text().splitlines()]
    assert sampled
    for c in sampled:
        tests = [code.tests(_problem(c["prompt"]))]
        [score] = code_tests(prompts=["p"], completions=[c["completion"]], test_list=tests, mode="binary")
        assert c["reward/code_tests"] == score  # the logged reward is the sandbox's verdict, never unknown


def _problem(prompt) -> code.Problem:
    """The problem a logged prompt (its text, or its messages) shows."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt)
    y0, y1 = map(int, re.search(r"f\(0\)=(\d+), f\(1\)=(\d+), f\(2\)=", text).groups())
    return code.Problem(y1 - y0, y0)

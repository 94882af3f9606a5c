"""Any task evaluated: a suite from a local file scored by reward functions (``scoring: reward`` in a
suite YAML, the eval CLI's ``--suite-file``), and a training run's held-out problems from a file of
their own (``eval_dataset`` with ``eval_reward_funcs``). The Countdown example that ships in
docs/examples/countdown is the user's task throughout: its reward, its 50 problems and its suite file."""

from __future__ import annotations

import json
import runpy
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from rlreason.eval import cli
from rlreason.eval import suites as suites_module
from rlreason.eval.lighteval_schema import task_name
from rlreason.eval.report import read_results, read_samples
from rlreason.eval.suites import Suite, load_suite_file, spec_relative_to

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "countdown"
REWARD = runpy.run_path(str(EXAMPLE / "countdown_reward.py"))  # the user's file, loaded as a user's script
score, countdown = REWARD["score"], REWARD["countdown"]
PROBLEMS = [json.loads(line) for line in (EXAMPLE / "countdown_test.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def own_registry():
    """Suites registered by a test (a suite file) stay in that test. The registry is restored in
    place: modules hold it by name (``from rlreason.eval.suites import SUITES``)."""
    saved = dict(suites_module.SUITES)
    yield
    suites_module.SUITES.clear()
    suites_module.SUITES.update(saved)


# --------------------------------------------------------------------------- the Countdown reward


@pytest.mark.parametrize("text, nums, target, expected", [
    ("<answer>(3 + 5) * 7</answer>", [3, 5, 7], 56, 1.0),
    ("<think>8 * 7</think> <answer> 7*(5+3) </answer>", [3, 5, 7], 56, 1.0),  # any order, spaces, after thinking
    ("<answer>12 / 8 * 6</answer>", [12, 8, 6], 9, 1.0),  # 12/8 is 3/2: exact, no float rounding
    ("<answer>-3 + 5 * 7</answer>", [3, 5, 7], 32, 1.0),  # a leading minus
    ("<answer>5 * 7 + 3</answer>", [7, 3, 5], 38, 1.0),
    ("<answer>(3 + 5) * 7</answer>", [3, 5, 7], 55, 0.1),  # wrong target
    ("<answer>3 * 3 + 5 + 7</answer>", [3, 5, 7], 21, 0.1),  # 3 used twice (the value is right)
    ("<answer>3 + 5 + 8</answer>", [3, 5, 7], 16, 0.1),  # 8 is not a given number (the value is right)
    ("<answer>3 + 5</answer>", [3, 5, 7], 8, 0.1),  # 7 unused: each number exactly once
    ("<answer>3 + * 5 7</answer>", [3, 5, 7], 56, 0.1),  # malformed
    ("<answer></answer>", [3, 5, 7], 56, 0.1),
    ("<answer>7 / (5 - 5) + 3</answer>", [7, 5, 5, 3], 10, 0.1),  # division by zero
    ("<answer>3.0 * 5 + 7</answer>", [3, 5, 7], 22, 0.1),  # not an integer literal
    ("<answer>__import__('os').getcwd()</answer>", [3, 5, 7], 56, 0.1),  # never run
    ("<answer>1 + 2</answer> then <answer>(3 + 5) * 7</answer>", [3, 5, 7], 56, 1.0),  # the last answer counts
    ("<answer>(3 + 5) * 7</answer> then <answer>1 + 2</answer>", [3, 5, 7], 56, 0.1),
    ("(3 + 5) * 7 = 56", [3, 5, 7], 56, 0.0),  # no answer tags
    ("<answer>(3 + 5) * 7", [3, 5, 7], 56, 0.0),  # not closed
])
def test_countdown_reward_on_hand_written_answers(text, nums, target, expected):
    assert score(text, nums, target) == expected


@pytest.mark.parametrize("expression", ["9 ** 9 ** 9 ** 9", "(9 ** 9) ** (9 ** 9)", "9 << 99999999",
                                        "(" * 5000 + "9" + ")" * 5000, "9" * 100000])
def test_countdown_reward_refuses_costly_answers_at_once(expression):
    start = time.perf_counter()
    assert score(f"<answer>{expression}</answer>", [9, 9, 9, 9], 1) == 0.1
    assert time.perf_counter() - start < 0.5


def test_countdown_reward_takes_trls_arguments():
    completions = ["<answer>(3 + 5) * 7</answer>", [{"role": "assistant", "content": "<answer>3 + 5 + 7</answer>"}],
                   "no answer"]
    assert countdown(prompts=["p"] * 3, completions=completions, target=[56, 15, 1], nums=[[3, 5, 7]] * 3,
                     completion_ids=[[1]] * 3, solution=["x"] * 3) == [1.0, 1.0, 0.0]


def test_the_shipped_problems_are_the_generators_and_each_solution_scores_one(tmp_path):
    """The 50 problems are what the generator's command writes (a fixed seed), and every problem is
    solvable: its generated solution, built apart from the reward, scores 1.0; a neighbour's scores 0.1."""
    runpy.run_path(str(EXAMPLE / "make_countdown.py"))["main"](["--n", "50", "--seed", "0", "--out",
                                                                str(tmp_path / "again.jsonl")])
    assert (tmp_path / "again.jsonl").read_text() == (EXAMPLE / "countdown_test.jsonl").read_text()
    assert len(PROBLEMS) == 50 and {len(p["nums"]) for p in PROBLEMS} == {3, 4}
    assert all(score(f"<answer>{p['solution']}</answer>", p["nums"], p["target"]) == 1.0 for p in PROBLEMS)
    shifted = [score(f"<answer>{a['solution']}</answer>", b["nums"], b["target"])
               for a, b in zip(PROBLEMS, PROBLEMS[1:], strict=False)]
    assert shifted.count(0.1) == len(shifted)
    assert all(f"Make {p['target']} from {p['nums']}" in p["prompt"] for p in PROBLEMS)


# --------------------------------------------------------------------------- the suite file


def test_the_suite_file_means_the_same_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (suite,) = load_suite_file(EXAMPLE / "countdown.yaml")
    assert suite.scoring == "reward" and suite.problem_column == "prompt" and suite.default_template == "plain"
    assert suite.local_path == str(EXAMPLE / "countdown_test.jsonl")
    assert suite.reward_funcs == (f"{EXAMPLE / 'countdown_reward.py'}:countdown",)
    assert suites_module.get_suite("countdown") is suite


def test_reward_specs_relative_to_the_suite_file(tmp_path):
    assert spec_relative_to("r.py:f", tmp_path) == f"{tmp_path / 'r.py'}:f"
    assert spec_relative_to("sub/r.py:f", tmp_path) == f"{tmp_path / 'sub' / 'r.py'}:f"
    assert spec_relative_to({"name": "r.py:f", "weight": 0.5, "kwargs": {"a": 1}}, tmp_path) == {
        "name": f"{tmp_path / 'r.py'}:f", "weight": 0.5, "kwargs": {"a": 1}}
    for unchanged in ("accuracy", "pkg.module:fn", "/abs/r.py:f", {"name": "soft_overlong", "kwargs": {}}):
        assert spec_relative_to(unchanged, tmp_path) == unchanged


def test_a_reward_suite_is_declared_whole():
    with pytest.raises(ValueError, match="scoring 'reward' needs reward_funcs"):
        Suite("x", local_path="x.jsonl", scoring="reward")
    with pytest.raises(ValueError, match="reward_funcs score a suite with scoring 'reward'"):
        Suite("x", local_path="x.jsonl", reward_funcs=("accuracy",))
    with pytest.raises(ValueError, match="scoring must be one of"):
        Suite("x", local_path="x.jsonl", scoring="rewards")
    suite = Suite("x", local_path="x.jsonl", scoring="reward", reward_funcs=["accuracy"], answer_column=None)
    assert suite.reward_funcs == ("accuracy",) and suite.describe()["reward_funcs"] == ("accuracy",)
    assert "answer_column" not in suite.describe() and "gold_format" not in suite.describe()  # not read


# --------------------------------------------------------------------------- the eval CLI


def _check_scored(results: dict, problems: int, n: int) -> list[float]:
    """The countdown suite's records scored as the reward scores their completions, re-applied here;
    its metrics their means. -> every reward value."""
    records = results["problems"]["countdown"]
    values = []
    for record in records:  # the file's first rows, in order
        row = PROBLEMS[record["index"]]
        assert record["columns"]["nums"] == row["nums"] and record["columns"]["target"] == row["target"]
        mine = [score(c, row["nums"], row["target"]) for c in record["completions"]]
        assert record["rewards"]["countdown"] == mine and record["correct"] == [v >= 1.0 for v in mine]
        values += mine
    metrics = results["suites"]["countdown"]
    assert (metrics["problems"], metrics["n_samples"], metrics["score_failures"]) == (problems, n, 0)
    assert metrics["mean_reward"] == pytest.approx(sum(values) / len(values))
    assert metrics["reward/countdown"] == metrics["mean_reward"]
    assert metrics["pass@1"] == pytest.approx(sum(v >= 1.0 for v in values) / len(values))
    return values


@pytest.mark.slow
def test_cli_scores_the_countdown_suite_with_its_reward_beside_a_benchmark(tiny_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the suite file's paths are its own folder's, not the working folder's
    out = tmp_path / "out"
    cli.main(["--model", str(tiny_path), "--suite-file", str(EXAMPLE / "countdown.yaml"),
              "--suites", "countdown,arith", "--limit", "6", "--n", "2", "--max-tokens", "24", "--out", str(out)])
    doc = read_results(out)  # what was written, read back
    res = {"suites": doc["rlreason"]["suites"], "config": doc["rlreason"]["config"],
           "problems": {"countdown": read_samples(out, "countdown")}}
    assert list(res["suites"]) == ["countdown", "arith"]
    _check_scored(res, 6, 2)
    assert res["problems"]["countdown"][0]["prompt"].count("Make 39 from [14, 2, 9, 17]") == 1  # rendered, plain
    assert res["suites"]["arith"]["problems"] == 6 and "pass@1" in res["suites"]["arith"]
    task = task_name("countdown")  # lighteval's results: the reward suite a task beside the benchmark
    assert doc["results"][task] and all(f"{k}_stderr" in doc["results"][task] for k in doc["results"][task]
                                        if not k.endswith("_stderr"))
    described = res["config"]["suites"]["countdown"]
    assert described["scoring"] == "reward" and described["default_template"] == "plain"
    assert list(described["reward_funcs"]) == [f"{EXAMPLE / 'countdown_reward.py'}:countdown"]
    assert described["local_path"] == str(EXAMPLE / "countdown_test.jsonl")
    assert described["reward_runner"]["functions"] == ["countdown"] and not described["reward_runner"]["in_process"]
    assert res["config"]["suites"]["arith"]["scoring"] == "answer"


@pytest.mark.slow
def test_cli_reward_suite_rewards_match_the_reward_on_varied_answers(tiny_path, tmp_path):
    """The model given each problem's own solution as its prompt writes <answer> tags, some cut short:
    rewards of 0.1 and 0.0 both occur, each the reward's own value for the written completion."""
    res = cli.main(["--model", str(tiny_path), "--suite-file", str(EXAMPLE / "countdown.yaml"), "--suites",
                    "countdown", "--limit", "8", "--n", "2", "--temperature", "1.0", "--max-tokens", "14",
                    "--user-template", "{solution}", "--reward_num_workers", "1"])
    values = _check_scored(res, 8, 2)
    assert {0.0, 0.1} <= set(values), values


def _suite_file(tmp_path: Path, rows: list[dict], reward: str) -> Path:
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({"suites": [
        {"name": "mine", "local_path": "problems.jsonl", "problem_column": "prompt", "scoring": "reward",
         "reward_funcs": [reward]}]}))
    return tmp_path / "suite.yaml"


@pytest.mark.parametrize("rows, reward, message", [
    ([{"prompt": "Make 3 from [1, 2]", "nums": [1, 2]}], f"{EXAMPLE / 'countdown_reward.py'}:countdown",
     "error: --suites mine: suite 'mine': reward_funcs[0]: reward 'countdown' needs the column 'target'"),
    ([{"prompt": "p", "nums": [1], "target": 1}], "missing.py:countdown",
     "error: --suites mine: suite 'mine': reward_funcs[0]: reward spec '{tmp}/missing.py:countdown': file"),
    ([{"question": "p", "nums": [1], "target": 1}], f"{EXAMPLE / 'countdown_reward.py'}:countdown",
     "error: --suites mine: suite 'mine': problem_column 'prompt' is no column of its data"),
    ([{"prompt": "p", "completion_ids": [1]}], "accuracy",
     "error: --suites mine: suite 'mine': column 'completion_ids' has the name of an argument every reward"),
])
def test_cli_reward_suite_bad_input_is_one_line_before_any_model(tmp_path, capsys, rows, reward, message):
    suite_file = _suite_file(tmp_path, rows, reward)
    with pytest.raises(SystemExit) as e:  # the model does not exist: refused before it is looked for
        cli.main(["--model", str(tmp_path / "no" / "model" / "here"), "--suite-file", str(suite_file),
                  "--suites", "mine"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and err.startswith(message.format(tmp=tmp_path)) and "\n" not in err, err


def test_a_reward_suite_in_eval_suites_is_refused_at_start_up(tmp_path):
    from rlreason.build.run_dir import check_eval_settings
    from rlreason.config import ConfigError, GRPOConfig

    load_suite_file(EXAMPLE / "countdown.yaml")
    with pytest.raises(ConfigError, match="config key 'eval_suites': suite 'countdown' is scored by reward functions.*"
                                          "eval_dataset and eval_reward_funcs"):
        check_eval_settings(GRPOConfig(eval_suites=["countdown"]))


# --------------------------------------------------------------------------- training: eval_dataset

# The held-out scorer: the shipped reward, each call's columns and values written down for the test.
SPY = textwrap.dedent('''
    import json
    import os
    import runpy

    _countdown = runpy.run_path({reward!r})["countdown"]

    def countdown(prompts, completions, target, nums, **kwargs):
        values = _countdown(prompts, completions, target, nums)
        with open(os.environ["COUNTDOWN_EVAL_CALLS"], "a") as f:
            f.write(json.dumps({{"nums": nums, "target": target, "values": values}}) + "\\n")
        return values
''')


def _countdown_run(tmp_path: Path, **overrides) -> tuple[Path, list[str]]:
    """A 2-step run's config: trained on 24 generated Countdown problems with the shipped reward, its
    held-out problems the first 5 shipped ones (eval_dataset), scored by the spy around the same reward."""
    make = runpy.run_path(str(EXAMPLE / "make_countdown.py"))
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make["problems"](24, 1)))
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in PROBLEMS[:5]))
    (tmp_path / "spy.py").write_text(SPY.format(reward=str(EXAMPLE / "countdown_reward.py")))
    config = {"dataset_name": str(tmp_path / "train.jsonl"), "prompt_column": "prompt",
              # the model shown the solution writes <answer> tags: rewards of 0.1 as well as 0.0
              "prompt_template": "{solution}",
              "reward_funcs": [f"{EXAMPLE / 'countdown_reward.py'}:countdown"],
              "eval_dataset": str(tmp_path / "heldout.jsonl"),
              "eval_reward_funcs": [f"{tmp_path / 'spy.py'}:countdown"],
              "eval_steps": 1, "max_steps": 2, "eval_size": 8, "final_eval_size": 8, "logging_steps": 1,
              "num_generations": 4, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
              "max_prompt_length": 128, "max_completion_length": 16, "save_steps": 0, "progress": False,
              "reward_num_workers": 1, **overrides}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "run", ["--config", str(tmp_path / "cfg.yaml"), "--output_dir", str(tmp_path / "run")]


@pytest.mark.slow
def test_training_evaluates_on_eval_dataset_scored_by_eval_reward_funcs(tiny_path, tmp_path, monkeypatch):
    import _recipes

    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("COUNTDOWN_EVAL_CALLS", str(calls))
    out, argv = _countdown_run(tmp_path)
    summary = _recipes.grpo([*argv, "--model_name_or_path", str(tiny_path)])
    assert summary["steps"] == 2 and summary["heldout_n"] == 5
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval/n" in r]
    got = [json.loads(line) for line in calls.read_text().splitlines()]
    # before, after step 1, after step 2 (eval_steps), and the final one: each of the file's 5 rows, once
    assert len(evals) == len(got) >= 3 and all(r["eval/n"] == 5 and r["eval/score_failures"] == 0 for r in evals)
    rows = sorted((p["target"], p["nums"]) for p in PROBLEMS[:5])
    for metrics, call in zip(evals, got, strict=True):
        assert sorted(zip(call["target"], call["nums"], strict=True)) == [tuple(r) for r in rows]
        assert metrics["eval/mean_reward"] == pytest.approx(sum(call["values"]) / 5)
        assert metrics["eval/accuracy"] == sum(v >= 1.0 for v in call["values"]) / 5
    assert 0.1 in {v for call in got for v in call["values"]}  # the scorer's values, not all zero


@pytest.mark.parametrize("override, message", [
    ({"eval_dataset": "{tmp}/nope.jsonl"}, "error: config key 'eval_dataset': "),
    ({"eval_dataset": "{tmp}/no_target.jsonl"},
     "error: config key 'eval_reward_funcs' scores eval_dataset '{tmp}/no_target.jsonl': reward 'countdown' needs the "
     "column 'target'"),
    ({"eval_dataset": "{tmp}/no_prompt.jsonl"}, "error: prompt column 'prompt' "),
])
def test_a_bad_eval_dataset_is_one_line_at_start_up(tiny_path, tmp_path, monkeypatch, capsys, override, message):
    import _recipes

    from rlreason.run import finish

    monkeypatch.setitem(finish._training, "started", False)  # as in a fresh process
    solution = {"nums": [1, 2], "solution": "1 + 2"}  # the run's prompt_template is "{solution}"
    (tmp_path / "no_target.jsonl").write_text(json.dumps({"prompt": "Make 3 from [1, 2]", **solution}) + "\n")
    (tmp_path / "no_prompt.jsonl").write_text(json.dumps({"question": "Make 3", "target": 3, **solution}) + "\n")
    out, argv = _countdown_run(tmp_path, **{k: v.format(tmp=tmp_path) for k, v in override.items()})
    with pytest.raises(SystemExit) as e, finish.clean_exit():
        _recipes.grpo([*argv, "--model_name_or_path", str(tiny_path)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 1 and err.startswith(message.format(tmp=tmp_path)), err
    assert not (out / "metrics.jsonl").exists()


def test_eval_dataset_conflicts_are_refused_naming_the_keys(tmp_path):
    from rlreason.config import ConfigError, GRPOConfig

    data = str(tmp_path / "d.jsonl")
    with pytest.raises(ConfigError, match="config key 'eval_dataset': .*eval_holdout_size: 4"):
        GRPOConfig(dataset_name=data, eval_dataset=data, eval_holdout_size=4)
    with pytest.raises(ConfigError, match=r"config key 'eval_dataset': the embedded task \(dataset_name: arith\)"):
        GRPOConfig(eval_dataset=data)
    with pytest.raises(ConfigError, match="config key 'eval_dataset_split': says how to load eval_dataset"):
        GRPOConfig(dataset_name=data, eval_dataset_split="test")
    cfg = GRPOConfig(dataset_name=data, eval_dataset="org/name", eval_dataset_split="test", eval_dataset_config="main")
    assert (cfg.eval_dataset, cfg.eval_dataset_split, cfg.eval_dataset_config) == ("org/name", "test", "main")

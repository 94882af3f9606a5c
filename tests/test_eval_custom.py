"""A task of the user's scored by the user's reward: the held-out evaluation calls its rewards as
training does (completion form, every column), and the eval CLI scores ``--data`` with ``--reward``."""

from __future__ import annotations

import json
import math
import textwrap
import types
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest

from rlreason.data import prepare
from rlreason.eval import cli
from rlreason.eval.core import HELDOUT_METRICS, heldout_scorer
from rlreason.eval.report import read_results, read_samples
from rlreason.loop.trainer import GRPOTrainer
from rlreason.rewards.runner import RewardRunner
from rlreason.rollout.base import Sample, SamplingConfig

# A Countdown reward as a user writes it, in a file outside the package: 1.0 when the answer's
# expression uses exactly the numbers and equals the target, 0.1 when it uses them but misses,
# 0.0 otherwise; it takes the dataset's own columns, target and nums.
COUNTDOWN = textwrap.dedent('''
    import re

    def countdown(prompts, completions, target, nums, **kwargs):
        out = []
        for completion, t, ns in zip(completions, target, nums):
            text = completion if isinstance(completion, str) else completion[-1]["content"]
            found = re.search(r"<answer>(.*?)</answer>", text)
            if found is None:
                out.append(0.0)
                continue
            expr = found.group(1)
            used = sorted(int(x) for x in re.findall(r"\\d+", expr))
            if used != sorted(ns) or not re.fullmatch(r"[\\d+\\-*/() ]+", expr):
                out.append(0.0)
                continue
            out.append(1.0 if abs(eval(expr) - t) < 1e-9 else 0.1)
        return out
''')

ROWS = [{"prompt": "Use 1 2 3 4 to make 24", "target": 24, "nums": [1, 2, 3, 4]},
        {"prompt": "Use 2 3 5 to make 30", "target": 30, "nums": [2, 3, 5]},
        {"prompt": "Use 4 6 to make 10", "target": 10, "nums": [4, 6]}]
RIGHT_24, WRONG_30, NONE = "<answer>1*2*3*4</answer>", "<answer>2+3+5</answer>", "I give up"


def _countdown(tmp_path: Path):
    path = tmp_path / "my_rewards.py"
    path.write_text(COUNTDOWN)
    from rlreason.rewards import resolve

    return path, resolve(f"{path}:countdown")


class FakeEngine:
    """Answers the i-th prompt of each call with ``texts[i]`` (its sample j: ``texts[(i * n + j) % len]``)."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def generate(self, prompts, n, sampling, seeds=None):
        return [[Sample(token_ids=[7] * (i + 1), text=self.texts[(j * n + i) % len(self.texts)],
                        finish_reason="length" if i == 0 else "stop") for i in range(n)] for j in range(len(prompts))]

    def load_weights(self, named_tensors):
        pass


class PlainTokenizer:
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 97 for c in text]}


class ChatTokenizer(PlainTokenizer):
    chat_template = "fake"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


class Spy:
    """A reward recording every call's arguments (in this process: the runners run in_process)."""

    __name__ = "spy"

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, prompts, completions, **kwargs):
        kwargs.pop("log_extra"), kwargs.pop("log_metric")
        self.calls.append({"prompts": prompts, "completions": completions, **kwargs})
        return [1.0] * len(completions)


def _trainer(rows: list[dict], engine: FakeEngine, rewards: RewardRunner, eval_scorer: RewardRunner):
    """Just enough of a GRPOTrainer for its ``generate_and_score`` (training's reward call) and ``evaluate``."""
    cfg = SimpleNamespace(num_generations=1, prompt_column="prompt", rewards_plain_text=False)
    acc = SimpleNamespace(process_index=0, num_processes=1, device="cpu")
    tr = SimpleNamespace(cfg=cfg, acc=acc, engine=engine, sampling=SamplingConfig(max_tokens=8), rewards=rewards,
                         eval_rows=rows, eval_scorer=eval_scorer, eval_sampling=SamplingConfig(max_tokens=8),
                         eval_n=1, eval_tools=None, tools=None, rollout_func=None,
                         trainer_state=lambda: {"global_step": 3})
    tr._generate = types.MethodType(GRPOTrainer._generate, tr)  # single-turn: no tools, no rollout_func
    return tr


@pytest.mark.parametrize("tokenizer", [ChatTokenizer(), PlainTokenizer()], ids=["conversational", "standard"])
def test_heldout_eval_calls_a_reward_as_training_does(tokenizer):
    rows = list(prepare(datasets.Dataset.from_list(ROWS[:1]), tokenizer=tokenizer, answer_column=None))
    train_spy, eval_spy = Spy(), Spy()
    tr = _trainer(rows, FakeEngine([RIGHT_24]), RewardRunner([train_spy], in_process=True),
                  heldout_scorer(eval_spy, in_process=True))
    GRPOTrainer.generate_and_score(tr, rows, None, {"global_step": 3})
    GRPOTrainer.evaluate(tr)
    (trained,), (evaluated,) = train_spy.calls, eval_spy.calls
    assert evaluated == trained
    if tokenizer.chat_template:  # TRL's conversational form: messages in, an assistant message out
        assert evaluated["prompts"] == [[{"role": "user", "content": "Use 1 2 3 4 to make 24"}]]
        assert evaluated["completions"] == [[{"role": "assistant", "content": RIGHT_24}]]
    else:
        assert evaluated["prompts"] == ["Use 1 2 3 4 to make 24"] and evaluated["completions"] == [RIGHT_24]
    assert evaluated["target"] == [24] and evaluated["nums"] == [[1, 2, 3, 4]]
    assert evaluated["completion_ids"] == [[7]] and evaluated["trainer_state"] == {"global_step": 3}
    assert set(evaluated) == {"prompts", "completions", "target", "nums", "completion_ids", "trainer_state"}


def test_a_countdown_reward_is_the_heldout_scorer(tmp_path):
    _, countdown = _countdown(tmp_path)
    rows = list(prepare(datasets.Dataset.from_list(ROWS), tokenizer=ChatTokenizer(), answer_column=None))
    with heldout_scorer(countdown) as scorer:  # in worker processes, as a run scores
        tr = _trainer(rows, FakeEngine([RIGHT_24, WRONG_30, NONE]), None, scorer)
        metrics = GRPOTrainer.evaluate(tr)
    samples = metrics.pop("eval/samples")
    assert [s["score"] for s in samples] == [1.0, 0.1, 0.0]
    assert metrics["eval/correct"] == 1 and metrics["eval/n"] == 3 and metrics["eval/accuracy"] == pytest.approx(1 / 3)
    assert metrics["eval/mean_reward"] == pytest.approx(1.1 / 3)
    assert metrics["eval/score_failures"] == 0 and metrics["eval/format_rate"] == 0.0
    assert metrics["eval/mean_length"] == 1.0 and metrics["eval/truncated_frac"] == 1.0  # one token, cut short
    # the names metric_for_best_model accepts are the names evaluate writes, the old ones kept
    assert set(metrics) == set(HELDOUT_METRICS)
    assert set(HELDOUT_METRICS) >= {"eval/accuracy", "eval/accuracy_ci_low", "eval/accuracy_ci_high", "eval/correct",
                                    "eval/n", "eval/format_rate", "eval/mean_length", "eval/truncated_frac",
                                    "eval/score_failures", "eval/mean_reward"}


def test_heldout_mean_reward_leaves_out_none_and_failures():
    def partial(prompts, completions, **kwargs):
        return [None if "skip" in c else 0.5 for c in completions]

    rows = [{"prompt": "p", "prompt_ids": [1], "answer": "1"}] * 4
    with heldout_scorer(partial, in_process=True) as scorer:
        tr = _trainer(rows, FakeEngine(["a", "skip", "b", "skip"]), None, scorer)
        metrics = GRPOTrainer.evaluate(tr)
    assert metrics["eval/mean_reward"] == 0.5 and metrics["eval/correct"] == 0
    with heldout_scorer(lambda prompts, completions, **kw: [None] * len(completions), in_process=True) as scorer:
        metrics = GRPOTrainer.evaluate(_trainer(rows, FakeEngine(["a"]), None, scorer))
    assert math.isnan(metrics["eval/mean_reward"])


# --------------------------------------------------------------------------- the eval CLI


def _task(tmp_path: Path, rows: list[dict] = ROWS) -> tuple[Path, Path]:
    reward_file, _ = _countdown(tmp_path)
    data = tmp_path / "countdown.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data, reward_file


def _fake_model(monkeypatch, texts: list[str], tokenizer=None) -> None:
    monkeypatch.setattr(cli, "resolve_model", lambda model: model)
    monkeypatch.setattr(cli, "build_engine", lambda args, path: (FakeEngine(texts), tokenizer or ChatTokenizer()))


def test_cli_scores_a_task_of_the_users_with_its_reward(tmp_path, monkeypatch, capsys):
    data, reward_file = _task(tmp_path)
    # two samples per problem: problem 0 right, then other numbers (0.0); problem 1 a miss twice (0.1);
    # problem 2 no answer twice
    _fake_model(monkeypatch, [RIGHT_24, WRONG_30, WRONG_30, WRONG_30, NONE, NONE])
    out = tmp_path / "out"
    cli.main(["--model", "ckpt", "--data", str(data), "--reward", f"{reward_file}:countdown", "--n", "2",
              "--out", str(out)])
    results = read_results(out)["rlreason"]
    m = results["suites"]["countdown"]
    assert list(results["suites"]) == ["countdown"]  # no suite besides the task (math500 is the default without)
    assert (m["problems"], m["n_samples"]) == (3, 2)
    assert m["pass@1"] == pytest.approx(1 / 6) and m["pass@2"] == pytest.approx(1 / 3)
    assert m["mean_reward"] == pytest.approx((1.0 + 0.1 * 2) / 6) and m["reward/countdown"] == m["mean_reward"]
    assert m["score_failures"] == 0 and m["truncation_rate"] == 0.5
    config = results["config"]["suites"]["countdown"]
    assert config["data"] == str(data) and config["rewards"] == [f"{reward_file}:countdown"]
    assert config["scoring"]["functions"] == ["countdown"] and not config["scoring"]["in_process"]
    problems = read_samples(out)
    assert [p["rewards"]["countdown"] for p in problems] == [[1.0, 0.0], [0.1, 0.1], [0.0, 0.0]]
    assert [p["correct"] for p in problems] == [[True, False], [False, False], [False, False]]
    assert problems[0]["columns"] == {"target": 24, "nums": [1, 2, 3, 4]}
    assert problems[0]["prompt"] == "<user>Use 1 2 3 4 to make 24<assistant>"  # rendered as training renders
    assert "| countdown |" in capsys.readouterr().out and "| countdown |" in (out / "results.md").read_text()


def test_cli_task_rewards_see_what_training_rewards_see(tmp_path, monkeypatch):
    """Several rewards, the first deciding what is correct; conversational completions; in process."""
    data, reward_file = _task(tmp_path, ROWS[:1])
    seen = tmp_path / "seen.json"
    (tmp_path / "spy.py").write_text(textwrap.dedent(f'''
        import json

        def spy(prompts, completions, **kwargs):
            kwargs.pop("log_extra"), kwargs.pop("log_metric")
            with open({str(seen)!r}, "w") as f:
                json.dump({{"prompts": prompts, "completions": completions, **kwargs}}, f)
            return [0.25] * len(completions)
    '''))
    _fake_model(monkeypatch, [RIGHT_24])
    res = cli.main(["--model", "ckpt", "--data", str(data), "--reward", f"{reward_file}:countdown",
                    "--reward", f"{tmp_path / 'spy.py'}:spy", "--reward_num_workers", "0"])
    m = res["suites"]["countdown"]
    assert m["pass@1"] == 1.0 and m["mean_reward"] == 1.0 and m["reward/spy"] == 0.25
    assert json.loads(seen.read_text()) == {
        "prompts": [[{"role": "user", "content": "Use 1 2 3 4 to make 24"}]],
        "completions": [[{"role": "assistant", "content": RIGHT_24}]],
        "target": [24], "nums": [[1, 2, 3, 4]], "completion_ids": [[7]]}


def test_cli_task_and_suites_together_and_defaults(tmp_path, monkeypatch):
    assert cli.parse_args(["--model", "x"]).suites == "math500"  # unchanged without --data
    data, reward_file = _task(tmp_path)
    assert cli.parse_args(["--model", "x", "--data", str(data)]).suites == ""
    assert cli.parse_args(["--model", "x", "--data", str(data)]).reward is None  # accuracy, by default
    with pytest.raises(SystemExit):
        cli.parse_args(["--model", "x", "--reward", "accuracy"])  # a reward for no data


@pytest.mark.parametrize("flags, message", [
    (["--reward", "accuracyy"], "error: --reward 'accuracyy': unknown reward 'accuracyy' (did you mean 'accuracy'?)"),
    (["--reward", "{reward_file}:countdown", "--prompt_column", "question"],
     "error: --prompt_column 'question': no such column in --data"),
    (["--reward", "{reward_file}:nothing"], "error: --reward '{reward_file}:nothing': reward spec"),
    (["--reward", "{tmp}/missing.py:countdown"], "error: --reward '{tmp}/missing.py:countdown'"),
    ([], "error: --reward 'accuracy': reward 'accuracy_reward' needs"),  # the default reward: no answer column
])
def test_cli_task_bad_input_is_one_line_naming_it(tmp_path, monkeypatch, capsys, flags, message):
    data, reward_file = _task(tmp_path)
    _fake_model(monkeypatch, [RIGHT_24])
    fill = {"reward_file": reward_file, "tmp": tmp_path}
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", "ckpt", "--data", str(data), *(f.format(**fill) for f in flags)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 1 and err.startswith(message.format(**fill)) and "\n" not in err, err


def test_cli_task_missing_column_and_missing_file(tmp_path, monkeypatch, capsys):
    data, reward_file = _task(tmp_path, [{"prompt": "Use 1 2 to make 3", "nums": [1, 2]}])  # no target
    _fake_model(monkeypatch, [RIGHT_24])
    with pytest.raises(SystemExit):
        cli.main(["--model", "ckpt", "--data", str(data), "--reward", f"{reward_file}:countdown"])
    err = capsys.readouterr().err.strip()
    assert "needs the column 'target'" in err and err.startswith("error: --reward") and "\n" not in err, err
    with pytest.raises(SystemExit):
        cli.main(["--model", "ckpt", "--data", str(tmp_path / "nope.jsonl"), "--reward", f"{reward_file}:countdown"])
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --data {str(tmp_path / 'nope.jsonl')!r}: ") and "not found" in err, err


@pytest.mark.slow
def test_cli_scores_the_tiny_model_on_a_countdown_file(tiny_path, tmp_path):
    """End to end on the real tiny model: generated, scored by the user's file, written as a suite."""
    data, reward_file = _task(tmp_path)
    out = tmp_path / "out"
    res = cli.main(["--model", str(tiny_path), "--data", str(data), "--reward", f"{reward_file}:countdown",
                    "--max-tokens", "16", "--out", str(out)])
    m = res["suites"]["countdown"]
    assert m["problems"] == 3 and m["score_failures"] == 0 and m["mean_reward"] is not None
    assert read_results(out)["rlreason"]["suites"]["countdown"]["problems"] == 3

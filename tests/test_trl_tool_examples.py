"""TRL's documented tool and environment examples run on rlreason's ``GRPOTrainer`` (issue 32's
acceptance: "TRL's documented tool examples ... run unchanged").

The examples are TRL's own text, copied verbatim from the "Agent Training" section of TRL's GRPO
guide (huggingface/trl, docs/source/grpo_trainer.md, at f2cd577; TRL 1.16's ``GRPOTrainer``
docstring documents the same API) and executed with ``exec``. ``adapt`` changes only what a test
must change, each edit checked to apply exactly as often as expected, so the rest is the doc's text:

- the import (``from trl import`` -> ``from rlreason import``) and the model id
  (``"Qwen/Qwen3-0.6B"`` -> the folder of ``tiny-tools`` built with a shorter warm-up, tests/conftest.py);
- the run's size: the doc's ``GRPOConfig(...)`` gets the small settings below (steps, batch,
  lengths) in front of its own arguments, ``max_steps=1000`` becomes those settings' 2, and a
  trainer built without ``args`` gets ``args=GRPOConfig(**FAST)``;
- the doc's placeholders: ``...`` in an argument list (the tools example passes "``tools=[...],
  ...``") becomes this test's model, dataset and reward; ``...`` as a reward's body becomes a
  recording reward; ``reward_func`` (not defined in the doc) is this test's recording reward;
- the second environment example's ``increment`` says "see the full docstring above": it gets
  that docstring (a tool without one has no schema, in TRL as here).

Every run is 2 steps of 8 rollouts (2 prompts x 4) on the tiny model; rewards run in this process
(``reward_num_workers=0``) so the test sees what they were called with.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

MODEL_ID = "tiny-tools"
# small enough for a test; everything else is the doc's own
FAST = dict(output_dir="run", max_steps=2, num_generations=4, per_device_train_batch_size=8,
            gradient_accumulation_steps=1, max_completion_length=48, max_tool_calling_iterations=2,
            learning_rate=1e-5, logging_steps=1, log_completions_steps=1, save_steps=0, eval_steps=0,
            reward_num_workers=0, progress=False, seed=0)

TOOLS_EXAMPLE = '''
from trl import GRPOTrainer

def multiply(a: int, b: int) -> int:
    """
    Multiplies two integers.

    Args:
        a: The first integer.
        b: The second integer.

    Returns:
        The product of the two integers.
    """
    return a * b

async def async_add(a: int, b: int) -> int:
    """
    Asynchronously adds two integers.

    Args:
        a: The first integer.
        b: The second integer.

    Returns:
        The sum of the two integers.
    """
    return a + b

trainer = GRPOTrainer(
    tools=[multiply, async_add],
    ...,
)
'''

ENV_EXAMPLE = '''
import random

from trl import GRPOConfig, GRPOTrainer

class IncrementEnv:
    # Reserved methods
    def reset(self, **kwargs) -> str | None:  # required; called at the start of each rollout
        self.counter = 0
        self.target = random.randint(1, 6)  # self-sample the task
        return f"Increment the counter by {self.target}."  # returned string becomes the prompt

    def get_reward(self) -> float:  # optional: the environment scores itself from its own state
        return float(self.counter == self.target)

    # Public methods (exposed as tools)
    def increment(self, step: int) -> int:
        """
        Increment the internal counter.

        Args:
            step: Value to add to the counter.

        Returns:
            The updated counter value.
        """
        self.counter += step
        return self.counter

trainer = GRPOTrainer(
    model="Qwen/Qwen3-0.6B",
    args=GRPOConfig(max_steps=1000, chat_template_kwargs={"enable_thinking": False}),
    environment_factory=IncrementEnv,
)
trainer.train()
'''

DATASET_ENV_EXAMPLE = '''
from datasets import Dataset
from trl import GRPOTrainer

# Each row carries the prompt and the task data (here, the counter target to reach).
dataset = Dataset.from_dict(
    {
        "prompt": [[{"role": "user", "content": f"Increment the counter to {i}."}] for i in range(1, 7)],
        "target": list(range(1, 7)),
    }
)

class IncrementEnv:
    def reset(self, target, **kwargs) -> None:  # the row's `target` column arrives as a keyword argument
        self.counter = 0
        self.target = target

    def get_reward(self) -> float:
        return float(self.counter == self.target)

    def increment(self, step: int) -> int:  # exposed as a tool (see the full docstring above)
        self.counter += step
        return self.counter

trainer = GRPOTrainer(
    model="Qwen/Qwen3-0.6B",
    train_dataset=dataset,  # the dataset owns the task; the "target" column reaches reset(target=...)
    environment_factory=IncrementEnv,
)
trainer.train()
'''

REWARDS_EXAMPLE = '''
def format_reward(completions, **kwargs):  # trainer-owned: scores the completion text
    ...

trainer = GRPOTrainer(
    model="Qwen/Qwen3-0.6B",
    args=GRPOConfig(max_steps=1000),
    reward_funcs=format_reward,          # trainer-owned: scores the completion
    environment_factory=IncrementEnv,    # env-owned: scores its internal state via `get_reward`
)
'''

MULTI_ENV_EXAMPLE = '''
import random

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer


class CodingEnv:
    def reset(self, **kwargs) -> str:
        n = random.randint(1, 20)
        return f"Compute the {n}th Fibonacci number."

    def run_code(self, code: str) -> str:  # exposed as a tool only for "coding" examples
        """Run the given Python code and return its stdout.

        Args:
            code: The Python source to execute.

        Returns:
            The captured standard output.
        """
        ...

class GameEnv:
    def reset(self, **kwargs) -> str:
        return "Reach the goal tile."

    def move(self, action: str) -> str:  # exposed as a tool only for "game" examples
        """Apply an action to the game and return the new observation.

        Args:
            action: One of "up", "down", "left", "right".

        Returns:
            The observation after the move.
        """
        ...

# The dataset only routes: each row picks the environment for that rollout
dataset = Dataset.from_dict({"environment": ["coding", "game"] * 500})

trainer = GRPOTrainer(
    model="Qwen/Qwen3-0.6B",
    args=GRPOConfig(chat_template_kwargs={"enable_thinking": False}),
    train_dataset=dataset,
    reward_funcs=reward_func,
    environment_factory={"coding": CodingEnv, "game": GameEnv},
)
trainer.train()
'''

INCREMENT_DOC = '''
        """
        Increment the internal counter.

        Args:
            step: Value to add to the counter.

        Returns:
            The updated counter value.
        """'''


def edit(code: str, old: str, new: str, count: int = 1) -> str:
    """``code`` with ``old`` replaced by ``new``, which must occur exactly ``count`` times."""
    assert code.count(old) == count, (old, code.count(old))
    return code.replace(old, new)


def adapt(code: str) -> str:
    """The edits every example gets (the module docstring lists them)."""
    code = code.replace("from trl import", "from rlreason import")
    code = code.replace('"Qwen/Qwen3-0.6B"', "MODEL_ID")
    code = code.replace("GRPOConfig(max_steps=1000", "GRPOConfig(**FAST")
    return re.sub(r"GRPOConfig\((?!\*\*FAST)", "GRPOConfig(**FAST, ", code)


def run(code: str, tmp_path: Path, monkeypatch, **scope) -> dict:
    monkeypatch.chdir(tmp_path)  # FAST's output_dir is relative
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    scope = {"MODEL_ID": MODEL_ID, "FAST": FAST, "__name__": "trl_doc_example", **scope}
    exec(compile(code, "trl-docs/grpo_trainer.md", "exec"), scope)
    return scope


def logs(tmp_path: Path) -> tuple[list[dict], list[dict]]:
    """(metrics.jsonl rows, completions.jsonl rows) of the run in ``tmp_path``."""
    read = lambda name: [json.loads(x) for x in (tmp_path / "run" / name).read_text().splitlines() if x]  # noqa: E731
    return read("metrics.jsonl"), read("completions.jsonl")


class Recorder:
    """A reward that records what it was called with and scores nothing (None: does not apply)."""

    def __init__(self, value: float | None = None) -> None:
        self.calls: list[dict] = []
        self.value = value
        self.__name__ = "recorder"

    def __call__(self, prompts, completions, **kwargs):
        self.calls.append({"prompts": prompts, "completions": completions, **kwargs})
        return [self.value] * len(completions)


def _calls(messages: list[dict], name: str) -> list[tuple[dict, dict]]:
    """(the call's arguments, the tool message answering it) for each call of ``name`` in an exchange
    (tool messages follow their assistant turn, in call order)."""
    out = []
    pending: list[dict] = []
    for m in messages:
        if m["role"] == "assistant":
            pending = [c["function"] for c in m.get("tool_calls") or []]
        elif m["role"] == "tool" and pending:
            fn = pending.pop(0)
            if fn["name"] == name:
                args = fn["arguments"]
                out.append((json.loads(args) if isinstance(args, str) else args, m))
    return out


@pytest.fixture(scope="module")
def tools_model(tiny_tools_path):
    """tiny-tools with a shorter warm-up (tests/conftest.py); the examples' model id becomes its folder."""
    global MODEL_ID
    MODEL_ID = str(tiny_tools_path)
    return tiny_tools_path


def _tools_example(tmp_path: Path, monkeypatch, tools: str | None = None) -> tuple[dict, Recorder]:
    """The tools example run for 2 steps on the multiplication task's problems (the doc leaves the
    model, data and reward to the reader: "``...``"); ``tools`` replaces its tool list."""
    from datasets import Dataset

    from rlreason.data.tasks import mul

    record = Recorder(value=0.0)
    dataset = Dataset.from_list(mul.to_records(mul.generate(8, 0)))
    code = edit(adapt(TOOLS_EXAMPLE), "    ...,\n",
                "    model=MODEL_ID, args=GRPOConfig(**FAST), train_dataset=DATASET, reward_funcs=RECORD,\n")
    code = edit(code, "from rlreason import GRPOTrainer", "from rlreason import GRPOConfig, GRPOTrainer")
    if tools is not None:
        code = edit(code, "tools=[multiply, async_add]", tools)
    scope = run(code + "trainer.train()\n", tmp_path, monkeypatch, DATASET=dataset, RECORD=record)
    return scope, record


def test_the_tools_example_runs_with_a_sync_and_an_async_tool(tools_model, tmp_path, monkeypatch):
    scope, record = _tools_example(tmp_path, monkeypatch)
    assert scope["trainer"].state.global_step == 2
    seen = [c for call in record.calls for c in call["completions"]]
    assert len(seen) == 16 and all(c and c[0]["role"] == "assistant" for c in seen)  # exchanges, TRL's form
    metrics, _ = logs(tmp_path)
    # the logged rate of calls run lies between the calls answered in the exchanges the reward saw and the
    # calls the model wrote (a call written in a turn cut by length, or past the iteration limit, is not run)
    logged = [r["tools/call_frequency"] for r in metrics if "reward/mean" in r]
    assert len(logged) == 2
    for i, rate in enumerate(logged):
        group = seen[8 * i:8 * i + 8]
        answered = sum(m["role"] == "tool" for c in group for m in c) / 8
        written = sum(len(m.get("tool_calls") or []) for c in group for m in c if m["role"] == "assistant") / 8
        assert answered - 1e-12 <= rate <= written + 1e-12


def test_the_tools_examples_multiply_is_called_and_the_reward_sees_its_result(tools_model, tmp_path, monkeypatch):
    # the tiny model was warmed up on one tool, listed alone ("tools: multiply(a, b)"): with the
    # example's second tool in the list it writes no call, so this run offers the example's
    # multiply alone, to see calls go through
    scope, record = _tools_example(tmp_path, monkeypatch, tools="tools=[multiply]")
    assert scope["trainer"].state.global_step == 2
    results = []
    for call in record.calls:
        for completion in call["completions"]:
            for args, msg in _calls(completion, "multiply"):
                # the doc's multiply ran on the arguments the model wrote (the tiny model copies the
                # factors imperfectly), and the reward got its answer as the tool turn after the call
                results.append(msg["content"])
                assert msg["content"] == str(int(args["a"]) * int(args["b"])), (args, msg)
                assert completion.index(msg) > 0
    assert len(results) >= 2, results
    metrics, _ = logs(tmp_path)
    assert any(r.get("tools/call_frequency", 0) > 0 for r in metrics)


def _check_increment_rewards(rows: list[dict], target_of) -> int:
    """Each completions.jsonl row's IncrementEnv reward against its exchange: the counter (the last
    increment's result, 0 without one) equals the prompt's target. -> rows checked."""
    assert rows
    for r in rows:
        assert r["reward/IncrementEnv"] in (0.0, 1.0), r
        calls = _calls(r.get("messages") or [], "increment")
        counter = int(calls[-1][1]["content"]) if calls and not r["tool_stats"]["failures"] else 0
        if not calls:
            assert counter == 0
        assert r["reward/IncrementEnv"] == float(counter == target_of(r)), r
    return len(rows)


def test_the_self_sampling_environment_example_logs_get_reward_under_its_class_name(tools_model, tmp_path,
                                                                                   monkeypatch):
    scope = run(adapt(ENV_EXAMPLE), tmp_path, monkeypatch)
    assert scope["trainer"].state.global_step == 2
    metrics, rows = logs(tmp_path)
    assert all("rewards/IncrementEnv/mean" in r for r in metrics if "reward/mean" in r)

    def target(row: dict) -> int:  # reset's prompt, as the model was asked
        text = json.dumps(row["prompt"])
        return int(re.search(r"Increment the counter by (\d)\.", text).group(1))

    assert _check_increment_rewards(rows, target) == 16


def test_the_dataset_environment_example_passes_the_row_to_reset(tools_model, tmp_path, monkeypatch):
    code = edit(adapt(DATASET_ENV_EXAMPLE), "    def increment(self, step: int) -> int:  # exposed as a tool "
                "(see the full docstring above)\n",
                "    def increment(self, step: int) -> int:  # exposed as a tool (see the full docstring above)"
                + INCREMENT_DOC + "\n")
    code = edit(code, "    environment_factory=IncrementEnv,\n)",
                "    environment_factory=IncrementEnv,\n    args=GRPOConfig(**FAST),\n)")
    code = edit(code, "from rlreason import GRPOTrainer", "from rlreason import GRPOConfig, GRPOTrainer")
    scope = run(code, tmp_path, monkeypatch)
    assert scope["trainer"].state.global_step == 2
    _, rows = logs(tmp_path)

    def target(row: dict) -> int:  # the dataset's prompt names the same target as its column
        return int(re.search(r"Increment the counter to (\d)\.", json.dumps(row["prompt"])).group(1))

    assert _check_increment_rewards(rows, target) == 16


def test_the_rewards_example_sums_a_trainer_reward_and_get_reward(tools_model, tmp_path, monkeypatch):
    # the section builds on the IncrementEnv defined before it (the self-sampling example's)
    definitions = adapt(ENV_EXAMPLE).split("trainer = GRPOTrainer(")[0]
    record = Recorder(value=0.25)
    code = edit(adapt(REWARDS_EXAMPLE), "def format_reward(completions, **kwargs):  # trainer-owned: scores the "
                "completion text\n    ...\n", "format_reward = RECORD\n")
    scope = run(definitions + code + "trainer.train()\n", tmp_path, monkeypatch, RECORD=record)
    assert scope["trainer"].state.global_step == 2 and record.calls
    _, rows = logs(tmp_path)
    assert all(r["reward/recorder"] == 0.25 for r in rows)
    for r in rows:  # all sources summed, get_reward with weight 1
        assert r["reward"] == pytest.approx(0.25 + r["reward/IncrementEnv"]), r


def test_the_multiple_environments_example_routes_each_row_to_its_environment(tools_model, tmp_path,
                                                                                        monkeypatch):
    record = Recorder(value=1.0)
    scope = run(adapt(MULTI_ENV_EXAMPLE), tmp_path, monkeypatch, reward_func=record)
    assert scope["trainer"].state.global_step == 2
    _, rows = logs(tmp_path)
    kinds = set()
    for r in rows:
        text = json.dumps(r["prompt"])
        kind = "coding" if "Fibonacci" in text else "game"
        assert ("Reach the goal tile." in text) == (kind == "game")
        kinds.add(kind)
        called = {k for k, _ in (r.get("tool_stats") or {}).get("per_tool", {}).items()}
        assert not called & ({"move"} if kind == "coding" else {"run_code"}), r
    assert kinds == {"coding", "game"}


def test_chat_template_kwargs_reach_the_prompts_the_model_continues(tools_model, tmp_path, monkeypatch):
    """TRL's ``chat_template_kwargs`` (the examples pass Qwen3's ``enable_thinking``) are the chat
    template's variables wherever a prompt is rendered: here a template that writes a marker when
    ``enable_thinking`` is false, found in the rendered dataset prompts and in the prompts the tool
    rollouts continued (rendered again with the tool list)."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    import rlreason
    from rlreason.data.tasks import mul

    tok = AutoTokenizer.from_pretrained(tools_model)
    marker = "THINKING OFF"
    tok.chat_template = ("{%- if enable_thinking is defined and not enable_thinking -%}" + marker
                         + "{%- endif -%}" + tok.chat_template)
    monkeypatch.chdir(tmp_path)
    args = rlreason.GRPOConfig(**FAST, chat_template_kwargs={"enable_thinking": False})
    trainer = rlreason.GRPOTrainer(model=MODEL_ID, processing_class=tok, reward_funcs=Recorder(0.0), args=args,
                                   train_dataset=Dataset.from_list(mul.to_records(mul.generate(8, 0))),
                                   tools=[mul.multiply])
    loop = trainer.trainer
    try:
        rows = [loop.train_dataset[i] for i in range(2)]
        assert all(r["prompt_text"].startswith(marker) for r in rows)
        rollout = loop.rollout(rows)
        prompts = [tok.decode(ids) for ids in rollout.prompt_ids]
        assert len(prompts) == 8 and all(p.startswith(marker) and "tools: multiply(a, b)" in p for p in prompts)
    finally:
        loop.close()
    without = AutoTokenizer.from_pretrained(tools_model)
    without.chat_template = tok.chat_template
    plain = without.apply_chat_template(mul.prompt(mul.generate(1, 0)[0]), tokenize=False)
    assert not plain.startswith(marker)  # the marker is the kwarg's doing

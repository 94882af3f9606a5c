"""The user API of tools and environments (issue 32): ``GRPOTrainer(tools=, environment_factory=,
rollout_func=)`` with TRL 1.16's rules, and the config keys (YAML / command line) that name them.

Construction errors come first and by name: no reward source (TRL's own text), an environment
without ``reset``, a dict factory and a row naming an environment it does not have, tools with a
plain-text dataset, an environment owning the data without ``max_steps``. Then the keys: a YAML
round trip, ``"path/file.py:Class"`` resolved by the reward registry's loader (and run in the
executor's worker processes), bad values named. A trainer built with an environment that owns both
the data and the reward trains a step on the tiny model."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import datasets
import pytest
import yaml

from rlreason import GRPOConfig, GRPOTrainer
from rlreason.build.tools import NO_REWARD_SOURCE, resolve_tools
from rlreason.config import ConfigError, from_dict, load_yaml, parse_overrides
from rlreason.rewards import RewardSpecError
from rlreason.rollout.tools import ToolExecutor
from rlreason.run import lock

# A ChatML template that renders tools (Hermes / Qwen2.5's format, compact): the tiny model's own
# renders no tool calls, and a run with tools is refused for such a template (check_tool_template).
TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools:\n{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}"
    "<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}<|im_start|>assistant\n{{ message.content }}"
    "{%- for call in message.tool_calls or [] %}<tool_call>\n"
    "{\"name\": \"{{ call.function.name }}\", \"arguments\": {{ call.function.arguments | tojson }}}\n</tool_call>"
    "{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n"
    "</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}")

CHAT = [[{"role": "user", "content": f"What is {a} times {b}?"}] for a, b in ((3, 4), (12, 5), (7, 7), (9, 8))]


def small(tmp_path: Path, **overrides: object) -> GRPOConfig:
    """Every value the tests depend on, explicit (tests/test_trl_api.py's ``small``), with a tool template."""
    values = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, gradient_accumulation_steps=1,
                  num_generations=4, max_completion_length=8, max_steps=1, learning_rate=1e-5, seed=0,
                  loss_type="grpo", beta=0.0, report_to="none", use_cpu=True, bf16=False, logging_steps=1,
                  save_steps=0, eval_steps=0, final_eval_size=0, log_completions_steps=0, reward_num_workers=0,
                  progress=False, chat_template=TOOL_TEMPLATE, max_tool_calling_iterations=2, tool_num_workers=1,
                  tool_timeout_s=5.0)
    return GRPOConfig(**{**values, **overrides})


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


def ok_reward(completions: list, **kwargs: object) -> list[float]:
    return [0.0] * len(completions)


class Scored:
    """Owns its data (reset gives the prompt) and its reward."""

    def reset(self, **row: object) -> str:
        self.calls = 0
        return "Multiply 3 by 4 with the tool."

    def multiply(self, a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: The first factor.
            b: The second factor.
        """
        self.calls += 1
        return a * b

    def get_reward(self) -> float:
        return 0.5 + self.calls


class Unscored:
    def reset(self, **row: object) -> None:
        return None

    def look(self) -> str:
        """Look around."""
        return "a room"


class NoReset:
    def look(self) -> str:
        """Look around."""
        return "a room"


# ------------------------------------------------------------------ construction errors


def test_no_reward_source_is_trls_error(tiny_path: Path, tmp_path: Path) -> None:
    chat = datasets.Dataset.from_dict({"prompt": CHAT})
    with pytest.raises(ValueError) as info:  # an environment without get_reward, no reward_funcs
        GRPOTrainer(model="tiny", args=small(tmp_path / "a"), train_dataset=chat, environment_factory=Unscored)
    assert str(info.value) == NO_REWARD_SOURCE
    assert NO_REWARD_SOURCE.startswith("No reward source provided. Pass `reward_funcs`")  # TRL 1.16's words
    with pytest.raises(ValueError, match="No reward source provided"):  # neither
        GRPOTrainer(model="tiny", args=small(tmp_path / "b"), train_dataset=chat, tools=[multiply])


def test_environment_without_reset_is_refused(tiny_path: Path, tmp_path: Path) -> None:
    chat = datasets.Dataset.from_dict({"prompt": CHAT})
    with pytest.raises(ValueError, match=r"environment_factory: the environment it returns \(NoReset\) has no reset"):
        GRPOTrainer(model="tiny", reward_funcs=ok_reward, args=small(tmp_path), train_dataset=chat,
                    environment_factory=NoReset)


def test_dict_factory_with_an_unknown_environment_name(tiny_path: Path, tmp_path: Path) -> None:
    rows = datasets.Dataset.from_dict({"prompt": CHAT, "environment": ["room", "chess", "room", "room"]})
    with pytest.raises(ValueError, match=r"'environment' names environment\(s\) 'chess'.*it has 'room', 'scored'"):
        GRPOTrainer(model="tiny", reward_funcs=ok_reward, args=small(tmp_path / "a"), train_dataset=rows,
                    environment_factory={"room": Unscored, "scored": Scored})
    no_column = datasets.Dataset.from_dict({"prompt": CHAT})
    with pytest.raises(ValueError, match="every row needs an 'environment' column"):
        GRPOTrainer(model="tiny", reward_funcs=ok_reward, args=small(tmp_path / "b"), train_dataset=no_column,
                    environment_factory={"room": Unscored})
    with pytest.raises(ValueError, match="a dict environment_factory .* needs a train_dataset"):  # TRL's rule
        GRPOTrainer(model="tiny", reward_funcs=ok_reward, args=small(tmp_path / "c"),
                    environment_factory={"room": Unscored})


def test_tools_with_a_plain_text_dataset_are_refused(tiny_path: Path, tmp_path: Path) -> None:
    plain = datasets.Dataset.from_dict({"prompt": ["3 times 4 is", "12 times 5 is", "7 times 7 is", "9 times 8 is"]})
    with pytest.raises(ValueError, match="tools need conversational prompts.*use_chat_template: true"):
        GRPOTrainer(model="tiny", reward_funcs=ok_reward, args=small(tmp_path), train_dataset=plain,
                    tools=[multiply])


def test_a_template_that_cannot_render_tools_is_refused(tiny_path: Path, tmp_path: Path) -> None:
    chat = datasets.Dataset.from_dict({"prompt": CHAT})
    plain_chatml = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
                    "+ '<|im_end|>\n' }}{% endfor %}")
    with pytest.raises(ValueError, match="cannot render tool calls"):
        GRPOTrainer(model="tiny", reward_funcs=ok_reward, args=small(tmp_path, chat_template=plain_chatml),
                    train_dataset=chat, tools=[multiply])


def test_environment_owning_the_data_needs_max_steps(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config key 'max_steps'.*without a train_dataset"):
        GRPOTrainer(model="tiny", args=small(tmp_path, max_steps=-1), environment_factory=Scored)


# ------------------------------------------------------------------ a run


def test_a_dataset_that_only_routes_environments(tiny_path: Path, tmp_path: Path) -> None:
    """TRL's multi-environment example: the dataset has an 'environment' column and no prompt."""
    routing = datasets.Dataset.from_dict({"environment": ["room", "scored"] * 2})
    trainer = GRPOTrainer(model="tiny", args=small(tmp_path), train_dataset=routing,
                          environment_factory={"room": Unscored, "scored": Scored})
    try:
        assert trainer.train_dataset["prompt"][0] == [{"role": "user", "content": ""}]
        starts = trainer.trainer.tools.start([{"environment": "room"}, {"environment": "scored"}])
        assert [[s["function"]["name"] for s in st.schemas] for st in starts] == [["look"], ["multiply"]]
        assert trainer.trainer.tools.reward_names == ["Scored"]
    finally:
        trainer.trainer.close()
        lock.release(str(tmp_path / "out"))


def test_environment_owning_data_and_reward_trains(tiny_path: Path, tmp_path: Path) -> None:
    """No train_dataset, no reward_funcs: reset gives the prompt, get_reward the reward (TRL's rules)."""
    trainer = GRPOTrainer(model="tiny", args=small(tmp_path), environment_factory=Scored)
    executor = trainer.trainer.tools
    assert isinstance(executor, ToolExecutor) and executor.reward_names == ["Scored"]
    assert executor.isolation == "process" and executor.timeout_s == 5.0
    recorded = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert recorded["environment_factory"] == f"{__name__}:Scored" and recorded["reward_funcs"] == []
    assert trainer.train_dataset.num_rows == 2  # TRL's stand-in: one generation's prompts (8 / 4)
    out = trainer.train()
    assert out.global_step == 1
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    # the environment's get_reward, run in its worker, is the reward (the tiny model calls no tool: 0.5 each)
    assert (rows[0]["rewards/Scored/mean"], rows[0]["rewards/Scored/failures"]) == (0.5, 0.0)
    assert rows[0]["tools/reset/failures"] == 0.0


# ------------------------------------------------------------------ config keys


PLUGIN = textwrap.dedent('''
    def multiply(a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: The first factor.
            b: The second factor.
        """
        return a * b


    class Counter:
        def reset(self, start: int = 0, **row):
            self.count = start

        def inc(self, by: int) -> int:
            """Add to the count.

            Args:
                by: How much.
            """
            self.count += by
            return self.count

        def get_reward(self) -> float:
            return float(self.count)


    def my_rollout(prompts, trainer):
        return {"prompt_ids": [], "completion_ids": [], "logprobs": []}
''')


def test_yaml_round_trip_of_the_tool_keys(tmp_path: Path) -> None:
    plugin = tmp_path / "my_tools.py"
    plugin.write_text(PLUGIN)
    keys = {"max_tool_calling_iterations": 3, "tools": [f"{plugin}:multiply"],
            "environment_factory": {"count": f"{plugin}:Counter"}, "rollout_func": f"{plugin}:my_rollout",
            "tool_timeout_s": 2.5, "tool_memory_mb": 512, "tool_max_output_chars": 100, "tool_num_workers": 3,
            "tool_isolation": "none"}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "o"), **keys}))
    cfg = from_dict(load_yaml(path))
    assert {k: getattr(cfg, k) for k in keys} == keys
    again = tmp_path / "again.yaml"  # what a run writes as config.yaml, read back
    again.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    read_back = from_dict(load_yaml(again))
    assert {k: getattr(read_back, k) for k in keys} == keys
    # the command line's form
    assert parse_overrides(["--tool_timeout_s", "4", "--tool_isolation", "process", "--max_tool_calling_iterations",
                            "5"]) == {"tool_timeout_s": 4.0, "tool_isolation": "process",
                                      "max_tool_calling_iterations": 5}
    defaults = GRPOConfig()  # TRL's default for its key; the isolation defaults
    assert (defaults.max_tool_calling_iterations, defaults.tools, defaults.environment_factory,
            defaults.rollout_func) == (None, [], None, None)
    assert (defaults.tool_timeout_s, defaults.tool_memory_mb, defaults.tool_max_output_chars,
            defaults.tool_num_workers, defaults.tool_isolation) == (10.0, 1024, 4096, 2, "process")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("tool_timeout_s", 0, "config key 'tool_timeout_s': must be a finite number of seconds > 0"),
    ("tool_memory_mb", -1, "config key 'tool_memory_mb': must be > 0 or null"),
    ("tool_num_workers", 0, "config key 'tool_num_workers': must be >= 1"),
    ("tool_max_output_chars", 0, "config key 'tool_max_output_chars': must be >= 1"),
    ("tool_isolation", "thread", "config key 'tool_isolation': must be one of"),
    ("max_tool_calling_iterations", -1, "config key 'max_tool_calling_iterations': must be >= 0"),
    ("tools", ["multiply"], "config key 'tools': 'multiply' is not a spec"),
    ("environment_factory", {"a": "Counter"}, "config key 'environment_factory.a': 'Counter' is not a spec"),
    ("rollout_func", "nothing", "config key 'rollout_func': 'nothing' is not a spec"),
])
def test_bad_tool_keys_are_named(tmp_path: Path, key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        GRPOConfig(output_dir=str(tmp_path), **{key: value})


def test_path_file_specs_resolve_and_run_in_the_workers(tmp_path: Path) -> None:
    plugin = tmp_path / "my_tools.py"
    plugin.write_text(PLUGIN)
    cfg = GRPOConfig(output_dir=str(tmp_path / "o"), tools=[f"{plugin}:multiply"],
                     environment_factory=f"{plugin}:Counter", rollout_func=f"{plugin}:my_rollout")
    spec = resolve_tools(cfg)
    assert [t.__name__ for t in spec.tools] == ["multiply"] and spec.environment_factory.__name__ == "Counter"
    assert spec.rollout_func.__name__ == "my_rollout"
    with ToolExecutor(spec.tools, spec.environment_factory, num_workers=1) as ex:  # loaded from a file, forked
        starts = ex.start([{"start": 5}])
        [[product, count]] = ex.call([(0, [{"type": "function", "function": {"name": "multiply",
                                                                             "arguments": {"a": 6, "b": 7}}},
                                           {"type": "function", "function": {"name": "inc", "arguments": {"by": 2}}}])])
        assert ex.rewards() == ({"Counter": [7.0]}, {"Counter": [False]})
    assert [s["function"]["name"] for s in starts[0].schemas] == ["multiply", "inc"]
    assert (product.content, count.content) == ("42", "7")
    # a python module path too, and the errors name the key and the spec
    assert resolve_tools(GRPOConfig(output_dir=str(tmp_path / "p"), tools=["json:dumps"])).tools[0].__name__ == "dumps"
    with pytest.raises(RewardSpecError, match=r"config key 'environment_factory': spec '.*my_tools.py:Countr'.*"
                                              r"no attribute 'Countr'"):
        resolve_tools(GRPOConfig(output_dir=str(tmp_path / "q"), environment_factory=f"{plugin}:Countr"))
    with pytest.raises(RewardSpecError, match=r"config key 'tools' \('missing.py:f'\).*file 'missing.py' not found"):
        resolve_tools(GRPOConfig(output_dir=str(tmp_path / "r"), tools=["missing.py:f"]))


def test_a_yaml_run_with_tools_from_a_file(tiny_path: Path, tmp_path: Path) -> None:
    """What recipes/grpo_math.py runs (build.grpo) from a YAML config naming its tool by file."""
    from rlreason.build.grpo import start_trainer, train_and_finish

    plugin = tmp_path / "my_tools.py"
    plugin.write_text(PLUGIN)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "out"), "model_name_or_path": "tiny", "arith_train_size": 64, "eval_size": 4,
        "final_eval_size": 0, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
        "num_generations": 4, "max_completion_length": 8, "max_steps": 1, "learning_rate": 1e-5, "loss_type": "grpo",
        "logging_steps": 1, "save_steps": 0, "eval_steps": 0, "log_completions_steps": 0, "reward_num_workers": 0,
        "progress": False, "chat_template": TOOL_TEMPLATE, "reward_funcs": ["accuracy"],
        "tools": [f"{plugin}:multiply"], "max_tool_calling_iterations": 2, "tool_num_workers": 1}))
    trainer = start_trainer(from_dict(load_yaml(path)))
    assert [s["function"]["name"] for s in trainer.tools.schemas] == ["multiply"]
    assert trainer.tools.manager_pid is not None
    train_and_finish(trainer)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "tools/call_frequency" in r] == [1]  # the step ran the tool path
    assert trainer.tools.manager_pid is None  # closed with the run


def test_async_runs_give_the_heldout_eval_an_executor_of_its_own(tiny_path: Path, tmp_path: Path) -> None:
    """With async_rollouts the held-out eval runs while the next training batch is generated on the rollout
    thread; an executor serves one batch of episodes at a time, so the eval must not start episodes in the
    training batch's executor: it gets its own, and both close with the run."""
    from rlreason.build.grpo import start_trainer, train_and_finish

    plugin = tmp_path / "my_tools.py"
    plugin.write_text(PLUGIN)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "out"), "model_name_or_path": "tiny", "arith_train_size": 64, "eval_size": 4,
        "final_eval_size": 0, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
        "num_generations": 4, "max_completion_length": 8, "max_steps": 2, "learning_rate": 1e-5, "loss_type": "grpo",
        "logging_steps": 1, "save_steps": 0, "eval_steps": 1, "log_completions_steps": 0, "reward_num_workers": 0,
        "progress": False, "chat_template": TOOL_TEMPLATE, "reward_funcs": ["accuracy"], "async_rollouts": True,
        "tools": [f"{plugin}:multiply"], "max_tool_calling_iterations": 2, "tool_num_workers": 1}))
    trainer = start_trainer(from_dict(load_yaml(path)))
    training, heldout = trainer.tools, trainer.eval_tools.executor
    assert heldout is not training and heldout.manager_pid not in (None, training.manager_pid)
    train_and_finish(trainer)
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/tools/call_frequency" in r] == [0, 1, 2]  # before, and after each step
    assert training.manager_pid is None and heldout.manager_pid is None  # both closed with the run

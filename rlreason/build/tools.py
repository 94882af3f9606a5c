"""Config -> tools: the tool functions, environment factory and rollout function a run names
(``tools``, ``environment_factory``, ``rollout_func``: "pkg.module:name" / "path/file.py:name",
loaded by the reward registry's loader; or a Python caller's objects), checked against the data
and the chat template, and the :class:`~rlreason.rollout.tools.ToolExecutor` that runs them.

TRL 1.16's rules, kept: an ``environment_factory`` with no ``train_dataset`` needs ``max_steps``
(the environment's ``reset`` gives the prompt, appended to an empty user message:
:func:`environment_prompts`); at least one reward source, ``reward_funcs`` or an environment with
``get_reward`` (:func:`check_reward_source`, TRL's error text); tools need conversational prompts
(completions are parsed for tool calls only when they are messages) and a chat template that
renders a tool exchange.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import datasets

from rlreason.config import ConfigError, GRPOConfig
from rlreason.data import MESSAGES_COLUMN
from rlreason.rewards.registry import load_object
from rlreason.rollout.tools import ToolExecutor
from rlreason.rollout.tools.environments import ENVIRONMENT_COLUMN, normalize_factories
from rlreason.rollout.tools.parse import check_tool_template

# TRL's GRPOTrainer error, word for word
NO_REWARD_SOURCE = ("No reward source provided. Pass `reward_funcs`, or an `environment_factory` whose environment "
                    "defines a `get_reward` method.")
NOT_CONVERSATIONAL = (
    "tools need conversational prompts: as in TRL, tool calls are parsed only from conversational completions "
    "(the prompt a list of messages, rendered by the chat template); with plain-text prompts no call would ever "
    "run. Give the prompt column as lists of {{role, content}} messages, or set use_chat_template: true ({source})")


@dataclass
class ToolSpec:
    """What a run's tools are, loaded: standalone tool functions, TRL's environment_factory (a
    callable or a dict of them) and rollout_func."""

    tools: list[Callable] = field(default_factory=list)
    environment_factory: Any = None
    rollout_func: Callable | None = None

    @property
    def any(self) -> bool:
        """Whether the rollout is multi-turn (tools or environments; rollout_func is its own path)."""
        return bool(self.tools) or self.environment_factory is not None


def resolve_tools(cfg: GRPOConfig, tools: list | None = None, environment_factory: Any = None,
                  rollout_func: Callable | None = None) -> ToolSpec:
    """The config's ``tools`` / ``environment_factory`` / ``rollout_func`` loaded, each replaced by
    a Python caller's object where one is given. Bad specs fail here, naming the config key."""
    spec = ToolSpec()
    spec.tools = list(tools) if tools is not None else [load_object(s, f"config key 'tools' ({s!r})")
                                                        for s in cfg.tools]
    if environment_factory is not None:
        spec.environment_factory = environment_factory
    elif isinstance(cfg.environment_factory, dict):
        spec.environment_factory = {name: load_object(s, f"config key 'environment_factory.{name}'")
                                    for name, s in cfg.environment_factory.items()}
    elif cfg.environment_factory is not None:
        spec.environment_factory = load_object(cfg.environment_factory, "config key 'environment_factory'")
    normalize_factories(spec.environment_factory)  # a dict of non-callables fails now
    if rollout_func is not None:
        spec.rollout_func = rollout_func
    elif cfg.rollout_func is not None:
        spec.rollout_func = load_object(cfg.rollout_func, "config key 'rollout_func'")
    if spec.rollout_func is not None and not callable(spec.rollout_func):
        raise ConfigError(f"config key 'rollout_func': a {type(spec.rollout_func).__name__}, not a function "
                          f"rollout_func(prompts, trainer)")
    return spec


def environment_prompts(cfg: GRPOConfig) -> datasets.Dataset:
    """TRL's stand-in dataset when an environment owns the data (no ``train_dataset``): one
    generation's worth of empty user messages, cycled; each rollout's ``reset()`` gives its prompt."""
    if cfg.max_steps <= 0:
        raise ConfigError("config key 'max_steps': when training without a train_dataset (the environment owns the "
                          "data and returns the prompt from reset()), max_steps must be set to a positive value to "
                          "define the training length")
    rows = max(1, cfg.completions_per_step // cfg.num_generations)
    return datasets.Dataset.from_dict({cfg.prompt_column: [[{"role": "user", "content": ""}]] * rows})


def with_empty_prompts(dataset: datasets.Dataset, column: str) -> datasets.Dataset:
    """``dataset`` with an empty user message as its prompt where it has no prompt column: TRL's rule
    when an environment owns the data (a routing dataset may carry only an ``environment`` column;
    each rollout's ``reset()`` gives the prompt)."""
    if column in dataset.column_names:
        return dataset
    return dataset.add_column(column, [[{"role": "user", "content": ""}]] * len(dataset))


def check_tool_data(cfg: GRPOConfig, spec: ToolSpec, train: datasets.Dataset, tokenizer: Any,
                    source: str = "the dataset") -> None:
    """Tools need conversational prompts and a chat template that renders a tool exchange; a dict
    ``environment_factory`` needs an ``environment`` column naming one of its environments on every row."""
    if not spec.any:
        return
    if MESSAGES_COLUMN not in train.column_names:  # rlreason.data.prepare adds it when the chat template renders
        raise ValueError(NOT_CONVERSATIONAL.format(source=source))
    check_tool_template(tokenizer, cfg.model_name_or_path)  # before the executor and the engine start
    factories = normalize_factories(spec.environment_factory)
    if factories is None or list(factories) == [None]:
        return
    if ENVIRONMENT_COLUMN not in train.column_names:
        raise ValueError(f"{source}: environment_factory is a dict ({', '.join(map(repr, factories))}), so every row "
                         f"needs an '{ENVIRONMENT_COLUMN}' column naming its environment; the columns are "
                         f"{', '.join(train.column_names)}")
    unknown = sorted({str(v) for v in train[ENVIRONMENT_COLUMN] if v not in factories})
    if unknown:
        raise ValueError(f"{source}: column '{ENVIRONMENT_COLUMN}' names environment(s) {', '.join(map(repr, unknown))}"
                         f", which environment_factory does not have; it has {', '.join(map(repr, factories))}")


def tool_executor(cfg: GRPOConfig, spec: ToolSpec) -> ToolExecutor | None:
    """The run's executor (None without tools or environments), set up by the ``tool_*`` keys. Its
    worker processes are forked now: build it before the trainer starts threads."""
    if not spec.any:
        return None
    return ToolExecutor(spec.tools, spec.environment_factory, timeout_s=cfg.tool_timeout_s,
                        memory_mb=cfg.tool_memory_mb, max_output_chars=cfg.tool_max_output_chars,
                        num_workers=cfg.tool_num_workers, isolation=cfg.tool_isolation)


def check_reward_source(reward_funcs: list, executor: ToolExecutor | None) -> None:
    """At least one reward source: ``reward_funcs``, or an environment with ``get_reward`` (TRL's rule)."""
    if not reward_funcs and not (executor is not None and executor.reward_names):
        raise ValueError(NO_REWARD_SOURCE)


def spec_of(obj: Any) -> str:
    """How config.yaml records a Python caller's tool, environment or rollout function: "module:name"."""
    if isinstance(obj, str):
        return obj
    return f"{getattr(obj, '__module__', None) or type(obj).__module__}:" \
           f"{getattr(obj, '__qualname__', None) or type(obj).__qualname__}"

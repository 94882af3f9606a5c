"""Tool-calling rollouts of dataset rows, end to end: start each rollout's episode, render its
prompt with its tools, run the turns (:func:`~.loop.generate_with_tools`). What the evaluation
(rlreason/eval/core.py: held-out, suites, a task of the user's) runs in place of
``engine.generate`` when the run has tools.

The prompt of a rollout is TRL 1.16's (``GRPOTrainer._generate_and_score_completions`` and
``_tokenize_prompts``): the row's messages (one empty user message for a row without a prompt,
an environment owning the data), ``reset(**row)``'s text appended to the last message's content
when it returns one, rendered by the chat template with the rollout's tool schemas
(``apply_chat_template(tools=..., add_generation_prompt=True)``; no tools: ``tools=None``, as TRL
passes, since some templates render tool boilerplate for an empty list).

When the n rollouts of a row render the same prompt (the usual case) the engine samples them as
one group of n; an environment may give each rollout its own prompt (a self-sampled task), and
then each rollout is generated alone and the groups are put back together afterwards. Seeds: a
rollout's seed is its row's (``generation_seed_per_prompt``); a rollout generated alone is seeded
``turn_seed(seed, j, 0)``. The trainer (rlreason/loop/tool_rollout.py) and the evaluation
(eval/core.py) both run :func:`tool_rollouts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rlreason.rollout.base import RolloutEngine, Sample, SamplingConfig
from rlreason.rollout.tools.executor import ToolExecutor
from rlreason.rollout.tools.loop import generate_with_tools, turn_seed
from rlreason.rollout.tools.results import EpisodeStart


def episode_messages(messages: list[dict] | None, observation: str | None) -> list[dict]:
    """The messages a rollout starts from: ``messages`` (None or empty: one empty user message)
    with ``observation`` (what ``reset`` returned) appended to the last message's content. The
    input is left as it is."""
    msgs = list(messages) if messages else [{"role": "user", "content": ""}]
    if observation is None:
        return msgs
    return msgs[:-1] + [{**msgs[-1], "content": str(msgs[-1].get("content") or "") + observation}]


def episode_prompt_ids(tokenizer: Any, messages: list[dict], schemas: list[dict],
                       chat_template_kwargs: dict[str, Any] | None = None) -> list[int]:
    """A rollout's prompt ids: ``messages`` through the chat template with the tools' ``schemas``
    and the assistant header (as the trainer renders them: rlreason/loop/tool_rollout.py)."""
    return tokenizer.apply_chat_template(messages, tools=schemas or None, add_generation_prompt=True,
                                         tokenize=True, return_dict=False, **(chat_template_kwargs or {}))


@dataclass
class ToolRollouts:
    """What rollouts with tools need besides the engine: the executor (the run's tools and
    environments), the tokenizer (renders and parses the template), TRL's
    ``max_tool_calling_iterations`` (None: no limit), the context the engine holds
    (``max_model_len``) and the config's ``chat_template_kwargs``."""

    executor: ToolExecutor
    tokenizer: Any
    max_iterations: int | None
    max_model_len: int
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)

    def generate(self, engine: RolloutEngine, rows: Sequence[dict], messages: Sequence[list[dict] | None], n: int,
                 sampling: SamplingConfig) -> tuple[list[list[Sample]], list[list[int]], list[list[dict]]]:
        """``n`` rollouts of each row -> (samples grouped per row as ``engine.generate`` groups them,
        each rollout's prompt ids and the messages they render [len(rows) * n each], rollout j of
        row i at i * n + j: what the rewards get as its prompt).

        ``rows[i]``: what ``reset(**row)`` gets (the dataset's columns); ``messages[i]``: the row's
        prompt as chat messages. Every Sample carries ``messages`` (the exchange), ``loss_mask`` and
        ``tool_stats``; one whose environment could not be reset carries ``error``."""
        return tool_rollouts(engine, self.tokenizer, self.executor, rows, messages, n, sampling, None,
                             self.max_iterations, self.max_model_len, self.chat_template_kwargs)


def tool_rollouts(engine: RolloutEngine, tokenizer: Any, executor: ToolExecutor, rows: Sequence[dict],
                  messages: Sequence[list[dict] | None], n: int, sampling: SamplingConfig,
                  seeds: Sequence[int] | None, max_iterations: int | None, max_model_len: int,
                  chat_template_kwargs: dict[str, Any] | None = None
                  ) -> tuple[list[list[Sample]], list[list[int]], list[list[dict]]]:
    """``n`` multi-turn rollouts of each row (module docstring) -> (samples grouped per row, each
    rollout's prompt ids, each rollout's prompt messages [len(rows) * n each], rollout j of row i
    at i * n + j). ``rows[i]``: what ``reset(**row)`` gets; ``messages[i]``: its prompt as chat
    messages; ``seeds``: one per row, or None."""
    if len(messages) != len(rows):
        raise ValueError(f"got {len(messages)} prompts for {len(rows)} rows")
    starts: list[EpisodeStart] = executor.start([dict(r) for r in rows for _ in range(n)])
    if len(starts) != len(rows) * n:
        raise RuntimeError(f"the tool executor started {len(starts)} episodes for {len(rows) * n} rollouts")
    prompts = [episode_messages(messages[i // n], s.observation) for i, s in enumerate(starts)]
    prompt_ids = [episode_prompt_ids(tokenizer, m, s.schemas, chat_template_kwargs)
                  for m, s in zip(prompts, starts, strict=True)]
    if all(prompt_ids[i] == prompt_ids[i - i % n] for i in range(len(prompt_ids))):
        groups = generate_with_tools(engine, tokenizer, prompt_ids[::n], n, sampling, seeds, starts, executor.call,
                                     max_iterations, max_model_len)  # one prompt per row: a group of n
    else:  # each rollout its own prompt: one sample each, seeded per rollout
        own = None if seeds is None else [turn_seed(seeds[i // n], i % n, 0) for i in range(len(starts))]
        flat = generate_with_tools(engine, tokenizer, prompt_ids, 1, sampling, own, starts, executor.call,
                                   max_iterations, max_model_len)
        groups = [[g[0] for g in flat[i * n:(i + 1) * n]] for i in range(len(rows))]
    return groups, prompt_ids, prompts

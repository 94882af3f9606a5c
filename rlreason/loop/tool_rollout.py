"""The trainer's rollouts with tools, environments or a ``rollout_func`` (TRL 1.16's API, issue 32).

``GRPOTrainer.generate_and_score`` calls one of three generators, each returning a ``Generated``
(per rollout: its prompt ids, its Sample, and what the rewards get):

- plain (no tools): ``engine.generate(prompt_ids, G)``, as before;
- ``tools_rollouts``: ``ToolExecutor.start`` gives each rollout its episode (an environment's reset
  observation and the schemas of the tools it may call); each prompt is rendered by the chat
  template with ``tools=schemas`` and the observation appended to its last message (TRL's rule);
  ``rollout.tools.loop.generate_with_tools`` runs the turns; rewards get the exchange as
  conversational completions (``Sample.messages``);
- ``rollout_func_rollouts``: the user's ``rollout_func(prompts, trainer)`` generates; its
  ``prompt_ids``, ``completion_ids``, ``logprobs`` (and ``env_mask``, the loss mask, as TRL) become
  Samples, every other key a reward column.

Seeds: a rollout's seed is its prompt's (``generation_seed_per_prompt``); when the G rollouts of a
prompt have different prompts (an environment that resets differently each time) each is
generated alone, seeded ``turn_seed(seed, j, 0)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from rlreason.data import INTERNAL_COLUMNS
from rlreason.rewards.runner import MESSAGES_COLUMN, RewardOutput
from rlreason.rollout.base import RolloutEngine, Sample, SamplingConfig
from rlreason.rollout.tools.rollouts import tool_rollouts

if TYPE_CHECKING:  # part E's executor (interface 2): start, call, rewards, reward_names, close
    from rlreason.rollout.tools.executor import ToolExecutor


@dataclass
class Generated:
    """One batch's rollouts, N = rows * G, groups adjacent."""

    prompt_ids: list[list[int]]  # [N] the ids each rollout continued
    samples: list[Sample]  # [N]
    prompts: list[Any] | None = None  # [N] the prompts as rewards get them; None: the rows' (reward_inputs)
    exchanges: list[list[dict]] | None = None  # [N] conversational completions (assistant and tool turns)
    columns: dict[str, list] = field(default_factory=dict)  # [N] each: more reward columns (rollout_func's keys)


def plain_rollouts(engine: RolloutEngine, rows: list[dict], G: int, sampling: SamplingConfig,
                   seeds: Sequence[int] | None) -> Generated:
    """G single-turn completions per row."""
    groups = engine.generate([r["prompt_ids"] for r in rows], G, sampling, seeds=seeds)
    return Generated([r["prompt_ids"] for r in rows for _ in range(G)], [s for g in groups for s in g])


def tools_rollouts(engine: RolloutEngine, tokenizer: Any, tools: ToolExecutor, rows: list[dict], G: int,
                   sampling: SamplingConfig, seeds: Sequence[int] | None, max_iterations: int | None,
                   max_model_len: int, chat_template_kwargs: dict | None = None) -> Generated:
    """G multi-turn rollouts per row with the executor's tools (rlreason/rollout/tools/rollouts.py);
    the rewards get each rollout's prompt messages and its exchange."""
    if rows and any(r.get(MESSAGES_COLUMN) is None for r in rows):
        raise ValueError(NOT_CONVERSATIONAL)
    groups, prompt_ids, prompts = tool_rollouts(
        engine, tokenizer, tools, [{k: v for k, v in r.items() if k not in INTERNAL_COLUMNS} for r in rows],
        [r[MESSAGES_COLUMN] for r in rows], G, sampling, seeds, max_iterations, max_model_len, chat_template_kwargs)
    samples = [s for g in groups for s in g]
    return Generated(prompt_ids, samples, prompts=prompts, exchanges=[s.messages for s in samples])


NOT_CONVERSATIONAL = ("tools and environments need conversational prompts rendered by the chat template (TRL's "
                      "rule): a dataset whose prompts are lists of messages, or string prompts with config key "
                      "'use_chat_template' not false and a tokenizer with a chat template")


@dataclass(frozen=True)
class RolloutFuncContext:
    """What ``rollout_func(prompts, trainer)`` gets as ``trainer``: TRL's attributes a rollout
    function reads, read-only (the rollout may run on the rollout thread, beside the update)."""

    processing_class: Any  # the tokenizer
    args: Any  # the GRPOConfig
    accelerator: Any
    state: Any  # TRL's TrainerState (global_step, max_steps, epoch)
    num_generations: int
    engine: RolloutEngine  # rlreason's engine: engine.generate(prompt_ids, n, SamplingConfig)
    sampling: SamplingConfig


ROLLOUT_FUNC_KEYS = ("prompt_ids", "completion_ids", "logprobs")


def rollout_func_rollouts(rollout_func: Callable, rows: list[dict], G: int, prompt_column: str,
                          ctx: RolloutFuncContext) -> Generated:
    """The user's ``rollout_func`` on the rows' prompts, each repeated G times (TRL passes the raw
    prompts: chat templating is the function's). Its ``prompt_ids``, ``completion_ids`` and
    ``logprobs`` ([N] each) become Samples (finish "stop" when the last id is eos, TRL's rule);
    ``env_mask`` [N] (1 = model token) their loss masks; every other key [N] a reward column."""
    prompts = [r[prompt_column] for r in rows for _ in range(G)]
    out = rollout_func(prompts, ctx)
    if not isinstance(out, dict):
        raise TypeError(f"config key 'rollout_func' must return a dict, got {type(out).__name__}")
    missing = [k for k in ROLLOUT_FUNC_KEYS if k not in out]
    if missing:
        raise ValueError(f"config key 'rollout_func' must return keys {list(ROLLOUT_FUNC_KEYS)}; missing {missing}")
    n = len(prompts)
    for key, value in out.items():
        if len(value) != n:
            raise ValueError(f"config key 'rollout_func' returned {len(value)} values under {key!r} for {n} "
                             f"rollouts ({len(rows)} prompts x num_generations {G})")
    tok = ctx.processing_class
    masks = out.get("env_mask")
    samples = []
    for i, (ids, lps) in enumerate(zip(out["completion_ids"], out["logprobs"], strict=True)):
        ids, lps = list(ids), [float(x) for x in lps]
        mask = None if masks is None else [int(m) for m in masks[i]]
        if len(lps) != len(ids) or (mask is not None and len(mask) != len(ids)):
            raise ValueError(f"config key 'rollout_func': rollout {i} has {len(ids)} completion_ids but "
                             f"{len(lps)} logprobs" + ("" if mask is None else f" and {len(mask)} env_mask values"))
        if not ids:
            raise ValueError(f"config key 'rollout_func': rollout {i} has no completion_ids")
        reason = "stop" if ids[-1] == tok.eos_token_id else "length"
        samples.append(Sample(ids, tok.decode(ids, skip_special_tokens=True), lps, reason, loss_mask=mask))
    columns = {k: list(v) for k, v in out.items() if k not in (*ROLLOUT_FUNC_KEYS, "env_mask")}
    return Generated([list(p) for p in out["prompt_ids"]], samples, columns=columns)


def mark_rollout_errors(out: RewardOutput, samples: list[Sample]) -> RewardOutput:
    """``out`` with the rollouts that could not be run as asked (``Sample.error``: an environment's
    reset failed) marked failed: their total is unknown, left out of the group and the loss."""
    errors = torch.tensor([s.error is not None for s in samples], dtype=torch.bool)
    if not errors.any():
        return out
    out.failed = out.failed_mask() | errors
    return out


def context_length(model: Any, default: int = 2**31) -> int:
    """The model's context (max_position_embeddings; the loop stops a rollout before it)."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and not math.isinf(limit) else default

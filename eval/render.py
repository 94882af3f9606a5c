"""How a suite's problem becomes the prompt text the model continues, and the seeding of a suite's
generation: shared by the answer suites (:mod:`.core`) and the code suites (:mod:`.code`)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from rlreason.data import render_prompt
from rlreason.eval.suites import Suite, Template
from rlreason.rollout.base import Sample


def render(problem: dict, suite: Suite, template: Template, tokenizer: Any, chat_template: str) -> str:
    """The prompt text for one problem (what the model continues).

    Same rendering as the trainer's ``rlreason.data.prepare``: the template fills the user
    message, which goes through the tokenizer's chat template (with the system prompt) when
    it is used, else is sent as raw text after the system prompt.
    """
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if chat_template == "on" and not has_chat:
        raise ValueError("chat_template='on' but the tokenizer has no chat template")
    text = render_prompt(problem["row"], prompt_column=suite.problem_column, tokenizer=tokenizer,
                         use_chat_template=chat_template != "off", template=template.user,
                         system_prompt=template.system)
    if not isinstance(text, str):
        raise ValueError(f"suite {suite.name!r}: conversational prompts need a chat template")
    return text


def seed_all(seed: int) -> None:
    """Seed Python's and torch's generators before a suite's generation (the engines draw from them)."""
    random.seed(seed)
    torch.manual_seed(seed)


def prompt_ids(texts: Sequence[str], tokenizer: Any) -> list[list[int]]:
    """Rendered prompts as token ids, as the trainer tokenizes them (``rlreason.data.prepare``): the
    chat template already inserted any special tokens."""
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def fit_budget(max_tokens: int, lengths: Sequence[int], context: int | None) -> tuple[int, list[int]]:
    """The new tokens a batch of prompts of ``lengths`` tokens may generate in a model holding
    ``context`` tokens, and the prompts that leave no room at all -> (``max_tokens`` capped at the
    context minus the longest prompt that fits, the indices of those that do not). None: no cap.

    lighteval's vLLM model sends ``max_new_tokens`` as asked and vLLM stops a sequence at
    ``max_model_length`` (open-r1: 32768 of each, so the budget there is the context minus the
    prompt; lighteval/models/vllm/vllm_model.py); the engines here take one budget per call, so a
    suite's is set by its longest prompt. A prompt as long as the context cannot be answered: it is
    not generated (:func:`generate_within`) and scored as an empty completion, wrong, so every
    problem still counts."""
    if context is None:
        return max_tokens, []
    fitting = [n for n in lengths if n < context]
    too_long = [i for i, n in enumerate(lengths) if n >= context]
    return (min(max_tokens, context - max(fitting)) if fitting else max_tokens), too_long


def generate_within(engine: Any, ids: Sequence[list[int]], n: int, sampling: Any,
                    too_long: Sequence[int]) -> list[list[Sample]]:
    """``engine.generate`` on the prompts not in ``too_long``; each of those gets ``n`` empty
    completions that hit the length limit (no room was left), in its place."""
    skip = set(too_long)
    made = iter(engine.generate([p for i, p in enumerate(ids) if i not in skip], n, sampling)
                if len(skip) < len(ids) else [])
    return [[Sample(token_ids=[], text="", finish_reason="length") for _ in range(n)] if i in skip else next(made)
            for i in range(len(ids))]


# The key under which a suite run with a context reports its budget in its metrics (budget_record);
# evaluate_suites moves it into the suite's config (results ``config.suites.<name>``).
BUDGET = "generation_budget"


def budget_record(max_tokens: int, effective: int, lengths: Sequence[int], context: int, too_long: Sequence[int],
                  ids: Sequence[Any]) -> dict[str, Any]:
    """What a suite's config records about its budget (results ``config.suites.<name>``); ``ids``
    the problems' ids, to name those whose prompt did not fit."""
    return {"max_tokens": max_tokens, "max_tokens_effective": effective, "context_length": context,
            "longest_prompt_tokens": max(lengths, default=0), "prompts_too_long": [ids[i] for i in too_long]}


def budget_line(name: str, record: dict[str, Any]) -> str | None:
    """The stderr line for a budget that was capped or prompts that did not fit (None: neither)."""
    parts = []
    if record["max_tokens_effective"] < record["max_tokens"]:
        parts.append(f"max_tokens {record['max_tokens']} capped at {record['max_tokens_effective']} (the model's "
                     f"context is {record['context_length']} tokens, the longest prompt that fits "
                     f"{record['context_length'] - record['max_tokens_effective']})")
    if record["prompts_too_long"]:
        parts.append(f"{len(record['prompts_too_long'])} prompts as long as the context (the longest "
                     f"{record['longest_prompt_tokens']} tokens) not generated, scored wrong")
    return f"{name}: " + "; ".join(parts) if parts else None

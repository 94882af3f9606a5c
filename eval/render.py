"""How a suite's problem becomes the prompt text the model continues, and the seeding of a suite's
generation: shared by the answer suites (:mod:`.core`) and the code suites (:mod:`.code`)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from rlreason.data import render_prompt
from rlreason.eval.suites import Suite, Template


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


def fit_budget(max_tokens: int, lengths: Sequence[int], context: int | None, what: str) -> int:
    """The new tokens a batch of prompts of ``lengths`` tokens may generate in a model holding
    ``context`` tokens: ``max_tokens``, capped at the context minus the longest prompt (None: no cap).

    lighteval's vLLM model sends ``max_new_tokens`` as asked and vLLM stops a sequence at
    ``max_model_length`` (open-r1: 32768 of each, so the budget there is the context minus the
    prompt); the engines here take one budget per batch, so a suite's is set by its longest prompt.
    A prompt that leaves no room at all is a ValueError naming ``what`` and the lengths."""
    if context is None or not lengths:
        return max_tokens
    longest = max(lengths)
    if longest >= context:
        raise ValueError(f"{what}: problem {list(lengths).index(longest)}'s prompt is {longest} tokens and the model's "
                         f"context {context}: no room to generate; shorten the prompts (--template, --limit) or use "
                         f"a model with a longer context")
    return min(max_tokens, context - longest)


# The key under which a suite run with a context reports its budget in its metrics (budget_record);
# evaluate_suites moves it into the suite's config (results ``config.suites.<name>``).
BUDGET = "generation_budget"


def budget_record(max_tokens: int, effective: int, lengths: Sequence[int], context: int) -> dict[str, int]:
    """What a suite's config records about its budget (results ``config.suites.<name>``)."""
    return {"max_tokens": max_tokens, "max_tokens_effective": effective, "context_length": context,
            "longest_prompt_tokens": max(lengths, default=0)}

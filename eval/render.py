"""How a suite's problem becomes the prompt text the model continues, and the seeding of a suite's
generation: shared by the answer suites (:mod:`.core`) and the code suites (:mod:`.code`)."""

from __future__ import annotations

import random
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

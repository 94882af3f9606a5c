"""Format rewards: does a completion have the ``<think>...</think><answer>...</answer>`` shape."""

from __future__ import annotations

import re
from typing import Any

from ._text import completion_text

TAGS = ("<think>", "</think>", "<answer>", "</answer>")

# Whitespace is allowed only between the two blocks; nothing may come before or after.
_SHAPE = re.compile(r"<think>.*?</think>\s*<answer>(.*?)</answer>", re.DOTALL)


def format_reward(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """1.0 for a completion that is exactly ``<think>...</think><answer>...</answer>``, else 0.0.

    Whitespace between ``</think>`` and ``<answer>`` is allowed; anything before ``<think>`` or
    after ``</answer>`` (even whitespace) is not. Each of the four tags must appear exactly once,
    and the answer must not be empty or blank. The thinking may be empty.
    """
    return [1.0 if _well_formed(completion_text(c)) else 0.0 for c in completions]


def _well_formed(text: str) -> bool:
    # Counting first rules out extra tags the non-greedy match would otherwise swallow.
    if any(text.count(tag) != 1 for tag in TAGS):
        return False
    m = _SHAPE.fullmatch(text)
    return m is not None and bool(m.group(1).strip())


def tag_count_reward(prompts: list, completions: list, **kwargs: Any) -> list[float]:
    """0.25 for each of ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` appearing exactly once.

    A denser signal than :func:`format_reward` for a model that has not learned the format yet:
    it gives partial credit and ignores order and surrounding text.
    """
    return [0.25 * sum(completion_text(c).count(tag) == 1 for tag in TAGS) for c in completions]

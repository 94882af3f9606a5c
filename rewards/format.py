"""Format rewards: does a completion have the ``<think>...</think><answer>...</answer>`` shape.

Two families. open-r1's (registry names ``format`` and ``tag_count``, as in open-r1's
``rewards.py``, so an open-r1 config means the same here): the blocks on their own lines,
``"<think>\n...\n</think>\n<answer>\n...\n</answer>"``. rlreason's own, for models that
write the blocks inline (the embedded arithmetic task): ``think_answer_format`` (strict),
``format_lenient`` and ``think_answer_tags``.

The rewards are callable classes rather than functions so that configured instances pickle
(a process pool ships them to workers) and carry a stable ``__name__`` for logging.
``format_reward`` and ``tag_count_reward`` are ready-made instances, so code that imported
the former functions keeps working.
"""

from __future__ import annotations

import re
from typing import Any

from ._text import completion_text

TAGS = ("<think>", "</think>", "<answer>", "</answer>")

# Strict: whitespace is allowed only between the two blocks; nothing may come before or after.
_STRICT_SHAPE = re.compile(r"<think>.*?</think>\s*<answer>(.*?)</answer>", re.DOTALL)
# Lenient: the blocks in order, anything (text, whitespace) before, between and after.
_LENIENT_SHAPE = re.compile(r"<think>.*?</think>.*?<answer>(.*?)</answer>", re.DOTALL)


def _tags_once(text: str) -> bool:
    """Each of the four tags exactly once: extra tags would let a non-greedy match swallow them,
    and several answers are ambiguous to the answer extractor (which takes the last one)."""
    return all(text.count(tag) == 1 for tag in TAGS)


class FormatReward:
    """1.0 for a completion in the think/answer format, else 0.0.

    ``strict=True`` (registry name ``format``): the completion is exactly
    ``<think>...</think><answer>...</answer>``; whitespace between ``</think>`` and ``<answer>``
    is allowed, anything before ``<think>`` or after ``</answer>`` (even whitespace) is not.

    ``strict=False`` (registry name ``format_lenient``): the four tags appear in order, and any
    text or whitespace may come before, between and after the two blocks.

    In both modes each tag must appear exactly once and the answer must not be blank; the
    thinking may be empty. Conversational completions are scored on the last message.
    """

    def __init__(self, strict: bool = True) -> None:
        if not isinstance(strict, bool):
            raise TypeError(f"FormatReward: strict must be True or False, got {strict!r}")
        self.strict = strict
        self.__name__ = "think_answer_format_reward" if strict else "format_lenient_reward"

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float]:
        return [1.0 if self._matches(completion_text(c)) else 0.0 for c in completions]

    def _matches(self, text: str) -> bool:
        if not _tags_once(text):
            return False
        m = _STRICT_SHAPE.fullmatch(text) if self.strict else _LENIENT_SHAPE.search(text)
        return m is not None and bool(m.group(1).strip())

    def __repr__(self) -> str:
        return f"FormatReward(strict={self.strict})"


class TagCountReward:
    """0.25 for each of ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` appearing exactly once.

    A denser signal than :class:`FormatReward` for a model that has not learned the format yet:
    it gives partial credit and ignores order and surrounding text.
    """

    def __init__(self) -> None:
        self.__name__ = "think_answer_tags_reward"

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float]:
        return [0.25 * sum(completion_text(c).count(tag) == 1 for tag in TAGS) for c in completions]

    def __repr__(self) -> str:
        return "TagCountReward()"


# open-r1's format: re.match with DOTALL | MULTILINE, so "$" also matches before a later newline
# (text on lines after </answer> passes, as in open-r1).
_R1_SHAPE = re.compile(r"^<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>$", re.DOTALL | re.MULTILINE)
# open-r1's tag_count: each of these exactly once is worth 0.25
_R1_TAGS = ("<think>\n", "\n</think>\n", "\n<answer>\n", "\n</answer>")


class R1FormatReward:
    """open-r1's ``format_reward``: 1.0 when the completion is
    ``"<think>\n...\n</think>\n<answer>\n...\n</answer>"`` (newlines required), else 0.0."""

    def __init__(self) -> None:
        self.__name__ = "format_reward"

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float]:
        return [1.0 if _R1_SHAPE.match(completion_text(c)) else 0.0 for c in completions]

    def __repr__(self) -> str:
        return "R1FormatReward()"


class R1TagCountReward:
    """open-r1's ``tag_count_reward``: 0.25 for each of ``"<think>\n"``, ``"\n</think>\n"``,
    ``"\n<answer>\n"``, ``"\n</answer>"`` appearing exactly once."""

    def __init__(self) -> None:
        self.__name__ = "tag_count_reward"

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float]:
        return [0.25 * sum(completion_text(c).count(tag) == 1 for tag in _R1_TAGS) for c in completions]

    def __repr__(self) -> str:
        return "R1TagCountReward()"


format_reward = FormatReward(strict=True)  # rlreason's strict format: registry name think_answer_format
format_lenient_reward = FormatReward(strict=False)
tag_count_reward = TagCountReward()  # registry name think_answer_tags
r1_format_reward = R1FormatReward()  # registry name format
r1_tag_count_reward = R1TagCountReward()  # registry name tag_count

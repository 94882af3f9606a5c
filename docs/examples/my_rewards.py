"""Example reward functions: a plain function and a configurable class (see docs/rewards.md).

Nothing here imports rlreason, so the file works unchanged in TRL's GRPOTrainer too. Use it
from a config (paths are relative to where you launch training)::

    reward_funcs:
      - accuracy
      - docs/examples/my_rewards.py:integer_answer
      - name: docs/examples/my_rewards.py:ThinkingBudget
        weight: 0.5
        kwargs: {max_words: 200}
"""

from __future__ import annotations

import re
from typing import Any

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_INTEGER = re.compile(r"[+-]?\d+")


def _text(completion: Any) -> str:
    """A completion's text: a string as is; for chat data, the last message's content."""
    if isinstance(completion, str):
        return completion
    return completion[-1]["content"] or ""


def integer_answer(prompts: list, completions: list, answer: list, **kwargs: Any) -> list[float | None]:
    """1.0 when a problem with an integer gold is answered with a bare integer in ``<answer>``, else 0.0.

    Problems whose gold is not an integer get None: the reward does not apply to them, so they
    are left out of the weighted sum instead of being scored 0. ``answer`` is a dataset column:
    it arrives as a list, one gold per completion; ``**kwargs`` takes the other columns.
    """
    scores: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        if not _INTEGER.fullmatch(str(gold).strip()):
            scores.append(None)
            continue
        tagged = _ANSWER.findall(_text(completion))
        scores.append(1.0 if tagged and _INTEGER.fullmatch(tagged[-1].strip()) else 0.0)
    return scores


class ThinkingBudget:
    """0.0 while the ``<think>`` block has at most ``max_words`` words, then ``penalty``.

    A class, so that its settings come from the config's ``kwargs`` and the configured reward
    pickles (rewards may run in worker processes). ``__name__`` is the name it is logged under.
    """

    def __init__(self, max_words: int, penalty: float = -1.0) -> None:
        # Checked here, so a bad config fails at start-up and not in the middle of a run.
        if not isinstance(max_words, int) or max_words < 1:
            raise ValueError(f"max_words must be a positive integer, got {max_words!r}")
        if penalty > 0:
            raise ValueError(f"penalty must be <= 0, got {penalty!r}")
        self.max_words = max_words
        self.penalty = float(penalty)
        self.__name__ = "thinking_budget"

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float]:
        scores = []
        for completion in completions:
            thinking = _THINK.findall(_text(completion))
            words = len(thinking[0].split()) if thinking else 0
            scores.append(self.penalty if words > self.max_words else 0.0)
        return scores

"""TRL's built-in reward names, with TRL 1.16's meaning (``trl grpo --reward_funcs ...``).

``trl/scripts/grpo.py`` accepts four names; each maps here to a reward that scores what TRL's
function scores (tests/test_trl_rewards.py runs both on the same completions):

- ``accuracy_reward``: the completion's first LaTeX answer (``\\boxed{}`` first) verified against the
  ``solution`` column by math-verify, as TRL does; ``None`` when the gold does not parse. rlreason's
  own ``accuracy`` reads the ``<answer>`` tag against ``answer`` with its own verifier, a different
  reward, so it is not an alias.
- ``reasoning_accuracy_reward``: the same, on what follows the reasoning block's end (``</think>``
  by default); 0.0 (not None) when the reasoning block never ends.
- ``think_format_reward``: 1.0 when the completion starts with exactly one ``<think>...</think>``
  block, TRL's regex; rlreason's ``format`` wants ``<answer>`` tags too.
- ``get_soft_overlong_punishment``: DAPO's soft overlong penalty in tokens, with the values `trl grpo`
  uses (max_completion_len 1280, soft_punish_cache 256); rlreason's ``soft_overlong`` reward.

TRL reads the first message's content of a conversational completion; a standard (string)
completion, which TRL's functions do not take, is its own content here.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

from ._text import _content_text
from .length import SoftOverlongReward

# TRL's think_format_reward pattern: one <think> block at the very start, nothing opens another
THINK_PATTERN = re.compile(r"^<think>(?!.*<think>)(.*?)</think>.*$", re.DOTALL | re.MULTILINE)


def _content(completion: Any) -> str:
    """What TRL's rewards read: the first message's content (``completion[0]["content"]``), or the string."""
    if isinstance(completion, str):
        return completion
    return _content_text(completion[0]["content"])


def _verifier() -> tuple[Callable, Callable, list]:
    """math-verify's parse and verify, and the answer extraction TRL's accuracy rewards use."""
    try:
        from latex2sympy2_extended import NormalizationConfig
        from math_verify import LatexExtractionConfig, parse, verify
    except ImportError as e:
        raise ImportError(f"TRL's accuracy_reward / reasoning_accuracy_reward need math-verify "
                          f"(pip install math-verify): {e}") from e
    extraction = [LatexExtractionConfig(normalization_config=NormalizationConfig(units=True), boxed_match_priority=0,
                                        try_extract_without_anchor=False)]
    return parse, verify, extraction


def _score(contents: list[str | None], solution: list[str]) -> list[float | None]:
    """math-verify's verdict per (content, gold); a None content scores 0.0 (unfinished reasoning)."""
    parse, verify, extraction = _verifier()
    # math-verify times out with signal.alarm, which only the main thread may set (TRL's rule)
    main = threading.current_thread() is threading.main_thread()
    parse_timeout, verify_timeout = (10, 5) if main else (None, None)
    if not main:
        logging.getLogger("math_verify.parser").setLevel(logging.ERROR)
        logging.getLogger("math_verify.grader").setLevel(logging.ERROR)
    rewards: list[float | None] = []
    for content, gold in zip(contents, solution, strict=True):
        if content is None:
            rewards.append(0.0)
            continue
        gold_parsed = parse(gold, parsing_timeout=parse_timeout)
        if not gold_parsed:
            rewards.append(None)  # an unparseable gold: the example does not count
            continue
        answer = parse(content, extraction_config=extraction, extraction_mode="first_match",
                       parsing_timeout=parse_timeout)
        rewards.append(float(verify(gold_parsed, answer, timeout_seconds=verify_timeout)))
    return rewards


def accuracy_reward(completions: list, solution: list[str], **kwargs: Any) -> list[float | None]:
    """TRL's ``accuracy_reward``: 1.0 when the completion's answer equals ``solution`` (math-verify)."""
    return _score([_content(c) for c in completions], solution)


def reasoning_accuracy_reward(completions: list, solution: list[str], reasoning_delimiters: list[str] | None = None,
                              **kwargs: Any) -> list[float | None]:
    """TRL's ``reasoning_accuracy_reward``: accuracy on the text after the first delimiter found
    (``["</think>"]`` by default), split at its last occurrence; 0.0 without one."""
    delimiters = ["</think>"] if reasoning_delimiters is None else reasoning_delimiters
    answers: list[str | None] = []
    for completion in completions:
        content = _content(completion)
        delim = next((d for d in delimiters if d in content), None)
        answers.append(None if delim is None else content.split(delim)[-1])
    return _score(answers, solution)


def think_format_reward(completions: list, **kwargs: Any) -> list[float]:
    """TRL's ``think_format_reward``: 1.0 when the completion is ``<think>...</think>`` then anything."""
    return [1.0 if THINK_PATTERN.match(_content(c)) else 0.0 for c in completions]


class SoftOverlongPunishment(SoftOverlongReward):
    """TRL's ``get_soft_overlong_punishment(max_completion_len, soft_punish_cache)``, in tokens
    (``completion_ids``); `trl grpo`'s registry uses 1280 and 256."""

    def __init__(self, max_completion_len: int = 1280, soft_punish_cache: int = 256) -> None:
        super().__init__(max_completion_len, soft_punish_cache, unit="tokens")
        self.__name__ = "soft_overlong_punishment_reward"  # TRL's name: the same metric key


# The names `trl grpo --reward_funcs` takes; rewards.registry adds them to its built-ins.
TRL_REWARDS: dict[str, Callable] = {
    "accuracy_reward": accuracy_reward,
    "reasoning_accuracy_reward": reasoning_accuracy_reward,
    "think_format_reward": think_format_reward,
    "get_soft_overlong_punishment": SoftOverlongPunishment,
}

"""Length and repetition shaping: soft overlong punishment, cosine length scaling, n-gram repetition.

All three are callable classes configured in the constructor (``build_rewards`` passes the
config's ``kwargs``), so configured instances pickle and log under a stable ``__name__``.

Length of a completion, for the two length rewards, first that applies wins:

1. ``unit="chars"``: characters of the completion text, always;
2. a ``completion_lengths`` column (ints) or a ``completion_ids`` column (token id lists, what
   TRL passes to every reward): tokens;
3. a ``tokenizer`` given to the constructor (anything with ``encode``): tokens;
4. otherwise characters (``unit="auto"``, with a one-time warning) or an error (``unit="tokens"``).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

from ._text import completion_text
from .math import accuracy_reward

UNITS = ("auto", "tokens", "chars")


# --------------------------------------------------------------------------- argument checks


def _check_int(owner: str, name: str, value: Any, minimum: int) -> int:
    # bool is an int subclass; True as a length is always a mistake.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")
    return int(value)


def _check_float(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{owner}: {name} must be a finite number, got {value!r}")
    return float(value)


def _check_unit(owner: str, unit: Any, tokenizer: Any) -> str:
    if unit not in UNITS:
        raise ValueError(f"{owner}: unit must be one of {UNITS}, got {unit!r}")
    if tokenizer is not None and not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(f"{owner}: tokenizer must have an encode(text) method, got {type(tokenizer).__name__}")
    if unit == "chars" and tokenizer is not None:
        raise ValueError(f"{owner}: a tokenizer was given but unit='chars' would ignore it")
    return unit


# --------------------------------------------------------------------------- measuring lengths


def _token_count(tokenizer: Any, text: str) -> int:
    try:
        # HF tokenizers: special tokens are not part of what the model generated.
        return len(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:  # a plain encode(text)
        return len(tokenizer.encode(text))


class _LengthMeasure:
    """Mixin: measures completion lengths per the module docstring, warning once about characters."""

    __name__: str
    unit: str
    tokenizer: Any
    _warned_chars: bool

    def _lengths(self, completions: list, kwargs: dict[str, Any]) -> list[int]:
        n = len(completions)
        if self.unit != "chars":
            for column in ("completion_lengths", "completion_ids"):
                values = kwargs.get(column)
                if values is not None:
                    if len(values) != n:
                        raise ValueError(f"{self.__name__}: {n} completions but {len(values)} {column}")
                    return [int(v) if column == "completion_lengths" else len(v) for v in values]
            if self.tokenizer is not None:
                return [_token_count(self.tokenizer, completion_text(c)) for c in completions]
            if self.unit == "tokens":
                raise ValueError(
                    f"{self.__name__}: unit='tokens' but there is no completion_ids or completion_lengths "
                    "column and no tokenizer; pass a tokenizer or use unit='auto'/'chars'"
                )
            if not self._warned_chars:
                self._warned_chars = True
                warnings.warn(
                    f"{self.__name__}: no completion_ids and no tokenizer; measuring lengths in characters",
                    stacklevel=3,
                )
        return [len(completion_text(c)) for c in completions]


# --------------------------------------------------------------------------- soft overlong


class SoftOverlongReward(_LengthMeasure):
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), a penalty in [-1, 0].

    With ``L_max = max_length``, ``L_cache = cache`` and ``|y|`` the completion length::

        R(y) = 0                                  if |y| <= L_max - L_cache
             = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
             = -1                                 if |y| > L_max

    so the penalty ramps linearly from 0 to -1 across the last ``cache`` units before
    ``max_length``. Set ``max_length`` to the generation limit (``max_completion_length``)
    so that truncated completions get -1. Length is in tokens when ``completion_ids`` /
    ``completion_lengths`` are passed or a ``tokenizer`` is given, else in characters (see the
    module docstring and ``unit``). Registry name ``soft_overlong``.
    """

    def __init__(self, max_length: int, cache: int, unit: str = "auto", tokenizer: Any = None) -> None:
        owner = "soft_overlong"
        self.max_length = _check_int(owner, "max_length", max_length, 1)
        self.cache = _check_int(owner, "cache", cache, 1)
        if self.cache > self.max_length:
            raise ValueError(f"{owner}: cache ({cache}) must not exceed max_length ({max_length})")
        self.unit = _check_unit(owner, unit, tokenizer)
        self.tokenizer = tokenizer
        self._warned_chars = False
        self.__name__ = "soft_overlong_reward"

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float]:
        return [self.penalty(n) for n in self._lengths(completions, kwargs)]

    def penalty(self, length: int) -> float:
        """Eq. 13 for one completion length."""
        threshold = self.max_length - self.cache
        if length <= threshold:
            return 0.0
        if length <= self.max_length:
            return (threshold - length) / self.cache
        return -1.0

    def __repr__(self) -> str:
        return f"SoftOverlongReward(max_length={self.max_length}, cache={self.cache}, unit={self.unit!r})"


# --------------------------------------------------------------------------- cosine length scaling


class CosineLengthReward(_LengthMeasure):
    """Cosine length-scaled correctness reward (Yeo et al. 2025, "Demystifying Long Chain-of-Thought
    Reasoning in LLMs", the cosine reward).

    With ``t = min(|y| / max_length, 1)``::

        CosFn(t, r_0, r_L) = r_L + 0.5 * (r_0 - r_L) * (1 + cos(pi * t))

    a correct completion gets ``CosFn(t, correct_start, correct_end)`` and a wrong one
    ``CosFn(t, wrong_start, wrong_end)``; a completion of ``max_length`` or more (truncated)
    gets ``exceed`` when it is given. The defaults (correct 1.0 -> 0.5, wrong -1.0 -> -0.5) are
    open-r1's: short correct answers earn most, short wrong answers lose most, so the model is
    pushed to think longer only when it would otherwise be wrong. The paper's own values were
    correct 2 -> 1, wrong -10 -> 0, exceed -10.

    Correctness comes from ``accuracy``: a reward function (in a config's kwargs also a registry spec
    string such as ``"accuracy"`` or ``"pkg.mod:fn"``) called with the same arguments; a completion is correct
    when it scores >= 0.5 and the result is None where accuracy is None (e.g. an unparseable
    gold). The default is the built-in ``accuracy`` reward, which reads the ``answer`` column.
    Length is measured as for :class:`SoftOverlongReward`. Registry name ``cosine_length``.
    """

    def __init__(
        self,
        max_length: int,
        correct_start: float = 1.0,
        correct_end: float = 0.5,
        wrong_start: float = -1.0,
        wrong_end: float = -0.5,
        exceed: float | None = None,
        accuracy: Callable | str | None = None,
        unit: str = "auto",
        tokenizer: Any = None,
    ) -> None:
        owner = "cosine_length"
        self.max_length = _check_int(owner, "max_length", max_length, 1)
        self.correct_start = _check_float(owner, "correct_start", correct_start)
        self.correct_end = _check_float(owner, "correct_end", correct_end)
        self.wrong_start = _check_float(owner, "wrong_start", wrong_start)
        self.wrong_end = _check_float(owner, "wrong_end", wrong_end)
        self.exceed = None if exceed is None else _check_float(owner, "exceed", exceed)
        self.accuracy = _accuracy_function(owner, accuracy)
        self.unit = _check_unit(owner, unit, tokenizer)
        self.tokenizer = tokenizer
        self._warned_chars = False
        self.__name__ = "cosine_length_reward"

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        correct = self.accuracy(prompts=prompts, completions=completions, **kwargs)
        if len(correct) != len(completions):
            raise ValueError(f"{self.__name__}: accuracy gave {len(correct)} values for {len(completions)} completions")
        lengths = self._lengths(completions, kwargs)
        return [None if c is None else self.value(n, c >= 0.5) for n, c in zip(lengths, correct, strict=True)]

    def value(self, length: int, correct: bool) -> float:
        """The reward of one completion of ``length`` that is (or is not) ``correct``."""
        if self.exceed is not None and length >= self.max_length:
            return self.exceed
        start, end = (self.correct_start, self.correct_end) if correct else (self.wrong_start, self.wrong_end)
        t = min(length / self.max_length, 1.0)
        return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t))

    def __repr__(self) -> str:
        return (
            f"CosineLengthReward(max_length={self.max_length}, correct={self.correct_start}->{self.correct_end}, "
            f"wrong={self.wrong_start}->{self.wrong_end}, exceed={self.exceed}, unit={self.unit!r})"
        )


class R1CosineReward(CosineLengthReward):
    """open-r1's ``cosine`` reward with open-r1's arguments (``get_cosine_scaled_reward``): the
    length in characters of the completion, ``max_len`` the length where the cosine ends; a
    correct answer goes from ``max_value_correct`` (short) to ``min_value_correct`` (at
    ``max_len``), a wrong one from ``min_value_wrong`` to ``max_value_wrong``. Correctness comes
    from the built-in ``accuracy`` (gold ``answer``, else ``solution``). Registry name ``cosine``;
    ``cosine_length`` is the same curve with rlreason's names and token lengths."""

    def __init__(self, min_value_wrong: float = -1.0, max_value_wrong: float = -0.5,
                 min_value_correct: float = 0.5, max_value_correct: float = 1.0, max_len: int = 1000) -> None:
        super().__init__(max_length=max_len, correct_start=max_value_correct, correct_end=min_value_correct,
                         wrong_start=min_value_wrong, wrong_end=max_value_wrong, unit="chars")
        self.__name__ = "cosine_scaled_reward"


def _accuracy_function(owner: str, accuracy: Callable | str | None) -> Callable:
    if accuracy is None:
        return accuracy_reward
    if isinstance(accuracy, str):  # the registry resolves a name given in a config before it builds this reward
        raise TypeError(f"{owner}: accuracy {accuracy!r} is a spec string; in Python pass the function, e.g. "
                        f"rlreason.rewards.registry.resolve({accuracy!r}) (a config's kwargs may name it)")
    if not callable(accuracy):
        raise TypeError(f"{owner}: accuracy must be a reward function or a spec string, got {accuracy!r}")
    return accuracy


# --------------------------------------------------------------------------- repetition


class RepetitionPenaltyReward:
    """N-gram repetition penalty, as open-r1's ``get_repetition_penalty_reward``.

    The completion is lower-cased and split on whitespace into words; with ``U`` distinct and
    ``T`` total word n-grams::

        R(y) = (1 - U / T) * max_penalty

    0 for a completion without repeats, approaching ``max_penalty`` (<= 0) as it loops. A
    completion with fewer than ``ngram_size`` words scores 0. Registry name ``repetition_penalty``.
    """

    def __init__(self, ngram_size: int = 3, max_penalty: float = -1.0) -> None:
        owner = "repetition_penalty"
        self.ngram_size = _check_int(owner, "ngram_size", ngram_size, 1)
        self.max_penalty = _check_float(owner, "max_penalty", max_penalty)
        if self.max_penalty > 0:
            raise ValueError(f"{owner}: max_penalty must be <= 0 (it is a penalty), got {max_penalty}")
        self.__name__ = "repetition_penalty_reward"

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float]:
        return [self.penalty(completion_text(c)) for c in completions]

    def penalty(self, text: str) -> float:
        """The penalty of one completion text."""
        words = text.lower().split()
        n = self.ngram_size
        if len(words) < n:
            return 0.0
        ngrams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        # 0.0 * a negative penalty is -0.0; + 0.0 keeps logs and equality checks plain.
        return (1.0 - len(set(ngrams)) / len(ngrams)) * self.max_penalty + 0.0

    def __repr__(self) -> str:
        return f"RepetitionPenaltyReward(ngram_size={self.ngram_size}, max_penalty={self.max_penalty})"

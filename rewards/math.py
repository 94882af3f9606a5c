"""The math answer verifier: the ``accuracy`` reward.

Three steps, each in its own modules:

1. extraction (:mod:`._extract`): the completion's final answer, by configurable rules
   (``<answer>`` tag, last ``\\boxed{}``, "final answer is", GSM8K ``####``, fallbacks);
2. parsing (:mod:`._parse`, :mod:`._normalize`, :mod:`._latex`): the answer and the gold become
   structured values (:mod:`._nodes`: numbers, expressions, tuples, sets, intervals, matrices,
   equations, choices, text);
3. equivalence (:mod:`._equiv`): exact rational arithmetic first, symbolic answers by
   high-precision numeric evaluation; a decimal gold is compared at its own precision.

A gold answer that cannot be parsed makes the reward ``None`` ("does not apply") and is
counted in :data:`WARNINGS`; it is never scored as a match. The conventions are documented
in ``docs/rewards.md`` (section "The math verifier").
"""

from __future__ import annotations

import functools
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from ._equiv import equivalent
from ._extract import FALLBACKS, RULES, gsm8k_gold
from ._extract import extract_answer as _extract
from ._nodes import Num, Parsed
from ._parse import parse_answer
from ._text import completion_text

__all__ = [
    "FALLBACKS",
    "RULES",
    "WARNINGS",
    "AccuracyReward",
    "Parsed",
    "accuracy_reward",
    "extract_answer",
    "gsm8k_gold",
    "parse_answer",
    "parse_gold",
    "parse_number",
    "verify",
]

# Where the accuracy reward looks for the gold, in order (rlreason's name, then open-r1's and TRL's).
GOLD_COLUMNS = ("answer", "solution")
# Counts of problems worth surfacing in training logs; the trainer reads and reports these.
WARNINGS: Counter[str] = Counter()
# Golds already warned about, so a bad dataset row does not print a warning every step.
_WARNED_GOLDS: set[str] = set()
# Markers that say a gold string is a whole solution, not just the answer.
_SOLUTION_MARKERS = ("\\boxed", "\\fbox", "####", "<answer>", "final answer", "Final Answer")


def extract_answer(text: str, rules: Sequence[str] = RULES, fallback: str | Sequence[str] | None = None) -> str | None:
    """The final answer of a completion, or None. See :mod:`._extract` for the rules.

    With the defaults: the last ``<answer>`` (or the box inside it), else the last
    ``\\boxed{}``/``\\fbox{}`` (adjacent boxes joined by "and"/commas form one answer, joined
    by "or" none), else the line after "final answer is", else after ``####``.
    """
    return _extract(text, rules, fallback)


# --------------------------------------------------------------------------------------------
# Golds


def parse_gold(gold: Any) -> Parsed | None:
    """The parsed value of a gold answer, or None if it cannot be trusted.

    A gold may be a number (int, float, Fraction) or text. Text holding a solution (a
    ``\\boxed{}``, a GSM8K ``####`` line, an ``<answer>`` tag) is reduced to its final answer
    first; otherwise the whole text is the answer. Results are cached per gold string.
    """
    if isinstance(gold, bool):  # bool is an int subclass, but True is never a meant answer
        return None
    if isinstance(gold, (int, Fraction)):
        return Parsed(str(gold), Num(Fraction(gold)))
    if isinstance(gold, float):
        # Via str, so 0.1 is 1/10 (what was written) and not the binary float's exact value.
        try:
            return Parsed(str(gold), Num(Fraction(str(gold)), _places(str(gold))))
        except ValueError:  # nan, inf
            return None
    if isinstance(gold, str):
        return _parse_gold_text(gold)
    return None


def _places(text: str) -> int | None:
    return len(text.split(".")[1]) if "." in text and "e" not in text.lower() else None


@functools.lru_cache(maxsize=16384)
def _parse_gold_text(gold: str) -> Parsed | None:
    if any(marker in gold for marker in _SOLUTION_MARKERS):
        answer = _extract(gold)
        return parse_answer(answer) if answer is not None else None
    parsed = parse_answer(gold)
    if parsed is None or (parsed.is_text and len(gold.split()) > 2):
        # A sentence ("The answer is 33"): read it the way a completion is read.
        answer = _extract(gold, fallback=("answer_phrase", "last_math"))
        reread = parse_answer(answer) if answer is not None else None
        return reread if reread is not None else parsed
    return parsed


# --------------------------------------------------------------------------------------------
# The reward


def verify(gold: Any, answer: str | None) -> bool | None:
    """Whether an already extracted ``answer`` matches ``gold``; None if the gold is unparseable.

    An answer that is missing or cannot be read is wrong (False), never None.
    """
    gold_parsed = parse_gold(gold)
    if gold_parsed is None:
        return None
    if answer is None:
        return False
    pred = parse_answer(answer)
    return pred is not None and equivalent(gold_parsed, pred)


class AccuracyReward:
    """The accuracy reward, configured per dataset: 1.0 for a correct final answer, else 0.0.

    ``extract`` names the extraction rules to use (any of :data:`RULES`; they keep their
    fixed priority), ``fallback`` what to read when none of their markers occurs (one of
    :data:`FALLBACKS`, a sequence of them tried in order, or None for "no answer").
    A class, not a closure, so a configured reward pickles (process pools, checkpoints).

    Example: ``AccuracyReward(extract=("gsm8k",), fallback="last_number")`` for a model
    trained to end with ``#### N`` that sometimes forgets the marker.
    """

    # Scores each completion on its own, so the reward pool may split a batch over its workers
    # (rewards/runner.py): the verifier is the slow reward, worth running in parallel.
    rlreason_chunk_size = "auto"

    def __init__(
        self,
        extract: Sequence[str] = RULES,
        fallback: str | Sequence[str] | None = None,
        name: str = "accuracy_reward",
        gold_column: str | None = None,
    ) -> None:
        self.gold_column = gold_column
        self.extract = tuple(extract)
        self.fallback = fallback if fallback is None or isinstance(fallback, str) else tuple(fallback)
        _extract("", self.extract, self.fallback)  # fail now on a misspelled rule, not mid-training
        self.__name__ = name

    def __call__(self, prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        """One score per completion: 1.0, 0.0, or None where the gold cannot be parsed.

        The gold is the column ``gold_column`` names; by default ``answer``, else ``solution``
        (open-r1's and TRL's name). No extractable or parseable answer scores 0.0. Each
        completion whose gold cannot be parsed increments ``WARNINGS["unparseable_gold"]``;
        each distinct bad gold is warned about once.
        """
        column = self.gold_from(kwargs)
        if column is None:
            raise ValueError(f"{self.__name__}: no gold column: give 'answer' or 'solution', or set gold_column "
                             f"(columns: {', '.join(sorted(kwargs))})")
        answer = kwargs[column]
        if len(answer) != len(completions):
            raise ValueError(f"got {len(completions)} completions but {len(answer)} answers")
        return [self.score(completion_text(c), gold) for c, gold in zip(completions, answer, strict=True)]

    def gold_from(self, columns: Any) -> str | None:
        """The column holding the gold among ``columns``: ``gold_column``, else ``answer``, else
        ``solution``; None if there is none."""
        if self.gold_column is not None:
            return self.gold_column if self.gold_column in columns else None
        return next((c for c in GOLD_COLUMNS if c in columns), None)

    def check_columns(self, columns: set[str]) -> None:
        """Raise ValueError at start-up when the dataset has no gold column for this reward."""
        if self.gold_from(columns) is None:
            wanted = repr(self.gold_column) if self.gold_column else "'answer' or 'solution'"
            raise ValueError(f"needs the gold column {wanted}")

    def read_gold(self, gold: Any) -> Parsed | None:
        """The gold as this reward reads it (:func:`parse_gold`), None where it cannot: the start-up
        check of the training data reads every gold with this, so it refuses exactly the golds
        that would score None."""
        return parse_gold(gold)

    def score(self, text: str, gold: Any) -> float | None:
        """The score of one completion text against one gold."""
        gold_parsed = self.read_gold(gold)
        if gold_parsed is None:
            _note_unparseable_gold(gold)
            return None
        answer = _extract(text, self.extract, self.fallback)
        if answer is None:
            return 0.0
        pred = parse_answer(answer)
        return 1.0 if pred is not None and equivalent(gold_parsed, pred) else 0.0

    def __repr__(self) -> str:
        gold = "" if self.gold_column is None else f", gold_column={self.gold_column!r}"
        return f"AccuracyReward(extract={self.extract!r}, fallback={self.fallback!r}{gold})"


# The registry's "accuracy": the default rules, no fallback.
accuracy_reward = AccuracyReward()


def _note_unparseable_gold(gold: Any) -> None:
    WARNINGS["unparseable_gold"] += 1
    key = repr(gold)  # repr, since a gold of an unexpected type may not be hashable
    if key not in _WARNED_GOLDS:
        _WARNED_GOLDS.add(key)
        warnings.warn(f"accuracy reward: cannot parse gold answer {gold!r}; scoring it None", stacklevel=3)


# --------------------------------------------------------------------------------------------
# The plain-number parser of the first version, kept for callers that want a Fraction.

_INT = r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)"  # thousands separators only in groups of three
# re.ASCII: \d would otherwise accept other scripts' digits, which int() also reads.
_NUMBER = re.compile(rf"{_INT}(?:\.\d*)?|[+-]?\.\d+", re.ASCII)
_SLASH_FRACTION = re.compile(rf"({_INT})\s*/\s*({_INT})", re.ASCII)
_LATEX_FRACTION = re.compile(rf"([+-]?)\\[dt]?frac\s*\{{\s*({_INT})\s*\}}\s*\{{\s*({_INT})\s*\}}", re.ASCII)


def parse_number(s: str) -> Fraction | None:
    """The exact value of a plain numeric answer, or None if it is not one.

    Supported: integers with optional sign, thousands separators (``1,234``) and leading
    zeros (``007``); decimals (``-3.50``, ``.5``); simple fractions ``a/b``, ``\\frac{a}{b}``
    (also ``\\dfrac``, ``\\tfrac``, ``-\\frac{a}{b}``). Surrounding spaces and ``$`` are
    stripped. A zero denominator, or anything else, gives None. (The verifier itself reads
    far more; see :func:`parse_answer`.)
    """
    s = s.strip().strip("$").strip()
    if _NUMBER.fullmatch(s):
        return Fraction(s.replace(",", ""))
    if m := _SLASH_FRACTION.fullmatch(s):
        return _ratio("", m.group(1), m.group(2))
    if m := _LATEX_FRACTION.fullmatch(s):
        return _ratio(m.group(1), m.group(2), m.group(3))
    return None


def _ratio(sign: str, numerator: str, denominator: str) -> Fraction | None:
    den = int(denominator.replace(",", ""))
    if den == 0:
        return None
    value = Fraction(int(numerator.replace(",", "")), den)
    return -value if sign == "-" else value

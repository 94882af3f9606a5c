"""Accuracy reward for answers that are numbers.

This first version compares exact rational values: ``"1,234"``, ``"1234.0"`` and
``"\\frac{2468}{2}"`` all equal 1234. Symbolic answers (expressions, intervals, units) are
not understood yet; a full LaTeX/sympy verifier will replace :func:`parse_number` later, so
extraction, parsing and comparison are kept as separate small functions.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from fractions import Fraction
from typing import Any

from ._text import completion_text

# Counts of problems worth surfacing in training logs; the trainer reads and reports these.
WARNINGS: Counter[str] = Counter()
# Golds already warned about, so a bad dataset row does not print a warning every step.
_WARNED_GOLDS: set[str] = set()

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_GSM8K = re.compile(r"####[ \t]*([^\n]*)")

_INT = r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)"  # thousands separators only in groups of three
# re.ASCII: \d would otherwise accept other scripts' digits, which int() also reads.
_NUMBER = re.compile(rf"{_INT}(?:\.\d*)?|[+-]?\.\d+", re.ASCII)
_SLASH_FRACTION = re.compile(rf"({_INT})\s*/\s*({_INT})", re.ASCII)
_LATEX_FRACTION = re.compile(rf"([+-]?)\\[dt]?frac\s*\{{\s*({_INT})\s*\}}\s*\{{\s*({_INT})\s*\}}", re.ASCII)


def extract_answer(text: str) -> str | None:
    """The final answer of a completion, or None.

    The rule, first that applies wins:

    1. the content of the LAST ``<answer>...</answer>``; if that content itself contains a
       ``\\boxed{...}``, the last box inside it (so ``<answer>\\boxed{5}</answer>`` gives ``5``);
    2. else the content of the last complete ``\\boxed{...}`` or ``\\fbox{...}``, nested
       braces included (``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``); a box whose braces
       never close (a truncated completion) is ignored;
    3. else the rest of the line after the last GSM8K-style ``#### ``.

    The chosen content is stripped of surrounding whitespace; if it is empty the result is
    None (an empty last answer does not fall back to an earlier rule: it is the model's answer).
    """
    tagged = _ANSWER_TAG.findall(text)
    if tagged:
        content = tagged[-1]
        boxed = _last_boxed(content)
        return _non_empty(boxed if boxed is not None else content)
    boxed = _last_boxed(text)
    if boxed is not None:
        return _non_empty(boxed)
    hashes = _GSM8K.findall(text)
    if hashes:
        return _non_empty(hashes[-1])
    return None


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{}``/``\\fbox{}`` whose braces balance, or None."""
    for match in reversed(list(_BOX_OPEN.finditer(text))):
        content = _balanced_content(text, match.end())
        if content is not None:
            return content
    return None


def _balanced_content(text: str, start: int) -> str | None:
    """Text from ``start`` up to the brace closing the ``{`` just before it; None if unclosed."""
    depth = 1
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i]
    return None


def _non_empty(s: str) -> str | None:
    s = s.strip()
    return s or None


def parse_number(s: str) -> Fraction | None:
    """The exact value of a numeric answer, or None if it is not one of the supported forms.

    Supported: integers with optional sign, thousands separators (``1,234``) and leading
    zeros (``007``); decimals (``-3.50``, ``.5``); simple fractions of integers ``a/b``,
    ``\\frac{a}{b}`` (also ``\\dfrac``, ``\\tfrac``, and ``-\\frac{a}{b}``). Surrounding
    spaces and ``$`` signs are stripped. A zero denominator, or anything else, gives None.
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


def parse_gold(gold: Any) -> Fraction | None:
    """The value of a gold answer, or None if it cannot be trusted.

    A gold may be a number (int, float, Fraction) or text. Text is parsed as a number; failing
    that, its final answer is extracted first, so full GSM8K solutions (``... #### 72``) and
    MATH solutions (``... \\boxed{3}``) work as golds.
    """
    if isinstance(gold, bool):  # bool is an int subclass, but True is never a meant answer
        return None
    if isinstance(gold, (int, Fraction)):
        return Fraction(gold)
    if isinstance(gold, float):
        # Via str, so 0.1 is 1/10 (what was written) and not the binary float's exact value.
        try:
            return Fraction(str(gold))
        except ValueError:  # nan, inf
            return None
    if isinstance(gold, str):
        value = parse_number(gold)
        if value is None and (extracted := extract_answer(gold)) is not None:
            value = parse_number(extracted)
        return value
    return None


def accuracy_reward(prompts: list, completions: list, answer: list, **kwargs: Any) -> list[float | None]:
    """1.0 if a completion's extracted answer equals the gold exactly (as fractions), else 0.0.

    No extractable or parseable answer scores 0.0. A gold that cannot be parsed scores None
    ("does not apply") rather than anything that could be rewarded; each such completion
    increments ``WARNINGS["unparseable_gold"]``, and each distinct bad gold is warned about once.
    """
    if len(answer) != len(completions):
        raise ValueError(f"got {len(completions)} completions but {len(answer)} answers")
    return [_score_one(completion_text(c), gold) for c, gold in zip(completions, answer, strict=True)]


def _score_one(text: str, gold: Any) -> float | None:
    gold_value = parse_gold(gold)
    if gold_value is None:
        _note_unparseable_gold(gold)
        return None
    extracted = extract_answer(text)
    predicted = parse_number(extracted) if extracted is not None else None
    return 1.0 if predicted == gold_value else 0.0


def _note_unparseable_gold(gold: Any) -> None:
    WARNINGS["unparseable_gold"] += 1
    key = repr(gold)  # repr, since a gold of an unexpected type may not be hashable
    if key not in _WARNED_GOLDS:
        _WARNED_GOLDS.add(key)
        warnings.warn(f"accuracy reward: cannot parse gold answer {gold!r}; scoring it None", stacklevel=2)

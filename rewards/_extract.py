"""Finding the final answer in a completion.

An extraction is a sequence of *rules*, tried in a fixed priority order, then an optional
*fallback*. The first rule that finds a marker decides the answer, even when the content it
marks is empty (an empty box is the model's answer, and it scores 0): a later rule never
overrides an earlier one, so a model cannot hedge by writing one answer per format.

Rules (highest priority first, whatever order they are given in):

``answer_tag``
    content of the last ``<answer>...</answer>``; if that content holds a box, the box.
``boxed``
    content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces). Boxes
    right before it joined only by "and", commas or spacing (``\\boxed{1}, \\boxed{2}``)
    are one multi-part answer, ``"1, 2"``; boxes joined by "or" are a hedge between
    conflicting answers, and give None (no answer).
``final_answer``
    the rest of the line after the last "final answer is" / "Final Answer:".
``gsm8k``
    the rest of the line after the last ``####``.

Fallbacks, used only when no rule's marker occurs at all:

``"whole"``          the whole text, if it is short (at most 100 characters, 4 words);
``"answer_phrase"``  after the last "the answer is" / "answer:" on its line;
``"last_math"``      the last inline math span (``$...$``, ``\\(...\\)``, ``\\[...\\]``);
``"last_number"``    the last number in the text (``-1,234.5``, ``3/4``);
a tuple of these is tried in order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

RULES: Final = ("answer_tag", "boxed", "final_answer", "gsm8k")
FALLBACKS: Final = ("whole", "answer_phrase", "last_math", "last_number")
# Longer completions are only searched in their tail: the final answer is at the end, and
# this bounds the regex work on a pathological multi-megabyte completion.
MAX_SCAN_CHARS: Final = 20_000

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox|framebox)\s*\{")
_GSM8K = re.compile(r"####[ \t]*([^\n]*)")
_FINAL = re.compile(r"final\s+answer\s*(?:is|:)\s*(?:is\s*)?:?([^\n]*)", re.IGNORECASE)
_PHRASE = re.compile(r"\banswer\s*(?:is|:|=)\s*(?:for sure\s*)?:?([^\n]*)", re.IGNORECASE)
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_LAST_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+", re.ASCII)
# What may sit between boxes of one multi-part answer: spacing, punctuation, math delimiters,
# "and", and LaTeX spacing commands. "or" is checked separately (it makes a conflict).
_JOINER = re.compile(
    r"(?:\s|[,;.$&]|\\[\[\]()]|\\(?:quad|qquad|,|;|!| )|\\text\{[^{}]*\}|\band\b|\bor\b|\bfor\b|\bpart\b|\(\w\))*",
)
_TRAILER = re.compile(r"\.?\s*I hope it is correct.*$|[.\s]+$", re.IGNORECASE)


def extract_answer(text: str, rules: Sequence[str] = RULES, fallback: str | Sequence[str] | None = None) -> str | None:
    """The final answer of a completion, or None (none given, empty, or a hedge).

    See the module docstring for the rules. The result is stripped; an empty marked answer is
    None. Unknown rule or fallback names raise ``ValueError``.
    """
    _check_names(rules, RULES, "rule")
    fallbacks = (fallback,) if isinstance(fallback, str) else tuple(fallback or ())
    _check_names(fallbacks, FALLBACKS, "fallback")
    text = text[-MAX_SCAN_CHARS:]
    for rule in RULES:  # priority order is fixed; `rules` only selects
        if rule in rules:
            found, answer = _RULE_FUNCS[rule](text)
            if found:
                return answer
    for name in fallbacks:
        answer = _FALLBACK_FUNCS[name](text)
        if answer is not None:
            return answer
    return None


def _check_names(given: Sequence[str], known: Sequence[str], what: str) -> None:
    for name in given:
        if name not in known:
            raise ValueError(f"unknown extraction {what} {name!r}; known: {', '.join(known)}")


def _answer_tag(text: str) -> tuple[bool, str | None]:
    tagged = _ANSWER_TAG.findall(text)
    if not tagged:
        return False, None
    content = tagged[-1]
    found, boxed = _boxed(content)
    return True, boxed if found else _non_empty(content)


def _boxed(text: str) -> tuple[bool, str | None]:
    boxes = _complete_boxes(text)
    if not boxes:
        return False, None
    group = [boxes[-1]]
    # Walk back over boxes separated from the group only by joiners ("and", commas, spacing).
    for prev in reversed(boxes[:-1]):
        gap = text[prev[1] : group[0][0]]
        if not _JOINER.fullmatch(gap):
            break
        if re.search(r"\bor\b", gap):
            return True, None
        group.insert(0, prev)
    parts = [_non_empty(content) for _, _, content in group]
    if any(p is None for p in parts):
        return True, None
    return True, ", ".join(p for p in parts if p is not None)


def _complete_boxes(text: str) -> list[tuple[int, int, str]]:
    """(start, end, content) of every box whose braces balance, in order. One pass pairs every
    brace (a scan per box was quadratic: 20k characters of unclosed boxes took 1.3 s)."""
    opens = [m for m in _BOX_OPEN.finditer(text)]
    if not opens:
        return []
    closing = _closing_braces(text)
    boxes = []
    for match in opens:
        end = closing.get(match.end() - 1)
        if end is not None:
            boxes.append((match.start(), end + 1, text[match.end() : end]))
    # A box nested in a box counts once (the outer one). Boxes come in order of their start,
    # so one is nested exactly when an earlier box ends at or after its end.
    outer, last_end = [], -1
    for box in boxes:
        if box[1] > last_end:
            outer.append(box)
            last_end = box[1]
    return outer


def _closing_braces(text: str) -> dict[int, int]:
    """The index of the ``}`` closing each ``{`` that is closed, by the ``{``'s index."""
    pairs, stack = {}, []
    for i, char in enumerate(text):
        if char == "{":
            stack.append(i)
        elif char == "}" and stack:
            pairs[stack.pop()] = i
    return pairs


def _final_answer(text: str) -> tuple[bool, str | None]:
    found = _FINAL.findall(text)
    if not found:
        return False, None
    line = found[-1]
    while inner := _FINAL.findall(line):  # "Final Answer: The final answer is 7"
        line = inner[-1]
    return True, _clean_line(line)


def _gsm8k(text: str) -> tuple[bool, str | None]:
    found = _GSM8K.findall(text)
    if not found:
        return False, None
    return True, _non_empty(found[-1])


def gsm8k_gold(text: str) -> str | None:
    """The gold answer of a GSM8K answer column (a rationale ending ``#### 72``): the rest of the
    line after the last ``####``, stripped; None without a ``####`` or with nothing after it.

    The one reading of a GSM8K gold: the eval suites, the preflight check and the ``gsm8k``
    extraction rule (how the accuracy reward reads a rationale given as its gold) all use it.
    Thousands separators are left in (``1,450,000``): the verifier reads them as one number,
    and dropping commas would turn a list answer (``2, 3``) into another number (``23``)."""
    return _gsm8k(text)[1]


def _whole(text: str) -> str | None:
    text = text.strip()
    words = re.findall(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}", text)
    return text if text and len(text) <= 100 and len(words) <= 4 else None


def _answer_phrase(text: str) -> str | None:
    found = _PHRASE.findall(text)
    return _clean_line(found[-1]) if found else None


def _last_math(text: str) -> str | None:
    spans = [next(g for g in m.groups() if g is not None) for m in _MATH_SPAN.finditer(text)]
    spans = [s for s in (_non_empty(s) for s in spans) if s is not None]
    return spans[-1] if spans else None


def _last_number(text: str) -> str | None:
    numbers = _LAST_NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _clean_line(line: str) -> str | None:
    """A phrase-introduced answer: the line minus a closing "I hope it is correct." and dots;
    a single math span in it is unwrapped (``$\\frac12$.`` gives ``\\frac12``)."""
    line = _TRAILER.sub("", line)
    found, boxed = _boxed(line)
    if found:
        return boxed
    spans = _MATH_SPAN.findall(line)
    if len(spans) == 1 and _MATH_SPAN.fullmatch(line.strip()):
        line = next(g for g in spans[0] if g)
    elif _is_sentence(line):  # "The largest $n$ is 34": its last mathematical expression
        return _last_expression(line) or _non_empty(line)
    return _non_empty(line)


_PROSE_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}(?![a-zA-Z])")
_UNIT_OR_MATH_WORD = re.compile(r"sqrt|exp|log|ln|sin|cos|tan|pi|and|or|cm|mm|km|m|kg|in|ft|s", re.IGNORECASE)


def _is_sentence(line: str) -> bool:
    """Prose around the answer: two or more words outside math spans that are not math names,
    units or joiners (``5 cm`` and ``2 and 3`` are answers, ``The largest $n$ is 34`` is not)."""
    outside = _MATH_SPAN.sub(" ", line)
    outside = re.sub(r"\\[a-zA-Z]+\s*(?:\{[^{}]*\})?", " ", outside)  # \text{...} and commands
    words = [w for w in _PROSE_WORD.findall(outside) if not _UNIT_OR_MATH_WORD.fullmatch(w)]
    return len(words) >= 2


def _last_expression(line: str) -> str | None:
    """Whichever ends later in the line: its last math span or its last number."""
    spans = [(m.end(), next(g for g in m.groups() if g is not None)) for m in _MATH_SPAN.finditer(line)]
    numbers = [(m.end(), m.group()) for m in _LAST_NUMBER.finditer(line)]
    candidates = [c for c in (spans[-1:] + numbers[-1:]) if c[1].strip()]
    return max(candidates)[1].strip() if candidates else None


def _non_empty(s: str) -> str | None:
    s = s.strip()
    return s or None


_RULE_FUNCS = {"answer_tag": _answer_tag, "boxed": _boxed, "final_answer": _final_answer, "gsm8k": _gsm8k}
_FALLBACK_FUNCS = {
    "whole": _whole,
    "answer_phrase": _answer_phrase,
    "last_math": _last_math,
    "last_number": _last_number,
}

"""The text of an answer, normalized: :func:`normalize` removes only what cannot change a value
(see its docstring; ``tests/test_verifier.py`` checks each rule), and :func:`_key` is the text
two answers must share to be equal without parsing. Why that shortcut is sound: :mod:`._equiv`.
"""

from __future__ import annotations

import re
from fractions import Fraction

from ._latex import _WORDS

_UNICODE = {
    "−": "-", "–": "-", "·": "\\cdot ", "×": "\\times ", "÷": "\\div ", "π": "\\pi ", "√": "\\sqrt",
    "≤": "<=", "≥": ">=", "≠": "!=", "∞": "\\infty ", "°": "^\\circ ", "∪": "\\cup ", "∈": "\\in ",
    "±": "\\pm ", "⟨": "\\langle ", "⟩": "\\rangle ",
}  # fmt: skip
_REPLACEMENTS = [
    (re.compile(r"\\left\s*\\?\.|\\right\s*\\?\."), ""),  # \left. and \right. are invisible
    (re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])"), ""),
    (re.compile(r"\\(?:displaystyle|limits|nolimits)(?![a-zA-Z])"), ""),
    (re.compile(r"\\[dtc]frac(?![a-zA-Z])"), r"\\frac"),
    (re.compile(r"\\dbinom(?![a-zA-Z])"), r"\\binom"),
    (re.compile(r"(\d),\\!\s*(?=\d{3})|(\d)\{,\}(?=\d{3})"), r"\1\2,"),  # 10,\!080 and 14{,}916
    (re.compile(r"(?<!\\)\\[!,;: ]|~|\\q?quad"), " "),  # \quadx too: a spacing command, not a name
    (re.compile(r"\\mathbb\s*\{?\s*R\s*\}?"), r"(-\\infty,\\infty)"),
    (re.compile(r"\\langle(?![a-zA-Z])"), "("),  # a vector <1,2,3> is the tuple of its entries
    (re.compile(r"\\rangle(?![a-zA-Z])"), ")"),
    (re.compile(r"(?<=[)\]])\s*\^\s*\{?\s*(?:T|\\top|\\intercal)\s*\}?"), ""),  # (1,2)^T: vectors are tuples
    (re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ(?![a-zA-Z])|\\degree(?![a-zA-Z])"), ""),
    (re.compile(r"\\(?:leq?|leqslant)(?![a-zA-Z])|=<"), "<="),
    (re.compile(r"\\(?:geq?|geqslant)(?![a-zA-Z])|=>"), ">="),
    (re.compile(r"\\(?:neq?)(?![a-zA-Z])"), "!="),
    (re.compile(r"\\lt(?![a-zA-Z])"), "<"),
    (re.compile(r"\\gt(?![a-zA-Z])"), ">"),
    (re.compile(r"\\mp(?![a-zA-Z])"), r"\\pm"),
    (re.compile(r"\\\$|\$"), ""),
    # A wrapper's content stays apart from a command before it: 5\times\mathrm{e} is not 5\timese.
    (re.compile(r"\\(?:textbf|textit|textnormal|textrm|mathrm|mathbf|mathit|mbox|text|operatorname)\s*\{([^{}]*)\}"),
     lambda m: (" " if m.start() and m.string[m.start() - 1].isalpha() else "") + m.group(1)),
]  # fmt: skip
_PERCENT = re.compile(r"\s*(?:\\%|%|\bpercent(?:age)?\b|\bpct\b)\s*$")
# Trailing unit words after something numeric: "125 miles", "864 inches^2", "5.4 cents";
# never a math name ("2 pi" is 2π, "3 sqrt(2)" is not 3).
_MATH_WORD = rf"(?:{'|'.join(sorted(_WORDS, key=len, reverse=True))})\b"
_UNITS = re.compile(
    rf"^(.*?[\d}}.)])\s*(?!{_MATH_WORD})(?:[a-zA-Z]{{2,}}\.?)(?:\s+(?!{_MATH_WORD})[a-zA-Z]{{2,}}\.?)*\s*(?:\^\{{?[23]\}}?)?$"
)
# Degrees inside a trigonometric function are radians times pi/180: \tan 45^\circ is 1.
_TRIG = re.compile(r"\\(?:sin|cos|tan|sec|csc|cot)(?![a-zA-Z])|(?<![a-zA-Z\\])(?:sin|cos|tan|sec|csc|cot)\(")
_DEGREES = re.compile(r"\{?\s*(\d+(?:\.\d+)?)\s*\}?\s*\^\s*(?:\{\s*\\circ\s*\}|\\circ(?![a-zA-Z]))")
# A repeating decimal: 0.\overline{3}, 1.2\overline{45}, 0.\dot{3}.
_REPEATING = re.compile(r"(\d*)\.(\d*)\\(?:overline|dot)\s*(?:\{\s*(\d+)\s*\}|(\d))")


def normalize(text: str) -> tuple[str, bool]:
    """(normalized text, whether it was a percentage). Removes what never changes the value:
    math delimiters, spacing commands, ``\\left``/``\\right``, text wrappers, degree signs
    (after turning degrees inside a trigonometric function into radians), dollar signs,
    trailing unit words and full stops; rewrites what is only another spelling of the same
    value: ``\\dfrac``->``\\frac``, ``\\le``->``<=``, ``\\mathbb{R}``->``(-\\infty,\\infty)``,
    ``\\langle a,b\\rangle`` and ``(a,b)^T`` -> ``(a,b)``, ``0.\\overline{3}`` -> ``\\frac{1}{3}``.
    Whitespace runs become one space; they are never removed (``\\pi r`` is not ``\\pir``)."""
    s = text.strip()
    if "\\\\" in s and "\\begin" not in s:  # doubly escaped source text: \\frac
        s = re.sub(r"\\\\(?=[a-zA-Z{}])", r"\\", s)
    for char, repl in _UNICODE.items():
        if char in s:
            s = s.replace(char, repl)
    if s.startswith(("\\(", "\\[")) and s.endswith(("\\)", "\\]")):
        s = s[2:-2]
    if _TRIG.search(s):
        s = _DEGREES.sub(r"(\1\\pi/180)", s)
    if "\\overline" in s or "\\dot" in s:
        s = _REPEATING.sub(_repeating_to_fraction, s)
    for pattern, repl in _REPLACEMENTS:
        s = pattern.sub(repl, s)
    s = s.strip().rstrip(".\\").strip()
    percent = False
    if (m := _PERCENT.search(s)) and m.start() > 0:
        percent, s = True, s[: m.start()]
    if (m := _UNITS.match(s)) and not _is_text_only(s):
        s = m.group(1)
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    return s, percent


def _is_text_only(s: str) -> bool:
    return not re.search(r"\d", s)


def _repeating_to_fraction(m: re.Match[str]) -> str:
    """``a.b\\overline{c}`` as the exact fraction it denotes: (abc - ab) / (10^|b| (10^|c| - 1))."""
    whole, fixed, period = m.group(1) or "0", m.group(2), m.group(3) or m.group(4)
    value = Fraction(int(whole + fixed + period) - int(whole + fixed), 10 ** len(fixed) * (10 ** len(period) - 1))
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _key(s: str) -> str:
    """The text two answers must share to be equal without parsing: the normalized text itself.
    (An earlier key also dropped braces and case, which made ``\\frac{1}{25}`` equal ``\\frac{12}{5}``.)"""
    return s

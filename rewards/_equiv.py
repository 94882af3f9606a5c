"""Parsing a final answer into a structured value, and deciding when two answers are equal.

:func:`parse_answer` turns an answer string into a small tree of nodes (:class:`Num`,
:class:`Expr`, :class:`Seq`, :class:`Interval`, :class:`Union`, :class:`Matrix`,
:class:`Relation`, :class:`Labeled`, :class:`Choice`, :class:`Text`); :func:`equivalent`
compares a gold tree with a predicted one.

Soundness comes first: two answers are equal only when their *values* are equal. The only
string comparison is of the normalized texts, and :func:`normalize` only removes what cannot
change a value (see its docstring; ``tests/test_verifier.py`` checks each rule). Plain numbers
are exact rationals. Symbolic answers are compared through their difference ``d = gold - pred``:
``d`` is zero when sympy's automatic evaluation makes it 0, or when sympy's adaptive-precision
evaluation finds no nonzero digit within :data:`ZERO_BITS` bits (``57+e^{-100}`` differs from 57
at the 44th digit and is told apart; a difference is never compared *relative to the answers*,
which is how ``123456789012300+\\pi`` once equalled ``123456789012345``). With variables, ``d``
is evaluated exactly at several rational points (positive and negative, below and above 1, a
different value per variable), so ``x^{100}+x`` is not ``x^{100}``. ``simplify`` is never called,
and every number built is bounded (:mod:`._latex`), so every check ends in bounded time.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Final

import sympy
from sympy.core.evalf import PrecisionExhausted

from ._deadline import time_limit
from ._latex import _WORDS, MAX_EXPONENT, MAX_RESULT_DIGITS, LatexError, TooLarge, parse_latex

MAX_ANSWER_CHARS: Final = 1_000  # longer "answers" are not answers; refusing them bounds the work
_LATEX2SYMPY_MAX_CHARS: Final = 300
# Working precision for deciding that a constant is 0: no nonzero bit within 256 bits (~77
# digits) of cancellation. A truly equal pair that sympy does not simplify costs ~10 ms here.
ZERO_BITS: Final = 256


class AnswerError(ValueError):
    """The text is not an answer the verifier can read."""


class Refused(AnswerError):
    """The answer denotes a value too expensive to build or evaluate: never compared at all."""


# --------------------------------------------------------------------------------------------
# Nodes


@dataclass(frozen=True)
class Num:
    """A rational number. ``places`` is set for decimals (digits after the point)."""

    value: Fraction
    places: int | None = None
    percent: bool = False


@dataclass(frozen=True)
class Expr:
    """A sympy expression that is not a plain rational, and the names of its free symbols."""

    expr: sympy.Expr
    symbols: frozenset[str]


@dataclass(frozen=True)
class Seq:
    """``kind``: "tuple" (ordered, parenthesised), "set" (``\\{...\\}``) or "list" (bare, unordered)."""

    items: tuple[Node, ...]
    kind: str


@dataclass(frozen=True)
class Interval:
    lo: Node
    hi: Node
    lo_closed: bool
    hi_closed: bool


@dataclass(frozen=True)
class Union:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Matrix:
    rows: tuple[tuple[Node, ...], ...]


@dataclass(frozen=True)
class Relation:
    """``diff op 0`` with op in ``=``, ``<``, ``<=``, ``!=`` (``>`` is stored negated); or,
    for relations it cannot normalise, only ``key`` (compared as text)."""

    op: str
    diff: Expr | None
    key: str = ""


@dataclass(frozen=True)
class Labeled:
    """``name = value`` where ``name`` is a label (``x``, ``f(x)``, ``|AB|``): the value
    counts, and ``relation`` keeps the whole equation for comparing with equations."""

    value: Node
    relation: Relation | None


@dataclass(frozen=True)
class Choice:
    letter: str


@dataclass(frozen=True)
class Text:
    """A word answer (``text`` case-folded, letters and digits only: ``Evelyn``, ``even``), or,
    with ``exact``, an answer mixing words and math, compared as written (spaces aside)."""

    text: str
    exact: bool = False


Node = Num | Expr | Seq | Interval | Union | Matrix | Relation | Labeled | Choice | Text


@dataclass(frozen=True)
class Parsed:
    """A parsed answer: its normalized text (``key``, compared first) and its tree."""

    key: str
    node: Node = field(compare=False)

    @property
    def is_text(self) -> bool:
        return isinstance(self.node, Text)

    @property
    def number(self) -> Fraction | None:
        """The value, for a plain number (not a percentage); else None."""
        node = self.node
        return node.value if isinstance(node, Num) and not node.percent else None


# --------------------------------------------------------------------------------------------
# Normalization

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
_WORD_SEPARATORS = re.compile(r"\s*\b(?:and|or)\b\s*")
_OR = re.compile(r"\s*\bor\b\s*")
_LETTERS3 = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}")
_WORDS_ONLY = re.compile(r"[A-Za-z][A-Za-z\s'\-]*")


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


# --------------------------------------------------------------------------------------------
# Parsing


@functools.lru_cache(maxsize=65536)
def parse_answer(text: str) -> Parsed | None:
    """The structured value of an answer string, or None when it cannot be read."""
    if not text or len(text) > MAX_ANSWER_CHARS:
        return None
    s, percent = normalize(text)
    if not s:
        return None
    try:
        node = _parse(s)
    except Refused:
        return None
    except (AnswerError, LatexError, ZeroDivisionError, TypeError, ValueError, RecursionError, OverflowError):
        if not _balanced(s):  # malformed (an unclosed brace): no answer
            return None
        # Read by neither parser (np.arcsin(10/13), a differential equation): compared as
        # written, so it equals only the same text (sound: equal text, equal value).
        node = Text(re.sub(r"\s+", " ", s), exact=True)
    if percent and isinstance(node, Num):
        node = Num(node.value, node.places, percent=True)
    return Parsed(_key(s) + ("%" if percent else ""), node)


_CHOICE = re.compile(r"^\(?([A-E])\)?(?:\s*[.:]?\s+[A-Z][a-zA-Z ]*)?$")
_BASE_NUMBER = re.compile(r"^(\d+)_\{?(\d+)\}?$")
_NUMBER = re.compile(r"^([+-]?)(\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+|\d*)(?:\.(\d+))?$", re.ASCII)
_FRACTION = re.compile(r"^([+-]?)\\frac\s*(?:\{\s*(\d+)\s*\}|(\d))\s*(?:\{\s*(\d+)\s*\}|(\d))$", re.ASCII)
_SLASH = re.compile(r"^([+-]?\d+)\s*/\s*(\d+)$", re.ASCII)
_MIXED = re.compile(r"^(\d+)\s*\\frac\s*\{\s*(\d+)\s*\}\s*\{\s*(\d+)\s*\}$", re.ASCII)
_REL_OPS = re.compile(r"<=|>=|!=|\\approx(?![a-zA-Z])|\\in(?![a-zA-Z])|=|<|>")


def _parse(s: str) -> Node:
    if m := _CHOICE.match(s):
        return Choice(m.group(1))
    if len(parts := _split_top(s, ";")) > 1:
        return _sequence([_parse(p) for p in parts], "list")
    if _OR.search(s) and (union := _or_union(s)) is not None:
        return union
    s = _WORD_SEPARATORS.sub(",", s).strip(",") if _WORD_SEPARATORS.search(s) else s
    if len(parts := _split_top(s, ",")) > 1 and not _NUMBER.match(s):
        return _sequence([_parse_item(p) for p in parts if p], "list")
    return _parse_item(s)


def _or_union(s: str) -> Union | None:
    """``x<-1 or x>2``: inequalities (or intervals) joined by "or" are the union of their sets.
    (Joined by "and" they would be an intersection; those stay a list.)"""
    parts = [p for p in _OR.split(s) if p]
    if len(parts) < 2:
        return None
    try:
        nodes = [_parse_item(p) for p in parts]
    except (AnswerError, LatexError, TypeError, ValueError):
        return None
    return Union(tuple(nodes)) if all(isinstance(n, Interval) for n in nodes) else None


def _sequence(items: list[Node], kind: str) -> Node:
    """A sequence, flattening the ``\\pm`` pairs of a bare list; one item is just that item."""
    flat: list[Node] = []
    for item in items:
        if kind in ("list", "set") and isinstance(item, Seq) and item.kind == "pm":
            flat.extend(item.items)
        else:
            flat.append(item)
    if kind in ("list", "pm") and len(flat) == 1:
        return flat[0]
    return Seq(tuple(flat), "list" if kind == "pm" else kind)


def _parse_item(s: str) -> Node:
    s = s.strip()
    if not s:
        raise AnswerError("empty item")
    if len(parts := _split_top(s, "\\cup")) > 1:
        return Union(tuple(_as_interval(_parse_item(p)) for p in parts))
    if _REL_OPS.search(s) and len(_split_relations(s)[0]) > 1:
        return _relation(s)
    if (m := _SCALED_MATRIX.match(s)) and (scaled := _scaled_matrix(m.group(1), m.group(2))) is not None:
        return scaled
    if (bracketed := _bracketed(s)) is not None:
        return bracketed
    if "\\pm" in s:
        plus, minus = s.replace("\\pm", "+", 1), s.replace("\\pm", "-", 1)
        return Seq((_parse_item(plus), _parse_item(minus)), "pm")
    if (m := _BASE_NUMBER.match(s)) and m.group(1):
        return Text(f"{m.group(1)}_{m.group(2)}")
    if re.search(r"\d\s*:\s*\d", s):  # ratios and times (7:32, 12:00) are compared as written
        return Text(_key(s))
    if (num := _fast_number(s)) is not None:
        return num
    if _WORDS_ONLY.fullmatch(s) and _has_prose(s):  # the whole answer is words: "Evelyn", "even"
        return Text(re.sub(r"[^a-z0-9]", "", s.lower()))
    if _has_prose(s) and "\\" not in s and _balanced(s):  # words mixed with math: compared as written
        return Text(s.replace(" ", ""), exact=True)
    return _expression(s)


def _has_prose(s: str) -> bool:
    """A run of three or more letters that is not a function or constant name (``sqrt``, ``pi``):
    read as a product of one-letter variables, "east" would equal "seat"."""
    return any(w not in _WORDS for w in _LETTERS3.findall(s))


def _fast_number(s: str) -> Num | None:
    """Plain numbers without sympy: ``-1,234.50``, ``\\frac{3}{4}``, ``3/4``, ``1\\frac{4}{5}``."""
    if (m := _NUMBER.match(s)) and (m.group(2) or m.group(3)):
        digits = (m.group(2) or "0").replace(",", "").replace(" ", "")
        value = Fraction(f"{digits}.{m.group(3)}" if m.group(3) else digits)
        return Num(-value if m.group(1) == "-" else value, len(m.group(3)) if m.group(3) else None)
    if m := _FRACTION.match(s):
        den = int(m.group(4) or m.group(5))
        if den == 0:
            raise AnswerError("zero denominator")
        value = Fraction(int(m.group(2) or m.group(3)), den)
        return Num(-value if m.group(1) == "-" else value)
    if m := _SLASH.match(s):
        if int(m.group(2)) == 0:
            raise AnswerError("zero denominator")
        return Num(Fraction(int(m.group(1)), int(m.group(2))))
    if m := _MIXED.match(s):
        whole, num, den = (int(g) for g in m.groups())
        if den == 0:
            raise AnswerError("zero denominator")
        return Num(whole + Fraction(num, den))
    return None


def _bracketed(s: str) -> Node | None:
    """Sets, tuples, intervals and matrices, or None if ``s`` is not one."""
    if s.startswith("\\begin{") and (matrix := _matrix(s)) is not None:
        return matrix
    if s.startswith("\\{") and s.endswith("\\}") and _closes_at_end(s, 1):
        return (
            _sequence([_parse_item(p) for p in _split_top(s[2:-2], ",")], "set") if s[2:-2].strip() else Seq((), "set")
        )
    if s[0] == "{" and s[-1] == "}" and _closes_at_end(s, 0):
        return _parse(s[1:-1])
    if s[0] in "([" and s[-1] in ")]" and _closes_at_end(s, 0):
        parts = _split_top(s[1:-1], ",")
        if len(parts) == 1:
            parts = _split_top(s[1:-1], ";")  # (0;-2;6): semicolons as coordinate separators
        if len(parts) == 1:
            if s[0] == "(" and s[-1] == ")" or parts[0].startswith("\\begin{"):
                return _parse_item(parts[0])
            return None
        if len(parts) == 2 and not (s[0] == "(" and s[-1] == ")"):
            lo, hi = (_parse_item(p) for p in parts)
            return Interval(lo, hi, s[0] == "[", s[-1] == "]")
        return Seq(tuple(_parse_item(p) for p in parts), "tuple")
    return None


def _balanced(s: str) -> bool:
    depth = 0
    for char in s:
        depth += (char in "([{") - (char in ")]}")
        if depth < 0:
            return False
    return depth == 0


def _closes_at_end(s: str, start: int) -> bool:
    """Whether the bracket at ``s[start]`` is closed by the last character (not earlier)."""
    depth = 0
    for i, char in enumerate(s):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0 and i >= start:
                return i == len(s) - 1
    return False


_MATRIX = re.compile(r"^\\begin\{([pbBvV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}$", re.DOTALL)
_SCALED_MATRIX = re.compile(
    r"^([^\\]*?|\\frac\{[^{}]*\}\{[^{}]*\})\s*(\\begin\{([pbBvV]?matrix)\}.*\\end\{\3\})$", re.DOTALL
)


def _scaled_matrix(coefficient: str, body: str) -> Matrix | None:
    """``2\\begin{pmatrix}1\\\\2\\end{pmatrix}``: a constant times a matrix, entry by entry."""
    if not coefficient.strip():
        return None
    coef, matrix = _parse_item(coefficient), _matrix(body)
    if matrix is None or not _is_constant(coef):
        return None
    factor = _sympy_value(coef)
    rows = []
    for row in matrix.rows:
        if not all(isinstance(cell, (Num, Expr)) for cell in row):
            return None
        rows.append(tuple(_node_of(factor * _sympy_value(cell)) for cell in row))
    return Matrix(tuple(rows))


def _sympy_value(node: Num | Expr) -> sympy.Expr:
    return sympy.Rational(node.value.numerator, node.value.denominator) if isinstance(node, Num) else node.expr


def _matrix(s: str) -> Matrix | None:
    m = _MATRIX.match(s)
    if m is None:
        return None
    rows = [r for r in re.split(r"\\\\", m.group(2)) if r.strip()]
    cells = tuple(tuple(_parse_item(c) for c in row.split("&")) for row in rows)
    if not cells or len({len(r) for r in cells}) != 1:
        raise AnswerError("ragged matrix")
    return Matrix(cells)


def _split_top(s: str, sep: str) -> list[str]:
    """``s`` split on ``sep`` where no bracket or environment is open."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        if s.startswith("\\begin{", i):
            depth += 1
        elif s.startswith("\\end{", i):
            depth -= 1
        char = s[i]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def _split_relations(s: str) -> tuple[list[str], list[str]]:
    """Top-level operands and relation operators of ``s``."""
    parts, ops, depth, start, i = [], [], 0, 0, 0
    while i < len(s):
        char = s[i]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and (m := _REL_OPS.match(s, i)):
            parts.append(s[start:i].strip())
            ops.append(m.group())
            i = start = m.end()
            continue
        i += 1
    parts.append(s[start:].strip())
    return parts, ops


_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}


def _relation(s: str) -> Node:
    parts, ops = _split_relations(s)
    if "\\approx" in ops:  # x \approx 11 is 11; \frac{\sqrt3}{3} \approx 0.577 is the exact part
        cut = ops.index("\\approx")
        before = parts[: cut + 1]
        if cut == 0 and _is_label(before[0]):
            return _parse(parts[1])
        return _parse_item(" ".join(p + " " + o for p, o in zip(before, ops[:cut], strict=False)) + before[-1])
    if "\\in" in ops:
        return _parse_item(parts[ops.index("\\in") + 1])
    if any(not p for p in parts):
        raise AnswerError("relation with an empty side")
    if all(op == "=" for op in ops):
        return _equation(parts)
    if len(parts) == 2:
        return _inequality(parts[0], ops[0], parts[1])
    if len(parts) == 3 and ops[0] in _FLIP and ops[1] in _FLIP and ops[0][0] == ops[1][0]:
        return _chain(parts, ops)
    return Relation("chain", None, _key(s))


def _equation(parts: list[str]) -> Node:
    if len(parts) == 2 and not _is_label(parts[0]) and _is_label(parts[1]) and _is_constant(_parse_item(parts[0])):
        parts = parts[::-1]  # "2 = x" gives x the value 2, as "x = 2" does
    if _is_label(parts[0]) or len(parts) > 2:  # x = 5, or a chain 1 = x = 0: the last value counts
        value = _parse(parts[-1])
        relation = None
        if len(parts) == 2:
            try:
                relation = Relation("=", _make_expr(parse_latex(parts[0]) - parse_latex(parts[1])))
            except (LatexError, TypeError, ValueError):
                relation = None
        return Labeled(value, relation)
    return Relation("=", _make_expr(parse_latex(parts[0]) - parse_latex(parts[1])))


def _is_label(lhs: str) -> bool:
    """A name being given a value: ``x``, ``a_{37}``, ``f(x)``, ``|AB|``, ``V_1:V_2``."""
    body = lhs.lstrip("+")
    return (
        bool(re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", body)))
        and not body[0].isdigit()
        and not body.startswith("-")
        and not _split_top(body, "+")[1:]
        and not _split_top(body, "-")[1:]
        and len(body) <= 30
    )


def _inequality(lhs: str, op: str, rhs: str) -> Node:
    """``x < 3`` and ``-x > -1`` become the interval of their one variable; other
    inequalities a normalised :class:`Relation`."""
    left, right = parse_latex(lhs), parse_latex(rhs)
    diff = left - right
    free = diff.free_symbols
    if len(free) == 1:
        (var,) = free
        poly = sympy.Poly(diff, var) if diff.is_polynomial(var) else None
        if poly is not None and poly.degree() == 1:
            slope, intercept = poly.all_coeffs()
            if slope.is_number and intercept.is_number and slope != 0:
                root = -intercept / slope
                upper = (op in ("<", "<=")) == bool(slope > 0)  # var below the root
                return _ray(root, upper, op.endswith("="))
    if op == "!=":
        return Relation("!=", _make_expr(diff))
    if op in (">", ">="):
        return Relation(_FLIP[op], _make_expr(-diff))
    return Relation(op, _make_expr(diff))


def _ray(root: sympy.Expr, upper: bool, closed: bool) -> Interval:
    end = _node_of(root)
    if upper:
        return Interval(_node_of(-sympy.oo), end, False, closed)
    return Interval(end, _node_of(sympy.oo), closed, False)


def _chain(parts: list[str], ops: list[str]) -> Node:
    """``a < x <= b`` (either direction) as an interval of its middle term."""
    lo, hi = _parse_item(parts[0]), _parse_item(parts[2])
    if _is_constant(lo) and _is_constant(hi):
        lo_closed, hi_closed = ops[0].endswith("="), ops[1].endswith("=")
        if ops[0][0] == ">":
            lo, hi, lo_closed, hi_closed = hi, lo, hi_closed, lo_closed
        return Interval(lo, hi, lo_closed, hi_closed)
    return Relation("chain", None, _key("".join(p + o for p, o in zip(parts, [*ops, ""], strict=True))))


def _is_constant(node: Node) -> bool:
    return isinstance(node, Num) or (isinstance(node, Expr) and not node.symbols)


def _as_interval(node: Node) -> Node:
    """A union's part: an interval, a set, or a 2-tuple read as an open interval."""
    if isinstance(node, Seq) and node.kind == "tuple" and len(node.items) == 2:
        return Interval(node.items[0], node.items[1], False, False)
    if isinstance(node, (Interval, Seq)):
        return node
    raise AnswerError("union of non-sets")


# Refused before the slow parser sees them: towers, 6+ digit exponents, big or repeated
# factorials (10!!! slipped through once and evaluated without end), binomials, huge literals.
_TOWER = re.compile(r"\^\s*\{?\s*\d+\s*\^|\^\s*\{?\s*\d{5,}|\d{4,}\s*!|!\s*!|[)}]\s*!|\\binom|\\choose|\d{60,}")


def _expression(s: str) -> Node:
    try:
        expr = parse_latex(s)
    except TooLarge as e:  # never retried by the slow parser, which would compute the value
        raise Refused(str(e)) from None
    except LatexError:
        expr = _latex2sympy(s)
    return _node_of(expr)


def _latex2sympy(s: str) -> sympy.Expr:
    """The slow, broad parser, for what :func:`parse_latex` does not know; guarded against
    inputs whose evaluation could explode (power towers, huge factorials, long inputs), before
    it runs and, on what it returns, before anything is evaluated. Its ANTLR parser is itself
    slow on nesting (measured: 5 nested braces 1 s, 20 nested braces 10 s, 21 chained ``^``
    20 s), so deep nesting is refused and, in a main thread, a timer stops it after
    :data:`SLOW_PARSE_SECONDS`."""
    if len(s) > _LATEX2SYMPY_MAX_CHARS or _TOWER.search(s) or len(_BARE_CARET.findall(s)) > 4 or _depth(s) > 4:
        raise Refused("refusing to evaluate")
    if unknown := {name for name in _COMMAND.findall(s) if name not in _KNOWN_COMMANDS}:
        # It reads an unknown command leniently (\pir as pi*r): a guess, not a value.
        raise AnswerError(f"unknown command \\{min(unknown)}")
    latex2sympy = _slow_parser()
    try:
        with time_limit(SLOW_PARSE_SECONDS):
            expr = latex2sympy(s)
    except TimeoutError:
        raise Refused("slow parse timed out") from None
    except Exception as e:  # it raises bare Exceptions for syntax errors
        raise AnswerError(f"unparseable: {e}") from None
    if not isinstance(expr, sympy.Expr):
        raise AnswerError("not an expression")
    _check_size(expr)
    return expr


SLOW_PARSE_SECONDS: Final = 0.8
_BARE_CARET = re.compile(r"\^\s*(?!\{)")  # x^x^x^x^x: unbraced chains are what ANTLR is slow on
_COMMAND = re.compile(r"\\([a-zA-Z]+)")
# The commands the slow parser may see: what final answers use and it reads as written.
_KNOWN_COMMANDS: Final = frozenset({
    "frac", "dfrac", "tfrac", "sqrt", "pi", "infty", "cdot", "times", "div", "pm", "mp", "le", "leq", "ge", "geq",
    "ne", "neq", "lt", "gt", "in", "notin", "cup", "cap", "setminus", "emptyset", "varnothing", "sin", "cos", "tan",
    "sec", "csc", "cot", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "log", "ln", "exp", "lim", "sum",
    "prod", "int", "binom", "overline", "vec", "hat", "bar", "circ", "prime", "angle", "perp", "parallel", "approx",
    "equiv", "mid", "ldots", "cdots", "dots", "mathrm", "mathbf", "operatorname", "text", "textbf", "mbox", "left",
    "right", "big", "Big", "quad", "qquad", "displaystyle", "alpha", "beta", "gamma", "delta", "epsilon",
    "varepsilon", "zeta", "eta", "theta", "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma",
    "tau", "upsilon", "phi", "varphi", "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma",
    "Phi", "Psi", "Omega", "begin", "end", "matrix", "pmatrix", "bmatrix", "vmatrix", "array", "to", "infin",
    "cdotp", "ast", "star", "lfloor", "rfloor", "lceil", "rceil", "vert", "lvert", "rvert", "Vert"
})  # fmt: skip


@functools.cache
def _slow_parser() -> Callable[[str], object]:
    """latex2sympy, imported and warmed up once outside any deadline: its first call builds
    ANTLR's tables (~0.4 s), which must not count against one answer's time."""
    from latex2sympy2_extended import latex2sympy  # slow import, and only needed here

    latex2sympy("x+1")
    return latex2sympy


def _depth(s: str) -> int:
    depth = deepest = 0
    for char in s:
        depth += (char in "([{") - (char in ")]}")
        deepest = max(deepest, depth)
    return deepest


def _check_size(expr: sympy.Expr) -> None:
    """Refuses a tree holding a number, power or factorial too large to evaluate."""
    for node in sympy.preorder_traversal(expr):
        if node.is_Integer and abs(node) > _MAX_INTEGER:
            raise Refused("number too large")
        if node.is_Pow and node.exp.is_Number and abs(node.exp) > MAX_EXPONENT and not node.base.is_Number:
            raise Refused("exponent too large")
        if isinstance(node, (sympy.factorial, sympy.factorial2)) and node.args[0].is_Number and node.args[0] > 1000:
            raise Refused("factorial too large")


_MAX_INTEGER: Final = 10**MAX_RESULT_DIGITS


def _node_of(expr: sympy.Expr) -> Node:
    if expr.is_Rational:
        return Num(Fraction(int(expr.p), int(expr.q)))
    if isinstance(expr, sympy.Float):
        return Num(Fraction(str(expr)))
    return _make_expr(expr)


def _make_expr(expr: sympy.Expr) -> Expr:
    return Expr(expr, frozenset(str(s) for s in expr.free_symbols))


# --------------------------------------------------------------------------------------------
# Zero tests: the only way two values are found equal


def _is_zero(value: sympy.Expr) -> bool | None:
    """Whether a constant is exactly 0: True, False, or None when it has no finite value.

    0 after sympy's automatic evaluation is 0. Otherwise the constant is evaluated with
    sympy's adaptive precision, which raises the working precision until it has 20 correct
    digits of the *difference itself*: a nonzero value, however small next to the terms it
    came from, is found nonzero (``e^{-100}``); only when :data:`ZERO_BITS` bits of
    cancellation leave no nonzero digit is it taken as 0 (``(1+\\sqrt2)^2 - 3 - 2\\sqrt2``).
    """
    if value.is_Number:
        if value is sympy.nan or value.is_infinite:
            return None
        return bool(value == 0)
    if value.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan):
        return None
    try:
        approx = sympy.N(value, 20, strict=True, maxn=ZERO_BITS)
    except PrecisionExhausted:
        return True
    except (ArithmeticError, TypeError, ValueError, AttributeError, RecursionError, NotImplementedError):
        return None
    real, imag = approx.as_real_imag()
    if not (real.is_Number and imag.is_Number) or real.is_infinite or imag.is_infinite:
        return None
    return bool(real == 0 and imag == 0)


# Rational sample points for variables: both signs, below and above 1, prime denominators, and
# a different value for each variable (x - y must not vanish). Exact arithmetic at rationals
# keeps polynomials and rational functions exact; the zero test handles the rest.
_BASES: Final = (Fraction(3, 7), Fraction(-11, 13), Fraction(29, 17), Fraction(-53, 19), Fraction(7, 23))


def _points(symbols: list[sympy.Symbol]) -> list[dict[sympy.Symbol, sympy.Rational]]:
    points = []
    for k, base in enumerate(_BASES):
        point = {}
        for i, sym in enumerate(symbols):
            value = base + Fraction(i * (k + 2), 31 + 6 * i)
            point[sym] = sympy.Rational(value.numerator, value.denominator)
        points.append(point)
    return points


def _is_zero_function(diff: sympy.Expr) -> bool:
    """Whether ``diff`` is identically 0: 0 at every sample point where it has a value, with
    at least three such points."""
    if diff == 0:
        return True
    symbols = sorted(diff.free_symbols, key=str)
    if not symbols:
        return _is_zero(diff) is True
    defined = 0
    for point in _points(symbols):
        try:
            zero = _is_zero(diff.xreplace(point))
        except (TypeError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
            zero = None
        if zero is False:
            return False
        defined += zero is True
    return defined >= 3


# --------------------------------------------------------------------------------------------
# Equivalence


def equivalent(gold: Parsed, pred: Parsed) -> bool:
    """Whether ``pred`` is a correct answer when ``gold`` is the reference answer."""
    if gold.key == pred.key:
        return True
    try:
        return _equal(gold.node, pred.node)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return False


def _equal(g: Node, p: Node) -> bool:
    if isinstance(g, Labeled):
        return _equal(g.value, p.value if isinstance(p, Labeled) else p)
    if isinstance(p, Labeled):
        if isinstance(g, Relation) and p.relation is not None:
            return _relations_equal(g, p.relation)
        return _equal(g, p.value)
    if isinstance(g, (Num, Expr)):
        return isinstance(p, (Num, Expr)) and _values_equal(g, p)
    if isinstance(g, Seq):
        return _seq_equal(g, p)
    if isinstance(g, Interval):
        return _interval_equal(g, p)
    if isinstance(g, Union):  # the same parts, in any order (a union of sets is unordered)
        parts = list(p.parts) if isinstance(p, Union) else [p]
        if len(parts) != len(g.parts):
            return False
        for a in g.parts:
            match = next((i for i, b in enumerate(parts) if _equal(a, b)), None)
            if match is None:
                return False
            parts.pop(match)
        return True
    if isinstance(g, Matrix):
        return _matrix_equal(g, p)
    if isinstance(g, Relation):
        return isinstance(p, Relation) and _relations_equal(g, p)
    if isinstance(g, Choice):
        return isinstance(p, Choice) and p.letter == g.letter
    if isinstance(g, Text):
        return isinstance(p, Text) and p.text == g.text and p.exact == g.exact
    return False


def _values_equal(g: Num | Expr, p: Num | Expr) -> bool:
    if isinstance(g, Num) and isinstance(p, Num):
        return _nums_equal(g, p)
    if isinstance(g, Expr) and isinstance(p, Expr):
        return _exprs_equal(g, p)
    # A rational against an irrational-looking expression: only a constant can match.
    expr = g if isinstance(g, Expr) else p
    num = g if isinstance(g, Num) else p
    assert isinstance(expr, Expr) and isinstance(num, Num)
    if expr.symbols:  # equal only if the expression is that constant whatever its variables
        return _is_zero_function(expr.expr - sympy.Rational(num.value.numerator, num.value.denominator))
    if isinstance(g, Num) and g.places is not None and g.places >= 2:  # a rounded decimal gold
        value = _decimal_value(expr.expr)
        return value is not None and _within_places(value, g)
    return _is_zero(expr.expr - sympy.Rational(num.value.numerator, num.value.denominator)) is True


def _decimal_value(expr: sympy.Expr) -> Fraction | None:
    """A real constant's value to 30 digits, as a Fraction; None if not real or not finite."""
    try:
        real, imag = sympy.N(expr, 30).as_real_imag()
    except (ArithmeticError, TypeError, ValueError, AttributeError, RecursionError):
        return None
    if not (real.is_Float or real.is_Rational) or real.is_infinite or abs(imag) > 1e-25:
        return None
    return Fraction(str(real))


def _nums_equal(g: Num, p: Num) -> bool:
    golds = [g.value] + ([g.value / 100] if g.percent and not p.percent else [])
    preds = [p.value] + ([p.value / 100] if p.percent and not g.percent else [])
    for gv in golds:
        for pv in preds:
            if gv == pv:
                return True
            # A decimal gold was rounded: a more precise prediction may round to it.
            more_precise = p.places is None or (g.places is not None and p.places > g.places)
            if g.places is not None and more_precise and gv == g.value and _within_places(pv, g):
                return True
    return False


def _within_places(value: Fraction, gold: Num) -> bool:
    """Whether ``value`` rounds to a decimal gold. Only golds with two or more decimal places
    are taken as rounded: ``0.33`` may stand for 1/3, but ``4.5`` is exactly 9/2 far more
    often than a rounded 4.46 (MATH-500 has such a pair)."""
    assert gold.places is not None
    return gold.places >= 2 and abs(value - gold.value) <= Fraction(1, 2 * 10**gold.places)


def _exprs_equal(g: Expr, p: Expr) -> bool:
    """A difference that is identically zero (variables are case-sensitive names; two answers
    in different variables are equal only when both are the same constant)."""
    if g.expr == p.expr:
        return True
    return _is_zero_function(g.expr - p.expr)


def _seq_equal(g: Seq, p: Node) -> bool:
    if isinstance(p, Matrix):  # a column (or row) vector written as a matrix
        p = _flatten(p) or p
    if g.kind == "tuple" and len(g.items) == 2 and isinstance(p, Interval):
        return _interval_equal(Interval(g.items[0], g.items[1], False, False), p)
    if not isinstance(p, Seq):
        return False
    ordered = g.kind == "tuple" or p.kind == "tuple"
    if ordered:
        if "set" in (g.kind, p.kind) or len(g.items) != len(p.items):
            return False
        return all(_equal(a, b) for a, b in zip(g.items, p.items, strict=True))
    # Unordered ("find all"): every gold item is given, and every given item is a gold item.
    return all(any(_equal(a, b) for b in p.items) for a in g.items) and all(
        any(_equal(a, b) for a in g.items) for b in p.items
    )


def _flatten(m: Matrix) -> Seq | None:
    if len(m.rows) == 1:
        return Seq(m.rows[0], "tuple")
    if all(len(r) == 1 for r in m.rows):
        return Seq(tuple(r[0] for r in m.rows), "tuple")
    return None


def _interval_equal(g: Interval, p: Node) -> bool:
    if isinstance(p, Union) and len(p.parts) == 1:
        p = p.parts[0]
    if isinstance(p, Seq) and p.kind == "tuple" and len(p.items) == 2:
        p = Interval(p.items[0], p.items[1], False, False)
    if not isinstance(p, Interval):
        return False
    return g.lo_closed == p.lo_closed and g.hi_closed == p.hi_closed and _equal(g.lo, p.lo) and _equal(g.hi, p.hi)


def _matrix_equal(g: Matrix, p: Node) -> bool:
    if isinstance(p, Seq):
        flat = _flatten(g)
        return flat is not None and _seq_equal(flat, p)
    if not isinstance(p, Matrix) or len(g.rows) != len(p.rows):
        return False
    return all(
        len(gr) == len(pr) and all(_equal(a, b) for a, b in zip(gr, pr, strict=True))
        for gr, pr in zip(g.rows, p.rows, strict=True)
    )


def _relations_equal(g: Relation, p: Relation) -> bool:
    """Same relation: ``g.diff = r * p.diff`` identically, for a constant r != 0 (r > 0 for
    inequalities, whose direction a negative factor would flip). r is read off at the first
    sample point where ``p.diff`` is not 0, then the identity is checked at all points."""
    if g.diff is None or p.diff is None:
        return g.key == p.key and bool(g.key)
    if g.op != p.op or g.diff.symbols != p.diff.symbols:
        return False
    gd, pd = g.diff.expr, p.diff.expr
    symbols = sorted(pd.free_symbols | gd.free_symbols, key=str)
    ratio = None
    for point in _points(symbols) if symbols else [{}]:
        if _is_zero(pd.xreplace(point)) is False:
            ratio = gd.xreplace(point) / pd.xreplace(point)
            break
    if ratio is None or _is_zero(ratio) is not False:
        return False
    if g.op in ("<", "<="):
        value = _decimal_value(ratio)
        if value is None or value <= 0:
            return False
    return _is_zero_function(gd - ratio * pd)

"""Parsing a final answer into a structured value: :func:`parse_answer` normalizes the text
(:mod:`._normalize`) and reads it into a tree of nodes (:mod:`._nodes`).

Plain numbers are read without sympy, as exact rationals; expressions by the bounded parser of
:mod:`._latex`, and what it does not know by latex2sympy, behind guards against inputs whose
evaluation could explode (:func:`_latex2sympy`). Why a comparison of these trees is sound, and
why every check ends in bounded time: :mod:`._equiv`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from fractions import Fraction
from typing import Final

import sympy

from ._deadline import time_limit
from ._latex import _WORDS, MAX_EXPONENT, MAX_RESULT_DIGITS, LatexError, TooLarge, parse_latex
from ._nodes import (
    AnswerError,
    Choice,
    Expr,
    Interval,
    Labeled,
    Matrix,
    Node,
    Num,
    Parsed,
    Refused,
    Relation,
    Seq,
    Text,
    Union,
)
from ._normalize import _key, normalize

MAX_ANSWER_CHARS: Final = 1_000  # longer "answers" are not answers; refusing them bounds the work
_LATEX2SYMPY_MAX_CHARS: Final = 300


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
_WORD_SEPARATORS = re.compile(r"\s*\b(?:and|or)\b\s*")
_OR = re.compile(r"\s*\bor\b\s*")
_LETTERS3 = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}")
_WORDS_ONLY = re.compile(r"[A-Za-z][A-Za-z\s'\-]*")


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


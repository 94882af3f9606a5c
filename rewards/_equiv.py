"""Deciding when two parsed answers are equal.

:func:`~._parse.parse_answer` turns an answer string into a small tree of nodes (:mod:`._nodes`:
:class:`Num`, :class:`Expr`, :class:`Seq`, :class:`Interval`, :class:`Union`, :class:`Matrix`,
:class:`Relation`, :class:`Labeled`, :class:`Choice`, :class:`Text`); :func:`equivalent`
compares a gold tree with a predicted one.

Soundness comes first: two answers are equal only when their *values* are equal. The only
string comparison is of the normalized texts, and :func:`~._normalize.normalize` only removes
what cannot change a value (see its docstring; ``tests/test_verifier.py`` checks each rule).
Plain numbers are exact rationals. Symbolic answers are compared through their difference
``d = gold - pred``: ``d`` is zero when sympy's automatic evaluation makes it 0, or when sympy's
adaptive-precision evaluation finds no nonzero digit within :data:`ZERO_BITS` bits
(``57+e^{-100}`` differs from 57 at the 44th digit and is told apart; a difference is never
compared *relative to the answers*, which is how ``123456789012300+\\pi`` once equalled
``123456789012345``). With variables, ``d`` is evaluated exactly at several rational points
(positive and negative, below and above 1, a different value per variable), so ``x^{100}+x``
is not ``x^{100}``. ``simplify`` is never called, and every number built is bounded
(:mod:`._latex`), so every check ends in bounded time.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Final

import sympy
from sympy.core.evalf import PrecisionExhausted

from ._nodes import Choice, Expr, Interval, Labeled, Matrix, Node, Num, Parsed, Relation, Seq, Text, Union

# Working precision for deciding that a constant is 0: no nonzero bit within 256 bits (~77
# digits) of cancellation. A truly equal pair that sympy does not simplify costs ~10 ms here.
ZERO_BITS: Final = 256


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

"""The values the math verifier compares: a parsed answer (:class:`Parsed`), the tree of nodes
it holds (:class:`Num`, :class:`Expr`, :class:`Seq`, :class:`Interval`, :class:`Union`,
:class:`Matrix`, :class:`Relation`, :class:`Labeled`, :class:`Choice`, :class:`Text`), and the
errors of reading one. :mod:`._parse` builds them; :mod:`._equiv` compares them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import sympy


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


"""A small, fast LaTeX-to-sympy parser for the expressions final answers are made of.

``latex2sympy2_extended`` (what math-verify uses) covers more LaTeX but costs 5-60 ms a
call; most answers are short (``3\\sqrt{13}``, ``\\frac{\\pi}{6}``, ``x^3+3x-6``) and this
recursive-descent parser handles them in well under a millisecond. Anything it does not
know raises :class:`LatexError`, and the caller falls back to ``latex2sympy``.

Grammar (implicit multiplication binds like ``*``)::

    expr    := term (('+' | '-') term)*
    term    := unary (('*' | '/' | '\\cdot' | '\\times' | '\\div' | <implicit>) unary)*
    unary   := ('-' | '+') unary | postfix
    postfix := atom ('^' exponent | '!')*
"""

from __future__ import annotations

import math
import re
from typing import Final

import sympy

MAX_EXPONENT_DIGITS: Final = 100_000  # a numeric power with more digits than this is refused
MAX_FACTORIAL: Final = 1_000


class LatexError(ValueError):
    """The text is not an expression this parser understands (or is too expensive to build)."""


_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d*)?|\.\d+)|(?P<cmd>\\[a-zA-Z]+|\\[{}|])|(?P<op>[-+*/^_!()\[\]{}|])|(?P<letter>[a-zA-Z]))",
    re.ASCII,
)
_GREEK = {
    "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta", "iota",
    "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "varphi", "chi", "psi",
    "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Sigma", "Phi", "Psi", "Omega",
}  # fmt: skip
_FUNCS = {
    "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan, "sec": sympy.sec, "csc": sympy.csc, "cot": sympy.cot,
    "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan, "sinh": sympy.sinh, "cosh": sympy.cosh,
    "tanh": sympy.tanh, "ln": sympy.log, "exp": sympy.exp, "log": sympy.log,
}  # fmt: skip
_MUL_CMDS = {"\\cdot", "\\times", "\\ast"}


def parse_latex(text: str) -> sympy.Expr:
    """The sympy expression ``text`` denotes; raises :class:`LatexError`."""
    tokens = _tokenize(text)
    parser = _Parser(tokens)
    result = parser.expr()
    if parser.pos != len(tokens):
        raise LatexError(f"unexpected {tokens[parser.pos][1]!r}")
    return result


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise LatexError(f"cannot read {text[pos : pos + 10]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


class _Parser:
    """Recursive descent over the token list; each method consumes one grammar rule."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.abs_depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise LatexError(f"expected {value!r}, got {token!r}")
        self.pos += 1
        return token

    def accept(self, value: str) -> bool:
        token = self.peek()
        if token is not None and token[1] == value:
            self.pos += 1
            return True
        return False

    def expr(self) -> sympy.Expr:
        result = self.term()
        while (token := self.peek()) is not None and token[1] in "+-" and token[0] == "op":
            self.pos += 1
            rhs = self.term()
            result = result + rhs if token[1] == "+" else result - rhs
        return result

    def term(self) -> sympy.Expr:
        result = self.unary()
        while (token := self.peek()) is not None:
            if token[1] in ("*", "/") or token[1] in _MUL_CMDS or token[1] == "\\div":
                self.pos += 1
                rhs = self.unary()
                result = result / rhs if token[1] in ("/", "\\div") else result * rhs
            elif self.starts_atom(token):
                result = result * self.postfix()
            else:
                break
        return result

    def starts_atom(self, token: tuple[str, str]) -> bool:
        kind, value = token
        if kind in ("num", "letter"):
            return True
        if kind == "cmd":
            name = value[1:]
            return name in _FUNCS or name in _GREEK or name in ("frac", "sqrt", "pi", "infty", "binom", "{")
        if value == "|":
            return self.abs_depth == 0
        return value in "({["

    def unary(self) -> sympy.Expr:
        if self.accept("-"):
            return -self.unary()
        if self.accept("+"):
            return self.unary()
        return self.postfix()

    def postfix(self) -> sympy.Expr:
        base = self.atom()
        while True:
            if self.accept("^"):
                base = _power(base, self.exponent())
            elif self.accept("!"):
                base = _factorial(base)
            else:
                return base

    def exponent(self) -> sympy.Expr:
        token = self.peek()
        if token is not None and token[1] == "-":  # x^-1, written carelessly
            self.pos += 1
            return -self.exponent()
        return self.atom()

    def group(self) -> sympy.Expr:
        """A braced group, or (LaTeX's rule for ``\\frac12``) a single token."""
        token = self.peek()
        if token is None:
            raise LatexError("missing argument")
        if token[1] == "{":
            self.pos += 1
            inner = self.expr()
            self.take("}")
            return inner
        if token[0] == "num":  # \frac12: one digit each
            self.pos += 1
            digits = token[1]
            if len(digits) > 1 and digits.isdigit():
                self.tokens.insert(self.pos, ("num", digits[1:]))
                return sympy.Integer(digits[0])
            return _number(digits)
        return self.atom()

    def atom(self) -> sympy.Expr:
        token = self.take()
        kind, value = token
        if kind == "num":
            return _number(value)
        if kind == "letter":
            return self.symbol(value)
        if value in ("(", "[", "{"):
            inner = self.expr()
            self.take({"(": ")", "[": "]", "{": "}"}[value])
            return inner
        if value == "\\{":
            inner = self.expr()
            self.take("\\}")
            return inner
        if value == "|":
            self.abs_depth += 1
            inner = self.expr()
            self.take("|")
            self.abs_depth -= 1
            return sympy.Abs(inner)
        if kind == "cmd":
            return self.command(value[1:])
        raise LatexError(f"unexpected {value!r}")

    def symbol(self, letter: str) -> sympy.Expr:
        if self.accept("_"):
            sub = self.take()
            if sub[1] == "{":
                parts = []
                while not self.accept("}"):
                    parts.append(self.take()[1])
                return sympy.Symbol(f"{letter}_{''.join(parts)}")
            return sympy.Symbol(f"{letter}_{sub[1]}")
        if letter == "e":
            return sympy.E
        if letter == "i":
            return sympy.I
        return sympy.Symbol(letter)

    def command(self, name: str) -> sympy.Expr:
        if name == "frac":
            num = self.group()
            return num / self.group()
        if name == "binom":
            n = self.group()
            return sympy.binomial(n, self.group())
        if name == "sqrt":
            if self.accept("["):
                index = self.expr()
                self.take("]")
                return sympy.root(self.group(), index)
            return sympy.sqrt(self.group())
        if name == "pi":
            return sympy.pi
        if name == "infty":
            return sympy.oo
        if name in _GREEK:
            return sympy.Symbol(name)
        if name in _FUNCS:
            return self.function(name)
        raise LatexError(f"unknown command \\{name}")

    def function(self, name: str) -> sympy.Expr:
        power = None
        base = None
        if name == "log" and self.accept("_"):
            base = self.group()
        if self.accept("^"):
            power = self.exponent()
        token = self.peek()
        if token is not None and token[1] in ("(", "["):
            arg = self.atom()
        else:
            # \sin 2x is sin(2x), but \sin b \cos a is sin(b)cos(a): numbers and letters only.
            arg = self.postfix()
            while (nxt := self.peek()) is not None and nxt[0] in ("num", "letter"):
                arg = arg * self.postfix()
        value = _FUNCS[name](arg) if base is None else sympy.log(arg, base)
        return value if power is None else _power(value, power)


def _number(text: str) -> sympy.Expr:
    if "." in text:
        return sympy.Rational(text.rstrip(".") or "0")
    return sympy.Integer(text)


def _power(base: sympy.Expr, exponent: sympy.Expr) -> sympy.Expr:
    """base**exponent, refusing numeric powers too large to compute (``9^{9^{9^9}}``)."""
    if exponent.is_Number and base.is_Number and abs(base) not in (0, 1):
        try:
            magnitude = abs(float(exponent)) * abs(math.log10(abs(float(base))))
        except (OverflowError, ValueError):  # an exponent beyond float range is too large anyway
            magnitude = math.inf
        if magnitude > MAX_EXPONENT_DIGITS:
            raise LatexError("power too large")
    return base**exponent


def _factorial(value: sympy.Expr) -> sympy.Expr:
    if value.is_Number and (not value.is_integer or value < 0 or value > MAX_FACTORIAL):
        raise LatexError("factorial out of range")
    return sympy.factorial(value)

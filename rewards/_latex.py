"""A small, fast LaTeX-to-sympy parser for the expressions final answers are made of.

``latex2sympy2_extended`` (what math-verify uses) covers more LaTeX but costs 5-60 ms a
call; most answers are short (``3\\sqrt{13}``, ``\\frac{\\pi}{6}``, ``x^3+3x-6``) and this
recursive-descent parser handles them in well under a millisecond. Anything it does not
know raises :class:`LatexError`, and the caller falls back to ``latex2sympy``.

It also reads the plain-text syntax models write outside LaTeX (sympy's ``str`` form):
``sqrt(3)``, ``exp(-2)``, ``log(2)/3``, ``x**2``, ``pi``: a known function or constant name is
one token (``(?<![a-zA-Z])sqrt(?![a-zA-Z])``), and a plain-text function needs parentheses
(``sqrt 23`` is refused rather than guessed).

Every numeric value it builds is bounded: a power, factorial or binomial whose exact value
would exceed :data:`MAX_RESULT_DIGITS` digits raises :class:`TooLarge` *before* sympy computes
it, and the caller must not retry such an input with another parser.

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

MAX_RESULT_DIGITS: Final = 10_000  # a number with more digits than this is not an answer
MAX_EXPONENT: Final = 10_000  # |numeric exponent| of a non-numeric base: x^{10^9} at a sample point is a huge rational
MAX_FACTORIAL: Final = 1_000


class LatexError(ValueError):
    """The text is not an expression this parser understands (or is too expensive to build)."""


class TooLarge(LatexError):
    """The expression denotes a value too large to compute; no other parser may try it."""


# Plain-text names (sympy's str form): each is one token, never a product of letters.
_WORDS = {
    "sqrt": "sqrt", "exp": "exp", "log": "log", "ln": "ln", "sin": "sin", "cos": "cos", "tan": "tan",
    "sec": "sec", "csc": "csc", "cot": "cot", "asin": "arcsin", "acos": "arccos", "atan": "arctan",
    "arcsin": "arcsin", "arccos": "arccos", "arctan": "arctan", "sinh": "sinh", "cosh": "cosh", "tanh": "tanh",
    "abs": "abs", "pi": "pi", "oo": "infty", "inf": "infty", "infty": "infty", "infinity": "infty",
}  # fmt: skip
_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d*)?|\.\d+)|(?P<cmd>\\[a-zA-Z]+|\\[{}|])"
    rf"|(?P<word>(?<![a-zA-Z\\])(?:{'|'.join(sorted(_WORDS, key=len, reverse=True))})(?![a-zA-Z]))"
    r"|(?P<op>\*\*|[-+*/^_!()\[\]{}|])|(?P<letter>[a-zA-Z]))",
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
_INVERSES = {
    "sin": sympy.asin, "cos": sympy.acos, "tan": sympy.atan, "sec": sympy.asec, "csc": sympy.acsc, "cot": sympy.acot,
    "sinh": sympy.asinh, "cosh": sympy.acosh, "tanh": sympy.atanh,
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
        if kind in ("num", "letter", "word"):
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
            if self.accept("^") or self.accept("**"):
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
        if kind == "word":
            return self.word(_WORDS[value])
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

    def word(self, name: str) -> sympy.Expr:
        """A plain-text name: a constant, or a function whose argument is parenthesised."""
        if name in ("pi", "infty"):
            return self.command(name)
        token = self.peek()
        if token is None or token[1] not in ("(", "^", "**"):
            raise LatexError(f"plain-text {name} without parentheses")
        if name == "abs":
            return sympy.Abs(self.atom())
        if name == "sqrt":
            return sympy.sqrt(self.atom())
        return self.function(name)

    def command(self, name: str) -> sympy.Expr:
        if name == "frac":
            num = self.group()
            return num / self.group()
        if name == "binom":
            n = self.group()
            return _binomial(n, self.group())
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
            return self.symbol(name)  # \omega_{n} as well as x_{n}
        if name in _FUNCS:
            return self.function(name)
        raise LatexError(f"unknown command \\{name}")

    def function(self, name: str) -> sympy.Expr:
        power = None
        base = None
        if name == "log" and self.accept("_"):
            base = self.group()
        if self.accept("^") or self.accept("**"):
            power = self.exponent()
        token = self.peek()
        if token is not None and token[1] in ("(", "["):
            arg = self.atom()
        else:
            # \sin 2x is sin(2x), but \sin b \cos a is sin(b)cos(a): numbers and letters only.
            arg = self.postfix()
            while (nxt := self.peek()) is not None and nxt[0] in ("num", "letter"):
                arg = arg * self.postfix()
        if power == -1 and name in _INVERSES:  # \sin^{-1} x is arcsin x, as \sin^2 x is (\sin x)^2
            return _INVERSES[name](arg)
        value = _FUNCS[name](arg) if base is None else sympy.log(arg, base)
        return value if power is None else _power(value, power)


def _number(text: str) -> sympy.Expr:
    if "." in text:
        return sympy.Rational(text.rstrip(".") or "0")
    return sympy.Integer(text)


def _power(base: sympy.Expr, exponent: sympy.Expr) -> sympy.Expr:
    """base**exponent, refusing numeric powers too large to compute (``9^{9^{9^9}}``,
    ``\\sqrt{2}^{10^{12}}``, ``\\pi^{9^{99999}}``) before sympy tries: the digits of the result
    are estimated as |exponent| * |log10 |base||, from a 15-digit value of the base."""
    if exponent.is_Number and not exponent.is_zero:
        if base.is_number:
            if base.is_zero or abs(base) == 1:
                return base**exponent
            try:
                magnitude = abs(float(exponent)) * abs(math.log10(abs(complex(base.evalf(15)))))
            except (OverflowError, ValueError, TypeError, ZeroDivisionError):
                magnitude = math.inf  # an exponent beyond float range is too large anyway
            if magnitude > MAX_RESULT_DIGITS:
                raise TooLarge("power too large")
        elif abs(exponent) > MAX_EXPONENT:
            raise TooLarge("exponent too large")
    elif base.is_number and exponent.is_number and abs(base) != 1 and _digits_estimate(exponent) > 4:
        raise TooLarge("exponent too large")  # 2^{\\pi^{20}}: a symbolic exponent of huge value
    return base**exponent


def _digits_estimate(value: sympy.Expr) -> float:
    """log10 |value| from a 15-digit evaluation (inf when it cannot be evaluated)."""
    try:
        return math.log10(abs(complex(value.evalf(15))) or 1.0)
    except (OverflowError, ValueError, TypeError, ZeroDivisionError):
        return math.inf


def _binomial(n: sympy.Expr, k: sympy.Expr) -> sympy.Expr:
    """binomial(n, k), refusing numeric ones with more than MAX_RESULT_DIGITS digits
    (``\\binom{10^9}{300000}``), estimated with lgamma before sympy computes them."""
    if n.is_Number and k.is_Number:
        try:
            nf, kf = float(n), float(k)
            if 0 <= kf <= nf:
                digits = (math.lgamma(nf + 1) - math.lgamma(kf + 1) - math.lgamma(nf - kf + 1)) / math.log(10)
                if digits > MAX_RESULT_DIGITS:
                    raise TooLarge("binomial too large")
        except OverflowError:
            raise TooLarge("binomial too large") from None
    return sympy.binomial(n, k)


def _factorial(value: sympy.Expr) -> sympy.Expr:
    if value.is_Number and value > MAX_FACTORIAL:
        raise TooLarge("factorial too large")
    if value.is_Number and (not value.is_integer or value < 0):
        raise LatexError("factorial out of range")
    return sympy.factorial(value)

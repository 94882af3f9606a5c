"""Random (gold, candidate, truly_equal, klass) pairs for differential fuzzing of the math verifier.

The generator builds small expression TREES (its own tuple nodes, not strings), renders them
to LaTeX and to plain-text syntax in several ways, and builds near-miss mutants as trees too.
The label never comes from parsing a string and never from the verifier: it comes from sympy
applied to the trees (:func:`ground_truth`), exactly (the difference is 0 after ``expand``)
or by evaluating both sides to 60 significant digits at several random rational points of
the free symbols (and to 300 digits when 60 cannot tell them apart).

Everything is driven by one ``random.Random`` instance, so hypothesis can drive it
(``st.randoms(use_true_random=False)``) and the benchmark can use ``random.Random(seed)``.

Entry points:

- :func:`generate_batch(rng)` -> list of :class:`Pair` built around one random gold;
- :func:`ground_truth(a, b, rng)` -> True / False / None (None: sympy could not decide in time);
- :func:`latex`, :func:`plain` renderers and :data:`MUTATIONS`.

Conventions the renderers follow (a "careless" rendering is still read by TeX's rules:
``\\sqrt{2}3`` is sqrt(2)*3, ``\\frac125`` is (1/2)*5, ``2^n+1`` is 2^n + 1, ``\\sin 30`` is
in radians, ``\\sin^{-1}`` is arcsin, ``\\sin x^2`` is sin(x^2)).

Deliberately excluded (see also ``docs/rewards.md``):

- decimals: a decimal gold is compared at its own precision by a documented convention, so
  exact ground truth does not apply;
- ``\\log`` in LaTeX (base 10 or e is a convention); ``\\ln`` is used, and plain ``log`` is the
  natural log as in Python/sympy;
- juxtapositions whose reading is a convention, which our LaTeX renderer never writes: a
  number before a fraction (``2\\frac13``, a mixed number), a letter before a parenthesis
  (``x(x+1)``, a function call), two numbers (``{4}{8}``); it writes ``\\cdot`` instead
  (sympy's own printer does write ``x \\left(x + 1\\right)``, which is kept);
- ``e`` as a variable, ``E`` in plain text (sympy's name; ``exp(1)`` or ``e^(...)`` is used),
  thousands separators (``1,000`` reads as a tuple), unicode (``√``, ``π``);
- sets, intervals, tuples, matrices, equations and text answers (other generators);
- values that are not real and finite at positive points: radicands and log arguments are
  positive by construction (integers, ``x``, ``x+k``) and sample points are positive
  rationals, so identities that need a sign (``\\sqrt{x^2}=x``) are never generated.
"""

from __future__ import annotations

import random
import signal
from contextlib import contextmanager
from dataclasses import dataclass, field

import sympy as sp

# --------------------------------------------------------------------------------------------
# Trees
#
# ('int', k)                 k >= 0
# ('sym', name)              x, y, n (X for the case-change mutant)
# ('pi',) ('e',)
# ('add', (t1, t2, ...))
# ('neg', a)
# ('mul', (f1, f2, ...), careless)   careless: render number-after-factor implicitly (\sqrt{2}3)
# ('div', a, b)
# ('pow', base, exp)
# ('sqrt', a)  ('root', a, k)
# ('exp', a)   ('ln', a)
# ('sin', a) ('cos', a) ('tan', a)

SYMS = {name: sp.Symbol(name) for name in ("x", "y", "n", "X", "Y", "N")}
FUNCS = ("sin", "cos", "tan")


def I(k):  # noqa: E743 - a leaf
    return ("int", k) if k >= 0 else ("neg", ("int", -k))


def S(name):
    return ("sym", name)


def Add(*ts):
    return ("add", tuple(ts))


def Mul(*fs, careless=False):
    return ("mul", tuple(fs), careless)


def Div(a, b):
    return ("div", a, b)


def Pow(b, e):
    return ("pow", b, e)


def to_sympy(t):
    """The value of a tree as an (evaluated) sympy expression."""
    k = t[0]
    if k == "int":
        return sp.Integer(t[1])
    if k == "sym":
        return SYMS[t[1]]
    if k == "pi":
        return sp.pi
    if k == "e":
        return sp.E
    if k == "add":
        return sp.Add(*[to_sympy(a) for a in t[1]])
    if k == "neg":
        return -to_sympy(t[1])
    if k == "mul":
        return sp.Mul(*[to_sympy(a) for a in t[1]])
    if k == "div":
        return to_sympy(t[1]) / to_sympy(t[2])
    if k == "pow":
        return to_sympy(t[1]) ** to_sympy(t[2])
    if k == "sqrt":
        return sp.sqrt(to_sympy(t[1]))
    if k == "root":
        return sp.root(to_sympy(t[1]), t[2])
    if k == "exp":
        return sp.exp(to_sympy(t[1]))
    if k == "ln":
        return sp.log(to_sympy(t[1]))
    if k in FUNCS:
        return getattr(sp, k)(to_sympy(t[1]))
    if k == "asin":
        return sp.asin(to_sympy(t[1]))
    if k == "deg":  # 30 degrees
        return sp.pi * to_sympy(t[1]) / 180
    if k == "sfrac":  # \frac125 as TeX reads it: \frac{1}{2} times 5
        d = t[1]
        v = sp.Rational(int(d[0]), int(d[1]))
        return v * int(d[2:]) if len(d) > 2 else v
    raise ValueError(t)


def symbols_of(t) -> set[str]:
    if t[0] == "sym":
        return {t[1]}
    out: set[str] = set()
    for c in children(t):
        out |= symbols_of(c)
    return out


def children(t):
    k = t[0]
    if k in ("add", "mul"):
        return list(t[1])
    if k in ("neg", "sqrt", "exp", "ln", "deg", "asin", *FUNCS):
        return [t[1]]
    if k == "root":
        return [t[1]]
    if k in ("div", "pow"):
        return [t[1], t[2]]
    return []


def replace_child(t, i, new):
    """A copy of ``t`` with its i-th child replaced."""
    k = t[0]
    if k in ("add", "mul"):
        items = list(t[1])
        items[i] = new
        return (k, tuple(items), *t[2:])
    if k in ("div", "pow"):
        return (k, new, t[2]) if i == 0 else (k, t[1], new)
    return (k, new, *t[2:])


def subtrees(t, path=()):
    """All (path, subtree) pairs, root first."""
    yield path, t
    for i, c in enumerate(children(t)):
        yield from subtrees(c, (*path, i))


def replace_at(t, path, new):
    if not path:
        return new
    i = path[0]
    return replace_child(t, i, replace_at(children(t)[i], path[1:], new))


# --------------------------------------------------------------------------------------------
# Random golds


def _rand_int(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.03:  # beyond float64's 2^53: a digit change is a relative difference of ~1e-17
        return rng.randint(10**15, 10**20)
    if r < 0.55:
        return rng.randint(1, 9)
    if r < 0.85:
        return rng.randint(10, 99)
    return rng.randint(100, 999)


def _nonsquare(rng: random.Random) -> int:
    while True:
        k = rng.choice([rng.randint(2, 9), rng.randint(10, 99)])
        if int(k**0.5) ** 2 != k:
            return k


def _coprime_frac(rng: random.Random):
    while True:
        p, q = _rand_int(rng), rng.choice([rng.randint(2, 9), rng.randint(2, 99)])
        if sp.gcd(p, q) == 1:
            return Div(I(p), I(q))


def _trig_arg(rng: random.Random, syms):
    if syms and rng.random() < 0.35:
        return S(rng.choice(syms))
    q = rng.choice([3, 4, 5, 6, 8, 12])
    p = rng.randint(1, 2 * q - 1)
    g = sp.gcd(p, q)
    p, q = p // g, q // g
    num = ("pi",) if p == 1 else Mul(I(p), ("pi",))
    return num if q == 1 else Div(num, I(q))


def _leaf(rng: random.Random, syms):
    r = rng.random()
    if syms and r < 0.4:
        return S(rng.choice(syms))
    if r < 0.5:
        return ("pi",)
    return I(_rand_int(rng))


def _positive(rng: random.Random, syms):
    """A subtree positive at positive points (radicands, log arguments)."""
    r = rng.random()
    if syms and r < 0.35:
        return S(rng.choice(syms))
    if syms and r < 0.55:
        return Add(S(rng.choice(syms)), I(rng.randint(1, 9)))
    return I(_nonsquare(rng))


def random_tree(rng: random.Random, depth: int, syms) -> tuple:
    """A random gold tree of at most ``depth`` levels over the symbols ``syms``."""
    if depth <= 0:
        return _leaf(rng, syms)
    kind = rng.choices(
        [
            "leaf",
            "frac",
            "sqrt",
            "root",
            "powsym",
            "powint",
            "exp",
            "ln",
            "trig",
            "add",
            "mul",
            "div",
            "neg",
            "div_sum",
            "mul_sum",
            "pow_sum",
        ],
        weights=[2, 4, 4, 1, 3, 3, 2, 2, 3, 6, 3, 3, 1, 3, 2, 3],
    )[0]
    sub = lambda: random_tree(rng, depth - 1, syms)  # noqa: E731
    if kind == "trig" and rng.random() < 0.5:  # \sin^2 x, 1/\cos x
        f = (rng.choice(FUNCS), _trig_arg(rng, syms))
        return Pow(f, I(rng.randint(2, 3))) if rng.random() < 0.6 else Div(I(1), f)
    if kind == "div_sum":  # x/(y+1), (x+1)/3: the shapes whose braces careless writers drop
        s_ = lambda: S(rng.choice(syms)) if syms and rng.random() < 0.6 else _leaf(rng, syms)  # noqa: E731
        total = Add(s_(), I(rng.randint(1, 9)))
        return (
            Div(sub(), total)
            if rng.random() < 0.6
            else Div(total, s_() if rng.random() < 0.5 else I(rng.randint(2, 9)))
        )
    if kind == "mul_sum":
        return Mul(I(rng.randint(2, 9)) if rng.random() < 0.5 else _leaf(rng, syms), Add(sub(), sub()))
    if kind == "pow_sum":
        if rng.random() < 0.5:  # (x+1)^2
            return Pow(Add(_leaf(rng, syms), I(rng.randint(1, 5))), I(rng.randint(2, 3)))
        e = Add(S(rng.choice(syms)) if syms else I(rng.randint(1, 3)), I(rng.randint(1, 3)))
        return ("exp", e) if rng.random() < 0.3 else Pow(I(rng.randint(2, 9)), e)  # 2^{n+1}, e^{x+1}
    if kind == "leaf":
        return _leaf(rng, syms)
    if kind == "frac":
        return _coprime_frac(rng)
    if kind == "sqrt":
        s = ("sqrt", _positive(rng, syms))
        return Mul(I(rng.randint(2, 9)), s) if rng.random() < 0.3 else s
    if kind == "root":
        return ("root", _positive(rng, syms), 3)
    if kind == "powsym" and syms:
        return Pow(S(rng.choice(syms)), I(rng.randint(2, 5)))
    if kind in ("powint", "powsym"):
        base = I(rng.randint(2, 9))
        if syms and rng.random() < 0.6:
            s = S(rng.choice(syms))
            e = rng.choice([Add(s, I(rng.randint(1, 3))), Mul(I(2), s), s])
        else:
            e = rng.choice([I(rng.randint(2, 5)), I(-rng.randint(1, 3)), Div(I(1), I(rng.randint(2, 3)))])
        return Pow(base, e)
    if kind == "exp":
        if syms and rng.random() < 0.5:
            s = S(rng.choice(syms))
            return ("exp", rng.choice([Add(s, I(1)), s, ("neg", s), Mul(I(2), s)]))
        return ("exp", I(rng.choice([-3, -2, -1, 1, 2, 3])))
    if kind == "ln":
        return ("ln", _positive(rng, syms))
    if kind == "trig":
        return (rng.choice(FUNCS), _trig_arg(rng, syms))
    if kind == "add":
        terms = [sub() for _ in range(rng.choice([2, 2, 3]))]
        if rng.random() < 0.4:
            terms[-1] = ("neg", terms[-1]) if terms[-1][0] != "neg" else terms[-1]
        return Add(*terms)
    if kind == "mul":
        return Mul(I(rng.randint(2, 9)) if rng.random() < 0.5 else sub(), sub())
    if kind == "div":
        den = rng.choice(
            [
                I(rng.randint(2, 9)),
                _positive(rng, syms),
                sub(),
                ("sqrt", I(_nonsquare(rng))),  # rationalised forms: 1/sqrt(2) = sqrt(2)/2
                Add(I(rng.randint(1, 5)), ("sqrt", I(_nonsquare(rng)))),
            ]
        )
        return Div(sub(), den)
    return ("neg", sub())


# --------------------------------------------------------------------------------------------
# Renderers
#
# Precedence: add/neg-at-front 1, mul/div 2, unary minus inside products 2, pow 3, atom 4.


def _prec(t) -> int:
    k = t[0]
    if k == "add":
        return 1
    if k == "neg":
        return 1
    if k in ("mul", "div"):
        return 2
    if k == "pow":
        return 3
    if k == "sfrac":  # \frac125 is a product
        return 2
    if k == "int" and t[1] < 0:
        return 1
    return 4


@dataclass
class LatexStyle:
    frac: str = "\\frac"  # \frac, \dfrac, \tfrac
    short_frac: bool = False  # \frac12 when both arguments are one digit
    mul: str = ""  # "" (implicit where unambiguous), \cdot, \times
    left_right: bool = False  # \left( \right)
    func: str = "paren"  # paren: \sin\left(x\right) / \sin(x); space: \sin x for atomic args
    exp: str = "e^"  # e^{a} or \exp
    single_brace: bool = True  # 2^{n} (True) or 2^n (False) for one-character exponents
    shuffle: bool = False  # reorder sum terms / product factors
    space: str = ""  # " " between tokens
    root_pow: bool = False  # \sqrt{a} as a^{\frac{1}{2}}, \sqrt[3]{a} as a^{\frac{1}{3}}
    thin: bool = False  # 2\,\sqrt{3}: a thin space between juxtaposed factors
    braces: bool = False  # {x}^{2}, \frac{{1}}{{2}}: redundant groups around atoms
    e_roman: bool = False  # \mathrm{e}^{x}
    trig_power: bool = False  # \sin^{2} x for (\sin x)^2
    rng: random.Random | None = field(default=None, repr=False)

    @classmethod
    def random(cls, rng: random.Random) -> LatexStyle:
        return cls(
            frac=rng.choice(["\\frac", "\\frac", "\\dfrac", "\\tfrac"]),
            short_frac=rng.random() < 0.3,
            mul=rng.choice(["", "", "\\cdot", "\\times"]),
            left_right=rng.random() < 0.4,
            func=rng.choice(["paren", "space"]),
            exp=rng.choice(["e^", "e^", "\\exp"]),
            single_brace=rng.random() < 0.6,
            shuffle=rng.random() < 0.4,
            space=rng.choice(["", " "]),
            root_pow=rng.random() < 0.1,
            thin=rng.random() < 0.2,
            braces=rng.random() < 0.15,
            e_roman=rng.random() < 0.15,
            trig_power=rng.random() < 0.5,
            rng=random.Random(rng.random()),
        )


def _order(items, style):
    items = list(items)
    if style.shuffle and style.rng is not None:
        style.rng.shuffle(items)
    return items


def latex(t, style: LatexStyle | None = None) -> str:
    """A LaTeX rendering of a tree."""
    return _latex(t, style or LatexStyle())


def _lparen(s: str, style: LatexStyle) -> str:
    return f"\\left({s}\\right)" if style.left_right else f"({s})"


def _latex(t, st: LatexStyle) -> str:
    k, sp_ = t[0], st.space
    if k in ("int", "sym", "pi", "e") and st.braces and st.rng is not None and st.rng.random() < 0.3:
        return "{" + _latex(t, LatexStyle(**{**st.__dict__, "braces": False})) + "}"
    if k == "int":
        return str(t[1])
    if k == "sym":
        return t[1]
    if k == "pi":
        return "\\pi"
    if k == "e":
        return "\\mathrm{e}" if st.e_roman else "e"
    if k == "asin":  # written the way a careless writer inverts: \sin^{-1}
        a = _latex(t[1], st)
        return f"\\sin^{{-1}}{_lparen(a, st)}"
    if k == "add":
        terms = _order(t[1], st)
        out = ""
        for i, a in enumerate(terms):
            if a[0] == "neg":
                body = _latex(a[1], st)
                if _prec(a[1]) <= 1:
                    body = _lparen(body, st)
                out += f"-{sp_}{body}" if i == 0 else f"{sp_}-{sp_}{body}"
            else:
                body = _latex(a, st)
                out += body if i == 0 else f"{sp_}+{sp_}{body}"
        return out
    if k == "neg":
        body = _latex(t[1], st)
        return f"-{_lparen(body, st) if _prec(t[1]) <= 1 else body}"
    if k == "mul":
        factors = t[1] if t[2] else _order(t[1], st)
        out = ""
        for i, f in enumerate(factors):
            fst = st
            if st.func == "space" and i < len(factors) - 1:  # \sin x y would read as sin(xy)
                fst = LatexStyle(**{**st.__dict__, "func": "paren"})
            s = _latex(f, fst)
            if _prec(f) <= 1 or (i > 0 and f[0] == "neg"):
                s = _lparen(s, st)
            if i == 0:
                out = s
            elif t[2]:  # careless: always juxtapose (\sqrt{2}3)
                out += s
            elif (
                st.mul
                or (head := s.lstrip("{"))[0].isdigit()  # {4}{8}: never juxtapose two numbers
                or head[0] == "-"
                or (
                    out.rstrip("}")[-1].isdigit() and head.startswith(("\\frac", "\\dfrac", "\\tfrac"))
                )  # 2\frac13: mixed number
                or (out.rstrip("}")[-1].isalpha() and head.startswith(("(", "\\left")))  # x(x+1): a function call
            ):
                sym = st.mul or "\\cdot"
                out += f"{sp_}{sym}{' ' if s[0].isalpha() else sp_}{s}"  # \cdot x, never \cdotx
            elif st.thin:
                out += "\\," + s
            elif out[-1].isalpha():
                out += " " + s
            else:
                out += s
        return out
    if k == "div":
        a, b = _latex(t[1], st), _latex(t[2], st)
        if st.short_frac and st.frac != "\\tfrac" and len(a) == 1 and len(b) == 1 and a.isdigit() and b.isdigit():
            return f"{st.frac}{a}{b}"
        return f"{st.frac}{{{a}}}{{{b}}}"
    if k == "pow":
        base, e = t[1], t[2]
        if base[0] in FUNCS + ("ln",) and e[0] == "int" and e[1] >= 2 and st.trig_power:  # \sin^{2} x
            name = "\\ln" if base[0] == "ln" else "\\" + base[0]
            arg = _latex(base[1], st)
            if st.func == "space" and base[1][0] in ("int", "sym", "pi", "deg"):
                return f"{name}^{{{e[1]}}} {arg}"
            return f"{name}^{{{e[1]}}}{_lparen(arg, st)}"
        b = _latex(base, st)
        if (
            _prec(base) < 4
            or base[0] in ("sqrt", "root", "div", *FUNCS, "ln", "exp", "asin", "sfrac")
            or (base[0] == "int" and base[1] < 0)
        ):
            b = _lparen(b, st)
        es = _latex(e, st)
        if len(es) == 1 and not st.single_brace:
            return f"{b}^{es}"
        return f"{b}^{{{es}}}"
    if k == "sqrt":
        if st.root_pow:
            return _latex(Pow(t[1], Div(I(1), I(2))), st)
        return f"\\sqrt{{{_latex(t[1], st)}}}"
    if k == "root":
        if st.root_pow:
            return _latex(Pow(t[1], Div(I(1), I(t[2]))), st)
        return f"\\sqrt[{t[2]}]{{{_latex(t[1], st)}}}"
    if k == "exp":
        a = _latex(t[1], st)
        if st.exp == "\\exp":
            return f"\\exp{_lparen(a, st)}"
        if st.e_roman:
            return f"\\mathrm{{e}}^{{{a}}}"
        if len(a) == 1 and not st.single_brace:
            return f"e^{a}"
        return f"e^{{{a}}}"
    if k == "sfrac":
        return f"\\frac{t[1]}"
    if k == "deg":
        return _latex(t[1], st) + ("^\\circ" if st.single_brace else "^{\\circ}")
    if k in ("ln", *FUNCS):
        name = "\\ln" if k == "ln" else "\\" + k
        a = _latex(t[1], st)
        if st.func == "space" and t[1][0] in ("int", "sym", "pi", "deg"):
            return f"{name} {a}"
        return f"{name}{_lparen(a, st)}"
    raise ValueError(t)


def plain(t, caret: bool = False, implicit: bool = False, e_caret: bool = False) -> str:
    """A plain-text rendering (Python/sympy syntax: sqrt(3), exp(-2), log(2)/3, x**2 or x^2)."""
    opts = frozenset(k for k, v in (("implicit", implicit), ("e_caret", e_caret)) if v)
    return _plain(t, "^" if caret else "**", opts)


def _pparen(t, s, need):
    return f"({s})" if need else s


def _plain(t, pw: str, o: frozenset = frozenset()) -> str:
    k = t[0]
    if k == "int":
        return str(t[1])
    if k == "sym":
        return t[1]
    if k == "pi":
        return "pi"
    if k == "e":
        return "e" if "e_caret" in o else "exp(1)"
    if k == "asin":
        return f"asin({_plain(t[1], pw, o)})"
    if k == "add":
        out = ""
        for i, a in enumerate(t[1]):
            if a[0] == "neg":
                body = _plain(a[1], pw, o)
                body = _pparen(a[1], body, _prec(a[1]) <= 1)
                out += f"-{body}" if i == 0 else f" - {body}"
            else:
                out += _plain(a, pw, o) if i == 0 else f" + {_plain(a, pw, o)}"
        return out
    if k == "neg":
        return "-" + _pparen(t[1], _plain(t[1], pw, o), _prec(t[1]) <= 2)
    if k == "mul":
        out = ""
        for i, f in enumerate(t[1]):
            s = _pparen(f, _plain(f, pw, o), _prec(f) <= 1 or (i > 0 and _prec(f) <= 2))
            if i == 0:
                out = s
            elif "implicit" in o and out.isdigit() and (s[0].isalpha() or s[0] == "("):
                out += s  # 2x, 3sqrt(2), 2pi, 2(x+1): only after a bare number
            else:
                out += "*" + s
        return out
    if k == "div":
        a = _pparen(t[1], _plain(t[1], pw, o), _prec(t[1]) <= 1)
        b = _pparen(t[2], _plain(t[2], pw, o), _prec(t[2]) <= 3)
        return f"{a}/{b}"
    if k == "pow":
        b = _pparen(t[1], _plain(t[1], pw, o), _prec(t[1]) <= 3 or t[1][0] in ("div", "mul"))
        e = _pparen(t[2], _plain(t[2], pw, o), _prec(t[2]) <= 3)
        return f"{b}{pw}{e}"
    if k == "sqrt":
        return f"sqrt({_plain(t[1], pw, o)})"
    if k == "root":
        return f"({_plain(t[1], pw, o)}){pw}(1/{t[2]})"
    if k == "exp":
        if "e_caret" in o:
            return f"e{pw}({_plain(t[1], pw, o)})"
        return f"exp({_plain(t[1], pw, o)})"
    if k == "ln":
        return f"log({_plain(t[1], pw, o)})"
    if k == "deg":
        return f"({_plain(t[1], pw, o)}*pi/180)"
    if k == "sfrac":
        d = t[1]
        return f"{d[0]}/{d[1]}" + (f"*{int(d[2:])}" if len(d) > 2 else "")
    if k in FUNCS:
        return f"{k}({_plain(t[1], pw, o)})"
    raise ValueError(t)


def sympy_latex(expr, rng: random.Random) -> str:
    """sympy's own LaTeX with random printer options (``\\ln``, never ``\\log``)."""
    opts = {
        "mul_symbol": rng.choice([None, "dot", "times"]),
        "fold_frac_powers": rng.random() < 0.5,
        "ln_notation": True,
        "root_notation": rng.random() < 0.8,
    }
    # not fold_short_frac: sympy then prints 2\sqrt{2}/(7\pi) as "2 \sqrt{2} / 7 \pi", which reads (2\sqrt{2}/7)\pi
    return sp.latex(expr, **opts)


def sympy_plain(expr, rng: random.Random) -> str:
    """sympy's str, with E written exp(1) and optionally ``^`` for ``**``."""
    import re

    s = re.sub(r"\bE\b", "exp(1)", sp.sstr(expr))
    if rng.random() < 0.4:
        s = s.replace("**", "^")
    return s


# --------------------------------------------------------------------------------------------
# Equal rewrites of a tree (value-preserving by construction; ground truth still checks)


def _degrees(arg) -> int | None:
    """The angle in whole degrees if ``arg`` is a rational multiple of pi (else None)."""
    if symbols_of(arg) or arg[0] == "deg":
        return None
    q = sp.nsimplify(to_sympy(arg) / sp.pi) if "pi" in repr(arg) else None
    if q is None or not q.is_Rational:
        return None
    d = q * 180
    return int(d) if d.is_Integer and d > 0 else None


def equal_rewrites(t, rng: random.Random):
    """A tree with the same value written differently (or None)."""
    spots = list(subtrees(t))
    rng.shuffle(spots)
    for path, s in spots:
        k = s[0]
        if k in FUNCS and (d := _degrees(s[1])) is not None:  # \sin\frac{\pi}{6} -> \sin 30^\circ
            return replace_at(t, path, (k, ("deg", I(d))))
        if k == "div" and s[1] == I(1) and rng.random() < 0.5:  # 1/b -> b^{-1}
            return replace_at(t, path, Pow(s[2], I(-1)))
        if k == "pow" and s[2][0] == "neg" and s[2][1][0] == "int":  # b^{-k} -> 1/b^k
            return replace_at(t, path, Div(I(1), Pow(s[1], s[2][1]) if s[2][1] != I(1) else s[1]))
        if k == "div" and rng.random() < 0.5:  # a/b -> (1/b) a
            return replace_at(t, path, Mul(Div(I(1), s[2]), s[1]))
        if k == "div" and s[1][0] == "neg":  # (-a)/b -> -(a/b)
            return replace_at(t, path, ("neg", Div(s[1][1], s[2])))
        if k == "neg" and s[1][0] == "div":  # -(a/b) -> (-a)/b
            return replace_at(t, path, Div(("neg", s[1][1]), s[1][2]))
        if k == "add" and len(s[1]) >= 2:  # reorder
            items = list(s[1])
            items = items[1:] + items[:1]
            if items[0][0] != "neg" or rng.random() < 0.5:
                return replace_at(t, path, ("add", tuple(items)))
        if k == "mul" and len(s[1]) >= 2:
            return replace_at(t, path, ("mul", tuple(reversed(s[1])), False))
        if k == "sqrt":
            return replace_at(t, path, Pow(s[1], Div(I(1), I(2))))
        if k == "root":
            return replace_at(t, path, Pow(s[1], Div(I(1), I(s[2]))))
        if k == "exp" and rng.random() < 0.5:
            return replace_at(t, path, Pow(("e",), s[1]))
        if k == "int" and s[1] >= 4 and rng.random() < 0.3:  # 12 -> 2*6 written as a product
            for d in range(2, int(s[1] ** 0.5) + 1):
                if s[1] % d == 0:
                    return replace_at(t, path, Mul(I(d), I(s[1] // d)))
    return None


# --------------------------------------------------------------------------------------------
# Near-miss mutations (trees). Each returns a mutated tree or None (not applicable).


def _spots(t, pred):
    return [(p, s) for p, s in subtrees(t) if pred(s)]


def m_digits_across_brace(t, rng):
    """12/5 -> 1/25 (last digit of the numerator into the denominator), or 12/5 -> 125/..."""
    spots = _spots(t, lambda s: s[0] == "div" and s[1][0] == "int" and s[2][0] == "int")
    if not spots:
        return None
    p, s = rng.choice(spots)
    a, b = str(s[1][1]), str(s[2][1])
    moves = []
    if len(a) >= 2:
        moves.append((a[:-1], a[-1] + b))
    if len(b) >= 2:
        moves.append((a + b[0], b[1:]))
    if not moves:
        moves.append((a + b, None))  # \frac{1}{2} -> 12 (both digits on one side)
    na, nb = rng.choice(moves)
    new = I(int(na)) if nb is None else Div(I(int(na)), I(int(nb))) if int(nb) else None
    return None if new is None else replace_at(t, p, new)


def m_frac_braces_dropped(t, rng):
    """\\frac{12}{5} written \\frac125, which TeX reads as \\frac{1}{2}5 (= 5/2)."""
    spots = _spots(
        t,
        lambda s: (
            s[0] == "div"
            and s[1][0] == "int"
            and s[2][0] == "int"
            and s[2][1] > 0
            and len(str(s[1][1]) + str(s[2][1])) >= 3
            and str(s[2][1])[0] != "0"
        ),
    )
    if not spots:
        return None
    p, s = rng.choice(spots)
    d = str(s[1][1]) + str(s[2][1])
    if d[1] == "0" or (len(d) > 2 and d[2] == "0"):
        return None
    return replace_at(t, p, ("sfrac", d))


def m_radicand_brace(t, rng):
    """sqrt(23) -> sqrt(2)3 ; sqrt(x+1) -> sqrt(x)+1."""
    spots = _spots(
        t,
        lambda s: (
            s[0] in ("sqrt", "root")
            and ((s[1][0] == "int" and s[1][1] >= 10) or (s[1][0] == "add" and len(s[1][1]) == 2))
        ),
    )
    if not spots:
        return None
    p, s = rng.choice(spots)
    wrap = (lambda a: ("sqrt", a)) if s[0] == "sqrt" else (lambda a: ("root", a, s[2]))
    if s[1][0] == "int":
        d = str(s[1][1])
        return replace_at(t, p, Mul(wrap(I(int(d[0]))), I(int(d[1:])), careless=True))
    first, rest = s[1][1]
    return replace_at(t, p, Add(wrap(first), rest))


def m_exponent_brace(t, rng):
    """2^{n+1} -> 2^n+1 ; e^{x+1} -> e^x+1 ; 2^{2x} -> 2^2 x."""
    spots = _spots(
        t, lambda s: (s[0] == "pow" and s[2][0] in ("add", "mul")) or (s[0] == "exp" and s[1][0] in ("add", "mul"))
    )
    if not spots:
        return None
    p, s = rng.choice(spots)
    e = s[2] if s[0] == "pow" else s[1]
    first, rest = e[1][0], e[1][1:]
    head = Pow(s[1], first) if s[0] == "pow" else ("exp", first)
    if e[0] == "add":
        return replace_at(t, p, ("add", (head, *rest)))
    return replace_at(t, p, ("mul", (head, *rest), False))


def m_denominator_brace(t, rng):
    """x/(y+1) -> x/y+1 ; (x+1)/y -> x+1/y."""
    spots = _spots(t, lambda s: s[0] == "div" and (s[2][0] == "add" or s[1][0] == "add"))
    if not spots:
        return None
    p, s = rng.choice(spots)
    if s[2][0] == "add" and (s[1][0] != "add" or rng.random() < 0.5):
        first, *rest = s[2][1]
        return replace_at(t, p, ("add", (Div(s[1], first), *rest)))
    *init, last = s[1][1]
    return replace_at(t, p, ("add", (*init, Div(last, s[2]))))


def m_sign_flip(t, rng):
    """-1+sqrt(3) -> 1+sqrt(3) ; exp(-2) -> exp(2) ; drop or add a unary minus."""
    spots = _spots(t, lambda s: s[0] in ("neg", "add", "int", "exp", "pow", "div"))
    if not spots:
        return None
    p, s = rng.choice(spots)
    if s[0] == "neg":
        return replace_at(t, p, s[1])
    if s[0] == "add":
        items = list(s[1])
        i = rng.randrange(len(items))
        items[i] = items[i][1] if items[i][0] == "neg" else ("neg", items[i])
        return replace_at(t, p, ("add", tuple(items)))
    return replace_at(t, p, ("neg", s))


def m_mul_div_swap(t, rng):
    """log(2)/3 -> log(2)*3 and a*b -> a/b."""
    spots = _spots(t, lambda s: s[0] == "div" or (s[0] == "mul" and len(s[1]) == 2))
    if not spots:
        return None
    p, s = rng.choice(spots)
    if s[0] == "div":
        return replace_at(t, p, Mul(s[1], s[2]))
    return replace_at(t, p, Div(s[1][0], s[1][1]))


def m_exponent_change(t, rng):
    """x^3 -> x^2 / x^4 ; sqrt -> cube root ; 2^{-1} -> 2^{1}."""
    spots = _spots(t, lambda s: s[0] in ("pow", "sqrt", "root"))
    if not spots:
        return None
    p, s = rng.choice(spots)
    if s[0] == "sqrt":
        return replace_at(t, p, ("root", s[1], 3))
    if s[0] == "root":
        return replace_at(t, p, ("sqrt", s[1]) if rng.random() < 0.5 else ("root", s[1], s[2] + 1))
    e = s[2]
    if e[0] == "int":
        return replace_at(t, p, Pow(s[1], I(e[1] + rng.choice([-1, 1]))))
    return replace_at(t, p, Pow(s[1], Add(e, I(1)) if rng.random() < 0.5 else ("neg", e)))


def m_dropped_parens(t, rng):
    """a(b+c) -> ab+c ; (a+b)^k -> a+b^k ; -(a+b) -> -a+b."""
    spots = _spots(
        t,
        lambda s: (
            (s[0] == "mul" and any(f[0] == "add" for f in s[1]))
            or (s[0] == "pow" and s[1][0] == "add")
            or (s[0] == "neg" and s[1][0] == "add")
        ),
    )
    if not spots:
        return None
    p, s = rng.choice(spots)
    if s[0] == "mul":
        i = next(i for i, f in enumerate(s[1]) if f[0] == "add")
        others = [f for j, f in enumerate(s[1]) if j != i]
        terms = list(s[1][i][1])
        if i == 0:  # (a+b)c -> a+bc
            return replace_at(t, p, ("add", (*terms[:-1], ("mul", (terms[-1], *others), False))))
        return replace_at(t, p, ("add", (("mul", (*others, terms[0]), False), *terms[1:])))
    if s[0] == "pow":
        terms = list(s[1][1])
        return replace_at(t, p, ("add", (*terms[:-1], Pow(terms[-1], s[2]))))
    terms = list(s[1][1])
    return replace_at(t, p, ("add", (("neg", terms[0]), *terms[1:])))


def m_digit_change(t, rng):
    """A digit changed or two digits transposed (12 -> 21, 7 -> 8)."""
    spots = _spots(t, lambda s: s[0] == "int")
    if not spots:
        return None
    p, s = rng.choice(spots)
    d = str(s[1])
    if len(d) >= 2 and d[0] != d[1] and rng.random() < 0.5 and d[1] != "0":
        new = int(d[1] + d[0] + d[2:])
    else:
        new = s[1] + rng.choice([-1, 1]) if s[1] > 1 else s[1] + 1
    return replace_at(t, p, I(new))


def m_case_change(t, rng):
    """x -> X (all occurrences, or one)."""
    spots = _spots(t, lambda s: s[0] == "sym" and s[1].islower())
    if not spots:
        return None
    name = rng.choice(spots)[1][1]
    if rng.random() < 0.5:
        p, _ = rng.choice([(p, s) for p, s in spots if s[1] == name])
        return replace_at(t, p, S(name.upper()))
    out = t
    for p, s in spots:
        if s[1] == name:
            out = replace_at(out, p, S(name.upper()))
    return out


def m_function_swap(t, rng):
    """sin <-> cos, tan -> sin, ln <-> exp, pi <-> e."""
    spots = _spots(t, lambda s: s[0] in (*FUNCS, "ln", "exp", "pi"))
    if not spots:
        return None
    p, s = rng.choice(spots)
    if s[0] == "pi":
        return replace_at(t, p, ("e",))
    swap = {"sin": "cos", "cos": "sin", "tan": rng.choice(["sin", "cos"]), "ln": "exp", "exp": "ln"}
    return replace_at(t, p, (swap[s[0]], s[1]))


def m_degree_sign_dropped(t, rng):
    """sin(pi/6) written \\sin 30 (radians: not 1/2)."""
    spots = [(p, s) for p, s in _spots(t, lambda s: s[0] in FUNCS) if _degrees(s[1]) is not None]
    if not spots:
        return None
    p, s = rng.choice(spots)
    return replace_at(t, p, (s[0], I(_degrees(s[1]))))


def m_inverse_notation(t, rng):
    r"""1/\sin x written \sin^{-1} x, which is arcsin x."""
    spots = _spots(
        t,
        lambda s: (
            (s[0] == "div" and s[1] == I(1) and s[2][0] == "sin")
            or (s[0] == "pow" and s[1][0] == "sin" and s[2] in (I(-1), ("neg", I(1))))
        ),
    )
    if not spots:
        return None
    p, s = rng.choice(spots)
    inner = s[2][1] if s[0] == "div" else s[1][1]
    return replace_at(t, p, ("asin", inner))


def m_power_placement(t, rng):
    r"""(\sin x)^2 written \sin x^2, which is sin(x^2)."""
    spots = _spots(t, lambda s: s[0] == "pow" and s[1][0] in (*FUNCS, "ln") and s[2][0] == "int")
    if not spots:
        return None
    p, s = rng.choice(spots)
    f, arg = s[1]
    return replace_at(t, p, (f, Pow(arg, s[2])))


def m_dropped_term(t, rng):
    """A term of a sum left out (a+b+c -> a+b)."""
    spots = _spots(t, lambda s: s[0] == "add" and len(s[1]) >= 2)
    if not spots:
        return None
    p, s = rng.choice(spots)
    items = list(s[1])
    del items[rng.randrange(len(items))]
    return replace_at(t, p, items[0] if len(items) == 1 else ("add", tuple(items)))


def m_swap_vars(t, rng):
    """x and y exchanged (or x -> n when there is one symbol)."""
    names = sorted(symbols_of(t))
    if not names:
        return None
    a = names[0]
    b = names[1] if len(names) > 1 else rng.choice([v for v in ("x", "y", "n") if v != a])

    def go(u):
        if u[0] == "sym":
            return S(b) if u[1] == a else S(a) if u[1] == b else u
        out = u
        for i, c in enumerate(children(u)):
            out = replace_child(out, i, go(c))
        return out

    return go(t)


MUTATIONS = {
    "inverse_notation": m_inverse_notation,
    "power_placement": m_power_placement,
    "degree_sign_dropped": m_degree_sign_dropped,
    "dropped_term": m_dropped_term,
    "swap_vars": m_swap_vars,
    "digits_across_brace": m_digits_across_brace,
    "radicand_brace": m_radicand_brace,
    "frac_braces_dropped": m_frac_braces_dropped,
    "exponent_brace": m_exponent_brace,
    "denominator_brace": m_denominator_brace,
    "sign_flip": m_sign_flip,
    "mul_div_swap": m_mul_div_swap,
    "exponent_change": m_exponent_change,
    "dropped_parens": m_dropped_parens,
    "digit_change": m_digit_change,
    "case_change": m_case_change,
    "function_swap": m_function_swap,
}


def tiny_perturbation(rng: random.Random):
    """(gold_tree, candidate_tree) differing by far less than 1e-12 relative (or a lot, hidden)."""
    kind = rng.randrange(10)
    if kind >= 5:
        return _close_numbers(rng, kind)
    if kind == 0:  # 57 vs 57+e^{-100}
        n = I(_rand_int(rng)) if rng.random() < 0.7 else _coprime_frac(rng)
        pert = ("exp", I(-rng.choice([50, 100, 200])))
        pair = (n, Add(n, pert))
    elif kind == 1:  # x^100+x vs x^100
        s = S(rng.choice(["x", "n"]))
        k = rng.choice([50, 100])
        low = rng.choice([s, I(1), Pow(s, I(2))])
        pair = (Add(Pow(s, I(k)), low), Pow(s, I(k)))
    elif kind == 2:  # 123456789012300+pi vs 123456789012345
        b = rng.randint(10**13, 10**15)
        d = rng.randint(1, 99)
        pair = (I(b), Add(I(b - d), ("pi",)))
    elif kind == 3:  # sqrt(N^2+1) vs N
        nn = 10 ** rng.randint(5, 9) + rng.randint(0, 99)
        pair = (I(nn), ("sqrt", I(nn * nn + 1)))
    else:  # 1/3 + 10^{-40}
        f = _coprime_frac(rng)
        pair = (f, Add(f, Pow(I(10), I(-rng.choice([20, 40, 60])))))
    return pair if rng.random() < 0.5 else (pair[1], pair[0])


def _close_numbers(rng: random.Random, kind: int):
    """Values that agree to many digits but are not equal (relative and absolute tolerance traps)."""
    if kind == 5:  # e^{40} vs e^{40}+1: relative difference ~1e-18
        big = rng.choice(
            [("exp", I(rng.randint(30, 60))), Pow(("pi",), I(rng.randint(30, 50))), Pow(I(10), I(rng.randint(20, 40)))]
        )
        pair = (big, Add(big, I(1)))
    elif kind == 6:  # sin(10^{-8}) vs 10^{-8}; ln(1+10^{-20}) vs 10^{-20}
        k = rng.choice([6, 8, 10, 20])
        small = Pow(I(10), ("neg", I(k)))
        pair = rng.choice([(("sin", small), small), (("ln", Add(I(1), small)), small), (("tan", small), small)])
    elif kind == 7:  # pi vs 355/113 ; sqrt(2) vs a Pell convergent ; e vs a convergent
        pair = rng.choice(
            [
                (("pi",), Div(I(355), I(113))),
                (("pi",), Div(I(103993), I(33102))),
                (("sqrt", I(2)), Div(I(665857), I(470832))),
                (("sqrt", I(2)), Div(I(886731088897), I(627013566048))),
                (("e",), Div(I(1084483), I(398959))),
                (("sqrt", I(3)), Div(I(716035), I(413403))),
            ]
        )
    elif kind == 8:  # f(x) vs f(x) + 10^{-30} x
        s = S(rng.choice(["x", "n"]))
        base = Add(Pow(s, I(rng.randint(2, 4))), I(rng.randint(1, 9)))
        pair = (base, Add(base, Mul(Pow(I(10), ("neg", I(rng.choice([15, 30, 60])))), s)))
    elif kind == 9 and rng.random() < 0.5:  # zero at every integer point: sin(pi x), cos(2 pi x) - 1
        s = S(rng.choice(["x", "n"]))
        trap = rng.choice([("sin", Mul(("pi",), s)), Add(("cos", Mul(I(2), ("pi",), s)), ("neg", I(1)))])
        base = rng.choice([I(0), s, Pow(s, I(2)), I(rng.randint(1, 9))])
        pair = (base, trap if base == I(0) else Add(base, trap))
    else:  # a huge integer vs itself plus one, written as a power
        b, e = rng.randint(2, 9), rng.randint(30, 60)
        pair = (Pow(I(b), I(e)), I(b**e + rng.choice([-1, 1])))
    return pair if rng.random() < 0.5 else (pair[1], pair[0])


# --------------------------------------------------------------------------------------------
# Ground truth


class _Timeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    """Raise _Timeout after ``seconds`` (main thread only; nests by keeping the outer timer)."""

    def handler(signum, frame):
        raise _Timeout()

    old_handler = signal.signal(signal.SIGALRM, handler)
    old_remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_remaining:
            signal.setitimer(signal.ITIMER_REAL, old_remaining)


def _points(free, rng: random.Random, k: int):
    """k random positive rational points; the first has no integer coordinate."""
    pts = [{s: sp.Rational(rng.randint(1, 40), rng.randint(1, 13)) for s in free} for _ in range(k)]
    if pts:
        pts[0] = {s: sp.Rational(2 * rng.randint(0, 20) + 1, 2) for s in free}
    return pts


def _num(expr, subs, digits):
    v = sp.N(expr.subs(subs) if subs else expr, digits)
    if v.has(sp.zoo, sp.nan, sp.oo, -sp.oo) or not v.is_number:
        return None
    re_, im = v.as_real_imag()
    try:
        return complex(0, 0), sp.Float(re_, digits), sp.Float(im, digits)
    except (TypeError, ValueError):
        return None


def ground_truth(a, b, rng: random.Random | None = None, seconds: float = 2.0) -> bool | None:
    """Whether sympy expressions ``a`` and ``b`` are equal: True, False, or None (undecided).

    Exact when ``expand(a - b) == 0``; otherwise both are evaluated at 4 random rational
    points of the free symbols to 60 digits: a difference above 1e-40 (absolute and relative
    to the larger value) anywhere means unequal. Agreement at 60 digits is re-checked at 300
    digits (threshold 1e-250), which separates perturbations such as e^{-100}; agreement
    there means equal. Each call is limited to ``seconds``.
    """
    rng = rng or random.Random(0)
    try:
        with time_limit(seconds):
            d = a - b
            if d == 0 or sp.expand(d) == 0:
                return True
            free = sorted(d.free_symbols | a.free_symbols | b.free_symbols, key=str)
            pts = _points(free, rng, 4) if free else [{}]
            for digits, tol in ((60, sp.Float("1e-40", 70)), (300, sp.Float("1e-250", 310))):
                seen_diff = False
                usable = 0
                for subs in pts:
                    va, vb = _num(a, subs, digits), _num(b, subs, digits)
                    if va is None or vb is None:
                        continue
                    usable += 1
                    dr, di = va[1] - vb[1], va[2] - vb[2]
                    scale = max(1, abs(va[1]), abs(va[2]), abs(vb[1]), abs(vb[2]))
                    if abs(dr) > tol * scale or abs(di) > tol * scale:
                        seen_diff = True
                        break
                if usable == 0:
                    return None
                if seen_diff:
                    return False
            return True
    except _Timeout:
        return None
    except (TypeError, ValueError, ZeroDivisionError, OverflowError, RecursionError, AttributeError):
        return None


# --------------------------------------------------------------------------------------------
# Pairs


@dataclass
class Pair:
    gold: str
    candidate: str
    equal: bool
    klass: str  # eq_* for equal-by-construction renderings, else the mutation name
    render: str  # how the candidate was written: latex, sympy_latex, plain, sympy_plain, careless
    boxed: bool = False  # also score as a \boxed{} completion with AccuracyReward

    def __str__(self) -> str:
        return f"[{self.klass}/{self.render}] gold={self.gold!r} candidate={self.candidate!r} truly_equal={self.equal}"


@dataclass
class Stats:
    skipped_gold: int = 0  # gold value not real/finite or undecidable
    skipped_pairs: int = 0  # ground truth undecided in time
    dropped_same: int = 0  # candidate string identical to the gold string


def _render_candidate(t, rng: random.Random):
    """(string, render kind) for a tree: one of our LaTeX styles, sympy's LaTeX, or plain text."""
    r = rng.random()
    if r < 0.45:
        return latex(t, LatexStyle.random(rng)), "latex"
    if r < 0.7:
        return plain(t, caret=rng.random() < 0.4, implicit=rng.random() < 0.3, e_caret=rng.random() < 0.3), "plain"
    expr = to_sympy(t)
    if r < 0.85:
        return sympy_latex(expr, rng), "sympy_latex"
    return sympy_plain(expr, rng), "sympy_plain"


def defined(t) -> bool:
    """No subtree is undefined (sympy turns 1/tan(3pi/2) into 1/zoo = 0, hiding it)."""
    for _, sub in subtrees(t):
        if sub[0] in ("int", "sym", "pi", "e"):
            continue
        if to_sympy(sub).has(sp.zoo, sp.nan, sp.oo, -sp.oo):
            return False
    return True


def _gold_ok(expr) -> bool:
    if expr.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
        return False
    free = sorted(expr.free_symbols, key=str)
    v = _num(expr, {s: sp.Rational(7, 3) for s in free}, 20) if free else _num(expr, {}, 20)
    return v is not None and abs(v[2]) < 1e-15 and abs(v[1]) < 1e25


def generate_batch(rng: random.Random, n_equal: int = 3, n_mutant: int = 4, stats: Stats | None = None) -> list[Pair]:
    """One random gold and several candidates: equal renderings and near-miss mutants.

    Labels come from :func:`ground_truth` on the trees; candidates whose string equals the
    gold's, and pairs sympy cannot decide in time, are dropped (and counted in ``stats``).
    """
    stats = stats if stats is not None else Stats()
    truth_rng = random.Random(rng.getrandbits(32))
    if rng.random() < 0.08:  # tiny perturbations are their own golds
        g, c = tiny_perturbation(rng)
        gs, cs = to_sympy(g), to_sympy(c)
        gold = latex(g, LatexStyle())
        out = []
        for _ in range(2):
            cand, render = _render_candidate(c, rng)
            label = ground_truth(gs, cs, truth_rng)
            if label is None:
                stats.skipped_pairs += 1
                continue
            out.append(Pair(gold, cand, label, "tiny_perturbation", render, rng.random() < 0.2))
        return out

    r = rng.random()
    syms = [] if r < 0.45 else ["x"] if r < 0.75 else ["n"] if r < 0.82 else ["x", "y"]
    tree = random_tree(rng, rng.choice([1, 2, 2, 3, 3]), syms)
    try:
        with time_limit(2.0):
            gexpr = to_sympy(tree)
            ok = defined(tree) and _gold_ok(gexpr)
    except (_Timeout, TypeError, ValueError, ZeroDivisionError, OverflowError):
        ok = False
    if not ok:
        stats.skipped_gold += 1
        return []
    gold = latex(tree, LatexStyle(left_right=rng.random() < 0.3, single_brace=True))
    candidates: list[tuple[object, str, str, str]] = []  # (tree or sympy expr, string, klass, render)

    for _ in range(n_equal):
        r = rng.random()
        if r < 0.5:
            s, render = _render_candidate(tree, rng)
            candidates.append((gexpr, s, "eq_render", render))
        elif r < 0.75:
            t2 = equal_rewrites(tree, rng)
            if t2 is not None:
                s, render = _render_candidate(t2, rng)
                candidates.append((to_sympy(t2), s, "eq_rewrite", render))
        else:
            op = rng.choice(["expand", "factor", "together", "cancel", "radsimp", "expand_power_exp", "powsimp", "log"])
            try:
                with time_limit(1.0):
                    if op == "log":  # ln 12 -> 2 ln 2 + ln 3, only where no symbol is involved
                        e2 = gexpr if gexpr.free_symbols else sp.expand_log(gexpr, force=True, factor=True)
                    else:
                        e2 = getattr(sp, op)(gexpr)
            except (_Timeout, Exception):  # noqa: BLE001 - sympy raises many kinds
                continue
            if rng.random() < 0.6:
                candidates.append((e2, sympy_latex(e2, rng), "eq_algebraic", "sympy_latex"))
            else:
                candidates.append((e2, sympy_plain(e2, rng), "eq_algebraic", "sympy_plain"))

    names = list(MUTATIONS)
    rng.shuffle(names)
    made = 0
    for name in names:
        if made >= n_mutant:
            break
        mt = MUTATIONS[name](tree, rng)
        if mt is None or mt == tree:
            continue
        try:
            mexpr = to_sympy(mt)
        except (TypeError, ValueError, ZeroDivisionError):
            continue
        if mexpr.has(sp.zoo, sp.nan) or not defined(mt):
            continue
        made += 1
        if rng.random() < 0.6:
            s, render = latex(mt, LatexStyle.random(rng)), "latex"
        else:
            s = plain(mt, caret=rng.random() < 0.4, implicit=rng.random() < 0.3, e_caret=rng.random() < 0.3)
            render = "plain"
        candidates.append((mexpr, s, name, render))

    out = []
    for expr, s, klass, render in candidates:
        if s.replace(" ", "") == gold.replace(" ", ""):
            stats.dropped_same += 1
            continue
        label = ground_truth(gexpr, expr, truth_rng)
        if label is None:
            stats.skipped_pairs += 1
            continue
        out.append(Pair(gold, s, label, klass, render, rng.random() < 0.2))
    return out


def boxed_completion(candidate: str, rng: random.Random | None = None) -> str:
    """A short completion ending with the candidate in a box (exercises extraction)."""
    lead = (rng or random.Random(0)).choice(
        ["Therefore the answer is ", "So we get ", "Final result: ", "Putting it together, "]
    )
    return f"{lead}$\\boxed{{{candidate}}}$."

"""The embedded arithmetic task: seeded problems, disjoint splits, step-by-step traces.

A problem is a left-to-right chain of additions and subtractions, e.g. ``47+38-19``.
The answer format makes the model show its steps::

    <think>47+38=85;85-19=66</think><answer>66</answer>

Splits are decided by a hash of the expression, not by the seed, so train and
held-out problems are disjoint whatever seeds either side uses.

Warm-up traces can come from a *sloppy teacher* that drops the carry (or borrow) of
a step with probability ``slip_rate``. The slipped value is carried on, so the trace
stays self-consistent and its final answer is wrong. A policy trained by imitation
copies the slips; RL, which checks only the final answer, can learn to stop making
them -- the policy surpasses what it imitated.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Difficulty:
    """How hard a problem is: number of terms and digits per term (inclusive ranges)."""

    min_terms: int = 2
    max_terms: int = 4
    min_digits: int = 1
    max_digits: int = 2
    ops: str = "+"  # "+-" adds subtraction and negative numbers: much harder for the tiny model

    def __post_init__(self) -> None:
        if not 2 <= self.min_terms <= self.max_terms:
            raise ValueError(f"need 2 <= min_terms <= max_terms, got {self.min_terms}, {self.max_terms}")
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(f"need 1 <= min_digits <= max_digits, got {self.min_digits}, {self.max_digits}")
        if not self.ops or set(self.ops) - {"+", "-"}:
            raise ValueError(f"ops must be a non-empty subset of '+-', got {self.ops!r}")


@dataclass(frozen=True)
class Problem:
    terms: tuple[int, ...]
    ops: tuple[str, ...]  # len(terms) - 1
    question: str = field(init=False)
    answer: int = field(init=False)

    def __post_init__(self) -> None:
        q = str(self.terms[0]) + "".join(op + str(t) for op, t in zip(self.ops, self.terms[1:], strict=True))
        object.__setattr__(self, "question", q)
        object.__setattr__(self, "answer", _chain(self.terms, self.ops)[-1])


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def _chain(terms: tuple[int, ...], ops: tuple[str, ...]) -> list[int]:
    """Running values after each step: [terms[0], v1, v2, ...]."""
    values = [terms[0]]
    for op, t in zip(ops, terms[1:], strict=True):
        values.append(_apply(values[-1], op, t))
    return values


def split_of(question: str) -> str:
    """The split a question belongs to: a stable hash, about 1 in 4 held out."""
    h = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=8).digest(), "little")
    return "heldout" if h % 4 == 0 else "train"


def carry_slip(a: int, op: str, b: int) -> int | None:
    """The result of ``a op b`` with its lowest carry (or borrow) dropped; None if it has none.

    Works on magnitudes column by column, the way the schoolbook method does, so the slip
    is the mistake a person makes, e.g. 47+38 -> 75 and 85-19 -> 76.
    """
    # Reduce to adding or subtracting two non-negative magnitudes.
    x, y, sign = a, b, 1
    adding = (op == "+") == ((a >= 0) == (b >= 0))
    if a < 0:
        x, sign = -a, -1
    y = abs(b)
    if not adding and x < y:  # |x - y| computed as y - x, sign flipped
        x, y, sign = y, x, -sign
    place = 1
    while x // place or y // place:
        dx, dy = (x // place) % 10, (y // place) % 10
        lower_x, lower_y = x % place, y % place
        if adding and dx + dy + (1 if lower_x + lower_y >= place else 0) >= 10:
            exact = x + y
            return sign * (exact - 10 * place)
        if not adding and dx - dy - (1 if lower_x < lower_y else 0) < 0:
            exact = x - y
            return sign * (exact + 10 * place)
        place *= 10
    return None


def trace(problem: Problem, slip_rate: float = 0.0, rng: random.Random | None = None) -> tuple[str, int]:
    """The worked solution of ``problem`` and the answer it reaches.

    With ``slip_rate > 0`` each step that has a carry drops it with that probability;
    later steps continue from the slipped value.
    """
    if slip_rate and rng is None:
        raise ValueError("slip_rate > 0 needs an rng")
    steps = []
    value = problem.terms[0]
    for op, t in zip(problem.ops, problem.terms[1:], strict=True):
        result = _apply(value, op, t)
        if slip_rate and rng.random() < slip_rate:
            slipped = carry_slip(value, op, t)
            result = slipped if slipped is not None else result
        steps.append(f"{value}{op}{t}={result}")
        value = result
    return f"<think>{';'.join(steps)}</think><answer>{value}</answer>", value


def sample_problem(rng: random.Random, difficulty: Difficulty) -> Problem:
    n = rng.randint(difficulty.min_terms, difficulty.max_terms)
    terms = []
    for _ in range(n):
        digits = rng.randint(difficulty.min_digits, difficulty.max_digits)
        lo = 0 if digits == 1 else 10 ** (digits - 1)
        terms.append(rng.randint(lo, 10**digits - 1))
    ops = tuple(rng.choice(difficulty.ops) for _ in range(n - 1))
    return Problem(tuple(terms), ops)


def generate(
    n: int,
    seed: int,
    split: str = "train",
    difficulty: Difficulty = Difficulty(),
    unique: bool = True,
) -> list[Problem]:
    """``n`` problems of ``split``, reproducible from ``seed``.

    ``unique`` drops repeats; a request larger than the split's problem space fails
    loudly rather than looping forever.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"arith:{seed}:{split}")
    seen: set[str] = set()
    out: list[Problem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise ValueError(f"could not draw {n} distinct {split} problems at {difficulty}; ask for fewer")
        p = sample_problem(rng, difficulty)
        if split_of(p.question) != split or (unique and p.question in seen):
            continue
        seen.add(p.question)
        out.append(p)
    return out


def to_records(problems: list[Problem]) -> list[dict]:
    """Rows for a `datasets.Dataset`: the question as prompt and the gold answer as text."""
    return [{"prompt": p.question, "answer": str(p.answer)} for p in problems]

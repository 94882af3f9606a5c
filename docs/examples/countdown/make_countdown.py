"""Write Countdown problems as a JSONL file: ``prompt``, ``nums``, ``target`` and ``solution`` (one
expression that reaches the target with each number once: proof the problem can be solved, never
shown to the model).

    python docs/examples/countdown/make_countdown.py --n 50 --seed 0 --out docs/examples/countdown/countdown_test.jsonl

Each problem draws 3 or 4 numbers from 1..20 and a random expression over them (each exactly
once, + - * /), kept when its value is a whole number from 1 to 100, as TinyZero's Countdown's
targets are. The prompt is short, so that the embedded tiny model (192 tokens of context) can take it.
"""

from __future__ import annotations

import argparse
import json
import random
from fractions import Fraction
from pathlib import Path

PROMPT = "Make {target} from {nums} with + - * /, each number once. Answer in <answer></answer>."
OPERATORS = "+-*/"


def random_expression(rng: random.Random, nums: list[int]) -> tuple[str, Fraction]:
    """A random fully parenthesised expression using each of ``nums`` once, and its value
    (ZeroDivisionError when a division by zero was drawn)."""
    terms = [(str(n), Fraction(n)) for n in nums]
    while len(terms) > 1:
        i, j = rng.sample(range(len(terms)), 2)
        (a, x), (b, y) = terms[i], terms[j]
        op = rng.choice(OPERATORS)
        value = {"+": x + y, "-": x - y, "*": x * y, "/": x / y if y else None}[op]
        if value is None:
            raise ZeroDivisionError
        terms = [t for k, t in enumerate(terms) if k not in (i, j)] + [(f"({a} {op} {b})", value)]
    text, value = terms[0]
    return (text[1:-1] if text.startswith("(") else text), value


def problems(n: int, seed: int) -> list[dict]:
    """``n`` solvable problems, the same for the same seed."""
    rng = random.Random(seed)
    out: list[dict] = []
    while len(out) < n:
        nums = [rng.randint(1, 20) for _ in range(rng.choice((3, 4)))]
        try:
            solution, value = random_expression(rng, nums)
        except ZeroDivisionError:
            continue
        if value.denominator == 1 and 1 <= value <= 100:
            target = int(value)
            out.append({"prompt": PROMPT.format(target=target, nums=nums), "nums": nums, "target": target,
                        "solution": solution})
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    args.out.write_text("".join(json.dumps(row) + "\n" for row in problems(args.n, args.seed)))


if __name__ == "__main__":
    main()

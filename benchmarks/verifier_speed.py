"""Throughput and latency of the math verifier against math-verify, on the same inputs.

Completions are built from the MATH-500 and GSM8K test files: for each problem a correct
one (the reference solution), a near miss (the final answer changed: +1, or a different
problem's answer) and a garbage one (truncated text, an empty box, or prose without an
answer). Each (gold, completion) pair is checked once by:

- ours: ``AccuracyReward.score(completion, gold)`` (extraction, parsing, equivalence);
- math-verify: ``verify(parse(gold), parse(completion))`` called directly.

Golds repeat across the three completions of a problem, as in GRPO (one gold, many samples),
so both checkers may reuse cached gold parses. Usage::

    python benchmarks/verifier_speed.py [--data DIR] [--problems N]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

try:
    from rlreason.rewards.math import AccuracyReward
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from rewards.math import AccuracyReward  # type: ignore[no-redef]

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"


def build_inputs(data: Path, problems: int, seed: int = 0) -> list[tuple[str, str]]:
    """(gold, completion) pairs: correct, near-miss and garbage completions, shuffled."""
    rng = random.Random(seed)
    math500 = [json.loads(line) for line in (data / "math500.jsonl").read_text().splitlines()]
    gsm = [json.loads(line) for line in (data / "gsm8k_test.jsonl").read_text().splitlines()]
    rows = [(r["answer"], r["solution"], "math") for r in rng.sample(math500, min(problems, len(math500)))]
    rows += [(r["answer"].rsplit("####", 1)[1].strip(), r["answer"], "gsm") for r in rng.sample(gsm, problems)]
    answers = [gold for gold, _, _ in rows]
    pairs = []
    for gold, solution, kind in rows:
        body = solution.rsplit("\\boxed", 1)[0] if kind == "math" else solution.rsplit("####", 1)[0]
        near = (
            str(int(gold.replace(",", "")) + 1) if gold.replace(",", "").lstrip("-").isdigit() else rng.choice(answers)
        )
        garbage = rng.choice([body[: len(body) // 2], body + "\\boxed{}", body + " so I am not sure."])
        correct = solution if kind == "math" else f"{body}The answer is $\\boxed{{{gold}}}$."
        pairs += [(gold, correct), (gold, f"{body}\\boxed{{{near}}}"), (gold, garbage)]
    rng.shuffle(pairs)
    return pairs


def time_checker(check: Callable[[str, str], object], pairs: list[tuple[str, str]]) -> tuple[list[float], list]:
    latencies, results = [], []
    for gold, completion in pairs:
        start = time.perf_counter()
        try:
            results.append(check(gold, completion))
        except Exception as e:  # math-verify raises on some inputs; count it as a wrong answer
            results.append(repr(e))
        latencies.append(time.perf_counter() - start)
    return latencies, results


def summary(name: str, latencies: list[float]) -> tuple[str, float]:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    rate = len(ordered) / sum(ordered)
    row = f"| {name} | {rate:,.0f} | {p50 * 1e3:.3f} | {p99 * 1e3:.2f} | {max(ordered) * 1e3:.1f} |"
    return row, p50


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--problems", type=int, default=200, help="problems per benchmark file")
    args = parser.parse_args()
    from math_verify import parse, verify  # imported here: only this benchmark needs it

    pairs = build_inputs(args.data, args.problems)
    ours = AccuracyReward()
    our_lat, our_res = time_checker(lambda g, c: ours.score(c, g), pairs)
    mv_lat, mv_res = time_checker(lambda g, c: verify(parse(f"${g}$"), parse(c)), pairs)
    agree = sum(bool(a == 1.0) == (b is True) for a, b in zip(our_res, mv_res, strict=True))

    print(
        f"{len(pairs)} checks ({args.problems} MATH-500 + {args.problems} GSM8K problems x "
        "correct / near-miss / garbage), one process, one thread\n"
    )
    print("| checker | checks/s | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    row, our_p50 = summary("rlreason AccuracyReward", our_lat)
    print(row)
    row, mv_p50 = summary("math_verify.verify(parse(gold), parse(pred))", mv_lat)
    print(row)
    print(
        f"\np50 speed-up: {mv_p50 / our_p50:.1f}x; throughput ratio: {sum(mv_lat) / sum(our_lat):.1f}x; "
        f"verdicts agree on {agree}/{len(pairs)}"
    )


if __name__ == "__main__":
    main()

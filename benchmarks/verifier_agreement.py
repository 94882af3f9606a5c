"""How often the math verifier agrees with labelled cases and with real benchmark answers.

Three measurements, printed as markdown tables:

1. ``equiv_cases.jsonl``: (gold, pred, equal) cases collected from public checkers' test
   suites; agreement with the label, per source. Both sides are read leniently (markers,
   then the whole text if short, then "the answer is", the last math span, the last number),
   since these cases are raw strings.
2. MATH-500: each reference solution (its last ``\\boxed{}``) against its own ``answer``
   (must score 1; misses are listed) and against every other problem's answer (must score 0
   unless the two golds are the same answer; such matches are listed for review).
3. GSM8K test: the same with the rationale (ending ``#### N``) and the final number.

Usage::

    python benchmarks/verifier_agreement.py [--data DIR] [--pairs N] [--show-disagreements]

``--pairs 0`` (default) scores all ordered pairs; N > 0 samples N other-answers per solution.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

try:
    from rlreason.rewards._equiv import equivalent
    from rlreason.rewards._parse import parse_answer
    from rlreason.rewards.math import AccuracyReward, extract_answer, parse_gold, verify
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from rewards._equiv import equivalent  # type: ignore[no-redef]
    from rewards._parse import parse_answer  # type: ignore[no-redef]
    from rewards.math import AccuracyReward, extract_answer, parse_gold, verify  # type: ignore[no-redef]

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LENIENT = AccuracyReward(fallback=("answer_phrase", "last_math", "whole", "last_number"), name="lenient")
STRICT = AccuracyReward()


def case_verdict(gold: str, pred: str) -> bool | None:
    """The verifier's verdict on one labelled case; None if the gold is unparseable."""
    score = LENIENT.score(pred, gold)
    return None if score is None else score == 1.0


def equiv_agreement(path: Path, show: bool) -> tuple[list[tuple[str, int, int, int]], list[dict]]:
    """Per source: (source, cases, agreements, unparseable golds); and the disagreements."""
    per_source: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    disagreements = []
    for line in path.read_text().splitlines():
        case = json.loads(line)
        verdict = case_verdict(case["gold"], case["pred"])
        counts = per_source[case["source"]]
        counts[0] += 1
        if verdict is None:
            counts[2] += 1
        # An unparseable gold scores None, which counts as "not equal" against the label.
        if bool(verdict) == case["equal"]:
            counts[1] += 1
        else:
            disagreements.append(case)
    rows = [(src, n, ok, bad) for src, (n, ok, bad) in sorted(per_source.items())]
    if show:
        for case in disagreements:
            print(
                f"- [{case['source'].split(':')[0]}] label={case['equal']} gold={case['gold'][:80]!r} "
                f"pred={case['pred'][-80:]!r}",
                file=sys.stderr,
            )
    return rows, disagreements


def own_vs_other(
    solutions: list[str], golds: list[str], pairs: int, seed: int = 0
) -> tuple[list[int], list[tuple[int, int]], int, float]:
    """(own misses, other matches (i, j), other pairs scored, seconds).

    Own pairs go through the reward itself. For the other pairs each solution's answer is
    extracted and parsed once, then compared with every gold: exactly what the reward
    computes (it caches parses too), without repeating the extraction 500 times.
    """
    start = time.perf_counter()
    misses = [i for i, (s, g) in enumerate(zip(solutions, golds, strict=True)) if STRICT.score(s, g) != 1.0]
    parsed_golds = [parse_gold(g) for g in golds]
    preds = [parse_answer(a) if (a := extract_answer(s)) is not None else None for s in solutions]
    rng = random.Random(seed)
    matches, scored = [], 0
    for i, pred in enumerate(preds):
        others = [j for j in range(len(golds)) if j != i]
        if pairs:
            others = rng.sample(others, min(pairs, len(others)))
        for j in others:
            scored += 1
            gold = parsed_golds[j]
            if gold is None or (pred is not None and equivalent(gold, pred)):
                matches.append((i, j))
    return misses, matches, scored, time.perf_counter() - start


def same_answer(a: str, b: str) -> bool:
    """Whether two golds are the same answer as written (whitespace and ``\\!`` aside)."""

    def norm(s: str) -> str:
        return "".join(s.replace("\\!", "").replace("\\dfrac", "\\frac").split())

    return norm(a) == norm(b)


def report_pairs(
    name: str, golds: list[str], misses: list[int], matches: list[tuple[int, int]], scored: int, seconds: float
) -> None:
    """A match across problems is a false positive unless the two golds are themselves the
    same answer (identical text, or written differently: ``30^\\circ`` / ``30``, ``x=5`` / ``5``)."""
    same = [(i, j) for i, j in matches if same_answer(golds[i], golds[j])]
    differ = [(i, j) for i, j in matches if not same_answer(golds[i], golds[j])]
    false_pos = [(i, j) for i, j in differ if verify(golds[j], golds[i]) is not True]
    written = sorted({tuple(sorted((golds[i], golds[j]))) for i, j in differ if (i, j) not in false_pos})
    print(f"\n### {name}\n")
    print("| check | pairs | exceptions |")
    print("|---|---:|---:|")
    print(f"| own solution vs own answer (should be 1) | {len(golds)} | {len(misses)} misses |")
    print(
        f"| solution vs another problem's answer (should be 0) | {scored} | **{len(false_pos)} false positives** "
        f"(+{len(same)} matches with an identical gold, {len(differ) - len(false_pos)} with an equivalent gold) |"
    )
    print(f"\n{scored + len(golds)} checks in {seconds:.1f} s.")
    for i in misses:
        print(f"- miss: problem {i}: gold {golds[i]!r}")
    for i, j in false_pos:
        print(f"- FALSE POSITIVE: solution {i} (gold {golds[i]!r}) vs gold {j} {golds[j]!r}")
    if written:
        print("- equivalent golds written differently: " + "; ".join(f"`{a}` = `{b}`" for a, b in written))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pairs", type=int, default=0, help="other answers per solution (0: all)")
    parser.add_argument("--show-disagreements", action="store_true")
    args = parser.parse_args()

    rows, disagreements = equiv_agreement(args.data / "equiv_cases.jsonl", args.show_disagreements)
    print("### Agreement with labelled cases (equiv_cases.jsonl)\n")
    print("| source | cases | agree | % | unparseable golds |")
    print("|---|---:|---:|---:|---:|")
    for src, n, ok, bad in rows:
        print(f"| {src} | {n} | {ok} | {100 * ok / n:.1f} | {bad} |")
    total, agree = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"| **all** | {total} | {agree} | {100 * agree / total:.1f} | {sum(r[3] for r in rows)} |")

    bench = args.data / "benchmarks"
    math500 = [json.loads(line) for line in (bench / "math500.jsonl").read_text().splitlines()]
    m_golds = [r["answer"] for r in math500]
    unparseable = [g for g in m_golds if parse_gold(g) is None]
    report_pairs("MATH-500", m_golds, *own_vs_other([r["solution"] for r in math500], m_golds, args.pairs))
    print(f"\nunparseable MATH-500 golds: {len(unparseable)} {unparseable}")

    gsm = [json.loads(line) for line in (bench / "gsm8k_test.jsonl").read_text().splitlines()]
    g_golds = [r["answer"].rsplit("####", 1)[1].strip() for r in gsm]
    report_pairs("GSM8K test", g_golds, *own_vs_other([r["answer"] for r in gsm], g_golds, args.pairs))


if __name__ == "__main__":
    main()

"""Where this verifier and math-verify disagree, on everything ``../shared/data`` holds.

Four pair sets, each scored by both checkers:

1. ``equiv_cases.jsonl``: labelled (gold, pred) cases from public checkers' test suites;
2. MATH-500: every reference solution against its own gold answer;
3. MATH-500: every solution's final answer against every *other* problem's gold (250k pairs;
   ``--others N`` samples N per solution instead);
4. GSM8K test: the same two checks, other golds sampled (``--gsm-others``, default 20).

Ours is ``AccuracyReward`` (a completion) or ``verify`` (a bare answer); math-verify is
``verify(parse(gold), parse(pred))`` with golds wrapped in ``$...$`` as its docs advise. Every
disagreement is printed with both verdicts, so each one can be fixed or documented as a
convention in docs/rewards.md. Usage::

    python benchmarks/verifier_crosscheck.py [--data DIR] [--others N] [--gsm-others N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

from math_verify import parse as mv_parse
from math_verify import verify as mv_verify

from rlreason.rewards._equiv import equivalent
from rlreason.rewards._parse import parse_answer
from rlreason.rewards.math import AccuracyReward, extract_answer, parse_gold, verify

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LENIENT = AccuracyReward(fallback=("answer_phrase", "last_math", "whole", "last_number"), name="lenient")


def mv_gold(gold: str) -> list:
    """math-verify's parse of a bare answer: wrapped in ``$...$`` unless it has delimiters."""
    return mv_parse(gold if "\\boxed" in gold or "$" in gold else f"${gold}$")


def mv_equal(gold_parsed: list, pred_parsed: list) -> bool:
    try:
        return bool(mv_verify(gold_parsed, pred_parsed))
    except Exception:  # math-verify raises on a few inputs: not a match
        return False


def labelled(path: Path) -> list[dict]:
    """Each labelled case with both verdicts."""
    rows = []
    for line in path.read_text().splitlines():
        case = json.loads(line)
        ours = LENIENT.score(case["pred"], case["gold"]) == 1.0
        # Both sides read leniently by both checkers: a bare short prediction is wrapped too.
        theirs = mv_equal(mv_gold(case["gold"]), mv_gold(case["pred"]) or mv_parse(case["pred"]))
        rows.append({**case, "ours": ours, "mv": theirs})
    return rows


def own_and_others(golds: list[str], solutions: list[str], others: int, seed: int = 0) -> tuple[list, list, int]:
    """(own-pair disagreements, other-pair disagreements, other pairs scored)."""
    rng = random.Random(seed)
    ours_gold = [parse_gold(g) for g in golds]
    mv_golds = [mv_gold(g) for g in golds]
    answers = [extract_answer(s) for s in solutions]
    ours_pred = [parse_answer(a) if a is not None else None for a in answers]
    mv_preds = [mv_parse(s) for s in solutions]
    own = []
    for i, gold in enumerate(golds):
        ours, theirs = verify(gold, answers[i]) is True, mv_equal(mv_golds[i], mv_preds[i])
        if ours != theirs:
            own.append((i, gold, answers[i], ours, theirs))
    other, scored = [], 0
    for i in range(len(golds)):
        js = [j for j in range(len(golds)) if j != i]
        if others:
            js = rng.sample(js, min(others, len(js)))
        for j in js:
            scored += 1
            g, p = ours_gold[j], ours_pred[i]
            ours = g is not None and p is not None and equivalent(g, p)
            theirs = mv_equal(mv_golds[j], mv_preds[i])
            if ours != theirs:
                other.append((i, j, golds[j], answers[i], ours, theirs))
    return own, other, scored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--others", type=int, default=0, help="MATH-500 other golds per solution (0: all)")
    parser.add_argument("--gsm-others", type=int, default=20, help="GSM8K other golds per solution")
    args = parser.parse_args()
    if not (args.data / "equiv_cases.jsonl").exists():
        sys.exit(f"no data at {args.data}")
    start = time.perf_counter()

    cases = labelled(args.data / "equiv_cases.jsonl")
    split = Counter((c["ours"], c["mv"]) for c in cases)
    print("### Labelled cases (equiv_cases.jsonl)\n")
    print(f"{len(cases)} cases; both agree on {split[(True, True)] + split[(False, False)]}.")
    print(f"ours right and math-verify wrong: {sum(c['ours'] == c['equal'] != c['mv'] for c in cases)}; "
          f"math-verify right and ours wrong: {sum(c['mv'] == c['equal'] != c['ours'] for c in cases)}\n")
    for c in cases:
        if c["ours"] != c["mv"]:
            label = f"label={c['equal']} ours={c['ours']} mv={c['mv']}"
            print(f"- {label} gold={c['gold'][:60]!r} pred={c['pred'][-60:]!r}")

    bench = args.data / "benchmarks"
    math500 = [json.loads(line) for line in (bench / "math500.jsonl").read_text().splitlines()]
    gsm = [json.loads(line) for line in (bench / "gsm8k_test.jsonl").read_text().splitlines()]
    suites = [
        ("MATH-500", [r["answer"] for r in math500], [r["solution"] for r in math500], args.others),
        ("GSM8K test", [r["answer"].rsplit("####", 1)[1].strip() for r in gsm], [r["answer"] for r in gsm],
         args.gsm_others),
    ]
    for name, golds, solutions, others in suites:
        own, other, scored = own_and_others(golds, solutions, others)
        print(f"\n### {name}\n")
        print(f"own solution vs own gold: {len(golds)} pairs, {len(own)} disagreements")
        for i, gold, answer, ours, theirs in own:
            print(f"- own {i}: ours={ours} mv={theirs} gold={gold!r} answer={answer!r}")
        print(f"solution vs another problem's gold: {scored} pairs, {len(other)} disagreements")
        for i, j, gold, answer, ours, theirs in other:
            print(f"- solution {i} vs gold {j}: ours={ours} mv={theirs} gold={gold!r} answer={answer!r}")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

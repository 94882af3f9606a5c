"""Reference-solution self-consistency of every benchmark suite: the data's own answers fed
through the evaluation harness as if they were completions.

    OMP_NUM_THREADS=1 python benchmarks/eval_selfcheck.py [--suites gsm8k,math500] [--fallback last_math]

Per suite: ``solution`` = reference solutions scored against their own gold (should be ~100%),
``boxed_gold`` = ``\\boxed{gold}`` (should be 100%), ``shifted`` = problem i+1's boxed gold /
solution against problem i's gold (should be ~0%). Prints a markdown table and every
solution that did not score, for docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import time

from rlreason.eval.core import EvalProtocol, self_consistency, suite_scorer
from rlreason.eval.suites import SUITES, get_suite, load_problems


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suites", default=",".join(n for n in SUITES if n != "arith" and SUITES[n].scoring != "code"),
                   help="default: every suite scored by its answers (HumanEval's: benchmarks/humaneval_selfcheck.py)")
    p.add_argument("--fallback", default=None, help="extraction fallbacks, e.g. last_math (default: none)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per scoring call (up to 64 texts)")
    p.add_argument("--workers", type=int, default=2, help="scoring worker processes")
    args = p.parse_args()
    protocol = EvalProtocol(extract_fallback=tuple(args.fallback.split(",")) if args.fallback else None)
    print(f"extraction rules {protocol.extract_rules}, fallback {protocol.extract_fallback}, "
          f"{args.workers} scoring workers, timeout {args.timeout}s per call\n")
    print("| suite | problems | solution | boxed gold | shifted gold | shifted solution | score failures | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    failures = {}
    with suite_scorer(num_workers=args.workers, timeout_s=args.timeout) as scorer:
        for name in args.suites.split(","):
            suite = get_suite(name)
            try:
                problems = load_problems(suite, allow_hub=False)
            except FileNotFoundError as e:
                print(f"| {name} | not available: {e} |")
                continue
            start = time.perf_counter()
            r = self_consistency(suite, problems, scorer, protocol)
            failures[name] = r["solution_failures"]
            print(f"| {name} | {r['problems']} | {pct(r['solution'])} | {pct(r['boxed_gold'])} "
                  f"| {pct(r['shifted_gold'])} | {pct(r['shifted_solution'])} | {r['score_failures']} "
                  f"| {time.perf_counter() - start:.1f} |")
    for name, fails in failures.items():
        if fails and len(fails) < 20:
            print(f"\n{name}: {len(fails)} solutions did not score")
            for f in fails:
                print(f"  index {f['index']} (id {f['id']}): gold {f['gold']!r}, extracted {f['extracted']!r}")
        elif fails:
            print(f"\n{name}: {len(fails)} solutions did not score (first: {fails[0]})")


if __name__ == "__main__":
    main()

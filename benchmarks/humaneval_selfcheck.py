"""HumanEval's self-check through the evaluation's scoring path (rlreason.eval.code.self_check):
every problem's program run with its tests in the sandbox, for programs whose verdict is known.

    OMP_NUM_THREADS=1 python benchmarks/humaneval_selfcheck.py [--sandbox bwrap] [--workers 2] [--repeat 3]
    OMP_NUM_THREADS=1 python benchmarks/humaneval_selfcheck.py --compare-workers 1,2,4,8

``canonical`` (prompt + canonical solution) must pass 164/164; ``return_none`` (the body replaced
by ``return None``) and ``neighbour`` (the next problem's canonical body) must pass 0/164. Prints a
markdown table (docs/evaluation.md, "HumanEval") with the wall time of the batch (3 x 164 runs).
``--compare-workers``: the canonical batch (164 runs) with each number of sandboxes at once, the
settings interleaved ``--repeat`` times (the machine's load moves all of them alike); the median
seconds of each.
"""

from __future__ import annotations

import argparse
import os
import statistics

from rlreason.eval.code import CodeScoring, self_check
from rlreason.eval.suites import humaneval_rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sandbox", choices=("bwrap", "unsafe-rlimits"), default="bwrap")
    p.add_argument("--workers", type=int, default=None, help="sandboxes at once (default: twice the CPUs)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per run (program and tests)")
    p.add_argument("--repeat", type=int, default=3, help="runs of the whole batch (the time is their median)")
    p.add_argument("--compare-workers", default=None, help="comma-separated worker counts to time (canonical batch)")
    args = p.parse_args()
    rows = humaneval_rows(None)
    if args.compare_workers:
        compare_workers(rows, [int(w) for w in args.compare_workers.split(",")], args)
        return
    code = CodeScoring(mode=args.sandbox, timeout_s=args.timeout, max_workers=args.workers)
    results = [self_check(rows, code) for _ in range(args.repeat)]
    r = results[-1]
    runs = len(rows) * len(r["passed"])
    seconds = statistics.median(x["seconds"] for x in results)
    print(f"sandbox {args.sandbox}, {code.workers()} workers on {os.cpu_count()} CPUs, "
          f"timeout {args.timeout}s, median of {args.repeat}\n")
    print("| variant | expected | passed | statuses |")
    print("|---|---|---|---|")
    for name, passed in r["passed"].items():
        expected = len(rows) if name == "canonical" else 0
        statuses = ", ".join(f"{k} {v}" for k, v in r["statuses"][name].items())
        print(f"| {name} | {expected}/{len(rows)} | {passed}/{len(rows)} | {statuses} |")
    print(f"\n{runs} sandboxed runs in {seconds:.1f} s ({runs / seconds:.0f} runs/s); score failures "
          f"{r['score_failures']}")
    same = all(x["passed"] == r["passed"] for x in results)
    wrong = {k: v for k, v in r["wrong"].items() if v}
    if wrong or not same:
        print(f"SELF-CHECK FAILED: wrong verdicts {wrong}; same counts on every repeat: {same}")
        raise SystemExit(1)


def compare_workers(rows: list[dict], counts: list[int], args: argparse.Namespace) -> None:
    times: dict[int, list[float]] = {w: [] for w in counts}
    for _ in range(args.repeat):
        for w in counts:
            r = self_check(rows, CodeScoring(mode=args.sandbox, timeout_s=args.timeout, max_workers=w),
                           variants=("canonical",))
            if r["passed"]["canonical"] != len(rows):
                raise SystemExit(f"SELF-CHECK FAILED with {w} workers: {r['wrong']}")
            times[w].append(r["seconds"])
    print(f"sandbox {args.sandbox}, {len(rows)} canonical runs per batch, {os.cpu_count()} CPUs, "
          f"median of {args.repeat} interleaved\n")
    print("| workers | seconds | runs/s |")
    print("|---|---|---|")
    for w, ts in times.items():
        med = statistics.median(ts)
        print(f"| {w} | {med:.1f} | {len(rows) / med:.0f} |")


if __name__ == "__main__":
    main()

"""Every attack of tests/test_sandbox_attacks.py, repeated, with timings: how often each one was held
(its test passed) and how long it took (min / median / max seconds per run).

The attacks are the test file's own functions, run by pytest in this process ``--rounds`` times
(the module's fixtures, listeners and the bystander process are set up once per round), so the
benchmark and the suite can never disagree about what an attack is. Usage::

    python benchmarks/sandbox_attacks.py [--rounds 5] [--json out.json] [-k EXPR]

Exit status 1 if any attack was not held in some round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "tests" / "test_sandbox_attacks.py"


class _Recorder:
    """A pytest plugin keeping each attack's outcome and call duration."""

    def __init__(self) -> None:
        self.runs: dict[str, list[tuple[bool, float]]] = defaultdict(list)

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.runs[report.nodeid.split("::", 1)[1]].append((report.passed, report.duration))


def run(rounds: int, select: str | None) -> dict:
    recorder = _Recorder()
    start = time.perf_counter()
    for _ in range(rounds):
        args = [str(SUITE), "-q", "-p", "no:cacheprovider", "--no-header", "-rN"] + (["-k", select] if select else [])
        pytest.main(args, plugins=[recorder])
    attacks = {}
    for name, runs in sorted(recorder.runs.items()):
        seconds = [d for _, d in runs]
        attacks[name] = {"held": sum(ok for ok, _ in runs), "runs": len(runs), "min_s": round(min(seconds), 3),
                         "median_s": round(statistics.median(seconds), 3), "max_s": round(max(seconds), 3)}
    return {"rounds": rounds, "attacks": attacks, "total_s": round(time.perf_counter() - start, 1)}


def table(result: dict) -> str:
    lines = ["| attack | held | median s | max s |", "|---|---:|---:|---:|"]
    for name, row in result["attacks"].items():
        lines.append(f"| {name} | {row['held']}/{row['runs']} | {row['median_s']:.2f} | {row['max_s']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("-k", dest="select", help="only the attacks matching this pytest -k expression")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))  # the suite imports tests/_sandbox.py
    result = run(args.rounds, args.select)
    print(table(result))
    held = sum(r["held"] for r in result["attacks"].values())
    runs = sum(r["runs"] for r in result["attacks"].values())
    print(f"\n{len(result['attacks'])} attacks, {held}/{runs} runs held, {result['total_s']} s in all")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if held == runs else 1


if __name__ == "__main__":
    sys.exit(main())

"""How many tool calls per second rlreason.rollout.tools.ToolExecutor runs: a trivial tool
(``add``) and a trivial stateful environment method (``Counter.inc``), called in batches the
shape a multi-turn rollout asks for (``--episodes`` episodes, one call each per round), through
worker processes (``isolation="process"``, ``--workers``) and in the trainer's process
(``isolation="none"``, a thread per call). What it measures is the executor's own cost per call
(pipes, the manager, the deadline bookkeeping), the upper bound it puts on a rollout's tool rate.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tool_executor.py --episodes 64 --rounds 20

Prints a markdown table (calls/s, microseconds per call, best of ``--reps``); ``--docs`` writes
it into docs/benchmarks.md between the ``tool-executor`` markers.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import replace_block  # noqa: E402

from rlreason.rollout.tools import ToolExecutor  # noqa: E402


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first.
        b: The second.
    """
    return a + b


class Counter:
    def reset(self, **row: object) -> None:
        self.count = 0

    def inc(self, by: int) -> int:
        """Add to the count.

        Args:
            by: How much.
        """
        self.count += by
        return self.count


def calls_per_second(isolation: str, workers: int, episodes: int, rounds: int, environment: bool) -> float:
    """Calls/s of ``rounds`` rounds of one call per episode, after one warm-up round."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isolation="none" warns
        ex = ToolExecutor([add], Counter if environment else None, num_workers=workers, isolation=isolation)
    try:
        ex.start([{} for _ in range(episodes)])
        name, args = ("inc", {"by": 1}) if environment else ("add", {"a": 1, "b": 2})
        batch = [(i, [{"type": "function", "function": {"name": name, "arguments": args}}]) for i in range(episodes)]
        ex.call(batch)  # warm-up
        t0 = time.perf_counter()
        for _ in range(rounds):
            results = ex.call(batch)
            assert not any(r[0].failed for r in results), results[0]
        return episodes * rounds / (time.perf_counter() - t0)
    finally:
        ex.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--docs", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    rows = []
    for label, isolation, workers, env in (("tool, process, 1 worker", "process", 1, False),
                                           ("tool, process, 2 workers", "process", 2, False),
                                           ("environment method, process, 2 workers", "process", 2, True),
                                           ("tool, none (in-process thread)", "none", 1, False),
                                           ("environment method, none (in-process thread)", "none", 1, True)):
        best = max(calls_per_second(isolation, workers, args.episodes, args.rounds, env) for _ in range(args.reps))
        rows.append(f"| {label} | {best:,.0f} | {1e6 / best:,.0f} |")
    table = "\n".join([
        f"{args.episodes} episodes x {args.rounds} rounds of one call each, best of {args.reps}; "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}.",
        "",
        "| path | calls/s | µs per call |",
        "|---|---:|---:|",
        *rows,
    ])
    print(table)
    if args.docs and not replace_block(ROOT / "docs" / "benchmarks.md", "<!-- tool-executor:begin -->",
                                       "<!-- tool-executor:end -->", table):
        sys.exit("docs/benchmarks.md has no tool-executor markers")


if __name__ == "__main__":
    main()

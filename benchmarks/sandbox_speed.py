"""Executions per second of short Python programs: the bubblewrap sandbox, the unsafe rlimit-only mode
and a plain ``subprocess.run([python, -I, -S, -c, code])`` side by side (the cost of isolation),
and test runs per second with ``run_inputs`` (one launch, one forked process per input).

Every way runs the same programs (a few lines: read a number, compute, print) on a thread pool of
``--workers`` threads (default: the CPU count) through ``Sandbox.run_many``; the plain subprocess
uses the same pool. Each figure is the median of ``--reps`` timed rounds after one warm-up round.
Usage::

    python benchmarks/sandbox_speed.py [--programs 200] [--inputs 10] [--reps 3] [--workers N]
                                      [--json out.json] [--docs]

``--docs`` writes the table into docs/benchmarks.md between its sandbox-speed markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import ROOT, replace_block  # benchmarks/ is on sys.path when a script runs

try:
    from rlreason.rewards.sandbox import Job, Limits, Sandbox
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from rewards.sandbox import Job, Limits, Sandbox  # type: ignore[no-redef]

BEGIN, END = "<!-- sandbox-speed:begin -->", "<!-- sandbox-speed:end -->"
# A short program of the kind a code reward runs: parse stdin, compute, print.
PROGRAM = "n = int(input())\nprint(sum(i * i for i in range(n)) % 1000003)"
LIMITS = Limits(wall_s=10.0, cpu_s=5.0)


def _plain(python: str, code: str, stdin: str) -> str:
    return subprocess.run([python, "-I", "-S", "-c", code], input=stdin, capture_output=True, text=True,
                          timeout=LIMITS.wall_s).stdout


def _rate(fn: Callable[[], int], reps: int) -> tuple[float, float]:
    """(median runs/s, median seconds) over ``reps`` rounds after a warm-up; ``fn`` returns runs done."""
    fn()
    times, runs = [], 0
    for _ in range(reps):
        start = time.perf_counter()
        runs = fn()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return runs / seconds, seconds


def measure(programs: int, inputs: int, reps: int, workers: int) -> dict:
    box = Sandbox(LIMITS, max_workers=workers)
    unsafe = Sandbox(LIMITS, mode="unsafe-rlimits", max_workers=workers)
    single = [Job(PROGRAM, [f"{100 + i}\n"]) for i in range(programs)]
    multi = [Job(PROGRAM, [f"{100 + i + k}\n" for k in range(inputs)]) for i in range(max(1, programs // inputs))]
    expected = {job.inputs[0]: str(sum(j * j for j in range(int(job.inputs[0]))) % 1000003) + "\n" for job in single}

    def sandboxed(sandbox: Sandbox, jobs: list[Job]) -> Callable[[], int]:
        def go() -> int:
            results = sandbox.run_many(jobs)
            bad = [r for rs in results for r in rs if r.status != "ok"]
            if bad:
                raise RuntimeError(f"a benchmark program failed: {bad[0]}")
            for job, rs in zip(jobs, results, strict=True):
                if job is single[0] and rs[0].stdout != expected[job.inputs[0]]:
                    raise RuntimeError(f"wrong output {rs[0].stdout!r}")
            return sum(len(rs) for rs in results)
        return go

    def plain() -> int:
        with ThreadPoolExecutor(workers) as pool:
            outs = list(pool.map(lambda job: _plain(box.python, job.code, job.inputs[0]), single))
        if outs[0] != expected[single[0].inputs[0]]:
            raise RuntimeError(f"wrong output {outs[0]!r}")
        return len(outs)

    rows = {}
    for name, fn in (("plain subprocess (no isolation)", plain),
                     ("unsafe-rlimits: one launch per run", sandboxed(unsafe, single)),
                     ("bwrap sandbox: one launch per run", sandboxed(box, single)),
                     (f"bwrap sandbox: run_inputs, {inputs} inputs per launch", sandboxed(box, multi))):
        rate, seconds = _rate(fn, reps)
        rows[name] = {"runs_per_s": round(rate, 1), "seconds": round(seconds, 3)}
    return {"programs": programs, "inputs_per_launch": inputs, "reps": reps, "workers": workers,
            "cpus": os.cpu_count(), "python": box.python, "machine": platform.platform(), "rows": rows}


def table(result: dict) -> str:
    lines = ["| way | runs/s | seconds per round |", "|---|---:|---:|"]
    for name, row in result["rows"].items():
        lines.append(f"| {name} | {row['runs_per_s']:.0f} | {row['seconds']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=200, help="runs per round")
    parser.add_argument("--inputs", type=int, default=10, help="inputs per launch in the run_inputs row")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--docs", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args(argv)
    result = measure(args.programs, args.inputs, args.reps, args.workers)
    print(json.dumps(result, indent=1))
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.docs and not replace_block(ROOT / "docs" / "benchmarks.md", BEGIN, END, table(result)):
        raise SystemExit(f"docs/benchmarks.md has no {BEGIN} ... {END} markers")
    return result


if __name__ == "__main__":
    main()

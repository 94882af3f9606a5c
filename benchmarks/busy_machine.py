"""`make demo` on a busy machine (issue 22): the tiny model's build and 50 training steps, each
alone and next to one single-threaded CPU-bound competitor (`python3 -c "while True: pass"`, as a
browser or an IDE indexer would be), for the old thread setting and the new default.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/busy_machine.py --cpus 0,1 --settings old,new

Run it on an otherwise quiet machine: `--cpus 0,1` pins everything (the runs and the competitor)
to two cores, the laptop of the issue, on a machine with more. Settings:
  old       before issue 22: 2 threads for the build and the training, spinning while they wait
            (RLREASON_BUILD_THREADS=2, num_threads 2, libgomp's default wait policy)
  one       1 thread for both
  passive2  2 threads for both with OMP_WAIT_POLICY=PASSIVE (waiting threads sleep instead of spinning)
  new       the defaults: a 2-thread build and 1-thread training (tiny_cpu.yaml), passive waits
            (rlreason/__init__.py), never more threads than usable cores (rlreason/run/host.py)
Targets: with the competitor at most 2.5x the time alone; alone at most 10% slower than `old`.

The build is `make demo`'s (`python -m rlreason.tiny`, 800 warm-up steps unless --sft-steps) into a
temporary RLREASON_CACHE; the steps are `accelerate launch recipes/grpo_math.py` with the demo config
(tiny_cpu.yaml) on that build, timed by the run's own train_time_s (the training loop; the held-out
evaluations are cut to --eval-size problems and not counted). Every run and the competitor are
bounded by --timeout (a run past it shows as ">T"). Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlreason.run.host import usable_cpus  # noqa: E402

SETTINGS = {  # name -> (environment, training num_threads)
    # before issue 22. OMP_WAIT_POLICY empty: libgomp warns and keeps its default (spin, then sleep),
    # and rlreason/__init__.py leaves a variable that is set alone
    "old": ({"RLREASON_BUILD_THREADS": "2", "OMP_WAIT_POLICY": ""}, 2),
    "one": ({"RLREASON_BUILD_THREADS": "1"}, 1),  # one thread for both
    "passive2": ({"RLREASON_BUILD_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}, 2),
    "new": ({}, None),  # the defaults: tiny.BUILD_THREADS, passive waits, tiny_cpu.yaml's num_threads
}


def competitor(seconds: float) -> subprocess.Popen:
    """One single-threaded busy loop; it ends by itself after ``seconds`` should we not kill it."""
    code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass"
    return subprocess.Popen([sys.executable, "-c", code])


def timed(cmd: list[str], env: dict[str, str], timeout: float, busy: bool) -> tuple[float | None, str]:
    """(wall seconds or None past ``timeout``, stdout) of ``cmd``, alone or next to a competitor."""
    rival = competitor(timeout + 30) if busy else None
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return None, ""
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd} failed:\n{err[-3000:]}")
        return time.perf_counter() - t0, out
    finally:
        if rival is not None:
            rival.kill()
            rival.wait()


def measure(name: str, args: argparse.Namespace, tmp: Path, busy: bool) -> dict[str, float | None]:
    """The build's and the steps' seconds for setting ``name``, alone or next to the competitor."""
    extra_env, threads = SETTINGS[name]
    cache = tmp / f"cache-{name}-{'busy' if busy else 'alone'}"
    env = {k: v for k, v in os.environ.items() if k not in ("RLREASON_BUILD_THREADS", "OMP_WAIT_POLICY")}
    env.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "RLREASON_CACHE": str(cache), **extra_env})
    build_s, out = timed([sys.executable, "-m", "rlreason.tiny", "--sft-steps", str(args.sft_steps)], env,
                         args.timeout, busy)
    if build_s is None:
        return {"build": None, "steps": None}
    model = out.strip().splitlines()[-1]
    run = tmp / f"run-{name}-{'busy' if busy else 'alone'}"
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "recipes/grpo_math.py",
           "--config", "recipes/configs/tiny_cpu.yaml", "--model_name_or_path", model, "--output_dir", str(run),
           "--overwrite_output_dir", "true", "--max_steps", str(args.steps), "--eval_steps", "0",
           "--save_steps", "0", "--eval_size", str(args.eval_size), "--final_eval_size", str(args.eval_size),
           "--progress", "false", *(["--num_threads", str(threads)] if threads else [])]
    wall, _ = timed(cmd, env, args.timeout, busy)
    steps = json.loads((run / "summary.json").read_text())["train_time_s"] if wall is not None else None
    return {"build": build_s, "steps": steps}


def fmt(v: float | None, timeout: float) -> str:
    return f">{timeout:.0f}" if v is None else f"{v:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", default="old,new", help=f"comma-separated, of {sorted(SETTINGS)}")
    ap.add_argument("--cpus", default=None, help="pin the benchmark to these cores, e.g. 0,1 (a 2-core laptop)")
    ap.add_argument("--sft-steps", type=int, default=800, help="the build's warm-up steps (make demo's: 800)")
    ap.add_argument("--steps", type=int, default=50, help="training steps of the demo config")
    ap.add_argument("--eval-size", type=int, default=40, help="held-out problems before/after (not timed)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per cell; the median is shown")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before a run is stopped")
    ap.add_argument("--busy-settings", default=None,
                    help="settings also run next to the competitor (default: all); e.g. 'new' skips the old "
                         "setting's collapse, which the issue measured at 20.8x")
    args = ap.parse_args()
    names = args.settings.split(",")
    unknown = set(names) - set(SETTINGS)
    if unknown:
        ap.error(f"unknown settings {sorted(unknown)}; choose from {sorted(SETTINGS)}")
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})  # children inherit it
    results: dict[tuple[str, str, bool], list[float | None]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name in names:  # interleaved, so a drift of the machine hits every setting alike
                busy_too = args.busy_settings is None or name in args.busy_settings.split(",")
                for busy in (False, True) if busy_too else (False,):
                    for phase, s in measure(name, args, Path(tmp), busy).items():
                        results.setdefault((name, phase, busy), []).append(s)
                        print(f"{name} {phase} {'with competitor' if busy else 'alone'}: {fmt(s, args.timeout)} s",
                              file=sys.stderr, flush=True)

    def med(key):
        vals = results.get(key, [None])
        return None if any(v is None for v in vals) else statistics.median(vals)

    print(f"\n{usable_cpus()} usable cores ({os.cpu_count()} on the machine), build {args.sft_steps} warm-up steps, "
          f"{args.steps} training steps of tiny_cpu.yaml, median of {args.repeats}; seconds.\n")
    print("| setting | phase | alone s | with competitor s | ratio (target <= 2.5) | alone vs old (target <= 1.10) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        for phase in ("build", "steps"):
            alone, busy = med((name, phase, False)), med((name, phase, True))
            if (name, phase, True) not in results:  # not run next to the competitor (--busy-settings)
                print(f"| {name} | {phase} | {fmt(alone, args.timeout)} | not run | - | "
                      f"{f'{alone / old:.2f}' if alone and (old := med(('old', phase, False))) else '-'} |")
                continue
            ratio = f"{busy / alone:.2f}" if alone and busy else (f">{args.timeout / alone:.1f}" if alone else "-")
            old = med(("old", phase, False)) if "old" in names else None
            vs_old = f"{alone / old:.2f}" if alone and old else "-"
            print(f"| {name} | {phase} | {fmt(alone, args.timeout)} | {fmt(busy, args.timeout)} | {ratio} | {vs_old} |")


if __name__ == "__main__":
    main()

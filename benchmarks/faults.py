"""Soak test: kill a tiny run with random signals at random moments, resume, compare.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/faults.py --kills 30 --out benchmarks/results/faults.json
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/faults.py --table benchmarks/results/faults.json  # -> docs

One uninterrupted run of the recipe on the tiny model is the reference. Then, again and again:
start the same run with ``--resume_from_checkpoint auto`` in its own session (a batch job's
process group), wait a random time, send a random signal (SIGTERM or SIGKILL to the whole
group, SIGTERM or SIGINT to the trainer alone), wait for it to end, and resume. A run that
reaches its end is compared with the reference: every per-step metric and eval row (timings
aside), every sampled completion, and every final weight, bit for bit; then a fresh run
starts, until ``--kills`` kills have been dealt. The result: per signal, how many kills, how
many ended cleanly (status 0 for SIGTERM / SIGINT), and whether every finished run equalled the
reference. The delays cover every phase (start-up, model build, first eval, steps, saves,
final eval, final model), since they are drawn up to the reference's own wall time. A stop
signal that does not end with status 0 is a failure, reported with its phase (start-up, during
the run, after the run had finished).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
STEPS, SAVE_EVERY = 4, 1
ARGS = ["--max_steps", str(STEPS), "--save_steps", str(SAVE_EVERY), "--per_device_train_batch_size", "16",
        "--gradient_accumulation_steps", "1", "--num_generations", "4", "--learning_rate", "1e-4",
        "--eval_steps", "2", "--final_eval_size", "16", "--eval_size", "8", "--log_completions_steps", "1",
        "--max_completion_length", "32", "--progress", "false", "--num_threads", "1"]
TIMING = ("time", "time/", "perf/")
# (name, signal, to the whole process group?)
FAULTS = [("SIGTERM group", signal.SIGTERM, True), ("SIGKILL group", signal.SIGKILL, True),
          ("SIGTERM trainer", signal.SIGTERM, False), ("SIGINT trainer", signal.SIGINT, False)]


def launch(out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "recipes" / "grpo_math.py"), "--output_dir", str(out),
                             *ARGS, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)


def rows(out: Path, name: str) -> list[dict]:
    path = out / name
    if not path.exists():
        return []
    return [{k: v for k, v in json.loads(x).items() if not k.startswith(TIMING)}
            for x in path.read_text().splitlines() if x.strip()]


def finished(out: Path) -> bool:
    summary = out / "summary.json"
    return summary.exists() and json.loads(summary.read_text()).get("interrupted") is False


def differences(ref: Path, out: Path) -> list[str]:
    """What differs between two finished runs (empty: identical)."""
    diffs = []
    for name in ("metrics.jsonl", "completions.jsonl"):
        a, b = rows(ref, name), rows(out, name)
        if a != b:
            first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            diffs.append(f"{name}: {len(a)} vs {len(b)} rows, first difference at row {first}")
    wa = load_file(ref / "final_model" / "model.safetensors")
    wb = load_file(out / "final_model" / "model.safetensors")
    diffs += [f"weight {k}" for k in wa if k not in wb or not torch.equal(wa[k], wb[k])]
    return diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    ap.add_argument("--table", type=Path, default=None,
                    help="only write this result file's table into docs/reliability.md")
    args = ap.parse_args()
    if args.table:
        write_table(json.loads(args.table.read_text()), args.table)
        return
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="rlreason-faults-"))
    t0 = time.time()
    ref = work / "reference"
    proc = launch(ref)
    log, _ = proc.communicate()
    assert proc.returncode == 0, log[-3000:]
    ref_s = time.time() - t0
    print(f"reference run: {ref_s:.1f} s", flush=True)

    stats: Counter = Counter()
    runs: list[dict] = []
    kills, bad = 0, []
    while kills < args.kills:
        out = work / f"run{len(runs)}"
        attempts = 0
        while not finished(out) and attempts <= 4 * args.kills:
            attempts += 1
            proc = launch(out, "--resume_from_checkpoint", "auto")
            fault = rng.choice(FAULTS) if kills < args.kills else None
            killed = False
            if fault is not None:
                try:
                    proc.wait(timeout=rng.uniform(0.0, ref_s))
                except subprocess.TimeoutExpired:
                    name, sig, group = fault
                    with contextlib.suppress(ProcessLookupError):
                        (os.killpg if group else os.kill)(proc.pid, sig)
                    kills += 1
                    killed = True
                    stats[name, "sent"] += 1
            log, _ = proc.communicate()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # nothing of an attempt may outlive it
            if killed:
                # SIGTERM / SIGINT should end with status 0; where they do not, say in which phase
                stats[name, proc.returncode] += 1
                if proc.returncode != 0 and sig != signal.SIGKILL:
                    phase = ("start-up" if not log.strip() or "Traceback" in log[:200]
                             else "after the run had finished" if "outputs in" in log else "during the run")
                    stats[name, phase] += 1
                    bad.append(f"{name}: exit {proc.returncode} {phase}: {log[-1500:]}")
            elif proc.returncode != 0:
                bad.append(f"attempt without a kill: exit {proc.returncode}: {log[-1500:]}")
        diffs = differences(ref, out) if finished(out) else ["never finished"]
        runs.append({"attempts": attempts, "identical": not diffs, "differences": diffs})
        print(f"run {len(runs)}: {attempts} attempts, identical={not diffs} {diffs[:3]}  "
              f"({kills} kills, {time.time() - t0:.0f} s)", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    result = {"kills": kills, "runs": len(runs), "identical_runs": sum(r["identical"] for r in runs),
              "wall_s": round(time.time() - t0, 1), "reference_s": round(ref_s, 1),
              "per_signal": {n: {str(k[1]): v for k, v in stats.items() if k[0] == n} for n, _, _ in FAULTS},
              "problems": bad, "runs_detail": runs, "args": ARGS, "seed": args.seed}
    print(json.dumps({k: v for k, v in result.items() if k not in ("runs_detail", "args")}, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if result["identical_runs"] == len(runs) and not bad else 1)


def write_table(result: dict, source: Path) -> None:
    """The result as a table between the faults-soak markers of docs/reliability.md."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import replace_block

    lines = [f"Measured with `benchmarks/faults.py --kills {result['kills']}` ({source.name}): "
             f"{result['runs']} runs to the end through {result['kills']} kills in {result['wall_s']:.0f} s "
             f"(the uninterrupted reference: {result['reference_s']:.0f} s); **{result['identical_runs']} of "
             f"{result['runs']} finished runs bit-identical** to the reference (metrics, completions, weights); "
             f"problems: {len(result['problems']) or 'none'}. A CPU machine with 2 cores shared with other jobs; "
             f"exits other than 0 are listed by phase.", "",
             "| signal | sent | exit status 0 | other exits (phase) |", "|---|---|---|---|"]
    for name, counts in result["per_signal"].items():
        other = [f"{v}x {k}" for k, v in counts.items() if k not in ("sent", "0")]
        lines.append(f"| {name} | {counts.get('sent', 0)} | {counts.get('0', 0)} | {'; '.join(other) or '-'} |")
    replace_block(ROOT / "docs" / "reliability.md", "<!-- faults-soak:begin -->", "<!-- faults-soak:end -->",
                  "\n".join(lines))


if __name__ == "__main__":
    main()

"""How long a stop signal takes to become a complete checkpoint, and the run to end.

Each run is the recipe in a fresh process group, launched as users launch it (``python``,
``accelerate launch`` or ``torchrun``, one process), with no periodic checkpoint (``save_steps:
0``), so the only checkpoint is the one the stop writes. After step 1 is logged, SIGTERM goes to
the whole group (what Slurm, Kubernetes and ``timeout`` do) or to the launcher alone (``kill
<pid>``), ``--delay`` seconds into step 2 (default: a random point of a step's length, so every
phase gets hit). Measured from the signal: until the checkpoint folder appears (it is renamed
into place when complete: rlreason/run/checkpoint.py) and until the last process of the group has
ended; which phase the signal landed in (the step abandoned before its update, or the update
finished first).

- ``--size tiny``: the embedded tiny model (0.8M parameters) on its default work, the accuracy
  reward slowed to ``--reward-sleep`` seconds per step (tests/_slow_reward.py; default 8 s, a real
  GPU step's length), so the signal lands while the batch is scored;
- ``--size large``: a randomly initialised model with Qwen2.5-0.5B's architecture and the tiny
  tokenizer (358M parameters, fp32, AdamW: benchmarks/async_rollouts.py's), its steps as they come.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stop_latency.py --size tiny --reps 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/stop_latency.py --size large --reps 2 --launcher accelerate

Appends each run to benchmarks/results/stop_latency.json and prints a markdown table;
``--docs`` writes the table of every recorded run into docs/reliability.md between the
``stop-latency`` markers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import replace_block  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from _procs import in_group  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "stop_latency.json"
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- stop-latency:begin -->", "<!-- stop-latency:end -->"
COMMON = ["--max_steps", "50", "--save_steps", "0", "--eval_steps", "0", "--final_eval_size", "1", "--eval_size", "1",
          "--log_completions_steps", "0", "--progress", "false", "--num_threads", "1"]




def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def one_run(out: Path, work: list[str], launcher: str, target: str, delay: float | None, env: dict) -> dict:
    recipe = str(ROOT / "recipes" / "grpo_math.py")
    cmd = {"python": [sys.executable, recipe],
           "accelerate": [str(Path(sys.executable).parent / "accelerate"), "launch", "--quiet", "--num_processes", "1",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", recipe],
           "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                        recipe]}[launcher]
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([*cmd, "--output_dir", str(out), *COMMON, *work], cwd=ROOT, env=env,
                                stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    metrics, ckpts = out / "metrics.jsonl", out / "checkpoints"
    step_start = None
    while True:  # step 1 logged: its time tells where in step 2 a delay lands
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended before step 1:\n{log.read_text()[-3000:]}")
        if metrics.exists() and '"step": 1,' in metrics.read_text():
            step_start = time.monotonic()
            break
        time.sleep(0.01)
    row = next(json.loads(x) for x in metrics.read_text().splitlines() if '"step": 1,' in x)
    step_s = row["time/step_s"]
    wait = random.uniform(0.1, 0.9) * step_s if delay is None else delay
    time.sleep(max(0.0, wait - (time.monotonic() - step_start)))
    logged = sum(1 for x in metrics.read_text().splitlines() if '"loss"' in x)  # steps done at the signal
    t0 = time.monotonic()
    if target == "group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    t_ckpt = None
    while in_group(proc.pid) or proc.poll() is None:
        if t_ckpt is None and ckpts.exists() and any(p.name.startswith("step-") for p in ckpts.iterdir()):
            t_ckpt = time.monotonic() - t0
        time.sleep(0.005)
    t_exit = time.monotonic() - t0
    proc.wait()
    if t_ckpt is None and ckpts.exists() and any(p.name.startswith("step-") for p in ckpts.iterdir()):
        t_ckpt = t_exit  # appeared in the last poll interval
    saved = sorted(p for p in ckpts.iterdir() if p.name.startswith("step-")) if ckpts.exists() else []
    # the step in flight was abandoned when the checkpoint is of the last step done at the signal (a
    # group's signal can make accelerate's launcher lose the run's own lines about it: not the log)
    phase = "none written" if not saved else (
        "abandoned" if int(saved[-1].name.split("-")[1]) == logged else "update finished first")
    return {"signal_after_step1_s": round(wait, 2), "step_s": round(step_s, 2), "phase": phase,
            "checkpoint_s": None if t_ckpt is None else round(t_ckpt, 2), "exit_s": round(t_exit, 2),
            "returncode": proc.returncode, "checkpoint": saved[-1].name if saved else None,
            "checkpoint_mb": round(du(saved[-1]) / 1e6, 1) if saved else None,
            "summary": (out / "summary.json").exists()}


def table(rows: list[dict]) -> str:
    lines = ["| model | launcher | SIGTERM to | step | the step in flight | signal -> complete checkpoint | "
             "signal -> all processes ended | launcher's exit status | checkpoint |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ckpt = "none" if r["checkpoint_s"] is None else f"{r['checkpoint_s']:.2f} s"
        size = "-" if r["checkpoint_mb"] is None else f"{r['checkpoint_mb']:,.0f} MB"
        lines.append(f"| {r['size']} | {r['launcher']} | {r['target']} | {r['step_s']:.1f} s | {r['phase']} | "
                     f"{ckpt} | {r['exit_s']:.2f} s | {r['returncode']} | {size} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=["tiny", "large"], default="tiny")
    p.add_argument("--launcher", choices=["python", "accelerate", "torchrun"], default="python")
    p.add_argument("--target", choices=["group", "launcher"], default="group")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--delay", type=float, default=None, help="seconds into step 2 (default: random)")
    p.add_argument("--reward-sleep", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--docs", action="store_true")
    args = p.parse_args()
    random.seed(args.seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RLREASON_TEST_REWARD_SLEEP": str(args.reward_sleep)}
    done = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        if args.size == "large":
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from async_rollouts import large_model

            work = large_model(Path(tmp) / "model")
        else:
            work = ["--reward_funcs", f"[{ROOT / 'tests' / '_slow_reward.py'}:accuracy_reward]"]
        for rep in range(args.reps):
            r = one_run(Path(tmp) / f"run{rep}", work, args.launcher, args.target, args.delay, env)
            r.update(size=args.size, launcher=args.launcher, target=args.target,
                     when=datetime.datetime.now().isoformat(timespec="seconds"))
            print(json.dumps(r), flush=True)
            done.append(r)
            RESULTS.write_text(json.dumps(done, indent=1) + "\n")
    print(table([r for r in done if r["size"] == args.size]))
    if args.docs:
        replace_block(DOC, BEGIN, END, table(done))


if __name__ == "__main__":
    main()

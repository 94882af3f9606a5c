"""Synchronous vs overlapped rollouts (``async_rollouts``) in rlreason, on the same work,
alternating runs in one invocation: sync, sync-2t, async, async-process per seed, then the next.

All modes run the default recipe (recipes/configs/tiny_cpu.yaml: the embedded tiny model,
16 prompts x 8 completions per step, 64 tokens, lr 3e-5, DAPO loss) for the same number of
steps, so they train on the same number of samples:

- "sync": the default config, one intra-op thread (``num_threads: 1``): generation and update
  take turns on one core at a time, as a trainer and a generator on a core each do in a
  synchronous run (the issue's "2 cores split between trainer and generator");
- "sync-2t": the same with ``num_threads: 2``, both cores on every matmul: the synchronous
  run's best use of the two cores, a reference the overlap must also be held against;
- "async": ``async_rollouts: true`` (the default ``async_generator: thread``): the transformers
  engine on the trainer's rollout thread, in the trainer's interpreter;
- "async-process": ``async_generator: process``: the engine in a child process on
  shared-memory weights, the rollout thread only waiting for it and scoring.

Both overlapped modes decode the prompts together with a seeded random stream per prompt, and
add the truncated importance weight (cap 2); they sample the same completions.

Per run: samples/s over the steps after ``--warmup`` and before the last (an overlapped run
generates nothing during its last step): completions / the steps' wall time, step end to step
end; the mean generation, training and waiting times per step, the staleness and
importance-weight statistics, and the held-out greedy accuracy after training with its Wilson
95% interval (``--eval-n`` problems). Every run is a fresh recipe process. The per-step
curves (reward, staleness, importance weight, tokens at the cap) go to
docs/async_rollouts_<size>.png.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/async_rollouts.py                  # 3 seeds, docs table
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/async_rollouts.py --seeds 0 --steps 4 --eval-n 20 --no-docs
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/async_rollouts.py --size large --seeds 0 --steps 4 --warmup 1

``--size large``: a randomly initialised model with Qwen2.5-0.5B's architecture and the tiny
tokenizer (benchmarks/vs_trl.py's, 358M parameters), vs_trl's large work (4 prompts x 4
completions, 32 tokens, lr 1e-6) and its hash reward (``_varied_reward.py``); speed only (a
random model's accuracy means nothing), so no held-out eval.

Prints a markdown table and (unless ``--no-docs``) writes it into docs/benchmarks.md between
the ``async-rollouts`` markers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import tempfile
from pathlib import Path

from _common import replace_block, run_recipe  # benchmarks/ is on sys.path when a script runs

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- async-rollouts:begin -->", "<!-- async-rollouts:end -->"
BEGIN_LARGE, END_LARGE = "<!-- async-rollouts-large:begin -->", "<!-- async-rollouts-large:end -->"
MODES = {"sync": [], "sync-2t": ["--num_threads", "2"],
         "async": ["--async_rollouts", "true"],  # the default: the engine on the trainer's rollout thread
         "async-process": ["--async_rollouts", "true", "--async_generator", "process"]}
ASYNC = ("async", "async-process")
CURVES = ("reward/mean", "async/staleness", "is_weight_mean", "is_weight_capped_frac")


def large_model(folder: Path, layers: int = 24) -> list[str]:
    """Save the random 0.5B-shaped model (vs_trl's) with the tiny tokenizer into ``folder``: the
    recipe arguments that train it on vs_trl's large work."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    from vs_trl import QWEN25_05B

    from rlreason.tiny import TinySpec, ensure

    tok = AutoTokenizer.from_pretrained(ensure(TinySpec(), log=lambda *a: None))
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), bos_token_id=None, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, dtype="float32", **{**QWEN25_05B, "num_hidden_layers": layers})
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = tok.eos_token_id, tok.pad_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return ["--model_name_or_path", str(folder), "--reward_funcs",
            f"[{ROOT / 'benchmarks' / '_varied_reward.py'}:varied_reward]", "--num_generations", "4",
            "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2",
            "--max_completion_length", "32", "--learning_rate", "1e-6"]


def one_run(mode: str, seed: int, args, tmp: Path, work: list[str]) -> dict:
    out = tmp / f"{mode}-{seed}"
    # eval sizes of 0 mean "every held-out problem": no eval is one problem
    evals = ["--final_eval_size", str(args.eval_n)] if args.eval_n else ["--final_eval_size", "1", "--eval_size", "1"]
    extra = ["--seed", str(seed), "--max_steps", str(args.steps), "--eval_steps", "0", "--save_steps", "0",
             "--log_completions_steps", "0", *evals, *work, *MODES[mode]]
    summary, rows, wall = run_recipe(out, extra, f"{mode} seed {seed}")
    # not the last step either: an overlapped run generates nothing during it (no next batch), so
    # it is shorter than the others; ``--steps`` >= warmup + 2
    timed = rows[args.warmup:-1]
    n = sum(r["perf/samples_per_s"] * r["time/step_s"] for r in timed)  # completions of the timed steps

    def mean(key: str) -> float:
        """Over the timed steps that logged ``key`` as a number (a step that trains no token logs its
        importance-weight statistics as null; a synchronous run logs none): NaN if none did."""
        values = [r[key] for r in timed if isinstance(r.get(key), int | float)]
        return statistics.mean(values) if values else float("nan")

    return {"mode": mode, "seed": seed, "samples_per_s": n / sum(r["time/step_s"] for r in timed),
            "step_s": mean("time/step_s"), "gen_s": mean("time/generation_s"), "train_s": mean("time/training_s"),
            "wait_s": mean("time/rollout_wait_s"), "thread_s": mean("time/rollout_thread_s"),
            "thread_cpu_s": mean("time/rollout_thread_cpu_s"),
            "staleness": mean("async/staleness") if mode in ASYNC else 0.0,
            "is_mean": mean("is_weight_mean"), "is_capped": mean("is_weight_capped_frac"),
            "acc": summary.get("heldout_after", float("nan")), "ci": summary.get("after_ci95", [0, 0]),
            "n_eval": summary.get("heldout_n", 0), "wall_s": wall,
            "curves": {k: [(r["step"], r[k]) for r in rows if isinstance(r.get(k), int | float)] for k in CURVES}}


def table(runs: list[dict], args) -> str:
    lines = ["| mode | seed | samples/s | step s | generation s | update s | waited s | rollout thread s (CPU s) | "
             "staleness | IS weight mean | tokens at cap | held-out acc (95% CI) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['mode']} | {r['seed']} | {r['samples_per_s']:.3g} | {r['step_s']:.3f} | {r['gen_s']:.3f} | "
                     f"{r['train_s']:.3f} | {r['wait_s']:.3f} | {r['thread_s']:.3f} ({r['thread_cpu_s']:.3f}) | "
                     f"{r['staleness']:.2f} | {r['is_mean']:.4f} | "
                     f"{r['is_capped']:.4f} | " + (f"{r['acc']:.3f} ({r['ci'][0]:.3f}-{r['ci'][1]:.3f}, "
                                                   f"n={r['n_eval']}) |" if args.eval_n else "- |"))
    lines.append("")
    for mode in (m for m in ASYNC if m in args.modes):
        for base in (b for b in ("sync", "sync-2t") if b in args.modes):
            ratios = [speed(runs, mode, seed) / speed(runs, base, seed) for seed in args.seeds]
            lines.append(f"- {mode} / {base} samples/s per seed: {', '.join(f'{x:.2f}x' for x in ratios)} "
                         f"(mean {statistics.mean(ratios):.2f}x)")
    for mode in args.modes if args.eval_n else ():
        accs = [r["acc"] for r in runs if r["mode"] == mode]
        lines.append(f"- {mode}: held-out accuracy after {args.steps} steps ({args.steps * 128} samples): mean "
                     f"{statistics.mean(accs):.3f} over seeds {', '.join(f'{a:.3f}' for a in accs)}")
    return "\n".join(lines)


def speed(runs: list[dict], mode: str, seed: int) -> float:
    return next(r["samples_per_s"] for r in runs if r["mode"] == mode and r["seed"] == seed)


def plot(runs: list[dict], path: Path) -> None:
    """Per-step curves of every run: the mean reward (all modes), and the overlapped runs'
    staleness, mean importance weight and fraction of tokens at the cap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    colors = {"sync": "tab:blue", "sync-2t": "tab:green", "async": "tab:red", "async-process": "tab:orange"}
    titles = {"reward/mean": "mean reward", "async/staleness": "staleness (updates)",
              "is_weight_mean": "mean truncated IS weight", "is_weight_capped_frac": "tokens at the cap"}
    for ax, key in zip(axes, CURVES, strict=True):
        for r in runs:
            if r["curves"][key] and (key == "reward/mean" or r["mode"] in ASYNC):
                x, y = zip(*r["curves"][key], strict=True)
                ax.plot(x, y, color=colors[r["mode"]], alpha=0.7, lw=1,
                        label=r["mode"] if r["seed"] == runs[0]["seed"] else None)
        ax.set_title(titles[key])
        ax.set_xlabel("step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--eval-n", type=int, default=500)
    p.add_argument("--size", choices=["tiny", "large"], default="tiny")
    p.add_argument("--large-layers", type=int, default=24, help="decoder layers of the large model (a smoke test: 2)")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES),
                   help="which modes to run (each pair of ratios needs its modes)")
    args = p.parse_args()
    if args.size == "large":
        args.eval_n = 0
    load_before = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = large_model(Path(tmp) / "model", args.large_layers) if args.size == "large" else []
        for seed in args.seeds:
            for mode in args.modes:  # alternating: sync, sync-2t, async, async-process, then the next seed
                runs.append(one_run(mode, seed, args, Path(tmp), work))
                print(f"{mode} seed {seed}: {runs[-1]['samples_per_s']:.1f} samples/s, acc {runs[-1]['acc']:.3f}",
                      flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    header = (f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, commit {commit.strip()}, "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average before "
              f"{load_before[0]:.2f} / after {os.getloadavg()[0]:.2f}; command: `OMP_NUM_THREADS=1 "
              f".venv/bin/python benchmarks/async_rollouts.py --size {args.size} "
              + (f"--large-layers {args.large_layers} " if args.size == "large" else "") +
              f"--seeds {' '.join(map(str, args.seeds))} "
              f"--steps {args.steps} --warmup {args.warmup} --eval-n {args.eval_n}`\n\n")
    body = header + table(runs, args)
    print(body)
    begin, end = (BEGIN, END) if args.size == "tiny" else (BEGIN_LARGE, END_LARGE)
    if not args.no_docs and replace_block(DOCS, begin, end, body):
        print(f"wrote {DOCS}")
    folder = Path(tempfile.gettempdir()) if args.no_docs else DOCS.parent
    plot(runs, folder / f"async_rollouts_{args.size}.png")


if __name__ == "__main__":
    main()

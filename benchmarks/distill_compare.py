"""GRPO on the student alone vs offline and on-policy distillation, at equal student compute
(docs/distillation.md).

    python benchmarks/distill_compare.py                          # teacher + 3 methods x 3 seeds, table in the doc
    python benchmarks/distill_compare.py --steps 10 --seeds 0 --eval-size 100 --no-doc   # a quick look

1. The teacher: the embedded ``tiny`` model (0.8M parameters) trained with GRPO by
   ``recipes/grpo_math.py`` (tiny_cpu.yaml, ``--teacher-steps`` steps), i.e. ``make demo``'s run.
2. The student: ``tiny-small`` (0.27M parameters, same tokenizer), trained three ways with the
   same number of student training sequences (``--steps`` x 128) and seeds:
   - grpo: ``recipes/grpo_math.py`` (tiny_cpu.yaml's settings) on the student, accuracy reward only;
   - offline: ``recipes/distill.py`` with distill_offline_tiny.yaml: the teacher answers 2000
     problems 8 times, the verified answers are kept (all_correct, at most 4 per problem), the
     student is fine-tuned on them for the same number of steps x 128 sequences;
   - onpolicy: ``recipes/distill.py`` with distill_onpolicy_tiny.yaml: the student samples 128
     completions per step, the teacher's per-token reverse KL is the advantage.

Held-out accuracy is greedy on the same ``--eval-size`` problems for every run (and the teacher).
Wall time is the whole run (teacher sampling included for offline; the teacher's training is
reported once, separately). Runs go two at a time, one thread each. Raw results in
<out>/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import ROOT, heldout_cells, replace_block, run_recipe  # benchmarks/ is on sys.path when a script runs

DOC = ROOT / "docs" / "distillation.md"
PLOT = ROOT / "docs" / "distill_compare.png"
CONFIGS = ROOT / "recipes" / "configs"
BEGIN, END = "<!-- distill-table:begin -->", "<!-- distill-table:end -->"
LABELS = {"grpo": "GRPO on the student alone", "offline": "offline: rejection-sampled SFT",
          "onpolicy": "on-policy distillation (reverse KL)"}


def common(args: argparse.Namespace, seed: int) -> list[str]:
    return ["--seed", str(seed), "--final_eval_size", str(args.eval_size), "--eval_steps", str(args.eval_every),
            "--eval_size", str(args.curve_size), "--save_steps", "0", "--log_completions_steps", "0"]


def train_teacher(args: argparse.Namespace) -> tuple[Path, dict]:
    out = Path(args.out) / "teacher"
    if args.reuse_teacher and (out / "final_model" / "config.json").exists():
        return out / "final_model", json.loads((out / "summary.json").read_text()) | {"wall_s": None}
    s, _, wall = run_recipe(out, ["--config", str(CONFIGS / "tiny_cpu.yaml"), "--max_steps", str(args.teacher_steps),
                                  *common(args, 0), "--eval_steps", "0"], "teacher")
    print(f"teacher: {s['heldout_before']:.3f} -> {s['heldout_after']:.3f} in {wall:.0f}s", flush=True)
    return out / "final_model", s | {"wall_s": wall}


def run_one(method: str, seed: int, teacher: Path, args: argparse.Namespace) -> dict:
    out = Path(args.out) / f"{method}-s{seed}"
    steps = ["--max_steps", str(args.steps)]
    if method == "grpo":
        s, rows, wall = run_recipe(out, ["--config", str(CONFIGS / "tiny_cpu.yaml"), "--model_name_or_path",
                                         "tiny-small", "--learning_rate", str(args.grpo_lr), *steps,
                                         *common(args, seed)], f"grpo seed {seed}")
    else:
        config = "distill_offline_tiny.yaml" if method == "offline" else "distill_onpolicy_tiny.yaml"
        s, rows, wall = run_recipe(out, ["--config", str(CONFIGS / config), "--teacher_model_name_or_path",
                                         str(teacher), *steps, *common(args, seed)], f"{method} seed {seed}",
                                   recipe="distill.py")
    # the held-out curve: the periodic evals (eval_size problems) and the final one, with the
    # wall-clock seconds since the run's first step (teacher sampling, if any, comes before it)
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    t0 = logged[0]["time"] - logged[0].get("time/step_s", 0.0) if logged else 0.0
    curve = [(r["step"], r["time"] - t0, r["eval/accuracy"]) for r in logged if "eval/accuracy" in r and r["step"] > 0]
    s.update(method=method, seed=seed, wall_s=wall, steps_run=len(rows), curve=curve,
             reverse_kl=[r.get("distill/reverse_kl") for r in rows])
    print(f"{method:8s} seed {seed}: {s['heldout_before']:.3f} -> {s['heldout_after']:.3f} in {wall:.0f}s",
          flush=True)
    return s


def table(results: list[dict], teacher: dict, args: argparse.Namespace) -> str:
    tw = f", trained in {teacher['wall_s']:.0f} s" if teacher.get("wall_s") else ""
    lines = [f"Teacher: `tiny` (0.8M parameters) after {args.teacher_steps} GRPO steps of tiny_cpu.yaml: held-out "
             f"{100 * teacher['heldout_before']:.1f}% -> **{100 * teacher['heldout_after']:.1f}%**{tw}. Student: "
             f"`tiny-small` (0.27M parameters, same tokenizer). Every student run trains on {args.steps} x 128 = "
             f"{args.steps * 128} sequences; held-out greedy accuracy on {args.eval_size} problems; seeds "
             f"{', '.join(map(str, args.seeds))}; 1 thread per run, 2 runs at a time on 2 shared cores.",
             f"Produced by `python benchmarks/distill_compare.py` ({time.strftime('%Y-%m-%d')}).", "",
             f"| student trained by | held-out before | after (mean ± sd) | per seed | after {args.eval_every} steps "
             f"({args.curve_size} problems) | wall time per run (s) | of which teacher sampling (s) |",
             "|---|---|---|---|---|---|---|"]
    for m in args.methods:
        rs = [r for r in results if r["method"] == m]
        sample_s = [r.get("distill", {}).get("teacher_sampling_s", 0.0) for r in rs]
        early = [a for r in rs for step, _, a in r["curve"] if step == args.eval_every]
        early_cell = f"{100 * statistics.mean(early):.1f}%" if early else "n/a"
        lines.append(f"| {LABELS[m]} | {heldout_cells(rs)} | {early_cell} | "
                     f"{statistics.mean(r['wall_s'] for r in rs):.0f} | {statistics.mean(sample_s):.0f} |")
    return "\n".join(lines)


def plot(results: list[dict], teacher: dict, args: argparse.Namespace, path: Path) -> None:
    """Held-out accuracy against student steps and against wall time, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for m in args.methods:
        rs = [r for r in results if r["method"] == m]
        n = min(len(r["curve"]) for r in rs)
        steps = [rs[0]["curve"][i][0] for i in range(n)]
        sample_s = statistics.mean(r.get("distill", {}).get("teacher_sampling_s", 0.0) for r in rs)
        secs = [sample_s + statistics.mean(r["curve"][i][1] for r in rs) for i in range(n)]
        acc = [100 * statistics.mean(r["curve"][i][2] for r in rs) for i in range(n)]
        before = 100 * statistics.mean(r["heldout_before"] for r in rs)
        axes[0].plot([0, *steps], [before, *acc], marker="o", label=LABELS[m])
        # the student starts training once the teacher's answers are sampled
        axes[1].plot([sample_s, *secs], [before, *acc], marker="o", label=LABELS[m])
    for ax in axes:
        ax.axhline(100 * teacher["heldout_after"], color="gray", linestyle="--", label="teacher")
        ax.set_ylabel("held-out accuracy (%)")
    axes[0].set_xlabel("student steps (x 128 sequences)")
    axes[1].set_xlabel("wall-clock seconds (offline: teacher sampling first)")
    axes[0].legend()
    fig.suptitle(f"tiny-small student, mean over seeds {', '.join(map(str, args.seeds))} "
                 f"(the last point: {args.eval_size} problems; the others: {args.curve_size})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(LABELS), choices=list(LABELS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=150, help="student training steps (x 128 sequences)")
    ap.add_argument("--teacher-steps", type=int, default=300)
    ap.add_argument("--grpo-lr", type=float, default=3e-5, help="the GRPO baseline's learning rate on the student")
    ap.add_argument("--eval-size", type=int, default=1000, help="held-out problems of the final eval")
    ap.add_argument("--eval-every", type=int, default=25, help="steps between the curve's evals")
    ap.add_argument("--curve-size", type=int, default=200, help="held-out problems of the curve's evals")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "runs" / "distill_compare"))
    ap.add_argument("--reuse-teacher", action="store_true", help="use <out>/teacher if it is there")
    ap.add_argument("--no-doc", action="store_true", help="print the table only")
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    teacher_path, teacher = train_teacher(args)
    jobs = [(m, s) for s in args.seeds for m in args.methods]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_one(*job, teacher_path, args), jobs))
    md = table(results, teacher, args)
    print(md)
    (Path(args.out) / "results.json").write_text(json.dumps({"teacher": teacher, "runs": results}, indent=2))
    if not args.no_doc and replace_block(DOC, BEGIN, END, md):
        plot(results, teacher, args, PLOT)


if __name__ == "__main__":
    main()

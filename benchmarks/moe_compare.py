"""GRPO vs GSPO vs GRPO with routing replay on the embedded tiny MoE (docs/moe.md).

    python benchmarks/moe_compare.py                       # the table and plot in docs/moe.md
    python benchmarks/moe_compare.py --steps 5 --seeds 0 --methods grpo replay --no-doc   # a quick look

Each run is `recipes/grpo_math.py --config recipes/configs/tiny_moe_cpu.yaml` with the same
budget (steps, batch, learning rate, updates per rollout) and seeds; only the method changes:

- grpo:   token-level importance ratio (loss_type grpo), clip 0.2, no routing replay;
- gspo:   sequence-level ratio (loss_type gspo), the GSPO paper's clip range 3e-4 / 4e-4;
- replay: grpo with routing_replay (the training passes reuse the old-policy pass's experts).

Runs go two at a time, one thread each. Prints the table, writes it between the markers in
docs/moe.md and the curves to docs/moe_compare.png; raw results in <out>/results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import ROOT, heldout_cells, replace_block, run_recipe  # benchmarks/ is on sys.path when a script runs

DOC = ROOT / "docs" / "moe.md"
PLOT = ROOT / "docs" / "moe_compare.png"
CONFIG = ROOT / "recipes" / "configs" / "tiny_moe_cpu.yaml"
BEGIN, END = "<!-- moe-table:begin -->", "<!-- moe-table:end -->"

METHOD_ARGS = {
    "grpo": ["--loss_type", "grpo", "--epsilon", "0.2", "--routing_replay", "false"],
    "gspo": ["--loss_type", "gspo", "--epsilon", "3e-4", "--epsilon_high", "4e-4", "--routing_replay", "false"],
    "replay": ["--loss_type", "grpo", "--epsilon", "0.2", "--routing_replay", "true"],
}
LABELS = {"grpo": "GRPO (token ratio)", "gspo": "GSPO (sequence ratio)", "replay": "GRPO + routing replay"}
# per-step metrics averaged over a run's steps in the table ("last" = the last step's value)
CURVES = ("clip_frac", "ratio/log_std", "ratio/max_abs_log", "moe/routing_flip_frac", "moe/load_cv",
          "moe/router_entropy", "moe/aux_loss", "time/step_s")


def run_one(method: str, seed: int, args: argparse.Namespace) -> dict:
    s, train, wall = run_recipe(Path(args.out) / f"{method}-s{seed}", [
        "--config", str(CONFIG), "--seed", str(seed), "--max_steps", str(args.steps),
        "--final_eval_size", str(args.eval_size), "--eval_steps", "0", "--save_steps", "0",
        "--log_completions_steps", "0", *METHOD_ARGS[method]], f"{method} seed {seed}")
    s.update(method=method, seed=seed, wall_s=wall, curves={k: [r.get(k) for r in train] for k in CURVES})
    print(f"{method:7s} seed {seed}: {s['heldout_before']:.3f} -> {s['heldout_after']:.3f} "
          f"({statistics.mean(s['curves']['time/step_s']):.1f} s/step, flips "
          f"{statistics.mean(s['curves']['moe/routing_flip_frac']):.4f})", flush=True)
    return s


def _mean(rs: list[dict], key: str, last: bool = False) -> float:
    vals = [r["curves"][key][-1] if last else statistics.mean(r["curves"][key]) for r in rs]
    return statistics.mean(vals)


def table(results: list[dict], args: argparse.Namespace) -> str:
    lines = [f"Budget per run: {args.steps} steps of tiny_moe_cpu.yaml (its batch, learning rate and 2 updates "
             f"per rollout), held-out greedy accuracy on {args.eval_size} problems; seeds "
             f"{', '.join(map(str, args.seeds))}; 1 thread per run, 2 runs at a time on 2 shared cores.",
             f"Produced by `python benchmarks/moe_compare.py` ({time.strftime('%Y-%m-%d')}). Per-step "
             "metrics are means over the run's steps; load CV and router entropy are at the last step.", "",
             "| method | held-out before | after (mean ± sd) | per seed | clip frac | log-ratio std | "
             "max abs log-ratio | routing flips | load CV (last) | router entropy (last) | aux loss | s/step |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in args.methods:
        rs = [r for r in results if r["method"] == m]
        lines.append(
            f"| {LABELS[m]} | {heldout_cells(rs)} | {_mean(rs, 'clip_frac'):.4f} | "
            f"{_mean(rs, 'ratio/log_std'):.4f} | {_mean(rs, 'ratio/max_abs_log'):.3f} | "
            f"{100 * _mean(rs, 'moe/routing_flip_frac'):.2f}% | {_mean(rs, 'moe/load_cv', last=True):.3f} | "
            f"{_mean(rs, 'moe/router_entropy', last=True):.3f} | {_mean(rs, 'moe/aux_loss'):.4f} | "
            f"{_mean(rs, 'time/step_s'):.1f} |")
    return "\n".join(lines)


def plot(results: list[dict], args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("moe/routing_flip_frac", "tokens whose top-k experts differ from the old pass"),
              ("ratio/log_std", "std of the token log-ratio log(pi/pi_old)"),
              ("clip_frac", "clipped fraction"), ("moe/load_cv", "load-balance CV (mean over layers)"),
              ("moe/router_entropy", "router entropy (nats)"), ("moe/aux_loss", "load-balancing loss"))
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    for ax, (key, title) in zip(axes.flat, panels, strict=True):
        for m in args.methods:
            rs = [r for r in results if r["method"] == m]
            n = min(len(r["curves"][key]) for r in rs)
            mean = [statistics.mean(r["curves"][key][i] for r in rs) for i in range(n)]
            ax.plot(range(1, n + 1), mean, label=LABELS[m])
        ax.set_title(title)
        ax.set_xlabel("step")
    axes.flat[0].legend()
    fig.suptitle(f"Tiny MoE, mean over seeds {', '.join(map(str, args.seeds))}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=list(METHOD_ARGS), choices=list(METHOD_ARGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--eval-size", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "runs" / "moe_compare"))
    ap.add_argument("--no-doc", action="store_true", help="print the table only")
    args = ap.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    jobs = [(m, s) for s in args.seeds for m in args.methods]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_one(*job, args), jobs))
    md = table(results, args)
    print(md)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))
    if not args.no_doc and replace_block(DOC, BEGIN, END, md):
        plot(results, args, PLOT)


if __name__ == "__main__":
    main()

"""Learning table for the loss_type presets on the embedded task (docs/algorithms.md).

    python benchmarks/algorithms_table.py                  # full table: 5 presets x 3 seeds
    python benchmarks/algorithms_table.py --steps 20 --seeds 0 --presets grpo gspo   # a quick look

Each run is `recipes/grpo_math.py` on the default tiny model and task, with the same budget
(steps, batch, learning rate, two updates per rollout so that ratios and clipping matter) and
the same seeds; only the preset and its paper's clip range change. Runs go two at a time,
one thread each. The table is printed and written between the markers in docs/algorithms.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import ROOT, heldout_cells, replace_block, run_recipe  # benchmarks/ is on sys.path when a script runs

DOC = ROOT / "docs" / "algorithms.md"
BEGIN, END = "<!-- learning-table:begin -->", "<!-- learning-table:end -->"

# Each loss type's paper settings (the demo config pins dapo's 0.2 / 0.28 and group scaling: each row
# states its own); everything else is shared.
PRESET_ARGS = {
    "grpo": ["--epsilon", "0.2", "--epsilon_high", "0.2"],
    "dr_grpo": ["--epsilon", "0.2", "--epsilon_high", "0.2", "--scale_rewards", "none"],
    "dapo": ["--epsilon", "0.2", "--epsilon_high", "0.28"],
    "bnpo": ["--epsilon", "0.2", "--epsilon_high", "0.2"],
    "gspo": ["--epsilon", "3e-4", "--epsilon_high", "4e-4"],
    "cispo": ["--epsilon_high", "5.0"],  # ScaleRL's epsilon_max, as TRL recommends
    "sapo": ["--epsilon_high", "0.2"],  # (unused by the gate)
    "luspo": ["--epsilon", "3e-4", "--epsilon_high", "4e-4", "--importance_sampling_level", "sequence"],
    "vespo": ["--epsilon_high", "0.2"],  # (unused by the Gamma weight)
}


def run_one(preset: str, seed: int, args: argparse.Namespace) -> dict:
    s, train, wall = run_recipe(Path(args.out) / f"{preset}-s{seed}", [
        "--loss_type", preset, "--seed", str(seed), "--max_steps", str(args.steps), "--num_iterations", "2",
        "--learning_rate", str(args.lr), "--final_eval_size", str(args.eval_size), "--eval_steps", "0",
        "--save_steps", "0", "--log_completions_steps", "0", *PRESET_ARGS[preset]], f"{preset} seed {seed}")
    s.update(preset=preset, seed=seed, wall_s=wall,
             clip_frac=statistics.mean(r["clip_frac"] for r in train),
             step_s=statistics.mean(r["time/step_s"] for r in train))
    print(f"{preset:8s} seed {seed}: {s['heldout_before']:.3f} -> {s['heldout_after']:.3f} "
          f"({s['step_s']:.2f} s/step, clip {s['clip_frac']:.4f})", flush=True)
    return s


def table(results: list[dict], args: argparse.Namespace) -> str:
    lines = [f"Budget per run: {args.steps} steps x 128 completions (16 prompts x 8), 2 updates per rollout, "
             f"lr {args.lr}, held-out greedy accuracy on {args.eval_size} problems; seeds "
             f"{', '.join(map(str, args.seeds))}; 1 thread per run, 2 runs at a time on 2 cores.",
             f"Produced by `python benchmarks/algorithms_table.py` ({time.strftime('%Y-%m-%d')}).", "",
             "| loss_type | held-out before | held-out after (mean ± sd) | per seed | clip fraction | s/step |",
             "|---|---|---|---|---|---|"]
    for preset in args.presets:
        rs = [r for r in results if r["preset"] == preset]
        lines.append(f"| {preset} | {heldout_cells(rs)} | "
                     f"{statistics.mean(r['clip_frac'] for r in rs):.4f} | "
                     f"{statistics.mean(r['step_s'] for r in rs):.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=list(PRESET_ARGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--eval-size", type=int, default=500)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "runs" / "algorithms"))
    ap.add_argument("--no-doc", action="store_true", help="print the table only")
    args = ap.parse_args()
    jobs = [(p, s) for s in args.seeds for p in args.presets]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_one(*job, args), jobs))
    md = table(results, args)
    print(md)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))
    if not args.no_doc:
        replace_block(DOC, BEGIN, END, md)


if __name__ == "__main__":
    main()

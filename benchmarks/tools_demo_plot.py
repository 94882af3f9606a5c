"""The tool demo's curves for the README: tool-call rate and accuracy over GRPO steps, from a run's
metrics.jsonl (``make demo-tools`` writes runs/tiny_tools_cpu/).

    .venv/bin/python benchmarks/tools_demo_plot.py runs/tiny_tools_cpu docs/tools_demo.png

Left: the sampled completions of each training step (temperature 1): tool calls per completion
(``tools/call_frequency``) and the fraction right (``accuracy``). Right: the held-out problems,
greedy, at each evaluation: accuracy (``eval/accuracy``, with its 95% interval) and calls per
completion (``eval/tools/call_frequency``). The report's tools.png and plot.png show the same
metrics among the others.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import plot_heldout, save_demo_figure, series  # benchmarks/ is on sys.path when a script runs

from rlreason.run.tracking import read_metrics


def plot(run_dir: Path, out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir / "metrics.jsonl")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for key, label in (("tools/call_frequency", "tool calls per completion"), ("accuracy", "accuracy")):
        ax1.plot(*series(rows, key), label=label)
    ax1.set_title("Training samples (temperature 1)")
    plot_heldout(ax2, rows, "accuracy")
    ax2.plot(*series(rows, "eval/tools/call_frequency"), marker="s", label="tool calls per completion")
    ax2.set_title("Held-out problems (greedy)")
    return save_demo_figure(fig, (ax1, ax2), out_png)


def main() -> None:
    ap = argparse.ArgumentParser(description="the tool demo's curves (tool-call rate, accuracy) from metrics.jsonl")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out_png", type=Path)
    args = ap.parse_args()
    print(plot(args.run_dir, args.out_png))


if __name__ == "__main__":
    main()

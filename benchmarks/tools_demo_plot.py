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

from rlreason.run.tracking import read_metrics


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` where logged; the last row of a step wins (an evaluation after it)."""
    at: dict[int, float] = {}
    for r in rows:
        if isinstance(r.get(key), int | float):
            at[int(r["step"])] = float(r[key])
    steps = sorted(at)
    return steps, [at[s] for s in steps]


def plot(run_dir: Path, out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir / "metrics.jsonl")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for key, label in (("tools/call_frequency", "tool calls per completion"), ("accuracy", "accuracy")):
        ax1.plot(*series(rows, key), label=label)
    ax1.set_title("Training samples (temperature 1)")
    steps, acc = series(rows, "eval/accuracy")
    _, lo = series(rows, "eval/accuracy_ci_low")
    _, hi = series(rows, "eval/accuracy_ci_high")
    ax2.plot(steps, acc, marker="o", label="accuracy")
    if len(lo) == len(hi) == len(steps):
        ax2.fill_between(steps, lo, hi, alpha=0.2, label="95% interval")
    ax2.plot(*series(rows, "eval/tools/call_frequency"), marker="s", label="tool calls per completion")
    ax2.set_title("Held-out problems (greedy)")
    for ax in (ax1, ax2):
        ax.set_xlabel("GRPO step")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def main() -> None:
    ap = argparse.ArgumentParser(description="the tool demo's curves (tool-call rate, accuracy) from metrics.jsonl")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out_png", type=Path)
    args = ap.parse_args()
    print(plot(args.run_dir, args.out_png))


if __name__ == "__main__":
    main()

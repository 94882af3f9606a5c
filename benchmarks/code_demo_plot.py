"""The code demo's curves for the README: pass rate over GRPO steps, from a run's metrics.jsonl
(``make demo-code`` writes runs/tiny_code_cpu/).

    .venv/bin/python benchmarks/code_demo_plot.py runs/tiny_code_cpu docs/code_demo.png

Left: the sampled completions of each training step (temperature 1): the fraction whose program passed
every hidden test in the sandbox (``rewards/code_tests/mean``: the binary reward). Right: the held-out
problems, greedy, at each evaluation: pass@1 (``eval/accuracy``, scored by ``code_tests``) with its 95%
interval. The report's plot.png shows the same metrics among the others.
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
    key = next((k for r in rows for k in r if k.startswith("rewards/code_tests") and k.endswith("mean")), "accuracy")
    ax1.plot(*series(rows, key), label="programs passing every hidden test")
    ax1.set_title("Training samples (temperature 1)")
    plot_heldout(ax2, rows, "pass@1")
    ax2.set_title("Held-out problems (greedy)")
    return save_demo_figure(fig, (ax1, ax2), out_png)


def main() -> None:
    ap = argparse.ArgumentParser(description="the code demo's curves (pass rates) from metrics.jsonl")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out_png", type=Path)
    args = ap.parse_args()
    print(plot(args.run_dir, args.out_png))


if __name__ == "__main__":
    main()

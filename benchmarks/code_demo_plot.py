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

from tools_demo_plot import series  # benchmarks/ is the script's folder, first on sys.path

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
    steps, acc = series(rows, "eval/accuracy")
    _, lo = series(rows, "eval/accuracy_ci_low")
    _, hi = series(rows, "eval/accuracy_ci_high")
    ax2.plot(steps, acc, marker="o", label="pass@1")
    if len(lo) == len(hi) == len(steps):
        ax2.fill_between(steps, lo, hi, alpha=0.2, label="95% interval")
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
    ap = argparse.ArgumentParser(description="the code demo's curves (pass rates) from metrics.jsonl")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("out_png", type=Path)
    args = ap.parse_args()
    print(plot(args.run_dir, args.out_png))


if __name__ == "__main__":
    main()

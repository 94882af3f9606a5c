"""What the comparison benchmarks share: running the recipe in a fresh process, and writing a
generated block between two markers of a docs page."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_recipe(out: Path, args: list[str], label: str, recipe: str = "grpo_math.py") -> tuple[dict, list[dict], float]:
    """``recipes/<recipe> --output_dir out *args`` in a fresh process, one thread.

    -> (summary.json, the per-step rows of metrics.jsonl, wall seconds). A failed run raises
    with the tail of its stderr, named by ``label``.
    """
    # a rerun of a benchmark replaces its previous runs (the recipe refuses a folder with checkpoints otherwise)
    cmd = [sys.executable, str(ROOT / "recipes" / recipe), "--output_dir", str(out), "--overwrite_output_dir",
           "true", "--progress", "false", "--num_threads", "1", *args]
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if res.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{res.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, [r for r in rows if "clip_frac" in r], time.time() - t0


def replace_block(doc: Path, begin: str, end: str, body: str) -> bool:
    """Put ``body`` between the ``begin`` and ``end`` marker lines of ``doc`` (kept); False if
    the page or a marker is missing (nothing is written then)."""
    if not doc.exists():
        return False
    text = doc.read_text()
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    doc.write_text(head + begin + "\n" + body + "\n" + end + rest.split(end, 1)[1])
    return True


def heldout_cells(runs: list[dict]) -> str:
    """The held-out columns of a comparison table for one method's runs (one per seed):
    "before | after mean ± sd | per seed", accuracies in percent."""
    after = [r["heldout_after"] for r in runs]
    sd = statistics.stdev(after) if len(after) > 1 else 0.0
    return (f"{100 * runs[0]['heldout_before']:.1f}% | {100 * statistics.mean(after):.1f}% ± {100 * sd:.1f} | "
            f"{', '.join(f'{100 * a:.1f}' for a in after)}")


# ---------------------------------------------------------------------------------------------
# The demos' README curves (tools_demo_plot.py, code_demo_plot.py)


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` where logged; the last row of a step wins (an evaluation after it)."""
    at: dict[int, float] = {}
    for r in rows:
        if isinstance(r.get(key), int | float):
            at[int(r["step"])] = float(r[key])
    steps = sorted(at)
    return steps, [at[s] for s in steps]


def plot_heldout(ax, rows: list[dict], label: str) -> None:
    """The held-out greedy ``eval/accuracy`` over steps on ``ax``, with its 95% interval where logged."""
    steps, acc = series(rows, "eval/accuracy")
    _, lo = series(rows, "eval/accuracy_ci_low")
    _, hi = series(rows, "eval/accuracy_ci_high")
    ax.plot(steps, acc, marker="o", label=label)
    if len(lo) == len(hi) == len(steps):
        ax.fill_between(steps, lo, hi, alpha=0.2, label="95% interval")


def save_demo_figure(fig, axes, out_png: Path) -> Path:
    """Label the GRPO-step axes (rates in [0, 1]), write ``out_png`` and close ``fig``."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.set_xlabel("GRPO step")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png

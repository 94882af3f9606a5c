"""What a run shows and leaves behind: a progress bar, JSONL metrics, sampled completions,
accelerate trackers, and a plot of reward and held-out accuracy."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf; null keeps the file parseable everywhere
    return v


class RunLogger:
    """Writes ``metrics.jsonl`` and ``completions.jsonl`` under the output folder and drives
    a rich progress bar (step, reward, accuracy, samples/s, ETA). Only the main process
    should create one with ``enabled=True``."""

    def __init__(self, output_dir: str | Path, total_steps: int, enabled: bool = True, progress: bool = True,
                 accelerator=None) -> None:
        self.dir = Path(output_dir)
        self.enabled = enabled
        self.accelerator = accelerator
        self.console = Console(stderr=True)
        self._progress = None
        self._last_eval: float | None = None
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._metrics = open(self.dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115 (closed in close())
            self._completions = open(self.dir / "completions.jsonl", "a", buffering=1)  # noqa: SIM115
            if progress:
                self._progress = Progress(
                    TextColumn("[bold]GRPO"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"),
                    TimeRemainingColumn(), console=self.console, refresh_per_second=2,
                )
                self._task = self._progress.add_task("train", total=total_steps, stats="")
                self._progress.start()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": time.time(), **{k: _jsonable(v) for k, v in metrics.items()}}
        self._metrics.write(json.dumps(row) + "\n")
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log({k: v for k, v in metrics.items() if isinstance(v, int | float)}, step=step)

    def advance(self, step: int, metrics: dict[str, Any]) -> None:
        if self._progress is None:
            return
        parts = []
        if "reward/mean" in metrics:
            parts.append(f"reward {metrics['reward/mean']:.3f}")
        if "accuracy" in metrics:
            parts.append(f"acc {metrics['accuracy']:.3f}")
        self._last_eval = metrics.get("eval/accuracy", self._last_eval)
        if self._last_eval is not None:  # the latest held-out score stays on the bar between evals
            parts.append(f"held-out {self._last_eval:.3f}")
        if "perf/samples_per_s" in metrics:
            parts.append(f"{metrics['perf/samples_per_s']:.1f} samples/s")
        self._progress.update(self._task, completed=step, stats=" | ".join(parts))

    def completions(self, step: int, rows: list[dict[str, Any]]) -> None:
        if self.enabled:
            for r in rows:
                self._completions.write(json.dumps({"step": step, **r}) + "\n")

    def print(self, *args: Any) -> None:
        if self.enabled:
            self.console.print(*args)

    def close(self) -> None:
        if self.enabled:
            if self._progress is not None:
                self._progress.stop()
            self._metrics.close()
            self._completions.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_run(metrics_path: str | Path, out_png: str | Path) -> Path:
    """Reward (per step, with a moving average) and held-out accuracy over steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # headless: runs on clusters and in CI
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [r for r in rows if r.get("reward/mean") is not None]
    evals = [r for r in rows if r.get("eval/accuracy") is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        steps = [r["step"] for r in train]
        rew = [r["reward/mean"] for r in train]
        ax1.plot(steps, rew, alpha=0.3, label="reward (step)")
        w = max(1, len(rew) // 20)
        smooth = [sum(rew[max(0, i - w + 1):i + 1]) / len(rew[max(0, i - w + 1):i + 1]) for i in range(len(rew))]
        ax1.plot(steps, smooth, label=f"reward ({w}-step mean)")
    ax1.set_xlabel("step")
    ax1.set_ylabel("mean reward")
    ax1.set_title("Training reward")
    ax1.legend()
    if evals:
        steps = [r["step"] for r in evals]
        acc = [r["eval/accuracy"] for r in evals]
        lo = [r.get("eval/accuracy_ci_low", a) for r, a in zip(evals, acc, strict=True)]
        hi = [r.get("eval/accuracy_ci_high", a) for r, a in zip(evals, acc, strict=True)]
        ax2.plot(steps, acc, marker="o", label="held-out greedy accuracy")
        ax2.fill_between(steps, lo, hi, alpha=0.2, label="95% CI")
        ax2.legend()
    ax2.set_xlabel("step")
    ax2.set_ylabel("accuracy")
    ax2.set_title("Held-out accuracy")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png

"""What a run shows and leaves behind: a progress bar, JSONL metrics, sampled completions,
accelerate trackers, a plot of the curves and a static HTML report."""

from __future__ import annotations

import html
import json
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rlreason.eval.metrics import diff_interval


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


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
    return [p[0] for p in pts], [p[1] for p in pts]


def _smooth(vals: list[float]) -> tuple[list[float], int]:
    w = max(1, len(vals) // 20)
    return [sum(vals[max(0, i - w + 1):i + 1]) / len(vals[max(0, i - w + 1):i + 1]) for i in range(len(vals))], w


def plot_run(metrics_path: str | Path, out_png: str | Path) -> Path:
    """Training reward, held-out accuracy (with its 95% CI), completion length and KL to the
    reference (or entropy, without a KL term) over steps, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # headless: runs on clusters and in CI
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [r for r in rows if r.get("reward/mean") is not None]
    evals = [r for r in rows if r.get("eval/accuracy") is not None]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax1, ax2, ax3, ax4 = axes.flat
    for ax, key, label in ((ax1, "reward/mean", "reward"), (ax3, "completion/mean_length", "mean length")):
        steps, vals = _series(train, key)
        if vals:
            sm, w = _smooth(vals)
            ax.plot(steps, vals, alpha=0.3, label=f"{label} (step)")
            ax.plot(steps, sm, label=f"{label} ({w}-step mean)")
            ax.legend()
        ax.set_xlabel("step")
    ax1.set_ylabel("mean reward")
    ax1.set_title("Training reward")
    ax3.set_ylabel("tokens")
    ax3.set_title("Completion length")
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
    key = "kl" if any(r.get("kl") is not None for r in train) else "entropy"
    steps, vals = _series(train, key)
    if vals:
        ax4.plot(steps, vals, label=key)
        ax4.legend()
    ax4.set_xlabel("step")
    ax4.set_title("KL to the reference" if key == "kl" else "Policy entropy (no KL term)")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_router(metrics_path: str | Path, out_png: str | Path) -> Path | None:
    """Router health of an MoE policy over steps (the ``moe/`` metrics of rlreason/moe.py):
    load-balance CV, router entropy, routing flips and the load-balancing loss, and the last
    logged step's expert load per layer. None if the run logged no router metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in read_metrics(metrics_path) if r.get("moe/load_cv") is not None]
    if not train:
        return None
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    ax1, ax2, ax3, ax4 = axes.flat
    panels = ((ax1, (("moe/load_cv", "mean over layers"), ("moe/load_cv_max", "worst layer")),
               "Load-balance CV (0 = balanced)"),
              (ax2, (("moe/router_entropy", "router entropy (nats)"),), "Router entropy"),
              (ax3, (("moe/routing_flip_frac", "tokens whose top-k differs from the old pass"),
                     ("ratio/log_std", "std of token log-ratio")), "Routing flips and ratio spread"))
    for ax, keys, title in panels:
        for key, label in keys:
            steps, vals = _series(train, key)
            if vals:
                ax.plot(steps, vals, label=label)
        if ax.lines:
            ax.legend()
        ax.set_title(title)
        ax.set_xlabel("step")
    last = train[-1]
    n_layers = len({k.split("/")[1] for k in last if k.startswith("moe/layer") and "/load/" in k})
    if n_layers:
        n_exp = len([k for k in last if k.startswith("moe/layer0/load/")])
        grid = [[last[f"moe/layer{i}/load/{e}"] for e in range(n_exp)] for i in range(n_layers)]
        im = ax4.imshow(grid, aspect="auto", cmap="viridis", vmin=0)
        fig.colorbar(im, ax=ax4, label="share of routed assignments")
        ax4.set_xticks(range(n_exp))
        ax4.set_yticks(range(n_layers))
        ax4.set_xlabel("expert")
        ax4.set_ylabel("layer")
    ax4.set_title(f"Expert load at step {last['step']}")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_tools(metrics_path: str | Path, out_png: str | Path) -> Path | None:
    """Tool use over steps (the ``tools/`` metrics of a run with tools): on the left the
    fractions (TRL's ``tools/call_frequency``: tool calls per completion, and
    ``tools/failure_frequency``: failed calls per call), training and held-out (``eval/tools/...``)
    alike; on the right every other ``tools/`` count (turns, masked tokens, calls per tool).
    None if the run logged no tool metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    keys = sorted({k for r in rows for k, v in r.items()
                   if k.startswith(("tools/", "eval/tools/")) and isinstance(v, int | float)})
    if not keys:
        return None
    rates = [k for k in keys if k.endswith("_frequency")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, group in ((ax1, rates), (ax2, [k for k in keys if k not in rates])):
        for key in group:
            steps, vals = _series(rows, key)
            ax.plot(steps, vals, marker="o" if key.startswith("eval/") else None, label=key)
        if ax.lines:
            ax.legend(fontsize=8)
        ax.set_xlabel("step")
    ax1.set_title("Tool calls per completion and failures per call")
    ax2.set_title("Turns, masked (tool-output) tokens, calls per tool")
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def _call_text(call: dict[str, Any]) -> str:
    """A tool call as the model made it: ``name({"a": 1})`` (TRL's shape:
    ``{"type": "function", "function": {"name": ..., "arguments": dict | str}}``)."""
    fn = call.get("function", call)
    args = fn.get("arguments")
    return f"{fn.get('name')}({args if isinstance(args, str) else json.dumps(args)})"


def turns_html(messages: list[dict[str, Any]]) -> str:
    """A completion's exchange turn by turn, as HTML: each assistant turn's text and tool calls
    (generated by the model: trained), each tool's result (inserted by the rollout, loss mask 0:
    not trained, marked so). ``messages``: completions.jsonl's ``messages`` (TRL's conversational
    completion, ``Sample.messages``)."""
    esc = html.escape
    parts = []
    for m in messages:
        if m.get("role") == "tool":
            parts.append(f"<div class='turn tool'><span class='who'>tool result ({esc(str(m.get('name')))}), "
                         f"not trained</span>{esc(str(m.get('content', '')))}</div>")
            continue
        calls = "".join(f"<div class='call'>tool call: {esc(_call_text(c))}</div>" for c in m.get("tool_calls") or [])
        parts.append(f"<div class='turn assistant'><span class='who'>{esc(str(m.get('role')))}</span>"
                     f"{esc(str(m.get('content') or ''))}{calls}</div>")
    return "".join(parts)


def _tool_stats_text(stats: dict[str, Any] | None) -> str:
    if not stats:
        return ""
    per_tool = ", ".join(f"{k} {v}" for k, v in (stats.get("per_tool") or {}).items())
    return (f"calls {stats.get('calls', 0)}, failures {stats.get('failures', 0)}, turns {stats.get('turns', 0)}, "
            f"masked tokens {stats.get('masked_tokens', 0)}" + (f" ({per_tool})" if per_tool else ""))


def _completions_table(rows: list[dict[str, Any]]) -> str:
    """One logged step's completions: a multi-turn completion (a row with ``messages``) shown turn
    by turn with its tool stats, a single-turn one as its text."""
    esc = html.escape
    tools = any(r.get("messages") for r in rows)
    header = ["prompt", "completion", "reward", "advantage", "finish"] + (["tools"] if tools else [])
    body = []
    for r in rows:
        comp = turns_html(r["messages"]) if r.get("messages") else esc(_fmt(r.get("completion")))
        cells = [esc(_fmt(r.get("prompt"))), comp, *(esc(_fmt(r.get(k))) for k in ("reward", "advantage",
                                                                                   "finish_reason"))]
        if tools:
            cells.append(esc(_tool_stats_text(r.get("tool_stats"))))
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in header)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _table(rows: list[list[Any]], header: list[str], fmt=None) -> str:
    """An HTML table; ``fmt(row key, value)`` renders each cell (default: ``_fmt(value)``)."""
    esc = html.escape
    fmt = fmt or (lambda key, v: _fmt(v))
    head = "".join(f"<th>{esc(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(r[0], c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: Any) -> str:
    """A value as a reader wants it: floats to 4 significant digits, lists as ``[a, b]``."""
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return str(v)


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, int | float) and not isinstance(v, bool) else _fmt(v)


def _duration(s: float) -> str:
    return f"{s:.3g} s" if s < 120 else f"{s / 60:.1f} min"


# summary / metric keys whose values are fractions shown as percents
_FRACTION_WORDS = ("heldout_before", "heldout_after", "accuracy", "pass@", "maj@", "rate", "frac")


def _summary_value(key: str, v: Any) -> str:
    """A summary.json value with its unit: accuracies in percent (one decimal), the gain in
    percentage points, CIs as ``[a, b]``, times in s or min."""
    if isinstance(v, dict):
        return "; ".join(f"{k}: {_summary_value(k, x)}" for k, x in v.items())
    if isinstance(v, bool) or not isinstance(v, int | float | list):
        return _fmt(v)
    if key == "gain":
        return f"{100 * v:+.1f} points"
    if key == "gain_ci95":
        return "[" + ", ".join(f"{100 * x:+.1f}" for x in v) + "] points"
    if key.endswith("_time_s"):
        return _duration(v)
    if key.endswith("per_s"):
        return f"{v:,.0f}" if v >= 1000 else f"{v:.3g}"
    if key.endswith(("_ci95", "_ci")) or any(w in key for w in _FRACTION_WORDS):
        return "[" + ", ".join(_pct(x) for x in v) + "]" if isinstance(v, list) else _pct(v)
    return _fmt(v)


def _settings(config: dict[str, Any]) -> str:
    """The run's key settings, one line for the top of the report."""
    batch = config.get("per_device_train_batch_size")
    accum = config.get("gradient_accumulation_steps", 1)
    items = [("model", config.get("model_name_or_path")), ("loss_type", config.get("loss_type")),
             ("steps", config.get("max_steps")), ("lr", config.get("learning_rate")),
             ("num_generations", config.get("num_generations")),
             ("batch", f"{batch} per device x {accum} accumulation steps" if accum and accum > 1 else batch)]
    return " &middot; ".join(f"{html.escape(k)} <b>{html.escape(_fmt(v))}</b>" for k, v in items if v is not None)


def write_report(output_dir: str | Path, config: dict[str, Any], summary: dict[str, Any],
                 max_steps_shown: int = 30, per_step: int = 8) -> Path:
    """``report.html`` (self-contained apart from ``plot.png`` beside it, and ``router.png`` /
    ``tools.png`` for runs with an MoE policy / with tools): the summary, the curves, sampled
    completions with their rewards per logged step (a tool exchange turn by turn), and the config."""
    out = Path(output_dir)
    metrics = out / "metrics.jsonl"
    if metrics.exists():
        plot_run(metrics, out / "plot.png")
    comps: dict[int, list[dict[str, Any]]] = {}
    if (out / "completions.jsonl").exists():
        for r in read_metrics(out / "completions.jsonl"):
            comps.setdefault(r["step"], []).append(r)
    sections = [f"<h1>rlreason run: {html.escape(str(out))}</h1>",
                f"<p class='settings'>{_settings(config)}</p>",
                "<p><b>stopped early (checkpoint saved; resume with resume_from_checkpoint: auto)</b></p>"
                if summary.get("interrupted") else "",
                "<h2>Summary</h2>", _table([[k, v] for k, v in summary.items()], ["", "value"], _summary_value),
                '<h2>Curves</h2><img src="plot.png" alt="training curves" style="max-width:100%">']
    if metrics.exists() and plot_router(metrics, out / "router.png") is not None:
        last = [r for r in read_metrics(metrics) if r.get("moe/load_cv") is not None][-1]
        keys = [k for k in last if k.startswith(("moe/", "ratio/")) and "/load/" not in k]
        sections += ["<h2>Router health (mixture of experts)</h2>",
                     f"<p>Last logged step ({last['step']}); see docs/moe.md for the definitions.</p>",
                     _table([[k, last[k]] for k in keys], ["metric", "value"]),
                     '<img src="router.png" alt="router health" style="max-width:100%">']
    if metrics.exists() and plot_tools(metrics, out / "tools.png") is not None:
        sections += ["<h2>Tool use</h2>",
                     "<p>Tool calls per completion, failed calls per call, turns and tool-output tokens "
                     "(masked from the loss) over steps; see docs/tools.md.</p>",
                     '<img src="tools.png" alt="tool use" style="max-width:100%">']
    sections.append("<h2>Sampled completions</h2>")
    steps = sorted(comps)
    if len(steps) > max_steps_shown:  # first, last and evenly spaced in between
        idx = {round(i * (len(steps) - 1) / (max_steps_shown - 1)) for i in range(max_steps_shown)}
        steps = [steps[i] for i in sorted(idx)]
    for st in steps:
        rows = comps[st][:per_step]
        sections.append(f"<h3>step {st}</h3>")
        sections.append(_completions_table(rows))
    sections += ["<h2>Config</h2>", _table([[k, v] for k, v in config.items()], ["key", "value"])]
    style = ("<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top;font-size:13px}"
             "td{white-space:pre-wrap;max-width:60em}.turn{border-left:3px solid #4a7;padding:2px 6px;margin:2px 0}"
             ".turn.tool{border-color:#999;background:#f3f3f3;color:#555}.who{display:block;font-weight:bold;"
             "font-size:11px}.call{font-family:monospace;color:#264}</style>")
    path = out / "report.html"
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>rlreason report</title>{style}"
                    f"</head><body>{''.join(sections)}</body></html>")
    return path


def run_summary(before: dict[str, Any], after: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """summary.json: ``fields`` (steps, times, speed, failures, ...) with the held-out accuracy
    before and after training, its gain with a 95% interval, and the suites' scores."""
    summary = dict(fields)
    suites_after = {k: v for k, v in after.items() if k.startswith("suite/")}
    if suites_after:
        summary["suites_before"] = {k: v for k, v in before.items() if k.startswith("suite/")}
        summary["suites_after"] = suites_after
    if "eval/accuracy" in before and "eval/accuracy" in after:
        lo, hi = diff_interval(before["eval/correct"], before["eval/n"], after["eval/correct"], after["eval/n"])
        summary.update({"heldout_before": before["eval/accuracy"], "heldout_after": after["eval/accuracy"],
                        "heldout_n": after["eval/n"], "gain": after["eval/accuracy"] - before["eval/accuracy"],
                        "gain_ci95": [lo, hi],
                        "before_ci95": [before["eval/accuracy_ci_low"], before["eval/accuracy_ci_high"]],
                        "after_ci95": [after["eval/accuracy_ci_low"], after["eval/accuracy_ci_high"]]})
    return summary

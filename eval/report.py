"""Results files and tables: write a run's JSON + JSONL, print markdown, compare two runs."""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from rlreason.eval.metrics import diff_interval

# Columns of the markdown table, in order; a column shows only when some suite has it.
_BASE_COLUMNS = ("problems", "n_samples", "pass@1", "pass@1_ci95")
_TAIL_COLUMNS = ("mean_reward", "mean_length", "truncation_rate", "format_rate", "answer_rate")


def versions() -> dict[str, str | None]:
    """Versions of what produced the numbers: python, torch, transformers, vllm, rlreason."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "vllm", "rlreason", "datasets", "sympy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def write_results(results: dict[str, Any], out_dir: str | Path, extra_config: dict[str, Any] | None = None) -> dict:
    """Write ``results.json`` (config, versions, per-suite metrics) and ``problems.jsonl`` (one
    line per problem: prompt, completions, extracted answers, verdicts) into ``out_dir``.

    Returns ``{"results": path, "problems": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "config": {**results["config"], **(extra_config or {})},
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "suites": results["suites"],
    }
    paths = {"results": out / "results.json", "problems": out / "problems.jsonl"}
    paths["results"].write_text(json.dumps(doc, indent=2, default=str))
    with paths["problems"].open("w") as f:
        for records in results["problems"].values():
            for rec in records:
                f.write(json.dumps(rec, default=str) + "\n")
    return paths


def _metric_columns(suites: Sequence[dict[str, Any]]) -> list[str]:
    keys = {k for m in suites for k in m}
    ranked = sorted((k for k in keys if k.startswith(("pass@", "maj@")) and not k.endswith("_ci95") and k != "pass@1"),
                    key=lambda k: (k.split("@")[0] != "pass", int(k.split("@")[1])))
    return [c for c in (*_BASE_COLUMNS, *ranked, *_TAIL_COLUMNS) if c in keys]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"
    return str(value)


def markdown_table(suites: dict[str, dict[str, Any]]) -> str:
    """One row per suite, one column per metric present (pass@1 with its 95% interval)."""
    if not suites:
        return "(no suites)"
    cols = _metric_columns(list(suites.values()))
    lines = ["| suite | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, metrics in suites.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(metrics.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def compare_table(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str] = ("a", "b")) -> str:
    """Two results files side by side: per suite and metric, a, b and b - a.

    For pass@1 of greedy (n=1) runs on the same problem count, the difference gets a 95%
    interval (Newcombe, from the two Wilson intervals); suites or metrics present in only
    one file show "-" on the other side.
    """
    lines = [f"| suite | metric | {names[0]} | {names[1]} | diff |", "|---|---|---|---|---|"]
    suites = list(dict.fromkeys([*a["suites"], *b["suites"]]))
    for suite in suites:
        ma, mb = a["suites"].get(suite, {}), b["suites"].get(suite, {})
        for col in _metric_columns([m for m in (ma, mb) if m]):
            va, vb = ma.get(col), mb.get(col)
            diff = "-"
            if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
                diff = f"{vb - va:+.3f}"
                if col == "pass@1" and ma.get("n_samples") == mb.get("n_samples") == 1:
                    lo, hi = diff_interval(round(va * ma["problems"]), ma["problems"],
                                           round(vb * mb["problems"]), mb["problems"])
                    diff += f" [{lo:+.3f}, {hi:+.3f}]"
            lines.append(f"| {suite} | {col} | {_fmt(va)} | {_fmt(vb)} | {diff} |")
    return "\n".join(lines)


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Protocol settings that differ between two results files (numbers are only comparable
    under the same protocol, so the comparison prints these first)."""
    pa, pb = a.get("config", {}).get("protocol", {}), b.get("config", {}).get("protocol", {})
    return [f"{k}: {pa.get(k)!r} vs {pb.get(k)!r}" for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]

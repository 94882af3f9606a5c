"""Results files and tables: write a run's lighteval-shaped files (results JSON, per-sample details,
samples JSONL, results.md), read them back, print markdown, compare two runs.

The layout is lighteval's (``EvaluationTracker.save``), under ``--out DIR``::

    DIR/results/<model>/results_<date_id>.json                      config, metrics with _stderr, "all"
    DIR/details/<model>/<date_id>/details_<task>_<date_id>.parquet  lighteval's Detail per problem
    DIR/details/<model>/<date_id>/samples_<task>_<date_id>.jsonl    rlreason's full record per problem
    DIR/results.md                                                  every run's tables, appended

``date_id`` is lighteval's (``datetime.now().isoformat()`` with ``:`` as ``-``). Nothing is ever
overwritten: each run claims its ``date_id`` by creating its details folder (``mkdir`` fails when it
exists: a run in the same microsecond takes ``<date_id>_1``), the results file appears whole or not at
all (written aside, then hard-linked to its name, which fails rather than replaces), and results.md is
only appended to. The schema: ``rlreason.eval.lighteval_schema``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from rlreason.eval import lighteval_schema as schema
from rlreason.eval.metrics import diff_interval

# Columns of the markdown table, in order; a column shows only when some suite has it.
_BASE_COLUMNS = ("problems", "n_samples", "pass@1", "pass@1_ci95")
_TAIL_COLUMNS = ("mean_reward", "mean_length", "truncation_rate", "format_rate", "answer_rate")
_HIGHER_IS_BETTER = {"truncation_rate": False, "mean_length": None}  # None: neither (a length is no score)
_CLAIM_TRIES = 1000  # date_ids tried before giving up (a clash needs two runs in the same microsecond)


def versions() -> dict[str, str | None]:
    """Versions of what produced the numbers: python, torch, transformers, vllm, rlreason, datasets,
    sympy, math-verify (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "vllm", "rlreason", "datasets", "sympy", "math-verify"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def results_model_name(model: str) -> str:
    """The model's name in the results' paths, as lighteval names it: a hub id as is (``org/name``:
    ``results/org/name/``), a local folder by its last component, the embedded model ``tiny``; each
    part made safe for a path (characters but letters, digits, ``.``, ``-``, ``_`` become ``_``)."""
    local = Path(model).expanduser()
    parts = [local.resolve().name] if model != "tiny" and local.exists() else model.strip("/").split("/")
    safe = [re.sub(r"[^\w.\-]", "_", p) for p in parts if p]
    return "/".join("_" if p in (".", "..") else p for p in safe) or "model"


def run_table(results: dict[str, Any]) -> str:
    """The human table of a run (``markdown_table``), with the suites a stop left undone named."""
    table = markdown_table(results["suites"])
    stop = results["config"].get("interrupted")
    if stop:
        table += f"\n\nstopped by {stop['signal']}: not evaluated: {', '.join(stop['suites_not_done'])}"
    return table


def _generation_parameters(protocol: dict[str, Any]) -> dict[str, Any]:
    """The protocol's sampling in lighteval's ``GenerationParameters`` names (top_k 0 = off: None)."""
    return {"temperature": protocol.get("temperature"), "top_p": protocol.get("top_p"),
            "top_k": protocol.get("top_k") or None, "max_new_tokens": protocol.get("max_tokens"),
            "seed": protocol.get("seed")}


def _original_docs(effective: int, limit: int | None) -> int:
    """``original_num_docs``: the suite's size when the limit did not cut it, else -1 (lighteval's
    "not known": the problems past the limit were never loaded)."""
    return effective if limit is None or effective < limit else -1


def lighteval_document(results: dict[str, Any], extra_config: dict[str, Any] | None, *, model_name: str,
                       end_time: float | None = None) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """(the results document, ``{suite: its details rows}``) of internal ``results``
    (``evaluate_suites``' shape) in lighteval's schema, with the internal config and metrics under
    ``"rlreason"``. ``extra_config``: what the CLI adds (model, engine, dtype, argv, start_time...)."""
    config = {**results["config"], **(extra_config or {})}
    protocol = config.get("protocol", {})
    described = config.get("suites", {})
    end_time = time.time() if end_time is None else end_time
    start_time = config.get("start_time")
    rows: dict[str, list[dict]] = {}
    out_results: dict[str, dict[str, float]] = {}
    config_tasks: dict[str, dict[str, Any]] = {}
    summary_tasks: dict[str, dict[str, Any]] = {}
    for suite, metrics in results["suites"].items():
        task = schema.task_name(suite)
        records = results["problems"].get(suite, [])
        about = described.get(suite, {})
        size = about.get("max_tokens_effective", protocol.get("max_tokens"))
        rows[suite] = [schema.detail_row(r, task, metrics, size) for r in records]
        if records:
            out_results[task] = schema.task_results(metrics, records)
            summary_tasks[task] = {"hashes": schema.task_hashes(rows[suite])}
        names = [schema.metric_name(k, metrics.get("n_samples", 0)) for k in metrics]
        config_tasks[task] = {
            "name": suite, "suite": [schema.SUITE], "lighteval_task": schema.LIGHTEVAL_TASKS.get(suite),
            "prompt_function": (metrics.get("template") or {}).get("name"), "template": metrics.get("template"),
            "hf_repo": about.get("hf_id"), "hf_subset": about.get("hf_config"),
            "evaluation_splits": [about["hf_split"]] if about.get("hf_split") else [],
            "local_path": about.get("local_path") or about.get("data"),
            "metrics": [{"metric_name": name, "higher_is_better": _HIGHER_IS_BETTER.get(name, True)}
                        for name in names if name is not None and name in out_results.get(task, {})],
            "generation_size": size, "num_samples": [metrics.get("n_samples", protocol.get("n"))],
            "num_fewshots": 0, "version": 0, "original_num_docs": _original_docs(len(records), protocol.get("limit")),
            "effective_num_docs": len(records), "definition": about,
        }
    if out_results:
        out_results["all"] = schema.all_row(out_results)
    general = {
        "lighteval_sha": None, "num_fewshot_seeds": 1, "max_samples": protocol.get("limit"),
        "job_id": os.environ.get("SLURM_JOB_ID"), "start_time": start_time, "end_time": end_time,
        "total_evaluation_time_secondes": None if start_time is None else str(end_time - start_time),
        "model_name": model_name,
        "model_config": {"model_name": config.get("model", model_name), "model_path": config.get("model_path"),
                         "engine": config.get("engine"), "dtype": config.get("dtype"),
                         "engine_kwargs": config.get("engine_kwargs"),
                         "generation_parameters": _generation_parameters(protocol)},
        "protocol": protocol, "argv": config.get("argv"), "package_versions": versions(),
    }
    doc = {
        "config_general": general, "results": out_results,
        "versions": {t: 0 for t in out_results if t != "all"},  # lighteval's task version; ours are unversioned
        "config_tasks": config_tasks, "summary_tasks": summary_tasks,
        "summary_general": {"hashes": schema.general_hashes({t: s["hashes"] for t, s in summary_tasks.items()})},
        "rlreason": {"config": config, "suites": results["suites"]},
    }
    return doc, rows


def _claim(results_dir: Path, details_parent: Path) -> tuple[str, Path]:
    """A fresh ``date_id`` and its details folder, created here (``mkdir`` fails on an existing one,
    so two runs never share one) with no results file of that id yet."""
    base = datetime.now().isoformat().replace(":", "-")
    for i in range(_CLAIM_TRIES):
        date_id = base if i == 0 else f"{base}_{i}"
        folder = details_parent / date_id
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        if (results_dir / f"results_{date_id}.json").exists():
            folder.rmdir()
            continue
        return date_id, folder
    raise FileExistsError(f"no free date_id under {details_parent} after {_CLAIM_TRIES} tries")


def _create(path: Path, text: str) -> None:
    """Write ``path``, which must not exist, whole or not at all: written aside, then hard-linked to
    its name (``os.link`` fails rather than replaces)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def write_results(results: dict[str, Any], out_dir: str | Path, extra_config: dict[str, Any] | None = None, *,
                  model_name: str) -> dict[str, Any]:
    """Write a run's files into ``out_dir`` in lighteval's layout (module docstring), never
    overwriting: the results JSON, per suite a details parquet (lighteval's ``save_details``:
    ``Dataset.from_list(...).to_parquet``, columns sorted) and a samples JSONL (the internal records),
    and the run's tables appended to ``results.md``.

    ``results``: ``evaluate_suites``' shape; ``extra_config``: merged into its config (the CLI's
    model, engine, argv, ``start_time``...); ``model_name``: the results folder's name
    (:func:`results_model_name`). Returns ``{"results": path, "details": {suite: path},
    "samples": {suite: path}, "markdown": path, "date_id": str}`` (no details file for a suite with no
    problems)."""
    import datasets

    out = Path(out_dir)
    doc, rows = lighteval_document(results, extra_config, model_name=model_name)
    results_dir = out / "results" / model_name
    results_dir.mkdir(parents=True, exist_ok=True)
    date_id, folder = _claim(results_dir, out / "details" / model_name)
    paths: dict[str, Any] = {"details": {}, "samples": {}, "date_id": date_id}
    for suite, suite_rows in rows.items():
        task = schema.task_name(suite)
        samples = folder / f"samples_{task}_{date_id}.jsonl"
        with samples.open("x") as f:
            for record in results["problems"].get(suite, []):
                f.write(json.dumps(record, default=str) + "\n")
        paths["samples"][suite] = samples
        if suite_rows:
            dataset = datasets.Dataset.from_list(suite_rows)
            dataset = dataset.select_columns(sorted(c for c in dataset.column_names if c != "id"))
            details = folder / f"details_{task}_{date_id}.parquet"
            with details.open("xb") as f:
                dataset.to_parquet(f)
            paths["details"][suite] = details
    paths["results"] = results_dir / f"results_{date_id}.json"
    _create(paths["results"], json.dumps(doc, indent=2, ensure_ascii=False, default=str))
    paths["markdown"] = out / "results.md"
    protocol = doc["rlreason"]["config"].get("protocol", {}).get("name", "default")
    section = (f"## {date_id} · {model_name} · protocol {protocol}\n\n{run_table(results)}\n\n"
               f"lighteval's table:\n\n{schema.results_table(doc['results'], doc['versions'])}\n\n")
    with paths["markdown"].open("a") as f:
        f.write(section)
    return paths


def _results_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("results/**/results_*.json"), key=lambda p: (p.stem.removeprefix("results_"), str(p)))


def newest_results_file(path: str | Path) -> Path:
    """``path`` itself if a file, else the newest ``results/**/results_<date_id>.json`` of the folder
    (by date_id), else its old-style ``results.json``."""
    path = Path(path)
    if path.is_file():
        return path
    found = _results_files(path)
    if found:
        return found[-1]
    if (path / "results.json").is_file():
        return path / "results.json"
    raise FileNotFoundError(f"{path}: no results file (results/<model>/results_<date_id>.json) there")


def read_results(path: str | Path) -> dict[str, Any]:
    """A results document: ``path`` a results file, or an ``--out`` folder (its newest results
    file). Its ``"rlreason"`` key holds the internal ``{"config", "suites"}``; an old-style
    ``results.json`` (that shape at the top) is returned with it under ``"rlreason"`` too."""
    doc = json.loads(newest_results_file(path).read_text())
    if "rlreason" not in doc and "suites" in doc:
        doc = {"rlreason": {"config": doc.get("config", {}), "suites": doc["suites"]}, "legacy": doc}
    return doc


def read_samples(out_dir: str | Path, suite: str | None = None) -> list[dict[str, Any]]:
    """The newest run's per-problem records (the internal record dicts) under ``out_dir`` (or the run
    of a results file given instead), from its samples JSONL files, in the order the suites ran; only
    ``suite``'s when given. An old-style folder (``results.json``, ``problems.jsonl``) is read too."""
    results_file = newest_results_file(out_dir)
    doc = json.loads(results_file.read_text())
    if "rlreason" not in doc:  # an old-style run: results.json with problems.jsonl beside it
        lines = (results_file.parent / "problems.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if suite is None or r["suite"] == suite]
    date_id = results_file.stem.removeprefix("results_")
    model = doc["config_general"]["model_name"]
    # the --out folder: given, or above results/<model>/ (one folder per part of the model's name)
    root = Path(out_dir) if Path(out_dir).is_dir() else results_file.parents[model.count("/") + 2]
    folder = root / "details" / model / date_id
    records = []
    for name in doc["rlreason"]["suites"]:
        if suite is None or name == suite:
            samples = folder / f"samples_{schema.task_name(name)}_{date_id}.jsonl"
            records += [json.loads(line) for line in samples.read_text().splitlines()]
    return records


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

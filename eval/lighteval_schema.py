"""lighteval's results and details schema, built from rlreason's internal results: pure functions, no
I/O (``rlreason.eval.report.write_results`` writes what they build).

The layout and every field follow lighteval 0.13.0's own writer (``logging/evaluation_tracker.py``
``EvaluationTracker.save``, ``logging/info_loggers.py``), so its reader and anything written against
its files (pandas, ``datasets``, a leaderboard script) read ours:

- a task is ``rlreason|<suite>|0`` (lighteval's ``suite|task|fewshots``: our suites are not
  lighteval's tasks, so "rlreason" is the suite; a suite that has a lighteval equivalent names it in
  ``config_tasks``, e.g. ``lighteval|math_500|0`` for math500);
- ``results[task]`` is a flat dict of floats: each metric that is a mean over problems, with
  ``<metric>_stderr`` = lighteval's ``mean_stderr`` of the per-problem values (sample standard
  deviation, ddof 1, over sqrt(problems); left out for one problem, as lighteval does), and the
  ``"all"`` row: every metric (``_stderr`` ones included) averaged over the tasks that have it,
  ``MetricsLogger.aggregate``'s rule;
- a per-sample details row is lighteval's ``Detail``: ``{"doc": Doc, "model_response":
  ModelResponse, "metric": {per-problem metric values}}``, with rlreason's record (extracted
  answers, verdicts, rewards, programs...) under ``doc["specific"]``.

Metric names: lighteval's where it has the same quantity (``pass@k:k=1&n=4`` is pass@1 estimated
from 4 samples, the mean correctness; ``pass@k:k=4&n=4``), ``maj@k:k=K&n=N`` for rlreason's maj@k
(the majority answer of the first K of N samples; lighteval's ``maj@n:n=N`` is K = N), and
rlreason's own for the rest (``format_rate``, ``answer_rate``, ``truncation_rate``, ``mean_length``,
``mean_reward``, ``reward/<fn>``). docs/evaluation.md, "Results files", has the table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from statistics import fmean
from typing import Any

import xxhash

from rlreason.eval.metrics import pass_at_k

SUITE = "rlreason"  # the lighteval "suite" part of our task names
# rlreason suites whose lighteval task is the same benchmark (its prompt, extraction and scoring differ).
LIGHTEVAL_TASKS = {"math500": "lighteval|math_500|0", "aime24": "lighteval|aime24|0",
                   "aime25": "lighteval|aime25|0", "gsm8k": "lighteval|gsm8k|0"}
# Metrics that are a mean over problems of a per-problem mean over its samples (every problem has the
# same n, so each is also the rate over all samples): they get a per-problem value and a stderr.
_SAMPLE_MEANS = ("mean_length", "truncation_rate", "format_rate", "answer_rate")


def task_name(suite: str) -> str:
    """The lighteval task key of an rlreason suite: ``rlreason|<suite>|0``."""
    return f"{SUITE}|{suite}|0"


def record_kind(record: dict[str, Any]) -> str:
    """``"code"`` (``run_code_suite``), ``"reward"`` (``run_task``) or ``"answer"`` (``run_suite``)."""
    return "code" if "programs" in record else "reward" if "rewards" in record else "answer"


def metric_name(key: str, n: int) -> str | None:
    """The results name of an rlreason suite metric (module docstring), None for what is not a mean
    over problems (counts, intervals, breakdowns, settings)."""
    if key.startswith("pass@") and key[5:].isdigit():
        return f"pass@k:k={key[5:]}&n={n}"
    if key.startswith("maj@") and key[4:].isdigit():
        return f"maj@k:k={key[4:]}&n={n}"
    if key in _SAMPLE_MEANS or key == "mean_reward" or key.startswith("reward/"):
        return key
    return None


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    given = [float(v) for v in values if v is not None]
    return math.fsum(given) / len(given) if given else None


def problem_value(record: dict[str, Any], key: str) -> float | None:
    """One problem's value of the suite metric ``key`` (whose suite value is the mean of these over
    problems when none is None); None where the problem has none (a reward that scored none of its
    samples, a record without its maj@k)."""
    n = len(record["correct"])
    if key.startswith("pass@"):
        return pass_at_k(n, sum(record["correct"]), int(key[5:]))
    if key.startswith("maj@"):
        return record.get("maj", {}).get(key)
    if key == "mean_length":
        return fmean(record["lengths"])
    if key == "truncation_rate":
        return fmean(map(float, record["truncated"]))
    if key == "format_rate":
        return fmean(map(float, record["formatted"]))
    if key == "answer_rate":
        return fmean(float(a is not None) for a in record["answers"])
    if key == "mean_reward":
        return _mean_or_none(next(iter(record["rewards"].values())))
    if key.startswith("reward/"):
        return _mean_or_none(record["rewards"][key[len("reward/"):]])
    raise KeyError(key)


def mean_stderr(values: Sequence[float]) -> float:
    """lighteval's ``mean_stderr`` (metrics/utils/stderr.py): sample std (ddof 1) / sqrt(len)."""
    mu = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((x - mu) ** 2 for x in values) / (len(values) - 1)) / math.sqrt(len(values))


def task_results(metrics: dict[str, Any], records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """A suite's row of ``results``: each mean metric under its results name, as a float, with its
    ``_stderr`` where it is the mean of the per-problem values and there are at least two problems
    (a reward that gave some samples None has a mean over the scored samples instead: no stderr)."""
    n = metrics.get("n_samples", 0)
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = metric_name(key, n)
        if name is None or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[name] = float(value)
        per_problem = [problem_value(r, key) for r in records]
        if len(per_problem) > 1 and all(v is not None for v in per_problem) \
                and math.isclose(fmean(per_problem), value, rel_tol=1e-9, abs_tol=1e-12):  # type: ignore[arg-type]
            out[f"{name}_stderr"] = mean_stderr(per_problem)  # type: ignore[arg-type]
    return out


def all_row(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """lighteval's ``"all"`` row (``MetricsLogger.aggregate``): each metric, ``_stderr`` ones
    included, averaged over the tasks that have it."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for row in results.values():
        for metric, value in row.items():
            sums[metric] = sums.get(metric, 0.0) + value
            counts[metric] = counts.get(metric, 0) + 1
    return {metric: total / counts[metric] for metric, total in sums.items()}


def _text(value: Any) -> str | None:
    """A value as the text Arrow stores in every row alike (a gold is a number in one row and a
    string in another: one column type)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def _specific(record: dict[str, Any]) -> dict[str, Any]:
    """rlreason's per-problem record in ``Doc.specific``, typed alike in every row of a kind: the
    lists per sample as they are, open-ended values (a row's columns, tool exchanges) as JSON text."""
    kind = record_kind(record)
    out: dict[str, Any] = {"kind": kind, "index": int(record["index"]), "id": str(record["id"]),
                           "correct": [bool(c) for c in record["correct"]],
                           "lengths": [int(x) for x in record["lengths"]],
                           "truncated": [bool(t) for t in record["truncated"]],
                           "score_failures": int(record.get("score_failures", 0))}
    if kind == "answer":
        out.update(subject=_text(record.get("subject")), level=_text(record.get("level")),
                   gold=_text(record.get("gold")), answers=[_text(a) for a in record["answers"]],
                   formatted=[bool(f) for f in record["formatted"]],
                   gold_unparseable=bool(record.get("gold_unparseable", False)))
    elif kind == "code":
        out.update(style=record.get("style"), programs=list(record["programs"]), statuses=list(record["statuses"]),
                   stderr=list(record.get("stderr", [])), formatted=[bool(f) for f in record["formatted"]])
    else:
        out.update(reward_names=list(record["rewards"]),
                   rewards=[[None if v is None else float(v) for v in values] for values in record["rewards"].values()],
                   failed=[bool(f) for f in record.get("failed", [])], columns=_text(record.get("columns")))
    if "messages" in record:  # a tool exchange per sample
        out.update(messages=[_text(m) for m in record["messages"]],
                   tool_calls=[int(c) for c in record.get("tool_calls", [])],
                   tool_failures=[int(c) for c in record.get("tool_failures", [])])
    return out


def _gold(record: dict[str, Any]) -> tuple[list[str], int | list[int]]:
    """``Doc.choices`` and ``Doc.gold_index``: the gold as the one choice; none for a code suite (its
    tests are the check) or a task scored by its rewards without an ``answer`` column."""
    kind = record_kind(record)
    if kind == "answer":
        return [_text(record.get("gold")) or ""], 0
    if kind == "reward" and (record.get("columns") or {}).get("answer") is not None:
        return [_text(record["columns"]["answer"]) or ""], 0
    return [], []


def detail_row(record: dict[str, Any], task: str, metrics: dict[str, Any], generation_size: int | None
               ) -> dict[str, Any]:
    """One problem as lighteval's ``Detail`` (``asdict``): ``doc`` with every ``Doc`` field,
    ``model_response`` with every ``ModelResponse`` field, ``metric`` the problem's value of each
    mean metric of ``metrics`` (the suite's) under its results name. Token ids are not recorded
    (``input_tokens``/``output_tokens`` empty), nor log-probabilities: lighteval's defaults."""
    n = len(record["correct"])
    choices, gold_index = _gold(record)
    doc = {
        "query": record["prompt"], "choices": choices, "gold_index": gold_index, "instruction": None,
        "images": None, "specific": _specific(record), "unconditioned_query": None, "original_query": None,
        "id": str(record["id"]), "task_name": task, "fewshot_samples": [], "sampling_methods": ["GENERATIVE"],
        "fewshot_sorting_class": None, "generation_size": generation_size, "stop_sequences": None,
        "use_logits": False, "num_samples": n, "generation_grammar": None,
    }
    response = {
        "input": record["prompt"], "input_tokens": [], "text": list(record["completions"]), "output_tokens": [],
        "text_post_processed": None, "reasonings": [], "logprobs": [], "argmax_logits_eq_gold": [],
        "logits": None, "unconditioned_logprobs": None, "truncated_tokens_count": 0, "padded_tokens_count": 0,
    }
    metric = {}
    for key in metrics:
        name = metric_name(key, metrics.get("n_samples", n))
        if name is not None and metrics[key] is not None:
            value = problem_value(record, key)
            metric[name] = None if value is None else float(value)
    return {"doc": doc, "model_response": response, "metric": metric}


def _xxh64(text: str) -> str:
    """xxh64 of the text's UTF-8 bytes (what xxhash < 4 hashed for a str; xxhash 4 takes bytes only)."""
    return xxhash.xxh64(text.encode()).hexdigest()


def task_hashes(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """lighteval's ``CompiledHash.hash_examples`` of a task's details (``DetailsLogger.aggregate``:
    xxh64 of the sorted xxh64s of each ``doc.query``): equal across runs exactly when the prompts
    are. Its other hashes are of token ids, which rlreason does not record: left out."""
    examples = sorted(_xxh64(r["doc"]["query"]) for r in rows)
    return {"hash_examples": _xxh64("".join(examples))}


def general_hashes(per_task: dict[str, dict[str, str]]) -> dict[str, str]:
    """``summary_general.hashes``: each hash over the tasks' (sorted by task name), as lighteval."""
    if not per_task:
        return {}
    kinds = next(iter(per_task.values())).keys()
    return {kind: _xxh64("".join(per_task[t][kind] for t in sorted(per_task))) for kind in kinds}


def results_table(results: dict[str, dict[str, float]], versions: dict[str, int]) -> str:
    """lighteval's results table (``utils.make_results_table``'s layout: Task | Version | Metric |
    Value | ± | Stderr, tasks sorted, each value ``%.4f``, the task and version shown on its first
    row only); task names with ``|`` written ``:`` as lighteval prints them (``generate_final_dict``),
    which also keeps the markdown table's columns intact."""
    lines = ["|Task|Version|Metric|Value| |Stderr|", "|---|---:|---|---:|---|---:|"]
    shown = {key.replace("|", ":"): key for key in results}  # lighteval sorts the names it prints
    for printed in sorted(shown):
        row = results[shown[printed]]
        task, version = printed, versions.get(shown[printed], "")
        for metric, value in row.items():
            if metric.endswith("_stderr"):
                continue
            se = row.get(f"{metric}_stderr")
            cells = [task, str(version), metric, f"{value:.4f}", "±" if se is not None else "",
                     f"{se:.4f}" if se is not None else ""]
            lines.append("|" + "|".join(cells) + "|")
            task, version = "", ""
    return "\n".join(lines)

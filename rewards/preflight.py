"""Preflight check: score a dataset's reference solutions against its gold answers before training.

A dataset whose golds the verifier cannot read, or reads differently from its own reference
solutions, silently turns into a reward of None or 0 for every completion of those problems:
the run trains on noise and nobody notices until the curves look wrong. This check costs
seconds on a CPU and says which rows are at fault::

    python -m rlreason.rewards check --dataset data.jsonl --solution-column solution --answer-column answer

Each row's solution is scored as if it were a completion, against the row's gold, with the
reward (``accuracy`` by default). A row is *bad* when the gold is missing or unparseable (the
reward returns None), the solution scores below 0.5 against its own gold (``mismatch``, or
``no_answer`` when no final answer can be extracted from the solution), or the reward raises.
A row scored equal whose extracted answer differs from the gold text (whitespace aside) is a
*note* (``read_differently``): not an error, but worth a look. The command exits 1 when more
than ``--max-bad`` of the rows are bad.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from ._call import run_in_process
from .math import extract_answer, gsm8k_gold
from .registry import RewardSpecError, build_rewards, reward_name
from .runner import RESERVED_ARGUMENTS

GOLD_FORMATS = ("plain", "gsm8k", "extract")
BAD = ("missing_gold", "unparseable_gold", "mismatch", "no_answer", "error")
NOTE = "read_differently"
PROMPT_COLUMNS = ("prompt", "problem", "question")  # what is passed as `prompts`, first present
CHUNK = 256  # rows per reward call: batched for speed, small enough that one failure is cheap to retry

_SPACE = re.compile(r"\s+")


@dataclass
class RowResult:
    """The verdict on one dataset row."""

    index: int  # 0-based row index in the (split of the) dataset
    status: str  # "ok", NOTE, or one of BAD
    gold: str | None  # the gold as passed to the reward
    extracted: str | None  # the final answer extracted from the solution
    score: float | None  # the reward's value; None when it returned None or raised
    detail: str = ""


@dataclass
class PreflightReport:
    """All rows' verdicts and the summary the CLI prints."""

    dataset: str
    reward: str
    gold_format: str
    solution_column: str
    answer_column: str
    max_bad: float
    results: list[RowResult] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.results)

    @property
    def bad(self) -> list[RowResult]:
        return [r for r in self.results if r.status in BAD]

    @property
    def bad_fraction(self) -> float:
        return len(self.bad) / self.rows if self.rows else 0.0

    @property
    def passed(self) -> bool:
        return self.rows > 0 and self.bad_fraction <= self.max_bad

    def counts(self) -> Counter[str]:
        return Counter(r.status for r in self.results)

    def distribution(self) -> Counter[str]:
        """Reward value (as text; "None" for no value) -> rows."""
        return Counter(str(r.score) for r in self.results)

    def mean_score(self) -> float | None:
        scored = [r.score for r in self.results if r.score is not None]
        return sum(scored) / len(scored) if scored else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "reward": self.reward,
            "gold_format": self.gold_format,
            "solution_column": self.solution_column,
            "answer_column": self.answer_column,
            "rows": self.rows,
            "bad": len(self.bad),
            "bad_fraction": self.bad_fraction,
            "max_bad": self.max_bad,
            "passed": self.passed,
            "counts": dict(self.counts()),
            "distribution": dict(self.distribution()),
            "mean_score": self.mean_score(),
            "flagged": [asdict(r) for r in self.results if r.status != "ok"],
        }


# --------------------------------------------------------------------------- checking


def gold_text(value: Any, gold_format: str) -> tuple[str | None, str]:
    """The gold answer a row's answer-column ``value`` holds, and why it is None when it is.

    ``plain``: the value itself; ``gsm8k``: the text after the last ``####`` (GSM8K's answer
    column is a rationale ending in ``#### 72``); ``extract``: the answer extractor's reading
    (last ``<answer>``, ``\\boxed{}`` or ``####``), for columns holding a full solution.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, "gold is empty"
    text = value if isinstance(value, str) else str(value)
    if gold_format == "plain":
        return text, ""
    if gold_format == "gsm8k":
        gold = gsm8k_gold(text)
        return (gold, "") if gold is not None else (None, "empty '####' line" if "####" in text else "no '####' line")
    extracted = extract_answer(text)
    return extracted, "" if extracted is not None else "no final answer in the answer column"


def check_rows(
    rows: list[dict[str, Any]],
    reward: Callable,
    *,
    solution_column: str,
    answer_column: str,
    gold_format: str = "plain",
) -> list[RowResult]:
    """Score each row's solution against its gold with ``reward``; one :class:`RowResult` per row."""
    results: list[RowResult] = []
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        golds = [gold_text(r.get(answer_column), gold_format) for r in chunk]
        scores = _score_chunk(reward, chunk, [g for g, _ in golds], solution_column)
        for offset, (row, (gold, why), (score, error)) in enumerate(zip(chunk, golds, scores, strict=True)):
            solution = row.get(solution_column)
            extracted = extract_answer(solution) if isinstance(solution, str) else None
            status, detail = _classify(gold, why, extracted, score, error)
            results.append(RowResult(start + offset, status, gold, extracted, score, detail))
    return results


def _score_chunk(
    reward: Callable, rows: list[dict], golds: list[str | None], solution_column: str
) -> list[tuple[float | None, str]]:
    """(score, error) per row: the whole chunk in one call, row by row if that call fails, through
    the call-and-check every reward call takes (:func:`~._call.run_in_process`: an exception, a
    result of the wrong length or a value that is not a number is the row's error, naming it)."""
    # Every column, as the trainer passes them, with the gold under "answer" (what the built-in
    # accuracy reward reads; a training config maps the dataset's gold column to it).
    columns = {k: [r.get(k) for r in rows] for k in rows[0]}
    columns["answer"] = golds
    prompt_key = next((k for k in PROMPT_COLUMNS if k in rows[0]), None)
    prompts = columns.pop(prompt_key) if prompt_key else [""] * len(rows)
    for reserved in RESERVED_ARGUMENTS:  # passed by name; a column cannot reuse them
        columns.pop(reserved, None)
    completions = [r.get(solution_column) or "" for r in rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "cannot parse gold": the report lists those rows
        result = run_in_process([reward], prompts, completions, columns)
    errors = {index: detail for index, _, detail in result.failures[0]}
    return [(None, errors[i]) if i in errors else (None if math.isnan(v) else v, "")
            for i, v in enumerate(result.values[0])]


def _classify(gold: str | None, why: str, extracted: str | None, score: float | None, error: str) -> tuple[str, str]:
    if error:
        return "error", error
    if gold is None:
        return "missing_gold", why
    if score is None:
        return "unparseable_gold", "the reward returned None (it cannot read the gold)"
    if score < 0.5:
        if extracted is None:
            return "no_answer", "no final answer (<answer>, \\boxed{} or ####) in the solution"
        return "mismatch", "the solution's answer scores unequal to the gold"
    if extracted is not None and _SPACE.sub("", extracted) != _SPACE.sub("", gold):
        return NOTE, "scored equal, but the solution's answer is written differently"
    return "ok", ""


def run_check(
    dataset: str,
    *,
    solution_column: str | None = "solution",
    answer_column: str = "answer",
    split: str = "train",
    limit: int | None = None,
    reward: str = "accuracy",
    gold_format: str = "plain",
    max_bad: float = 0.01,
) -> PreflightReport:
    """Load ``dataset`` and check it; see the module docstring.

    ``solution_column=None`` means ``solution`` if the dataset has it, else (with a
    ``gsm8k``/``extract`` gold format) the answer column itself, whose text is the solution.
    Raises ValueError (bad column, reward or argument) or FileNotFoundError.
    """
    if gold_format not in GOLD_FORMATS:
        raise ValueError(f"gold format must be one of {GOLD_FORMATS}, got {gold_format!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if not 0.0 <= max_bad <= 1.0:
        raise ValueError(f"max-bad is a fraction of rows in [0, 1], got {max_bad}")
    from .dataset_io import load_dataset_any  # here: `datasets` is slow to import, and only loading needs it

    data = load_dataset_any(dataset, split)
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    columns = set(data.column_names)
    solution_column = _pick_solution_column(solution_column, answer_column, gold_format, columns)
    if answer_column not in columns:
        raise ValueError(f"answer column {answer_column!r} not found; the dataset's columns are {sorted(columns)}")
    (fn,), _ = build_rewards([reward], columns=columns | {"answer"})
    report = PreflightReport(dataset, reward_name(fn), gold_format, solution_column, answer_column, max_bad)
    report.results = check_rows(
        data.to_list(), fn, solution_column=solution_column, answer_column=answer_column, gold_format=gold_format
    )
    return report


def _pick_solution_column(chosen: str | None, answer_column: str, gold_format: str, columns: set[str]) -> str:
    if chosen is None:
        if "solution" in columns:
            return "solution"
        if gold_format != "plain":
            return answer_column
        raise ValueError(f"no 'solution' column; pass --solution-column (the dataset's columns are {sorted(columns)})")
    if chosen not in columns:
        raise ValueError(f"solution column {chosen!r} not found; the dataset's columns are {sorted(columns)}")
    return chosen


# --------------------------------------------------------------------------- reporting


def _short(text: str | None, width: int = 48) -> str:
    if text is None:
        return "-"
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def _verdict(report: PreflightReport) -> str:
    if report.rows == 0:
        return "FAIL: no rows to check"
    word = "OK" if report.passed else "FAIL"
    relation = "<=" if report.passed else ">"
    return (
        f"{word}: {len(report.bad)} of {report.rows} rows bad ({report.bad_fraction:.2%}) "
        f"{relation} --max-bad {report.max_bad:.2%}"
    )


def _summary_lines(report: PreflightReport) -> list[str]:
    dist = ", ".join(f"{k}: {v}" for k, v in sorted(report.distribution().items()))
    mean = report.mean_score()
    mean_text = "no row scored" if mean is None else f"mean {mean:.3f} over the scored rows"
    return [
        f"preflight {report.dataset}: {report.rows} rows, reward {report.reward}, "
        f"solution column {report.solution_column!r}, gold from {report.answer_column!r} ({report.gold_format})",
        f"reward distribution: {dist}; {mean_text}",
    ]


def render_plain(report: PreflightReport, out: TextIO, show: int = 20) -> None:
    """The report as plain text (CI logs, pipes)."""
    for line in _summary_lines(report):
        print(line, file=out)
    counts = report.counts()
    for status in ("ok", NOTE, *BAD):
        print(f"  {status:<18}{counts.get(status, 0):>7}", file=out)
    for status in (*BAD, NOTE):
        rows = [r for r in report.results if r.status == status]
        if not rows:
            continue
        print(f"{status} ({len(rows)} rows; showing {min(show, len(rows))}):", file=out)
        for r in rows[:show]:
            print(
                f"  row {r.index}: gold {_short(r.gold)!s} | solution's answer {_short(r.extracted)} | "
                f"score {r.score} | {r.detail}",
                file=out,
            )
    print(_verdict(report), file=out)


def render_rich(report: PreflightReport, show: int = 20) -> None:
    """The report as rich tables (a terminal)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for line in _summary_lines(report):
        console.print(line, markup=False, highlight=False)
    counts = report.counts()
    summary = Table("status", "rows")
    for status in ("ok", NOTE, *BAD):
        summary.add_row(status, str(counts.get(status, 0)))
    console.print(summary)
    for status in (*BAD, NOTE):
        rows = [r for r in report.results if r.status == status]
        if not rows:
            continue
        table = Table("row", "gold", "solution's answer", "score", "detail", title=f"{status} ({len(rows)} rows)")
        for r in rows[:show]:
            table.add_row(str(r.index), _short(r.gold), _short(r.extracted), str(r.score), r.detail)
        console.print(table)
    console.print(_verdict(report), style="green" if report.passed else "bold red", markup=False)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``check`` subcommand's options."""
    parser.add_argument("--dataset", required=True, help="local .json/.jsonl/.parquet/.csv, save_to_disk dir or hub id")
    parser.add_argument("--split", default="train", help="split to check (a single file has only 'train')")
    parser.add_argument(
        "--solution-column",
        default=None,
        help="column with the reference solutions (default: 'solution', or the answer column for gsm8k/extract)",
    )
    parser.add_argument("--answer-column", default="answer", help="column with the gold answers")
    parser.add_argument(
        "--gold-format",
        choices=GOLD_FORMATS,
        default="plain",
        help="how to read the gold from the answer column: as is (plain), after the last '####' (gsm8k), "
        "or with the answer extractor (extract)",
    )
    parser.add_argument("--reward", default="accuracy", help="reward spec to score with (a name or module:function)")
    parser.add_argument("--limit", type=int, default=None, help="check only the first N rows")
    parser.add_argument("--max-bad", type=float, default=0.01, help="fail when more than this fraction is bad")
    parser.add_argument("--show", type=int, default=20, help="rows listed per category")
    parser.add_argument(
        "--format",
        choices=("auto", "rich", "plain", "json"),
        default="auto",
        help="output: rich tables on a terminal, plain text otherwise (auto), or JSON",
    )


def _quiet_datasets() -> None:
    """No "Generating train split" progress bars around the report (the CLI's own process only)."""
    try:
        from datasets.utils.logging import disable_progress_bar
    except ImportError:  # the load below reports the missing library
        return
    disable_progress_bar()


def run_cli(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run ``check``: 0 when the dataset passes, 1 when too many rows are bad, 2 when it cannot run."""
    out = out or sys.stdout
    _quiet_datasets()
    try:
        report = run_check(
            args.dataset,
            solution_column=args.solution_column,
            answer_column=args.answer_column,
            split=args.split,
            limit=args.limit,
            reward=args.reward,
            gold_format=args.gold_format,
            max_bad=args.max_bad,
        )
    except (RewardSpecError, ValueError, FileNotFoundError) as e:
        print(f"preflight: error: {e}", file=sys.stderr)
        return 2
    fmt = args.format
    if fmt == "auto":
        fmt = "rich" if out is sys.stdout and sys.stdout.isatty() else "plain"
    if fmt == "json":
        json.dump(report.to_dict(), out, indent=2)
        print(file=out)
    elif fmt == "rich":
        render_rich(report, args.show)
    else:
        render_plain(report, out, args.show)
    return 0 if report.passed else 1

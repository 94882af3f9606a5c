"""``python -m rlreason.eval.fetch SUITE [--to DIR]``: write a suite's data file once from the hub,
so that later evaluations read it offline.

    python -m rlreason.eval.fetch math500                     # -> $RLREASON_BENCHMARKS/math500.jsonl
    python -m rlreason.eval.fetch gsm8k aime24 --to data/     # then RLREASON_BENCHMARKS=data/

The suite's hub dataset (``hf_id``, ``hf_config``, ``hf_split``) is loaded with ``datasets`` and the
columns the suite reads (problem, answer, solution, subject, level, id) are written as the JSON
lines file its ``local_path`` names, in ``DIR`` (default: the benchmarks folder,
``rlreason.eval.suites.benchmarks_dir()``). The file is written whole or not at all.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from rlreason.eval.suites import SUITES, Suite, benchmarks_dir, get_suite


def suite_columns(suite: Suite) -> list[str]:
    """The columns ``suite`` reads from a row, in a stable order, each once."""
    named = (suite.problem_column, suite.answer_column, suite.solution_column, suite.subject_column,
             suite.level_column, suite.id_column)
    return list(dict.fromkeys(c for c in named if c))


def fetch(suite: Suite, to: Path) -> Path:
    """Load ``suite``'s hub dataset and write the columns it reads to ``to/<local_path's name>``
    (JSON lines, written to a temporary file first, then renamed). -> the file written."""
    if not suite.hf_id or not suite.local_path:
        raise ValueError(f"suite {suite.name!r} has no hub dataset and local file to write (hf_id and local_path); "
                         f"fetchable suites: {', '.join(fetchable())}")
    import datasets

    data = datasets.load_dataset(suite.hf_id, suite.hf_config, split=suite.hf_split)
    missing = [c for c in suite_columns(suite) if c not in data.column_names]
    if missing:
        raise ValueError(f"suite {suite.name!r}: hub dataset {suite.hf_id!r} has no column {missing[0]!r} "
                         f"(its columns: {', '.join(data.column_names)})")
    to.mkdir(parents=True, exist_ok=True)
    path = to / Path(suite.local_path).name
    tmp = path.with_name(f".{path.name}.tmp")
    data.select_columns(suite_columns(suite)).to_json(tmp, lines=True, force_ascii=False)
    os.replace(tmp, path)  # never a half-written file where evaluations read it
    return path


def fetchable() -> list[str]:
    return [name for name, s in SUITES.items() if s.hf_id and s.local_path]


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(prog="python -m rlreason.eval.fetch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suites", nargs="+", metavar="SUITE", help=f"one of {', '.join(fetchable())}")
    p.add_argument("--to", default=None, help="folder to write into (default: the benchmarks folder, "
                                              "$RLREASON_BENCHMARKS or <repo>/../shared/data/benchmarks)")
    args = p.parse_args(argv)
    to = Path(args.to) if args.to else benchmarks_dir()
    written = []
    for name in args.suites:
        try:
            path = fetch(get_suite(name), to)
        except ValueError as e:
            p.exit(1, f"error: {e}\n")
        except Exception as e:  # offline, not found, gated: one line, as the eval CLI's errors
            first = (str(e).strip().splitlines() or [""])[0]
            p.exit(1, f"error: suite {name!r}: loading its hub dataset failed ({type(e).__name__}: {first})\n")
        print(f"wrote {path}", file=sys.stderr)
        written.append(path)
    if args.to:
        print(f"evaluate with RLREASON_BENCHMARKS={to}", file=sys.stderr)
    return written


if __name__ == "__main__":
    main()

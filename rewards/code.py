"""Code rewards: the program in a completion, run against its problem's tests in the sandbox.

``code_tests`` (registry name ``"code_tests"``) scores each completion by running the last
```` ```python ```` block of its text (:func:`extract_code`, open-r1's rule) in the sandbox
(:mod:`.sandbox`: bubblewrap namespaces and rlimits) against the tests of its dataset row, which
come in one of three column layouts, chosen per row:

- ``verification_info`` (open-r1's): ``{"language": "python", "test_cases": [{"input": str,
  "output": str}, ...]}``, a dict or its JSON text. The program reads ``input`` on stdin; it passes
  a test when it exits 0 and its stdout matches ``output`` by open-r1's rule (:func:`outputs_match`).
  Expected outputs never enter the sandbox: they are compared here, on the host.
- ``test`` + ``entry_point`` (HumanEval's): ``test`` defines ``check(candidate)``, called with the
  function ``entry_point`` names. One test.
- ``test_list`` (MBPP's): a list of ``assert`` statements, one test each, after the optional
  ``test_setup_code``.

A row with none of these (a math row in a mixed dataset) or a language other than Python scores
None: the reward does not apply to it.

Every test of one program runs in ONE sandbox launch (``Sandbox.run_inputs``: a fresh process per
test, each under ``per_test_timeout_s`` of wall-clock and CPU time, the whole launch under
``total_timeout_s``), and the batch's programs run in parallel (``Sandbox.run_many``,
``max_workers`` launches at once).

Scores: ``mode="fraction"`` is tests passed / tests (open-r1's ``code_reward``), ``mode="binary"``
1.0 iff every test passed (open-r1's ``binary_code_reward``). A completion without a python block
scores 0.0 without running anything: no program is the model's fault. A test that times out, runs
out of memory, crashes, floods its output or prints the wrong thing fails (0 for that test). A run
the sandbox itself could not carry out (status ``sandbox_error``: not the program's fault) makes the
completion's score NaN, which rlreason's reward runner counts as a failure: the completion's reward
is unknown, left out of its group's statistics, never trained on as a 0.

Assert-style tests are judged by what the harness prints *after* the test code finished: a random
marker, made fresh for each launch and looked for on the host, together with exit status 0. The
exit status alone would pass a program that calls ``sys.exit(0)`` (or ``os._exit(0)``) before
the asserts run. The marker is in the program the sandbox runs, so a program written to dig it
out of its own interpreter could still forge it; the marker guards against exits, not against a
program attacking the grader (as with HumanEval's own harness, read what a model learns to write).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import numbers
import secrets
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ._call import short_repr
from ._text import completion_text
from .sandbox import Job, Limits, RunResult, Sandbox, check_available

logger = logging.getLogger("rlreason.rewards")

__all__ = [
    "COLUMNS",
    "MODES",
    "AssertResult",
    "CodeTestsReward",
    "code_tests",
    "extract_code",
    "outputs_match",
    "run_assert_tests",
]

MODES = ("binary", "fraction")
SANDBOX_MODES = ("bwrap", "unsafe-rlimits")
# The columns a row's tests come from, in the order they are looked for (see the module docstring).
COLUMNS = ("verification_info", "test", "entry_point", "test_list", "test_setup_code")

# open-r1's extraction: the LAST block opened by exactly "```python" and a newline, closed by the next
# "```". "```py", "```Python", "```python3" and an unclosed fence are not blocks, as there.
_FENCE = "```python\n"
_CLOSE = "```"


# --------------------------------------------------------------------------- extracting the program


def extract_code(completion: str | list[dict] | dict) -> str:
    """The program in a completion: the body of its last ```` ```python ```` block, "" if it has none.

    open-r1's rule (``re.findall(r"```python\\n(.*?)```", text, re.DOTALL)[-1]``): a block opens at
    ```` ```python ```` followed by a newline and closes at the next ```` ``` ````, so an unclosed
    block and one opened as ```` ```py ```` do not count. ``completion`` is a string or a
    conversational completion (a list of messages): the text is the last assistant message's
    (with tool turns, the model's final answer, not a tool's output).
    """
    text = _answer_text(completion)
    body = ""
    start = 0
    while (opened := text.find(_FENCE, start)) != -1:
        begin = opened + len(_FENCE)
        closed = text.find(_CLOSE, begin)
        if closed == -1:
            break
        body, start = text[begin:closed], closed + len(_CLOSE)
    return body


def _answer_text(completion: Any) -> str:
    """The text the model answered with: a string as is; of a message list, the last message whose
    role is ``assistant`` (tool results that follow it are not the model's)."""
    if isinstance(completion, (list, tuple)):
        said = [m for m in completion if isinstance(m, dict) and m.get("role", "assistant") == "assistant"]
        return completion_text(said[-1]) if said else ""
    return completion_text(completion)


# --------------------------------------------------------------------------- comparing outputs


def outputs_match(actual: str, expected: str) -> bool:
    """Whether a program's stdout matches the expected output, by open-r1's rule: both stripped of
    leading and trailing whitespace, then compared line by line with each line stripped (trailing
    spaces and ``\\r`` do not matter; blank lines inside do).

    One difference from open-r1, on purpose: the number of lines must be equal. open-r1 pairs the
    lines with ``zip``, which stops at the shorter side, so printing only the first line of a
    two-line answer passed there (and an answer followed by extra lines did too).
    """
    got = actual.strip().split("\n")
    want = expected.strip().split("\n")
    return len(got) == len(want) and all(a.strip() == b.strip() for a, b in zip(got, want, strict=True))


# --------------------------------------------------------------------------- a row's tests


@dataclass(frozen=True)
class StdioTests:
    """open-r1's stdin/stdout tests of one row."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class AssertTests:
    """Assert-style tests of one row: each case is test code run after the program, in its namespace."""

    cases: tuple[str, ...]


class ColumnError(ValueError):
    """A dataset value that is no test suite: names the column, the row and what is wrong."""


def _row_error(column: str, row: int, prompt: Any, problem: str) -> ColumnError:
    return ColumnError(f"code_tests: column {column!r}, row {row} of this batch (prompt {short_repr(prompt)}): "
                       f"{problem}")


def _given(columns: dict[str, Sequence], name: str, row: int) -> Any:
    values = columns.get(name)
    return None if values is None else values[row]


def row_tests(columns: dict[str, Sequence], row: int, prompt: Any = None) -> StdioTests | AssertTests | str | None:
    """The tests of batch row ``row``: :class:`StdioTests`, :class:`AssertTests`, the language name
    (a str) when ``verification_info`` is for another language, or None when the row has no tests.
    Raises :class:`ColumnError` for a value that is not a test suite."""
    info = _given(columns, "verification_info", row)
    if info is not None:
        return _stdio_tests(info, row, prompt)
    test, entry_point = _given(columns, "test", row), _given(columns, "entry_point", row)
    if test is not None:
        return _humaneval_tests(test, entry_point, row, prompt)
    test_list = _given(columns, "test_list", row)
    if test_list is not None:
        return _mbpp_tests(test_list, _given(columns, "test_setup_code", row), row, prompt)
    return None


def _stdio_tests(info: Any, row: int, prompt: Any) -> StdioTests | str:
    column = "verification_info"
    if isinstance(info, str):
        try:
            info = json.loads(info)
        except json.JSONDecodeError as e:
            raise _row_error(column, row, prompt, f"not valid JSON ({e})") from None
    if not isinstance(info, dict):
        raise _row_error(column, row, prompt, f"expected a dict with 'test_cases', got {short_repr(info)}")
    # open-r1's rows all say "python"; a row without it is too (None: a dataset's struct column filled the
    # key in for a row that lacked it)
    language = info.get("language") or "python"
    if not isinstance(language, str):
        raise _row_error(column, row, prompt, f"'language' must be a string, got {short_repr(language)}")
    if language.lower() != "python":
        return language
    cases = info.get("test_cases")
    if not isinstance(cases, list) or not cases:
        raise _row_error(column, row, prompt, f"'test_cases' must be a non-empty list, got {short_repr(cases)}")
    inputs, outputs = [], []
    for k, case in enumerate(cases):
        if not isinstance(case, dict):
            raise _row_error(column, row, prompt, f"test_cases[{k}] must be a dict, got {short_repr(case)}")
        kind = case.get("type") or "stdin_stdout"
        if kind != "stdin_stdout":
            raise _row_error(column, row, prompt, f"test_cases[{k}] has type {kind!r}; only 'stdin_stdout' "
                                                  "tests are run (use 'test' + 'entry_point' for function tests)")
        for key in ("input", "output"):
            if not isinstance(case.get(key), str):
                raise _row_error(column, row, prompt,
                                 f"test_cases[{k}][{key!r}] must be a string, got {short_repr(case.get(key))}")
        inputs.append(case["input"])
        outputs.append(case["output"])
    return StdioTests(tuple(inputs), tuple(outputs))


def _humaneval_tests(test: Any, entry_point: Any, row: int, prompt: Any) -> AssertTests:
    if not isinstance(test, str) or not test.strip():
        raise _row_error("test", row, prompt, f"must be test code (a non-empty string), got {short_repr(test)}")
    # Without the call, HumanEval's test only defines check(): every program would pass.
    if not isinstance(entry_point, str) or not entry_point.isidentifier():
        raise _row_error("entry_point", row, prompt, "must name the function check(candidate) is called with "
                                                     f"(a Python identifier), got {short_repr(entry_point)}")
    return AssertTests((f"{test}\ncheck({entry_point})\n",))


def _mbpp_tests(test_list: Any, setup: Any, row: int, prompt: Any) -> AssertTests:
    if isinstance(test_list, str):  # a dataset saved with the list as JSON text
        try:
            test_list = json.loads(test_list)
        except json.JSONDecodeError:
            test_list = None
    if (not isinstance(test_list, list) or not test_list
            or not all(isinstance(t, str) and t.strip() for t in test_list)):
        raise _row_error("test_list", row, prompt, f"must be a non-empty list of assert statements, got "
                                                   f"{short_repr(test_list)}")
    if setup is not None and not isinstance(setup, str):
        raise _row_error("test_setup_code", row, prompt, f"must be a string, got {short_repr(setup)}")
    return AssertTests(tuple(f"{setup or ''}\n{t}\n" for t in test_list))


# --------------------------------------------------------------------------- assert-style harness

# The program the sandbox runs for assert-style tests. The case to run comes on stdin (one launch
# runs every case, each in a fresh process). The candidate and the test run in one namespace of their
# own, named "__candidate__" (HumanEval's harness runs them outside __main__ too, so a solution's
# `if __name__ == "__main__":` demo does not run); compile() keeps a candidate's own
# `from __future__` imports legal. The marker is printed only once the test code returned.
_HARNESS = """\
import sys
_case = int(sys.stdin.readline())
_namespace = {{"__name__": "__candidate__"}}
exec(compile({code!r}, "<program>", "exec"), _namespace)
exec(compile({cases!r}[_case], "<test>", "exec"), _namespace)
sys.stdout.write("\\n" + {marker!r} + "\\n")
sys.stdout.flush()
"""


def _assert_job(code: str, tests: AssertTests) -> tuple[Job, str]:
    """The sandbox job running ``tests`` against ``code``, and the marker a passed case prints."""
    marker = f"rlreason-tests-done-{secrets.token_hex(16)}"
    program = _HARNESS.format(code=code, cases=list(tests.cases), marker=marker)
    return Job(code=program, inputs=[f"{k}\n" for k in range(len(tests.cases))]), marker


def _assert_passed(result: RunResult, marker: str) -> bool:
    return result.status == "ok" and marker in result.stdout


@dataclass(frozen=True)
class AssertResult:
    """One program's verdict from :func:`run_assert_tests`.

    ``passed``: True (the test code ran to its end and the program exited 0), False (the program
    failed: an assertion, an exception, an exit before the tests finished, a timeout, memory, output
    flood), or None when the sandbox itself failed (``run.status == "sandbox_error"``: not the
    program's fault; count it as unknown, not as a failure). ``run`` is the sandbox's
    :class:`~.sandbox.RunResult` (status, stdout, stderr, wall time) for reports.
    """

    passed: bool | None
    run: RunResult


def run_assert_tests(sandbox: Sandbox, programs: Sequence[str], tests: Sequence[str],
                     entry_points: Sequence[str | None], limits: Limits | None = None,
                     total_wall_s: float | None = None) -> list[AssertResult]:
    """Run assert-style tests against programs, in parallel: one :class:`AssertResult` per program,
    in order.

    ``programs[i]`` is a whole Python program (HumanEval: prompt + completion); ``tests[i]`` is test
    code run after it, in its namespace; with ``entry_points[i]`` (HumanEval) the tests define
    ``check(candidate)`` and ``check(<entry_points[i]>)`` is called after them, with None (MBPP:
    setup code and the asserts as one string) the test code is run as is. Each program is one
    sandbox launch (``sandbox.run_many``) under ``limits`` (the sandbox's own by default) and
    ``total_wall_s``. Raises ValueError when the three lists differ in length or an entry point is
    no identifier.
    """
    if not len(programs) == len(tests) == len(entry_points):
        raise ValueError(f"run_assert_tests: {len(programs)} programs, {len(tests)} tests and "
                         f"{len(entry_points)} entry points: give one of each per program")
    jobs, markers = [], []
    for i, (test, entry_point) in enumerate(zip(tests, entry_points, strict=True)):
        if entry_point is not None and (not isinstance(entry_point, str) or not entry_point.isidentifier()):
            raise ValueError(f"run_assert_tests: entry_points[{i}] must be a function name or None, "
                             f"got {short_repr(entry_point)}")
        suite = AssertTests((test if entry_point is None else f"{test}\ncheck({entry_point})\n",))
        job, marker = _assert_job(programs[i], suite)
        jobs.append(job)
        markers.append(marker)
    out = []
    for runs, marker in zip(sandbox.run_many(jobs, limits, total_wall_s), markers, strict=True):
        (run,) = runs
        passed = None if run.status == "sandbox_error" else _assert_passed(run, marker)
        out.append(AssertResult(passed, run))
    return out


# --------------------------------------------------------------------------- the reward


def _positive(name: str, value: Any, *, integer: bool = False) -> float | int:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"code_tests: {name} must be a positive {'integer' if integer else 'number'}, "
                         f"got {value!r}")
    return int(value) if integer else float(value)


class CodeTestsReward:
    """The ``code_tests`` reward: programs in completions run against their rows' tests in the sandbox.

    See the module docstring for the columns, the extraction and the scores. Arguments (the
    ``kwargs`` of a ``reward_funcs`` entry):

    - ``mode``: ``"fraction"`` (tests passed / tests, open-r1's ``code_reward``; the default) or
      ``"binary"`` (1.0 iff all pass, open-r1's ``binary_code_reward``).
    - ``per_test_timeout_s``: wall-clock and CPU time of one test's run (default 5, open-r1's).
    - ``total_timeout_s``: wall-clock time of all of one program's tests together (default 8, so one
      completion stays under the reward runner's default ``reward_timeout_s`` of 10 s; a chunk of n
      programs takes about ``ceil(n / max_workers)`` times that at worst, docs/code.md).
    - ``memory_mb``: address space of one run (default 512).
    - ``sandbox``: ``"bwrap"`` (the default: bubblewrap namespaces; construction raises
      ``SandboxUnavailable``, saying how to install it, where it cannot run) or ``"unsafe-rlimits"``
      (the explicit opt-in to rlimits without isolation, with a loud warning).
    - ``max_workers``: sandbox launches at once (default: the CPU count).

    The sandbox is made once, at construction: the check that it can run here. Instances pickle.
    """

    # Each completion is scored on its own, so the reward workers may split a batch between them
    # (docs/rewards.md): each chunk gets its own reward_timeout_s, and a chunk that times out costs
    # only its own completions' rescoring. A whole batch of programs in one call can take longer than
    # the default 10 s on a busy 2-core machine.
    rlreason_chunk_size = "auto"

    def __init__(self, mode: str = "fraction", per_test_timeout_s: float = 5.0, total_timeout_s: float = 8.0,
                 memory_mb: int = 512, sandbox: str = "bwrap", max_workers: int | None = None) -> None:
        self._configure(mode, per_test_timeout_s, total_timeout_s, memory_mb, sandbox, max_workers)
        self._sandbox()  # refuse to start without bubblewrap, here rather than at the first step

    def _configure(self, mode: str, per_test_timeout_s: float, total_timeout_s: float, memory_mb: int,
                   sandbox: str, max_workers: int | None) -> None:
        if mode not in MODES:
            raise ValueError(f"code_tests: mode must be one of {MODES}, got {mode!r}")
        if sandbox not in SANDBOX_MODES:
            raise ValueError(f"code_tests: sandbox must be one of {SANDBOX_MODES}, got {sandbox!r}")
        self.mode = mode
        self.per_test_timeout_s = _positive("per_test_timeout_s", per_test_timeout_s)
        self.total_timeout_s = _positive("total_timeout_s", total_timeout_s)
        self.memory_mb = _positive("memory_mb", memory_mb, integer=True)
        self.sandbox = sandbox
        self.max_workers = None if max_workers is None else _positive("max_workers", max_workers, integer=True)
        self.limits = Limits(wall_s=self.per_test_timeout_s, cpu_s=self.per_test_timeout_s, memory_mb=self.memory_mb)
        self.__name__ = "code_tests"
        self._warned_languages: set[str] = set()
        self._box: Sandbox | None = None

    def _sandbox(self) -> Sandbox:
        """The sandbox, made on first use (the ready-made ``code_tests`` is made without one, so that
        importing rlreason never needs bubblewrap). A Sandbox holds no open resources (its threads live
        only during ``run_many``), so a reward forked into the reward workers or pickled for them
        carries it along."""
        if self._box is None:
            self._box = Sandbox(self.limits, mode=self.sandbox, max_workers=self.max_workers)
        return self._box

    def check_columns(self, columns: set[str]) -> None:
        """Start-up check (``build_rewards`` with the dataset's columns): the dataset must have test
        columns, and the sandbox must be able to run (raises ``SandboxUnavailable`` otherwise, also
        for the lazily checked module-level ``code_tests``)."""
        if "verification_info" not in columns and "test_list" not in columns and not (
                {"test", "entry_point"} <= columns):
            raise ValueError("needs test columns: 'verification_info' (stdin/stdout tests), 'test' and "
                             "'entry_point' (HumanEval) or 'test_list' (MBPP)")
        if self.sandbox == "bwrap":
            check_available()

    # -- scoring

    def __call__(self, prompts: list, completions: list, **columns: Any) -> list[float | None]:
        n = len(completions)
        log_metric: Callable | None = columns.pop("log_metric", None)
        log_extra: Callable | None = columns.pop("log_extra", None)
        for name in COLUMNS:
            if name in columns and (not isinstance(columns[name], Sequence) or len(columns[name]) != n):
                raise ValueError(f"code_tests: column {name!r} must be a list with one value per completion ({n})")
        suites = [row_tests(columns, i, prompts[i]) for i in range(n)]
        scores: list[float | None] = [None] * n
        jobs: list[Job] = []
        judged: list[tuple[int, StdioTests | AssertTests, str]] = []  # (row, its tests, marker)
        no_code = 0
        for i, suite in enumerate(suites):
            if isinstance(suite, str):
                self._warn_language(suite)
                continue
            if suite is None:
                continue
            code = extract_code(completions[i])
            if not code.strip():
                scores[i] = 0.0  # no program: the model's fault, nothing to run
                no_code += 1
                continue
            if isinstance(suite, StdioTests):
                jobs.append(Job(code=code, inputs=list(suite.inputs)))
                judged.append((i, suite, ""))
            else:
                job, marker = _assert_job(code, suite)
                jobs.append(job)
                judged.append((i, suite, marker))
        runs = self._sandbox().run_many(jobs, self.limits, self.total_timeout_s) if jobs else []
        statuses: dict[str, int] = {}
        # per completion, for completions.jsonl: each test run's status ("no program" without a block)
        runs_seen: list[str | None] = ["no program" if s == 0.0 else None for s in scores]
        for (i, suite, marker), results in zip(judged, runs, strict=True):
            for r in results:
                statuses[r.status] = statuses.get(r.status, 0) + 1
            scores[i] = self._score(suite, marker, results)
            runs_seen[i] = " ".join(r.status for r in results)
        if log_metric is not None and (jobs or no_code):
            self._log(log_metric, len(jobs) + no_code, no_code, statuses)
        if log_extra is not None:
            log_extra("code_tests_runs", runs_seen)
        return scores

    def _score(self, suite: StdioTests | AssertTests, marker: str, results: list[RunResult]) -> float:
        broken = next((r for r in results if r.status == "sandbox_error"), None)
        if broken is not None:
            # the sandbox failed, not the program: the reward is unknown. The runner logs "returned nan";
            # this says why.
            logger.warning("code_tests: the sandbox failed (%s); the completion's reward is unknown (NaN)",
                           broken.detail[:500])
            return math.nan
        if isinstance(suite, StdioTests):
            passed = [r.status == "ok" and outputs_match(r.stdout, want)
                      for r, want in zip(results, suite.outputs, strict=True)]
        else:
            passed = [_assert_passed(r, marker) for r in results]
        if self.mode == "binary":
            return 1.0 if all(passed) else 0.0
        return sum(passed) / len(passed)

    def _warn_language(self, language: str) -> None:
        if language not in self._warned_languages:
            self._warned_languages.add(language)
            warnings.warn(f"code_tests: verification_info of language {language!r}: only Python programs are run; "
                          "those rows score None (the reward does not apply)", stacklevel=3)

    @staticmethod
    def _log(log_metric: Callable, programs: int, no_code: int, statuses: dict[str, int]) -> None:
        """Per call: the share of completions without a program, and of test runs by outcome."""
        log_metric("code_tests/no_code", no_code / programs)
        runs = sum(statuses.values())
        if runs:
            for status in ("timeout", "memory", "output_limit", "sandbox_error"):
                log_metric(f"code_tests/{status}", statuses.get(status, 0) / runs)

    def __repr__(self) -> str:
        return (f"CodeTestsReward(mode={self.mode!r}, per_test_timeout_s={self.per_test_timeout_s:g}, "
                f"total_timeout_s={self.total_timeout_s:g}, memory_mb={self.memory_mb}, sandbox={self.sandbox!r}, "
                f"max_workers={self.max_workers})")


# The ready-made reward, for ``reward_funcs=[code_tests]`` as in TRL. Made without a sandbox, so
# importing rlreason never needs bubblewrap: its start-up check (check_columns) and its first call
# make one, and refuse to run without bubblewrap.
code_tests = CodeTestsReward.__new__(CodeTestsReward)
code_tests._configure(**{k: p.default for k, p in inspect.signature(CodeTestsReward).parameters.items()})

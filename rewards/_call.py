"""Calling a reward function safely, and scheduling a batch as calls; the same rules whether the
batch is scored in this process (:func:`run_in_process`) or by the pool's workers (:mod:`._pool`).

:func:`call_reward` makes one call and checks its result (:func:`check_result`), never raising;
:class:`Batch` splits a batch into one call per chunk of completions, with item-by-item retries
of a chunk that fails as a whole, and gathers the values and failures (:class:`BatchResult`).

:func:`call_reward` is the one place a reward is called and its result checked: training, the
held-out evaluation, the suites, offline distillation (all through :class:`~.runner.RewardRunner`
or :func:`~.runner.score`) and the preflight check (:func:`run_in_process`) call rewards only
through it, so a None, a failure and an invalid value mean the same everywhere.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import math
import numbers
import os
import reprlib
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# An outcome of one call, as plain tuples so they pickle quickly:
#   ("ok", values, bad, logs) values: one float per completion (NaN for None or invalid);
#                            bad: (position, why) of each value that is not a finite float32 number;
#                            logs: what the reward passed to log_extra / log_metric (Logs), or None
#   ("fail", kind, detail)   kind: raised | result | memory | timeout | crash | skipped
Outcome = tuple
# One failed completion, as reported to the caller: (index in the batch, kind, detail).
Failure = tuple[int, str, str]
# What one call logged: ({column: values for the call's completions}, {metric: [values]}).
Logs = tuple[dict[str, list], dict[str, list[float]]]

# Arguments TRL passes to every reward besides the columns; a reward receives them when it names
# them or takes **kwargs (check_signature lets a reward without **kwargs omit them).
TRAINER_ARGS = ("trainer_state", "log_extra", "log_metric")


class Shared:
    """A reward argument that is the same for every completion (``trainer_state``): passed to each
    call as it is, never split by completion like a column."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 200
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 4
_REPR.maxlevel = 3


def short_repr(obj: Any) -> str:
    """A repr that stays short for megabyte strings and deep structures, and never raises."""
    try:
        return _REPR.repr(obj)
    except Exception:  # a broken __repr__ of a user object
        return f"<unprintable {type(obj).__name__}>"


# ---------------------------------------------------------------------------------------------
# Calling a reward function


# The largest reward magnitude taken as a score. The trainer's statistics of the scores run in
# float64 and its tensors are float32: 1e39 or 1e300 (finite in float64) became inf in float32 and
# silently zeroed the advantages of every group holding one (issue 29). Beyond float32's range a
# value is a failure, named in the log like NaN.
MAX_ABS_REWARD = 3.4028234663852886e38  # torch.finfo(torch.float32).max


def as_float(v: Any) -> float | None:
    """``v`` as a float (NaN for None, meaning "does not apply"); None if ``v`` is invalid."""
    if v is None:
        return math.nan
    # numbers.Real: int, bool, float, Fraction, and numpy scalars; not str, complex or containers.
    if not isinstance(v, numbers.Real):
        return None
    try:
        value = float(v)
    except (OverflowError, ValueError):
        return None
    return value if math.isfinite(value) and abs(value) <= MAX_ABS_REWARD else None


def invalid_value(v: Any) -> str:
    """Why ``as_float`` refused ``v``, as the failure's detail says it."""
    text = f"returned {short_repr(v)}"
    if isinstance(v, numbers.Real):
        try:
            value = float(v)
        except (OverflowError, ValueError):
            return f"{text} (beyond float64's range)"
        if math.isfinite(value) and abs(value) > MAX_ABS_REWARD:
            return f"{text} (beyond float32's range, |v| > 3.4e38)"
    return text


def where(e: BaseException) -> str:
    """`` at file:line in function`` for the frame that raised, to find the bug without DEBUG logs."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" at {last.filename}:{last.lineno} in {last.name}"


def _accepts(fn: Callable) -> set[str] | None:
    """The names of :data:`TRAINER_ARGS` ``fn`` can take; None if it takes every keyword."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name in TRAINER_ARGS}


def call_reward(fn: Callable, prompts: Sequence, completions: Sequence, columns: dict[str, Sequence],
                in_process: bool = False) -> Outcome:
    """Call ``fn`` once on these completions and check its result; never raises an ``Exception``.

    A :class:`Shared` column is passed as its value; ``log_extra(column, values)`` and
    ``log_metric(name, value)`` (TRL's) are passed to a reward that can take them, and what it
    logs comes back in the outcome. An ``async def`` reward (or one returning an awaitable) is
    run to completion here.

    ``in_process``: the call runs in the trainer's own process (``reward_num_workers: 0``), where
    a pool worker's isolation is missing; what a call can take away from it is kept: every call
    gets its own deep copy of the arguments (a reward editing ``completions[i][-1]["content"]``
    changed what the next reward saw), ``sys.exit`` and a ``KeyboardInterrupt`` raised by the
    reward are failures (they ended or crashed the run), and the working directory is put back
    (a reward's ``os.chdir`` sent checkpoints and the final model into its folder). A hang, a
    crash of the interpreter or a memory blow-up still take the trainer with them: only the pool
    guards against those.
    """
    if in_process:
        cwd = os.getcwd()
        try:
            prompts, completions, columns = copy.deepcopy((prompts, completions, columns))
            return call_reward(fn, prompts, completions, columns)
        except SystemExit as e:
            return ("fail", "raised", f"called sys.exit({short_repr(e.code)}){where(e)}")
        except KeyboardInterrupt as e:  # raised by the reward (a stop signal raises rlreason's Stopped)
            return ("fail", "raised", f"raised KeyboardInterrupt{where(e)}")
        finally:
            if os.getcwd() != cwd:
                os.chdir(cwd)
    extra: dict[str, list] = {}
    metrics: dict[str, list[float]] = {}

    def log_extra(column: str, values: list) -> None:
        extra.setdefault(column, []).extend(values)

    def log_metric(name: str, value: float) -> None:
        metrics.setdefault(name, []).append(float(value))

    try:
        # Fresh lists, so a reward that mutates its arguments does not change what the next one sees.
        kwargs = {k: v.value if isinstance(v, Shared) else list(v) for k, v in columns.items()}
        accepted = _accepts(fn)
        loggers = {"log_extra": log_extra, "log_metric": log_metric}
        kwargs.update({k: f for k, f in loggers.items() if accepted is None or k in accepted})
        if accepted is not None:  # a reward without **kwargs gets only the trainer arguments it names
            kwargs = {k: v for k, v in kwargs.items() if k not in TRAINER_ARGS or k in accepted}
        result = fn(prompts=list(prompts), completions=list(completions), **kwargs)
        if inspect.isawaitable(result):
            result = run_awaitable(result)
        outcome = check_result(result, len(completions))
        return (*outcome[:3], (extra, metrics)) if outcome[0] == "ok" and (extra or metrics) else outcome
    except MemoryError as e:
        return ("fail", "memory", f"ran out of memory (MemoryError{where(e)})")
    except RecursionError as e:  # before Exception: its repr can be long and is always the same
        return ("fail", "raised", f"raised RecursionError{where(e)}")
    except Exception as e:
        return ("fail", "raised", f"raised {short_repr(e)}{where(e)}")


def run_awaitable(awaitable: Any) -> Any:
    """The result of ``awaitable``, run on a fresh event loop.

    If this thread already runs a loop (a caller inside async code, in-process mode), the loop
    cannot be re-entered, so the awaitable runs on a loop in a helper thread instead.
    """

    async def wrapped() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wrapped())
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(wrapped())
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, name="rlreason-async-reward")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def check_result(result: Any, n: int) -> Outcome:
    """A reward's return value as an outcome: one float per completion, or a failure."""
    if hasattr(result, "tolist") and not isinstance(result, (list, tuple)):
        result = result.tolist()  # a torch tensor or numpy array of scores
    if not isinstance(result, (list, tuple)):
        return ("fail", "result", f"returned a {type(result).__name__}, expected a list")
    if len(result) != n:
        return ("fail", "result", f"returned {len(result)} values, expected length {n} (one per completion)")
    values: list[float] = []
    bad: list[tuple[int, str]] = []
    for position, v in enumerate(result):
        value = as_float(v)
        if value is None:
            bad.append((position, invalid_value(v)))
            value = math.nan
        values.append(value)
    return ("ok", values, bad, None)


# ---------------------------------------------------------------------------------------------
# Scheduling one batch


@dataclass
class Task:
    """One call to make: reward function ``func`` on the completions at ``indices``."""

    func: int
    indices: list[int]


@dataclass
class BatchResult:
    """Per function: one value per completion (NaN where None or failed), and the failures."""

    values: list[list[float]]
    failures: list[list[Failure]]
    # per function, per successful call that logged something: (the call's indices, its Logs)
    logs: list[list[tuple[list[int], Logs]]] | None = None

    @classmethod
    def all_failed(cls, num_funcs: int, n: int, kind: str, detail: str) -> BatchResult:
        return cls(
            values=[[math.nan] * n for _ in range(num_funcs)],
            failures=[[(i, kind, detail) for i in range(n)] for _ in range(num_funcs)],
        )


class Batch:
    """Which calls remain for a batch, and what the finished ones gave.

    Every function first gets one call per chunk of ``chunk_size`` completions. A chunk call
    that fails as a whole (raises, times out, crashes, runs out of memory, returns the wrong
    shape) is retried one completion per call (unless ``retry`` is False: then its completions
    fail with it), so a single pathological completion costs
    only itself; a one-completion call that fails scores that completion None. Invalid values
    (NaN, "1") fail only their own completion and are not retried. Retries go to the front of
    the queue, so a function that is merely slow on big chunks shows a success early.

    A function is given up on for the rest of the batch (its calls not yet made are skipped,
    scored None) after ``max_timeouts`` one-completion timeouts (certain hangs), or after
    ``futile_timeouts`` timeouts while none of its calls has succeeded yet: a reward that
    hangs on everything must not stall the step for ``batch size x timeout``. Timeouts of
    chunk calls alone never give up on a function that does succeed (it may just be slow).
    """

    def __init__(self, num_funcs: int, n: int, chunk_size: int | Sequence[int], max_timeouts: int,
                 futile_timeouts: int, retry: bool = True) -> None:
        self.retry = retry
        self.values = [[math.nan] * n for _ in range(num_funcs)]
        self.failures: list[list[Failure]] = [[] for _ in range(num_funcs)]
        self.logs: list[list[tuple[list[int], Logs]]] = [[] for _ in range(num_funcs)]
        # one chunk size for all functions, or one per function (whole-batch rewards get n)
        sizes = [chunk_size] * num_funcs if isinstance(chunk_size, int) else list(chunk_size)
        self.pending: deque[Task] = deque(
            Task(f, list(range(start, min(start + max(sizes[f], 1), n))))
            for f in range(num_funcs)
            for start in range(0, n, max(sizes[f], 1))
        )
        self.max_timeouts = max_timeouts
        self.futile_timeouts = futile_timeouts
        self.timeouts = [0] * num_funcs  # all timed-out calls
        self.hangs = [0] * num_funcs  # timed-out one-completion calls
        self.successes = [0] * num_funcs
        self.given_up: dict[int, str] = {}  # function -> why

    def next_task(self) -> Task | None:
        return self.pending.popleft() if self.pending else None

    def finish(self, task: Task, outcome: Outcome) -> None:
        """Record a call's outcome, queueing item-by-item retries for a failed chunk."""
        if outcome[0] == "ok":
            self._record_values(task, outcome)
            return
        _, kind, detail = outcome
        if kind == "timeout":
            self._count_timeout(task)
        if len(task.indices) == 1 or not self.retry:
            self.failures[task.func].extend((i, kind, detail) for i in task.indices)
        elif task.func in self.given_up:
            self._skip(task)
        else:
            self.pending.extendleft(Task(task.func, [i]) for i in reversed(task.indices))

    def result(self) -> BatchResult:
        for failures in self.failures:
            failures.sort()
        return BatchResult(self.values, self.failures, self.logs)

    def _record_values(self, task: Task, outcome: Outcome) -> None:
        _, values, bad, *logs = outcome
        self.successes[task.func] += 1
        if logs and logs[0] is not None:
            self.logs[task.func].append((task.indices, logs[0]))
        for i, value in zip(task.indices, values, strict=True):
            self.values[task.func][i] = value
        for position, text in bad:
            self.failures[task.func].append((task.indices[position], "invalid", text))

    def _count_timeout(self, task: Task) -> None:
        f = task.func
        self.timeouts[f] += 1
        self.hangs[f] += len(task.indices) == 1
        if f in self.given_up:
            return
        if self.hangs[f] >= self.max_timeouts:
            self.given_up[f] = f"{self.hangs[f]} of its calls on single completions timed out"
        elif not self.successes[f] and self.timeouts[f] >= self.futile_timeouts:
            self.given_up[f] = f"{self.timeouts[f]} of its calls timed out and none succeeded"
        else:
            return
        dropped = [t for t in self.pending if t.func == f]
        self.pending = deque(t for t in self.pending if t.func != f)
        for t in dropped:
            self._skip(t)

    def _skip(self, task: Task) -> None:
        detail = f"skipped: {self.given_up[task.func]} in this batch"
        self.failures[task.func].extend((i, "skipped", detail) for i in task.indices)


def run_in_process(funcs: Sequence[Callable], prompts: Sequence, completions: Sequence, columns: dict,
                   retry: bool = True) -> BatchResult:
    """Score a batch in this process, with the same chunk-then-retry rules as the pool
    (``retry=False``: a call that fails as a whole fails all its completions, none retried).

    One chunk per function (chunking only pays off across processes). No timeouts and no
    memory cap: a reward that hangs here hangs the caller.
    """
    n = len(completions)
    batch = Batch(len(funcs), n, max(n, 1), max_timeouts=sys.maxsize, futile_timeouts=sys.maxsize, retry=retry)
    while (task := batch.next_task()) is not None:
        batch.finish(task, call_reward(funcs[task.func], *_select(task.indices, prompts, completions, columns),
                                       in_process=True))
    return batch.result()


def _select(indices: list[int], prompts: Sequence, completions: Sequence, columns: dict) -> tuple:
    """The prompts, completions and columns of the completions at ``indices``."""
    if len(indices) == len(completions):  # the whole batch: no copy needed (call_reward copies)
        return prompts, completions, columns
    return (
        [prompts[i] for i in indices],
        [completions[i] for i in indices],
        {k: v if isinstance(v, Shared) else [v[i] for i in indices] for k, v in columns.items()},
    )


"""Machinery behind :class:`~.runner.RewardRunner`: calling a reward safely, scheduling a batch
as chunks with item-by-item retries, and a process pool whose workers can be killed.

Process layout::

    trainer --pipe-- manager  (single-threaded; never runs reward code)
                       |--pipe-- worker 1  (own process group, RLIMIT_AS, dies with the manager)
                       `--pipe-- worker 2

Why a manager process between the trainer and the workers:

- Workers are replaced often (every timeout, crash or memory blow-up). Forking a replacement
  from the trainer would fork a big, multi-threaded process (CUDA, tokenizer and data-loader
  threads) at an arbitrary moment, which can deadlock the child on a lock another thread held.
  The manager is single-threaded, so forking it is always safe, and cheap.
- Timeouts are enforced by the manager with ``multiprocessing.connection.wait`` deadlines and
  SIGKILL, so they work whichever thread of the trainer calls ``score`` (no ``signal.alarm``).
- The trainer only ever blocks on one pipe, polling the manager's liveness; if the manager
  itself dies, the batch is scored None and a new manager is started.

The manager is started once, when the runner is built: with ``"fork"`` (default) it inherits
the reward functions as they are (closures, lambdas and modules loaded from files included);
with ``"spawn"`` it starts a fresh interpreter and the functions are pickled, after their
defining modules are imported or, for modules loaded from a file path, loaded again from that
file under the same module name.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import functools
import importlib
import importlib.util
import inspect
import math
import multiprocessing
import numbers
import os
import pickle
import reprlib
import signal
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

# An outcome of one call, as plain tuples so they pickle quickly:
#   ("ok", values, bad, logs) values: one float per completion (NaN for None or invalid);
#                            bad: (position, repr) of each value that is not a finite number;
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

_POLL_S = 0.5  # how often blocked loops look up (parent alive? manager alive?)
_START_TIMEOUT_S = 120.0  # a spawned manager imports the reward modules; be generous
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
    return value if math.isfinite(value) else None


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


def call_reward(fn: Callable, prompts: Sequence, completions: Sequence, columns: dict[str, Sequence]) -> Outcome:
    """Call ``fn`` once on these completions and check its result; never raises an ``Exception``.

    A :class:`Shared` column is passed as its value; ``log_extra(column, values)`` and
    ``log_metric(name, value)`` (TRL's) are passed to a reward that can take them, and what it
    logs comes back in the outcome. An ``async def`` reward (or one returning an awaitable) is
    run to completion here.
    """
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
        return ("fail", "result", f"returned {len(result)} values for {n} completions")
    values: list[float] = []
    bad: list[tuple[int, str]] = []
    for position, v in enumerate(result):
        value = as_float(v)
        if value is None:
            bad.append((position, short_repr(v)))
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
    shape) is retried one completion per call, so a single pathological completion costs
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
                 futile_timeouts: int) -> None:
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
        if len(task.indices) == 1:
            self.failures[task.func].append((task.indices[0], kind, detail))
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
            self.failures[task.func].append((task.indices[position], "invalid", f"returned {text}"))

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


def run_in_process(funcs: Sequence[Callable], prompts: Sequence, completions: Sequence, columns: dict) -> BatchResult:
    """Score a batch in this process, with the same chunk-then-retry rules as the pool.

    One chunk per function (chunking only pays off across processes). No timeouts and no
    memory cap: a reward that hangs here hangs the caller.
    """
    n = len(completions)
    batch = Batch(len(funcs), n, max(n, 1), max_timeouts=sys.maxsize, futile_timeouts=sys.maxsize)
    while (task := batch.next_task()) is not None:
        batch.finish(task, call_reward(funcs[task.func], *_select(task.indices, prompts, completions, columns)))
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


# ---------------------------------------------------------------------------------------------
# Workers (run in a process forked from the manager)


@dataclass(frozen=True)
class PoolConfig:
    num_workers: int
    timeout_s: float
    memory_mb: float | None
    max_timeouts: int


def _worker_main(conn: Connection, funcs: Sequence[Callable], memory_mb: float | None, manager_pid: int) -> None:
    """Serve calls until the manager closes the pipe. Runs reward code, so it may hang or die."""
    # Ctrl-C and a SIGTERM to the whole job (Slurm, Kubernetes, `timeout`) are for the trainer,
    # which finishes scoring the step, checkpoints and then closes the pool; SIGKILL still works.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != manager_pid:  # the manager died before we asked to die with it
        return
    if memory_mb is not None:
        _limit_address_space(memory_mb)
    me = os.getpid()
    output = _capture_output()
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        call_id, func, prompts, completions, columns = request
        outcome = call_reward(funcs[func], prompts, completions, columns)
        if os.getpid() != me:
            # A reward that forked and whose child returned through our code: only this process
            # may answer on the pipe (two answers would shift every later chunk's scores).
            os._exit(0)
        del request, prompts, completions, columns
        if output is not None:
            output.report(me)
        conn.send((call_id, outcome))
        if outcome[0] == "fail" and outcome[1] == "memory":
            return  # after a MemoryError the heap may be fragmented or half-built: start afresh


_OUTPUT_CAP = 2000  # bytes of a call's stdout/stderr shown; a reward printing megabytes per call must not flood


class _CapturedOutput:
    """The worker's stdout and stderr (fds 1 and 2, so subprocesses and C code too) go to a
    temporary file; after each call its first ``_OUTPUT_CAP`` bytes are copied to the real
    stderr and the file is emptied."""

    def __init__(self, file: Any, real_stderr: int) -> None:
        self.file = file
        self.real_stderr = real_stderr

    def report(self, pid: int) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        fd = self.file.fileno()
        with contextlib.suppress(OSError):
            size = os.fstat(fd).st_size
            if not size:
                return
            os.lseek(fd, 0, os.SEEK_SET)
            head = os.read(fd, _OUTPUT_CAP)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            cut = f" (first {len(head)} of {size} bytes)" if size > len(head) else ""
            text = head.decode("utf-8", "replace").rstrip("\n")
            os.write(self.real_stderr, f"[reward worker {pid} output{cut}]\n{text}\n".encode())


def _capture_output() -> _CapturedOutput | None:
    import tempfile

    try:
        real_stderr = os.dup(2)
        file = tempfile.TemporaryFile()  # noqa: SIM115 (lives as long as the worker)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(file.fileno(), 1)
        os.dup2(file.fileno(), 2)
    except OSError:
        return None
    return _CapturedOutput(file, real_stderr)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent (the manager) dies, however it dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _limit_address_space(memory_mb: float) -> None:
    """Cap the address space at what the worker maps now plus ``memory_mb``.

    Relative, not absolute: a worker forked from a process that imported torch (or CUDA) already
    maps hundreds of MB to GBs of shared libraries, which an absolute cap would count.
    """
    import resource  # POSIX only; imported here so the module still imports elsewhere

    baseline = _mapped_bytes()
    if baseline is None:
        return
    limit = baseline + int(memory_mb * 2**20)
    with contextlib.suppress(ValueError, OSError):  # a hard limit already lower: keep it
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _mapped_bytes() -> int | None:
    """This process's virtual memory size (VmSize), or None where /proc is unavailable."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------
# The manager (its own process; forks, feeds, times and kills the workers)


@dataclass
class _Worker:
    pid: int
    conn: Connection
    task: Task | None = None
    deadline: float = math.inf
    call_id: int = 0  # echoed in the reply: a stray or stale answer on the pipe is a protocol error


_KINDS = ("raised", "result", "memory", "timeout", "crash", "skipped")


def _valid_reply(reply: Any, call_id: int, n: int) -> bool:
    """Whether ``reply`` is the worker's answer to call ``call_id`` on ``n`` completions, in shape.
    Anything else on the pipe (a forked child's answer, bytes a reward wrote to the inherited
    descriptor) must count as a failure, never as scores."""
    if not (isinstance(reply, tuple) and len(reply) == 2 and reply[0] == call_id):
        return False
    outcome = reply[1]
    if not isinstance(outcome, tuple) or len(outcome) not in (3, 4):
        return False
    if outcome[0] == "ok":
        values, bad = outcome[1], outcome[2]
        # an optional 4th element: what the reward logged ((extra columns, metrics), call_reward)
        logs = outcome[3] if len(outcome) == 4 else None
        logs_ok = logs is None or (isinstance(logs, tuple) and len(logs) == 2
                                   and all(isinstance(part, dict) for part in logs))
        return (logs_ok and isinstance(values, list) and len(values) == n and all(type(v) is float for v in values)
                and isinstance(bad, list) and all(isinstance(b, tuple) and len(b) == 2 and isinstance(b[0], int)
                                                  and 0 <= b[0] < n for b in bad))
    return len(outcome) == 3 and outcome[0] == "fail" and outcome[1] in _KINDS and isinstance(outcome[2], str)


class _ParentGone(Exception):
    """The trainer died: stop everything."""


class _Manager:
    def __init__(self, conn: Connection, funcs: Sequence[Callable], config: PoolConfig, parent_pid: int) -> None:
        self.conn = conn
        self.funcs = funcs
        self.config = config
        self.parent_pid = parent_pid
        self.workers: list[_Worker] = []

    def serve(self) -> None:
        try:
            for _ in range(self.config.num_workers):
                self.workers.append(self._fork_worker())
            self.conn.send(("ready", os.getpid()))
            while (request := self._next_request()) is not None:
                batch_id, prompts, completions, columns, chunk_size = request
                result = self._run_batch(prompts, completions, columns, chunk_size)
                self.conn.send((batch_id, result))
        except _ParentGone:
            pass
        finally:
            for worker in self.workers:
                _kill_and_reap(worker.pid)
            _kill_strays(keep=set())

    def _next_request(self) -> tuple | None:
        """The next batch; None when the trainer asks to close or is gone."""
        while not self.conn.poll(_POLL_S):
            self._check_parent()
        try:
            return self.conn.recv()  # None: the trainer closes the pool
        except (EOFError, OSError):
            return None

    def _check_parent(self) -> None:
        if os.getppid() != self.parent_pid:  # re-parented: the trainer died without closing us
            raise _ParentGone

    def _run_batch(self, prompts: list, completions: list, columns: dict, chunk_size: int) -> BatchResult:
        # "Futile" after two rounds of timeouts on every worker with no success at all.
        futile = 2 * self.config.num_workers
        batch = Batch(len(self.funcs), len(completions), chunk_size, self.config.max_timeouts, futile)
        data = (prompts, completions, columns)
        while True:
            self._assign(batch, data)
            busy = [w for w in self.workers if w.task is not None]
            if not busy:
                return batch.result()
            soonest = min(w.deadline for w in busy)
            ready = set(wait([w.conn for w in busy], timeout=max(0.0, min(soonest - time.monotonic(), _POLL_S))))
            for worker in busy:
                if worker.conn in ready:
                    self._collect(worker, batch)
                elif time.monotonic() >= worker.deadline:
                    self._time_out(worker, batch)
            self._check_parent()

    def _assign(self, batch: Batch, data: tuple) -> None:
        for worker in self.workers:
            if worker.task is None and (task := batch.next_task()) is not None:
                self._send(worker, task, batch, data)

    def _send(self, worker: _Worker, task: Task, batch: Batch, data: tuple) -> None:
        worker.task = task
        worker.deadline = time.monotonic() + self.config.timeout_s
        worker.call_id += 1
        try:
            worker.conn.send((worker.call_id, task.func, *_select(task.indices, *data)))
        except OSError:  # it died while idle (e.g. the OOM killer): charge the task; it is retried
            batch.finish(task, ("fail", "crash", f"worker died before the call ({self._replace(worker)})"))

    def _collect(self, worker: _Worker, batch: Batch) -> None:
        task = worker.task
        assert task is not None
        try:
            reply = worker.conn.recv()
        except (EOFError, OSError):
            outcome = ("fail", "crash", f"crashed its worker ({self._replace(worker, grace_s=1.0)})")
        except Exception as e:  # unpickling garbage: something else wrote to the pipe
            outcome = ("fail", "crash",
                       f"protocol error on its worker's pipe ({short_repr(e)}; {self._replace(worker)})")
        else:
            if not _valid_reply(reply, worker.call_id, len(task.indices)):
                outcome = ("fail", "crash", f"protocol error on its worker's pipe (unexpected reply "
                                            f"{short_repr(reply)}; {self._replace(worker)})")
            else:
                outcome = reply[1]
                worker.task = None
                if outcome[0] == "fail" and outcome[1] == "memory":
                    self._replace(worker, grace_s=1.0)  # it exits by itself after a MemoryError
        batch.finish(task, outcome)

    def _time_out(self, worker: _Worker, batch: Batch) -> None:
        task = worker.task
        assert task is not None
        self._replace(worker)
        batch.finish(task, ("fail", "timeout", f"timed out after {self.config.timeout_s:g} s"))

    def _replace(self, worker: _Worker, grace_s: float = 0.0) -> str:
        """Kill (after ``grace_s`` to exit by itself) and reap ``worker``, put a fresh one in its
        place, and say how the old one ended."""
        status = _reap(worker.pid, grace_s) if grace_s else None
        if status is None:
            status = _kill_and_reap(worker.pid)
        worker.conn.close()
        _kill_strays(keep={w.pid for w in self.workers})  # what the reward left running, even in a new session
        fresh = self._fork_worker()
        worker.pid, worker.conn, worker.task, worker.deadline = fresh.pid, fresh.conn, None, math.inf
        return _describe_status(status)

    def _fork_worker(self) -> _Worker:
        ours, theirs = multiprocessing.Pipe()
        manager_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                # its own session (and so group): a kill takes the subprocesses a reward started, and a
                # terminal's Ctrl-C or hang-up does not reach them
                os.setsid()
                for other in [self.conn, ours, *(w.conn for w in self.workers)]:
                    other.close()  # a reward cannot write into the manager's pipes by accident
                _worker_main(theirs, self.funcs, self.config.memory_mb, manager_pid)
            except BaseException:
                code = 1
            finally:
                os._exit(code)  # never return into the manager's code, nor run its atexit handlers
        theirs.close()
        return _Worker(pid, ours)


def _set_child_subreaper() -> None:
    """Orphans of our descendants (a reward's subprocess that called setsid, a double-forked
    daemon) are re-parented to this process instead of init, so ``_kill_strays`` finds them."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        pr_set_child_subreaper = 36
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_child_subreaper, 1, 0, 0, 0)


def _children(pid: int) -> list[int]:
    """Processes (zombies included) whose parent is ``pid``, from /proc; empty where there is none."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _kill_strays(keep: set[int], rounds: int = 20) -> None:
    """SIGKILL and reap every child of this process except ``keep``: with the subreaper flag
    these are what reward code left behind. Repeated, since each kill can orphan more."""
    for _ in range(rounds):
        strays = [p for p in _children(os.getpid()) if p not in keep]
        if not strays:
            return
        for pid in strays:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in strays:
            _reap(pid, timeout_s=1.0)


def _kill_and_reap(pid: int) -> int | None:
    for kill in (os.killpg, os.kill):
        with contextlib.suppress(OSError):
            kill(pid, signal.SIGKILL)
    return _reap(pid, timeout_s=5.0)


def _reap(pid: int, timeout_s: float) -> int | None:
    """The wait status of child ``pid`` once it has exited, or None if it is still running
    after ``timeout_s`` (or was already reaped)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.002)


def _describe_status(status: int | None) -> str:
    if status is None:
        return "exit status unknown"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(sig).name}"
        return f"killed by signal {sig}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


# ---------------------------------------------------------------------------------------------
# Starting the manager: what it needs to rebuild the reward functions


@dataclass
class _Payload:
    """The reward functions, either as objects (fork) or pickled with the modules to load first (spawn)."""

    funcs: Sequence[Callable] | None = None
    pickled: bytes = b""
    modules: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def for_start_method(cls, funcs: Sequence[Callable], start_method: str) -> _Payload:
        if start_method == "fork":
            return cls(funcs=list(funcs))
        try:
            pickled = pickle.dumps(list(funcs))
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            raise TypeError(
                f"start_method={start_method!r} needs reward functions that pickle (module-level functions or "
                f"instances of module-level classes); use start_method='fork' for others: {e}"
            ) from e
        return cls(pickled=pickled, modules=_defining_modules(funcs))

    def load(self) -> Sequence[Callable]:
        if self.funcs is not None:
            return self.funcs
        for name, path in self.modules:
            _import_or_load(name, path)
        return pickle.loads(self.pickled)


def _defining_modules(funcs: Sequence[Callable]) -> list[tuple[str, str]]:
    """(module name, file) of the modules defining ``funcs`` (functions, or classes of instances)."""
    found: dict[str, str] = {}
    for fn in funcs:
        target = fn.func if isinstance(fn, functools.partial) else fn
        name = getattr(target, "__module__", None) or type(target).__module__
        path = getattr(sys.modules.get(name), "__file__", None)
        if name != "__main__" and path:  # multiprocessing itself re-imports __main__ in the child
            found[name] = path
    return list(found.items())


def _import_or_load(name: str, path: str) -> None:
    """Import module ``name``, or, if no such module can be imported (one loaded from a file
    path by the registry), load it from ``path`` under that same name, so pickles find it."""
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
        return
    except ImportError:
        pass
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load module {name!r} from {path!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def _manager_main(
    conn: Connection, trainer_end: Connection, payload: _Payload, config: PoolConfig, parent_pid: int
) -> None:
    # A forked manager inherits the trainer's end of the pipe; holding it would hide EOF from us.
    trainer_end.close()
    # Ctrl-C, and a SIGTERM sent to the whole process group (Slurm, Kubernetes, `timeout`), are
    # for the trainer: it finishes scoring the step, checkpoints and then closes us. Dying here
    # would score the in-flight batch None and train on it. The trainer stops us with a request
    # on the pipe (or SIGKILL); we also stop when it is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _set_child_subreaper()
    try:
        funcs = payload.load()
    except Exception as e:
        conn.send(("error", f"{short_repr(e)}{where(e)}"))
        return
    _Manager(conn, funcs, config, parent_pid).serve()


# ---------------------------------------------------------------------------------------------
# The trainer's side


@dataclass
class _Handle:
    """The manager process and the pipe to it; mutable, so a finalizer can see restarts."""

    process: Any = None
    conn: Connection | None = None
    manager_pid: int | None = None
    owner_pid: int = field(default_factory=os.getpid)  # a forked copy of the trainer must not use or stop it


_LIVE: dict[int, _Handle] = {}  # started managers, stopped at interpreter exit


@atexit.register  # registered after multiprocessing's own exit hook, so it runs first
def _shutdown_all() -> None:
    # multiprocessing would SIGTERM the (daemonic) manager and wait for it; the manager ignores
    # SIGTERM (it belongs to the trainer), so it is asked on the pipe, as at close().
    for handle in list(_LIVE.values()):
        _shutdown(handle)


def _shutdown(handle: _Handle) -> None:
    """Stop the manager (which kills its workers). Idempotent; also runs at GC and at exit."""
    if os.getpid() != handle.owner_pid:
        return
    _LIVE.pop(id(handle), None)
    process, conn = handle.process, handle.conn
    handle.process = handle.conn = None
    if process is None or conn is None:
        return
    # An explicit request, not only EOF: other processes forked from the trainer since (another
    # runner's manager, data loaders) hold copies of our end of the pipe, so EOF may never come.
    with contextlib.suppress(OSError, ValueError):
        conn.send(None)
    with contextlib.suppress(OSError, ValueError):
        conn.close()
    process.join(timeout=5.0)
    if process.is_alive():
        process.kill()  # its workers die too (PDEATHSIG)
        process.join(timeout=5.0)


class Pool:
    """A manager process and its workers, scoring batches with ``funcs``."""

    def __init__(self, funcs: Sequence[Callable], config: PoolConfig, start_method: str = "fork") -> None:
        self.num_funcs = len(funcs)
        self.config = config
        self._context = multiprocessing.get_context(start_method)
        self._payload = _Payload.for_start_method(funcs, start_method)
        self._handle = _Handle()
        self._batch_ids: Iterator[int] = iter(range(1, sys.maxsize))
        self._finalizer = weakref.finalize(self, _shutdown, self._handle)
        self._start()

    @property
    def manager_pid(self) -> int | None:
        return self._handle.manager_pid

    def run(self, prompts: list, completions: list, columns: dict, chunk_size: int) -> BatchResult | None:
        """The batch's results; None if the manager died meanwhile (a new one is started)."""
        if self._handle.process is None:
            raise RuntimeError("the reward pool is closed")
        if os.getpid() != self._handle.owner_pid:
            raise RuntimeError("a reward pool can only be used by the process that created it, not a fork of it")
        # A manager that died (killed, OOM) is replaced and the batch sent again once: its death
        # costs a restart, not a batch of None scores. Dying twice on one batch is left to the caller.
        for _ in range(2):
            if not self._handle.process.is_alive():
                self._restart()
            result = self._run_once(prompts, completions, columns, chunk_size)
            if result is not None:
                return result
            self._restart()
        return None

    def _run_once(self, prompts: list, completions: list, columns: dict, chunk_size: int) -> BatchResult | None:
        batch_id = next(self._batch_ids)
        conn = self._handle.conn
        assert conn is not None
        try:
            conn.send((batch_id, prompts, completions, columns, chunk_size))
            while True:
                if conn.poll(_POLL_S):
                    reply_id, result = conn.recv()
                    if reply_id == batch_id:
                        return result
                    continue  # the answer to a call interrupted earlier (KeyboardInterrupt): stale
                if not self._handle.process.is_alive():
                    return None
        except (EOFError, OSError):
            return None

    def close(self) -> None:
        self._finalizer()

    def _start(self) -> None:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=_manager_main,
            args=(theirs, ours, self._payload, self.config, os.getpid()),
            name="rlreason-reward-manager",
            daemon=True,
        )
        process.start()
        theirs.close()
        self._handle.process, self._handle.conn = process, ours
        _LIVE[id(self._handle)] = self._handle
        try:
            status, detail = self._await_ready(ours, process)
        except BaseException:
            _shutdown(self._handle)
            raise
        if status != "ready":
            _shutdown(self._handle)
            raise RuntimeError(f"the reward pool could not load the reward functions: {detail}")
        self._handle.manager_pid = detail

    @staticmethod
    def _await_ready(conn: Connection, process: Any) -> tuple[str, Any]:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if conn.poll(_POLL_S):
                try:
                    return conn.recv()
                except EOFError:
                    break
            if not process.is_alive():
                break
        return ("error", f"the manager process did not start (exit code {process.exitcode})")

    def _restart(self) -> None:
        _shutdown(self._handle)
        self._start()

"""The process pool behind :class:`~.runner.RewardRunner`, whose workers can be killed: the
manager process, which forks, feeds, times and kills the workers (:mod:`._worker`), and the
trainer's handle to it, :class:`Pool`. What a call and a batch are: :mod:`._call`.

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

import atexit
import contextlib
import ctypes
import functools
import importlib
import importlib.util
import math
import multiprocessing
import os
import pickle
import signal
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from ._call import Batch, BatchResult, Task, _select, short_repr, where
from ._worker import _worker_main

_POLL_S = 0.5  # how often blocked loops look up (parent alive? manager alive?)
_START_TIMEOUT_S = 120.0  # a spawned manager imports the reward modules; be generous


@dataclass(frozen=True)
class PoolConfig:
    num_workers: int
    timeout_s: float
    memory_mb: float | None
    max_timeouts: int


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
    """The trainer died, or asked to close in the middle of a batch (a stop signal abandons the step
    in flight): stop everything."""


class _Manager:
    def __init__(self, conn: Connection, funcs: Sequence[Callable], config: PoolConfig, parent_pid: int) -> None:
        self.conn = conn
        self.funcs = funcs
        self.config = config
        self.parent_pid = parent_pid
        self.workers: list[_Worker] = []
        self.queued: tuple | None = None  # a batch that arrived while another ran (see _watch_trainer)

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
        if self.queued is not None:
            request, self.queued = self.queued, None
            return request
        while not self.conn.poll(_POLL_S):
            self._check_parent()
        try:
            return self.conn.recv()  # None: the trainer closes the pool
        except (EOFError, OSError):
            return None

    def _watch_trainer(self) -> None:
        """A message from the trainer during a batch. Closing (None, or the pipe gone): the trainer
        abandoned the batch (a stop signal) and waits for us; stop now, not after the batch, which
        could outlast the launcher's grace period. Another batch (the trainer gave up on this one
        after an interrupt): kept for later; this batch's answer will be dropped as stale."""
        try:
            request = self.conn.recv()
        except (EOFError, OSError):
            raise _ParentGone from None
        if request is None:
            raise _ParentGone
        self.queued = request

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
            timeout = max(0.0, min(soonest - time.monotonic(), _POLL_S))
            ready = set(wait([w.conn for w in busy] + [self.conn], timeout=timeout))
            if self.conn in ready:
                self._watch_trainer()
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
    # A batch abandoned by a stop signal may have its answer on the way: read and drop it, so that a
    # manager blocked writing it into a full pipe can see the request and exit.
    deadline = time.monotonic() + 5.0
    while process.is_alive() and time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # EOF, a closed pipe, an answer that does not unpickle
            while conn.poll(0):
                conn.recv()
        process.join(timeout=0.05)
    with contextlib.suppress(OSError, ValueError):
        conn.close()
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
        self._closed = False
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
            if self._closed:  # by another thread (a stop dropped the rollout thread's batch): no restart
                raise RuntimeError("the reward pool was closed while it scored this batch")
            self._restart()
        return None

    def _run_once(self, prompts: list, completions: list, columns: dict, chunk_size: int) -> BatchResult | None:
        batch_id = next(self._batch_ids)
        conn, process = self._handle.conn, self._handle.process  # close() from another thread clears them
        assert conn is not None and process is not None
        try:
            conn.send((batch_id, prompts, completions, columns, chunk_size))
            while True:
                if conn.poll(_POLL_S):
                    reply_id, result = conn.recv()
                    if reply_id == batch_id:
                        return result
                    continue  # the answer to a call interrupted earlier (KeyboardInterrupt): stale
                if not process.is_alive():
                    return None
        except (EOFError, OSError):
            return None

    def close(self) -> None:
        self._closed = True
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

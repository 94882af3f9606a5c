"""The processes behind :class:`~.executor.ToolExecutor` with ``isolation="process"``: a manager
that forks, feeds, times and kills the tool workers, and the trainer's handle to it (:class:`Remote`).

Process layout (the reward pool's, rewards/_pool.py, whose helpers this reuses)::

    trainer --pipe-- manager  (single-threaded; never runs tool code)
                       |--pipe-- worker 0  (own session, RLIMIT_AS, dies with the manager): episodes 0, W, 2W, ...
                       `--pipe-- worker 1                                                   episodes 1, W+1, ...

Why a manager: workers are replaced after every timeout or crash; forking them from the trainer (a
big process with CUDA, tokenizer and data-loader threads) at an arbitrary moment can deadlock the
child on a lock another thread held. The manager is forked once, when the executor is built
(before the trainer starts threads), and is single-threaded, so forking it is always safe.

Why pinned episodes: an environment is stateful, so episode ``i`` lives in worker ``i % W`` for its
whole rollout (reset, every call, get_reward). The manager runs each worker's calls one at a time,
in order, with a wall-clock deadline each, and the workers in parallel. A worker killed at a
deadline, or dead by itself, takes its episodes' environments with it: the manager forks a fresh
worker at once (standalone tools, which hold no state, go on being served there), and answers the
lost episodes' environment calls "environment lost" and their ``get_reward`` as a failure (never a
zero). A worker killed while the batch's resets run has lost only freshly reset environments: those
are reset again on the fresh worker, once. Memory: a ``MemoryError`` under RLIMIT_AS is the tool's
failure; the worker lives on (its other episodes' environments live there).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from rlreason.rewards._call import short_repr
from rlreason.rewards._pool import (
    _LIVE,
    _describe_status,
    _Handle,
    _kill_and_reap,
    _kill_strays,
    _reap,
    _set_child_subreaper,
    _shutdown,
)
from rlreason.rewards._worker import _die_with_parent, _limit_address_space
from rlreason.rollout.tools.environments import Episodes, parse_call
from rlreason.rollout.tools.results import ToolResult, error_content

_POLL_S = 0.5  # how often blocked loops look up (trainer alive? manager alive?)
_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class WorkerConfig:
    num_workers: int
    timeout_s: float
    memory_mb: int | None


LOST = "environment lost: {why}"


def lost_call(tool_call: Any, why: str) -> ToolResult:
    name, _, _ = parse_call(tool_call)
    return ToolResult(name, error_content(LOST.format(why=why)), True, "environment_lost")


def failed_job(op: str, args: tuple, reason: str, detail: str) -> Any:
    """What a job whose worker timed out or died answers, in the shape its op answers."""
    if op == "call":
        name, _, _ = parse_call(args[1])
        return ToolResult(name, error_content(detail), True, reason)
    if op == "start":
        return None, f"reset() {detail}"
    if op == "reward":
        return None, f"get_reward() {detail}"
    return f"probing the environments: {detail}"


# ---------------------------------------------------------------------------------------------
# The worker (forked from the manager)


def _worker_main(conn: Connection, episodes: Episodes, memory_mb: int | None, manager_pid: int) -> None:
    """Serve ``(call_id, op, args)`` with ``getattr(episodes, op)(*args)`` until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the trainer's signals: it closes us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != manager_pid:
        return
    if memory_mb is not None:
        _limit_address_space(memory_mb)
    me = os.getpid()
    while True:
        try:
            call_id, op, args = conn.recv()
        except (EOFError, OSError):
            return
        result = getattr(episodes, op)(*args)
        if os.getpid() != me:  # a tool forked and its child came back here: only we may answer
            os._exit(0)
        conn.send((call_id, result))


# ---------------------------------------------------------------------------------------------
# The manager


class _ParentGone(Exception):
    pass


@dataclass
class _Slot:
    pid: int
    conn: Connection
    call_id: int = 0
    holds: set[int] = field(default_factory=set)  # episodes whose environment lives here now


@dataclass
class _Job:
    key: Any
    worker: int
    op: str
    args: tuple
    episode: int | None = None
    tries: int = 0


class Manager:
    def __init__(self, conn: Connection, episodes: Episodes, config: WorkerConfig, parent_pid: int) -> None:
        self.conn = conn
        self.episodes = episodes
        self.config = config
        self.parent_pid = parent_pid
        self.slots: list[_Slot] = []
        self.lost: dict[int, str] = {}  # episode -> why its environment is gone (this batch)

    def serve(self) -> None:
        try:
            for _ in range(self.config.num_workers):
                self.slots.append(self._fork())
            self.conn.send(("ready", os.getpid()))
            while (request := self._next_request()) is not None:
                request_id, op, payload = request
                self.conn.send((request_id, self._answer(op, payload)))
        except _ParentGone:
            pass
        finally:
            for slot in self.slots:
                _kill_and_reap(slot.pid)
            _kill_strays(keep=set())

    def _next_request(self) -> tuple | None:
        while not self.conn.poll(_POLL_S):
            if os.getppid() != self.parent_pid:
                return None
        try:
            return self.conn.recv()  # None: close
        except (EOFError, OSError):
            return None

    def _answer(self, op: str, payload: Any) -> Any:
        w = self.config.num_workers
        if op == "probe":
            return self._run([_Job(0, 0, "probe", ())])[0]
        if op == "start":
            batch, episodes = payload
            self.lost.clear()
            for slot in self.slots:
                slot.holds.clear()
            jobs = [_Job(i, i % w, "start", (batch, i, row, name), episode=i) for i, row, name in episodes]
            return self._run(jobs, reset_again=True)
        if op == "call":
            return self._run([_Job(key, episode % w, "call", (episode, tool_call), episode=episode)
                              for key, episode, tool_call in payload])
        if op == "reward":
            return self._run([_Job(i, i % w, "reward", (i,), episode=i) for i in payload])
        raise ValueError(f"unknown request {op!r}")

    def _shortcut(self, job: _Job) -> tuple[bool, Any]:
        """(True, answer) for a job the manager answers itself: a lost episode's environment."""
        if job.episode is None or job.episode not in self.lost:
            return False, None
        why = self.lost[job.episode]
        if job.op == "call" and parse_call(job.args[1])[0] not in self.episodes.tools:
            return True, lost_call(job.args[1], why)
        if job.op == "reward":
            return True, (None, LOST.format(why=why))
        return False, None

    def _run(self, jobs: list[_Job], reset_again: bool = False) -> dict[Any, Any]:
        """Every job's answer by key: each worker's jobs in order, one at a time, with a deadline."""
        queues: list[deque[_Job]] = [deque() for _ in self.slots]
        for job in jobs:
            queues[job.worker].append(job)
        done: dict[Any, Any] = {}
        finished: list[list[_Job]] = [[] for _ in self.slots]  # per worker, for reset_again
        current: list[_Job | None] = [None] * len(self.slots)
        deadline = [math.inf] * len(self.slots)
        while True:
            for w, slot in enumerate(self.slots):
                while current[w] is None and queues[w]:
                    job = queues[w].popleft()
                    answered, answer = self._shortcut(job)
                    if answered:
                        done[job.key] = answer
                        continue
                    slot.call_id += 1
                    try:
                        slot.conn.send((slot.call_id, job.op, job.args))
                    except OSError:  # it died while idle
                        self._fail(w, job, "crashed", "its worker had died", done, queues, finished, reset_again)
                        continue
                    current[w], deadline[w] = job, time.monotonic() + self.config.timeout_s
            busy = [w for w in range(len(self.slots)) if current[w] is not None]
            if not busy:
                return done
            timeout = max(0.0, min(min(deadline[w] for w in busy) - time.monotonic(), _POLL_S))
            ready = set(wait([self.slots[w].conn for w in busy] + [self.conn], timeout=timeout))
            if self.conn in ready:  # the trainer asks to close (it sends nothing else while it waits)
                raise _ParentGone
            for w in busy:
                job = current[w]
                assert job is not None
                slot = self.slots[w]
                if slot.conn in ready:
                    current[w] = None
                    try:
                        call_id, answer = slot.conn.recv()
                    except (EOFError, OSError):
                        status = _reap(slot.pid, 1.0)
                        self._fail(w, job, "crashed", f"crashed its worker process ({_describe_status(status)})",
                                   done, queues, finished, reset_again)
                        continue
                    except Exception as e:  # garbage on the pipe
                        self._fail(w, job, "crashed", f"protocol error on its worker's pipe ({short_repr(e)})",
                                   done, queues, finished, reset_again)
                        continue
                    if call_id != slot.call_id:
                        self._fail(w, job, "crashed", "protocol error on its worker's pipe (a stray answer)",
                                   done, queues, finished, reset_again)
                        continue
                    done[job.key] = answer
                    if job.op == "start" and answer[1] is None and self.episodes.factories:
                        slot.holds.add(job.args[1])
                        finished[w].append(job)
                elif time.monotonic() >= deadline[w]:
                    current[w] = None
                    self._fail(w, job, "timeout", f"timed out after {self.config.timeout_s:g} s (killed)",
                               done, queues, finished, reset_again)
            if os.getppid() != self.parent_pid:
                raise _ParentGone

    def _fail(self, w: int, job: _Job, reason: str, detail: str, done: dict, queues: list[deque[_Job]],
              finished: list[list[_Job]], reset_again: bool) -> None:
        """``job`` failed with its worker: answer it, replace the worker, and account for the
        environments that died with it (reset again during the resets, else lost)."""
        done[job.key] = failed_job(job.op, job.args, reason, detail)
        slot = self.slots[w]
        _kill_and_reap(slot.pid)
        slot.conn.close()
        _kill_strays(keep={s.pid for s in self.slots})  # what the tool left running
        fresh = self._fork()
        slot.pid, slot.conn, slot.call_id = fresh.pid, fresh.conn, 0
        gone, slot.holds = slot.holds, set()
        if reset_again:
            again = [j for j in finished[w] if j.tries == 0]
            finished[w] = []
            for j in reversed(again):
                j.tries += 1
                done.pop(j.key, None)
                queues[w].appendleft(j)
            gone -= {j.args[1] for j in again}
        what = f"{job.op} of episode {job.episode}" if job.episode is not None else job.op
        why = f"its worker process was replaced after {what} {detail}"
        for episode in gone:
            self.lost[episode] = why

    def _fork(self) -> _Slot:
        ours, theirs = multiprocessing.Pipe()
        manager_pid = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                os.setsid()  # a kill takes what the tool started; a terminal's Ctrl-C does not reach it
                for other in [self.conn, ours, *(s.conn for s in self.slots)]:
                    other.close()
                _worker_main(theirs, self.episodes, self.config.memory_mb, manager_pid)
            except BaseException:
                code = 1
            finally:
                os._exit(code)  # never return into the manager's code
        theirs.close()
        return _Slot(pid, ours)


def _manager_main(conn: Connection, trainer_end: Connection, episodes: Episodes, config: WorkerConfig,
                  parent_pid: int) -> None:
    trainer_end.close()  # holding it would hide EOF
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the trainer's: it finishes the step and closes us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _set_child_subreaper()
    Manager(conn, episodes, config, parent_pid).serve()


# ---------------------------------------------------------------------------------------------
# The trainer's side


class Remote:
    """The manager process, seen from the trainer: ``request(op, payload)`` -> the answer, or None
    if the manager died meanwhile (a fresh one is started for the next request)."""

    def __init__(self, episodes: Episodes, config: WorkerConfig) -> None:
        self.episodes = episodes
        self.config = config
        self.handle = _Handle()
        self.request_ids = iter(range(1, 2**62))
        self.lock = threading.Lock()  # one request at a time on the pipe (the rollout thread, or the trainer's)
        self.generation = 0  # managers started so far: a new one holds none of the old one's environments
        self._finalizer = weakref.finalize(self, _shutdown, self.handle)  # at garbage collection too
        self._start()

    def request(self, op: str, payload: Any) -> Any:
        with self.lock:
            return self._request(op, payload)

    def ensure_running(self) -> None:
        """Start a new manager if the last one died (``generation`` then says so)."""
        with self.lock:
            if self.handle.process is not None and not self.handle.process.is_alive():
                self._restart()

    @property
    def manager_pid(self) -> int | None:
        return self.handle.process.pid if self.handle.process is not None else None

    def _request(self, op: str, payload: Any) -> Any:
        if self.handle.process is None:
            raise RuntimeError("the tool executor is closed")
        if os.getpid() != self.handle.owner_pid:
            raise RuntimeError("a tool executor can only be used by the process that created it")
        if not self.handle.process.is_alive():
            self._restart()
        request_id = next(self.request_ids)
        conn, process = self.handle.conn, self.handle.process
        assert conn is not None
        try:
            conn.send((request_id, op, payload))
            while True:
                if conn.poll(_POLL_S):
                    reply_id, answer = conn.recv()
                    if reply_id == request_id:
                        return answer
                    continue  # a stale answer to an interrupted request
                if not process.is_alive():
                    break
        except (EOFError, OSError):
            pass
        self._restart()
        return None

    def close(self) -> None:
        self._finalizer()

    def _start(self) -> None:
        context = multiprocessing.get_context("fork")  # the tools as they are (closures, file-loaded modules)
        ours, theirs = context.Pipe()
        process = context.Process(target=_manager_main, args=(theirs, ours, self.episodes, self.config, os.getpid()),
                                  name="rlreason-tool-manager", daemon=True)
        process.start()
        theirs.close()
        self.generation += 1
        self.handle.process, self.handle.conn = process, ours
        _LIVE[id(self.handle)] = self.handle  # stopped at interpreter exit, with the reward pools
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline and process.is_alive():
            if ours.poll(_POLL_S):
                status, _ = ours.recv()
                if status == "ready":
                    return
                break
        _shutdown(self.handle)
        raise RuntimeError(f"the tool executor's manager process did not start (exit code {process.exitcode})")

    def _restart(self) -> None:
        _shutdown(self.handle)
        self._start()


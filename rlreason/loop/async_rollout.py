"""Overlapped rollouts (``async_rollouts``): step t+1's batch is generated and scored on a
background thread while step t's update runs: one-step off-policy training, as verl's
one-step-off-policy trainer, PipelineRL and AReaL do it.

    trainer thread   take(t) | sync? | submit(t+1) | update(t) ..........| take(t+1) | sync? | ...
    rollout thread                    | generate(t+1), score(t+1) |  idle |

At most one batch is in flight. The engine generates only on the rollout thread and takes
weights only on the trainer's thread while nothing is in flight (after ``take``, before the
next ``submit``), so it never samples from weights the optimizer is changing, and which
weights sample which batch is a function of the step alone (``Overlap.launch_next``): runs
are deterministic, whatever the threads' timing. Everything the batch
depends on (prompts, seeds, the rewards' ``trainer_state``) is fixed on the trainer's thread
before ``submit``.

An exception on the rollout thread is re-raised by ``take`` in the trainer (the engine's own
timeouts bound a dead server: rlreason/rollout/gloo_transfer.py ``HTTPClient``); ``close``
never waits long for a thread that hangs (it is a daemon thread: it cannot keep the process
alive either).
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from accelerate import Accelerator
from accelerate.utils import gather_object

from rlreason.loop.experience import Rollout, plain, rollout_from_state, rollout_state

PENDING_ROLLOUT = "pending_rollout.pt"  # a checkpoint's batch in flight
Job = Callable[[], tuple[Rollout, dict[str, str]]]  # generate and score one batch: -> (rollout, reward errors)


@dataclass
class Batch:
    """A finished (or restored) batch: for ``step``, sampled with the weights of step ``version``
    (the optimizer steps they had seen), ``result`` what the producer returned."""

    step: int
    version: int
    result: Any
    generation_s: float = 0.0  # wall time the rollout thread spent on it
    cpu_s: float = 0.0  # CPU time of the rollout thread itself (below generation_s: it waited for a core or the GIL)


class RolloutThread:
    """One batch in flight on a background thread: ``submit(step, version, fn)`` starts
    ``fn()`` there, ``take()`` returns its ``Batch`` (waiting if needed) or raises what ``fn``
    raised. ``put`` hands it a finished batch (a checkpoint's in-flight batch on resume)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._done: Batch | None = None
        self._error: BaseException | None = None
        self._pending: tuple[int, int] | None = None  # (step, version) of the batch on the thread
        self._lock = threading.Lock()  # the thread's result against drop()
        self._finished = threading.Event()  # set by the thread when its result is in place
        self.wait_s = 0.0  # time the last take() waited for the thread
        self.last_taken: Batch | None = None  # what the last take() returned, as it was

    @property
    def busy(self) -> bool:
        """A batch is submitted or finished and not taken yet."""
        return self._pending is not None or self._done is not None

    def submit(self, step: int, version: int, fn: Callable[[], Any]) -> None:
        if self.busy:
            raise RuntimeError(f"a rollout is already in flight (step {self.peek_step()}); take() it first")
        self._pending, self._error = (step, version), None

        def run() -> None:
            t0, c0 = time.perf_counter(), time.thread_time()
            error, done = None, None
            try:
                result = fn()
            except BaseException as e:  # re-raised by take() on the trainer's thread
                error = e
            else:
                done = Batch(step, version, result, time.perf_counter() - t0, time.thread_time() - c0)
            with self._lock:
                if self._thread is threading.current_thread():  # not dropped meanwhile
                    self._error, self._done = error, done
            finished.set()

        finished = threading.Event()
        with self._lock:
            self._thread = threading.Thread(target=run, name=f"rlreason-rollout-{step}", daemon=True)
            self._finished = finished
        self._thread.start()

    def peek_step(self) -> int | None:
        """The step of the batch in flight or finished, None without one."""
        if self._done is not None:
            return self._done.step
        return None if self._pending is None else self._pending[0]

    def finish(self) -> Batch | None:
        """Wait for the batch in flight (if any) and keep it for ``take``: -> it, or None."""
        t0 = time.perf_counter()
        if self._thread is not None:
            # Waits on an event, in slices (the main thread stays responsive to signals), never in
            # Thread.join: a stop signal raising out of join (a step in flight is abandoned at once)
            # makes CPython 3.11 release the running thread's state lock and mark it stopped, so the
            # next wait would return before the batch is there (measured: a checkpoint without it).
            while not self._finished.wait(0.5):
                pass
            self._thread = None
            self.wait_s = time.perf_counter() - t0
        if self._error is not None:
            err, self._error, self._pending = self._error, None, None
            raise RuntimeError(f"the rollout of the next batch failed on the rollout thread: "
                               f"{type(err).__name__}: {err}") from err
        self._pending = None
        return self._done

    def take(self, step: int) -> Batch:
        """The batch for ``step``, finished; raises the producer's exception."""
        self.wait_s = 0.0
        batch = self.finish()
        if batch is None or batch.step != step:
            raise RuntimeError(f"expected the rollout of step {step} in flight, found "
                               f"{'none' if batch is None else f'step {batch.step}'}")
        self.last_taken = batch  # before it leaves _done: a stop signal in between finds it in one of the two
        self._done = None
        return batch

    def drop(self) -> None:
        """Forget the batch in flight without waiting for it: its thread (a daemon) finishes unseen."""
        with self._lock:
            self._thread, self._done, self._pending, self._error = None, None, None, None

    def put(self, batch: Batch) -> None:
        """A finished batch (restored from a checkpoint), returned by the next ``take``."""
        if self.busy:
            raise RuntimeError("put: a rollout is already in flight")
        self._done = batch

    def close(self, timeout_s: float = 5.0) -> None:
        """Drop whatever is in flight; wait at most ``timeout_s`` for the thread (a daemon)."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._thread, self._done, self._pending, self._error = None, None, None, None


class Overlap:
    """The trainer's side of overlapped rollouts: which weights sample which batch, the batch in
    flight, and its place in a checkpoint.

    ``job(step)`` is called on the trainer's thread and fixes everything step's batch depends on
    (prompts, seeds, the rewards' trainer_state); the function it returns runs on the rollout
    thread. ``sync()`` gives the engine the policy's current weights (collective with several
    processes: every process calls it at the same step). ``version``: the optimizer steps the
    engine's weights have seen.
    """

    def __init__(self, max_staleness: int, max_steps: int, job: Callable[[int], Job], sync: Callable[[], None],
                 acc: Accelerator) -> None:
        self.max_staleness, self.max_steps = max_staleness, max_steps
        self.job, self.sync, self.acc = job, sync, acc
        self.thread = RolloutThread()
        self.version = 0

    def start(self, step: int) -> None:
        """Before the loop: start ``step``'s rollout, unless a resume brought the one in flight."""
        if not self.thread.busy:
            self.thread.submit(step, self.version, self.job(step))

    def take(self, step: int) -> tuple[Rollout, dict[str, str]]:
        """``step``'s batch (re-raising the rollout thread's error) with the overlap's metrics:
        ``async/staleness``, the optimizer steps between the weights that sampled the batch and
        those it trains; ``time/rollout_wait_s``, how long the trainer waited (0: fully hidden)."""
        self.thread.last_taken = None
        batch = self.thread.take(step)
        ro, errors = batch.result
        # as it came, for Overlap.abandon: a shallow copy, since the trainer sets the rollout's fields
        self.thread.last_taken = dataclasses.replace(batch, result=(copy.copy(ro), errors))
        ro.metrics = {**ro.metrics, "async/staleness": float(step - batch.version),
                      "time/rollout_wait_s": self.thread.wait_s, "time/rollout_thread_s": batch.generation_s,
                      "time/rollout_thread_cpu_s": batch.cpu_s}
        return ro, errors

    def launch_next(self, step: int) -> None:
        """Right after ``step``'s batch is taken (the engine is idle, the policy has seen ``step``
        updates): sync the engine if the next batch would otherwise be sampled more than
        ``max_staleness`` steps behind the weights it trains (with 1: every step), then start it.
        A function of the step only, so runs (and resumed runs) sample the same batches."""
        nxt = step + 1
        if nxt >= self.max_steps:
            return
        if nxt - self.version > self.max_staleness:
            self.sync()
            self.version = step
        self.thread.submit(nxt, self.version, self.job(nxt))

    def abandon(self) -> None:
        """The trainer abandoned the step in flight (a stop signal before its update changed anything),
        to checkpoint the step before: the batch it took is put back in flight, as it was when that
        step ended, and the next one, if started, is dropped. Not taken yet: it is still in flight
        (the checkpoint waits for it)."""
        if self.thread.last_taken is not None:
            batch, self.thread.last_taken = self.thread.last_taken, None
            self.thread.drop()
            self.thread.put(batch)

    def make_current(self, step: int) -> None:
        """Before an evaluation (it uses the engine): the engine takes the policy's weights once the
        batch in flight has finished (it is kept for its step). Collective with several processes."""
        if self.version != step:
            self.thread.finish()
            self.sync()
            self.version = step

    checkpoint_file = PENDING_ROLLOUT  # its part of a checkpoint: a file of its own (run.checkpoint.Stateful)

    def state_dict(self) -> dict[str, Any] | None:
        """The batch in flight, finished, as a checkpoint stores it (every process's shard, gathered
        to every process: tensors and plain data), so a resume trains on exactly it; None without one
        (past the last step nothing is generated). Collective with several processes."""
        batch = self.thread.finish()
        # every process calls the gather, also one that (impossibly) has no batch: never a hang
        shard = None if batch is None else {"rollout": rollout_state(batch.result[0]), "errors": plain(batch.result[1])}
        shards = [shard] if self.acc.num_processes == 1 else gather_object([shard])
        if batch is None:
            return None
        return {"step": batch.step, "version": batch.version, "shards": shards}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Put a checkpoint's batch in flight (this process's shard) back for the next ``take``."""
        if len(saved["shards"]) != self.acc.num_processes:
            raise ValueError(f"the checkpoint's {PENDING_ROLLOUT} holds the batch in flight of {len(saved['shards'])} "
                             f"processes; resume async_rollouts with as many (this run has {self.acc.num_processes})")
        shard = saved["shards"][self.acc.process_index]
        self.thread.put(Batch(saved["step"], saved["version"], (rollout_from_state(shard["rollout"]), shard["errors"])))

    def close(self) -> None:
        self.thread.close()

"""The transformers engine in a process of its own (``async_rollouts`` with
``async_generator: process`` on CPU).

On the rollout thread, the transformers engine shares the trainer's interpreter: a small
model's decode loop is mostly Python and op dispatch, which takes turns with the update's at
the GIL (benchmarks/overlap_contention.py: on the tiny model, generation beside the update
took 35% longer on a thread, 4% longer in a child process). Here the decode loop runs in a
child process, on the same weights: the engine's model is moved to shared memory, so
``load_weights`` (an in-place copy, made only while nothing generates) reaches the child
without a transfer, and the child's samples are those the in-process engine would draw
(the same code, weights and seeds). It pays when generation is the longer side of the
overlapped step; on the default tiny recipe the update is, so the thread stays the default.

The child is started with ``spawn`` (a fork of a process with threads and a reward pool is
unsafe); as with any spawning code, a script that builds it must guard its entry point with
``if __name__ == "__main__":``. It ends when the engine is closed (at the latest at the
parent's exit) or when the parent's end of the pipe closes (the trainer died).
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing.util  # noqa: F401  its exit hook is registered before ours: ours runs first (LIFO)
import signal
from collections.abc import Sequence
from typing import Any

import torch
import torch.multiprocessing as mp

from rlreason.rollout.base import Sample, SamplingConfig, check_generate_args
from rlreason.rollout.hf import HFEngine


def _serve(conn: Any, model: torch.nn.Module, tokenizer: Any, max_batch_prompts: int, batch_seeds: bool,
           num_threads: int) -> None:
    """The child's loop: (prompts, n, sampling, seeds) -> ("ok", samples) or ("error", text)."""
    # A Ctrl-C or a job scheduler's SIGTERM reaches the whole process group: the trainer handles it
    # (finishing the batch in flight, checkpointing), and the child ends when the trainer closes it
    # or dies (its end of the pipe closes).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(num_threads)
    engine = HFEngine(model, tokenizer, max_batch_prompts, batch_seeds=batch_seeds)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if request is None:
            return
        try:
            reply = ("ok", engine.generate(*request))
        except Exception as e:  # reported to the parent, which raises it
            reply = ("error", f"{type(e).__name__}: {e}")
        try:
            conn.send(reply)
        except OSError:  # the parent died while we generated
            return


class ProcessHFEngine(HFEngine):
    """``HFEngine`` whose ``generate`` runs in a child process on shared-memory weights."""

    def __init__(self, model, tokenizer, max_batch_prompts: int = 64, batch_seeds: bool = False,
                 num_threads: int | None = None) -> None:
        super().__init__(model, tokenizer, max_batch_prompts, batch_seeds=batch_seeds)
        model.share_memory()  # the child maps these storages: load_weights' copies reach it
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, name="rlreason-generator", daemon=True,
                                 args=(child, model, tokenizer, max_batch_prompts, batch_seeds,
                                       num_threads or torch.get_num_threads()))
        self._proc.start()
        child.close()
        # At exit, a child still running must be closed here: multiprocessing's own exit hook would
        # SIGTERM it, which the child ignores (see _serve), and then wait for it forever.
        atexit.register(self.close)

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig,
                 seeds: Sequence[int] | None = None) -> list[list[Sample]]:
        check_generate_args(prompts, seeds)
        try:
            self._conn.send((prompts, n, sampling, None if seeds is None else list(seeds)))
            while not self._conn.poll(0.5):  # waiting releases the GIL; a dead child is noticed
                if not self._proc.is_alive():
                    raise EOFError
            status, value = self._conn.recv()
        except (EOFError, OSError) as e:  # the child's end closed: it died
            self._proc.join(5)
            raise RuntimeError(f"the generator process died (exit code {self._proc.exitcode})") from e
        if status != "ok":
            raise RuntimeError(f"the generator process failed: {value}")
        return value

    def close(self) -> None:
        """End the child (at most 5 s for it to finish what it is doing, then a SIGKILL)."""
        atexit.unregister(self.close)
        if self._proc.is_alive():
            with contextlib.suppress(OSError):  # the child may be gone already
                self._conn.send(None)
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        self._conn.close()

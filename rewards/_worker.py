"""A reward worker: a process forked from the pool's manager (:mod:`._pool`) that serves calls
(:func:`~._call.call_reward`) until the manager closes the pipe.

It runs reward code, so it may hang or die; the manager times it and kills it. It ignores the
trainer's signals, dies with the manager, caps its address space at ``memory_mb`` above what it
maps at start, and copies what each call printed to the real stderr, cut short.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any

from ._call import call_reward


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

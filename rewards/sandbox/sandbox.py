"""The :class:`Sandbox`: runs model-written Python programs in bubblewrap, one launch per program,
many launches in parallel.

Process layout of one launch (bwrap mode)::

    trainer thread --pipes-- bwrap (own session; uid 61000 when the trainer is root)
                               `-- [new user, pid, net, ipc, uts, cgroup, mount namespaces]
                                   harness = pid 1 (trusted, non-dumpable; result channel = its stdout)
                                   `-- program, one fork per input (rlimits, capped pipes)

The harness is the namespace's pid 1: a program cannot signal it (the kernel drops signals to
pid 1 that it has no handler for), ptrace it (non-dumpable) or outlive it (when pid 1 exits, the
kernel kills the namespace); killing bwrap (the host's deadline) ends it (--die-with-parent).

``run_many`` runs launches on a thread pool: the threads only wait on subprocesses, so
``max_workers`` launches (default: one per CPU) run at once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from . import bwrap as _bwrap
from ._launch import launch
from ._types import Job, Limits, RunResult, SandboxUnavailable

log = logging.getLogger(__name__)
MODES = ("bwrap", "unsafe-rlimits")
_warned_unsafe = False
DEFAULT_LIMITS = Limits()


def _warn_unsafe() -> None:
    global _warned_unsafe
    if not _warned_unsafe:
        _warned_unsafe = True
        log.warning("UNSAFE SANDBOX: mode='unsafe-rlimits' runs model-written programs with rlimits and a "
                    "process-group kill only: they can read and write every file the sandbox user can, reach "
                    "the network, and see the host's processes. Use it only for programs you trust; install "
                    "bubblewrap for the real sandbox (docs/install.md).")


class Sandbox:
    """Runs Python programs (stdlib only) under :class:`Limits`, isolated by bubblewrap.

    ``mode="bwrap"`` (default) probes bubblewrap at construction and raises
    :class:`SandboxUnavailable` if it cannot run here. ``mode="unsafe-rlimits"`` is the explicit
    opt-in without namespaces (same harness, rlimits and kills; logs a loud warning once).
    ``python`` chooses the interpreter programs run with (default $RLREASON_SANDBOX_PYTHON, else
    /usr/bin/python3); a Sandbox holds no open resources and pickles.
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS, *, mode: str = "bwrap", max_workers: int | None = None,
                 python: str | None = None) -> None:
        if not isinstance(limits, Limits):
            raise TypeError(f"Sandbox(limits=...) must be a Limits, got {type(limits).__name__}")
        if mode not in MODES:
            raise ValueError(f"Sandbox(mode={mode!r}): choose one of {MODES}")
        if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)
                                        or max_workers < 1):
            raise ValueError(f"Sandbox(max_workers={max_workers!r}) must be a positive integer or None")
        self.limits = limits
        self.mode = mode
        self.max_workers = max_workers or os.cpu_count() or 1
        self.python = _bwrap.find_python(python)
        if mode == "bwrap":
            _bwrap.check_available(self.python)
            self._config: _bwrap.BwrapConfig | None = _bwrap.BwrapConfig(
                bwrap=_which_bwrap(), tmp_size_bytes=limits.file_size_mb << 20,
                root_layout=_bwrap.host_root_layout(), ro_binds=_bwrap.python_binds(self.python))
        else:
            _warn_unsafe()
            self._config = None
        self._closed = False

    def _launch(self, code: str, inputs: list[str], limits: Limits | None,
                total_wall_s: float | None) -> list[RunResult]:
        if self._closed:
            raise RuntimeError("this Sandbox is closed")
        if not isinstance(code, str):
            raise TypeError(f"the program must be a str, got {type(code).__name__}")
        if any(not isinstance(x, str) for x in inputs):
            raise TypeError("each input (stdin) must be a str")
        limits = limits or self.limits
        prefix = [] if self._config is None else _bwrap.bwrap_argv(
            dataclasses.replace(self._config, tmp_size_bytes=limits.file_size_mb << 20))  # the private /tmp's size
        return launch(prefix, self.python, code, inputs, limits, total_wall_s,
                      kill_all=self.mode == "bwrap", popen_user=_bwrap.sandbox_user())

    def run(self, code: str, stdin: str = "", limits: Limits | None = None) -> RunResult:
        """Run ``code`` once with ``stdin``."""
        return self._launch(code, [stdin], limits, None)[0]

    def run_inputs(self, code: str, inputs: list[str], limits: Limits | None = None,
                   total_wall_s: float | None = None) -> list[RunResult]:
        """One launch: ``code`` runs once per input (as stdin), each in a fresh process under ``limits``;
        ``total_wall_s`` bounds the whole launch (inputs not reached: "timeout")."""
        if not inputs:
            return []
        return self._launch(code, list(inputs), limits, total_wall_s)

    def run_many(self, jobs: Sequence[Job], limits: Limits | None = None,
                 total_wall_s: float | None = None) -> list[list[RunResult]]:
        """``jobs`` in parallel, ``max_workers`` launches at once; one list per job, in order."""
        jobs = list(jobs)
        for i, job in enumerate(jobs):
            if not isinstance(job, Job):
                raise TypeError(f"run_many: jobs[{i}] must be a Job, got {type(job).__name__}")

        def one(job: Job) -> list[RunResult]:
            if job.inputs is None:
                return self._launch(job.code, [""], limits, total_wall_s)
            return self.run_inputs(job.code, job.inputs, limits, total_wall_s)

        if len(jobs) <= 1 or self.max_workers == 1:
            return [one(job) for job in jobs]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(jobs)),
                                thread_name_prefix="sandbox") as pool:
            return list(pool.map(one, jobs))

    def close(self) -> None:
        """Nothing stays open between runs; a closed Sandbox refuses further runs."""
        self._closed = True

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _which_bwrap() -> str:
    import shutil

    found = shutil.which("bwrap")
    if found is None:  # check_available passed a moment ago; bwrap removed since
        raise SandboxUnavailable("bubblewrap (`bwrap`) is not installed")
    return found


def check_available() -> None:
    """Raise :class:`SandboxUnavailable` unless bubblewrap runs here (code rewards call it at
    construction: refuse to start rather than run programs unisolated)."""
    _bwrap.check_available()

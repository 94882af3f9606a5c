"""Stopping on SIGTERM / SIGINT without losing anything trained.

A preemptible job gets SIGTERM (from Slurm, Kubernetes, ``timeout``: usually to every process
of the job) and some seconds before SIGKILL. What the run should do depends on where it is:

- while something trained is not yet in a checkpoint (a step, a save): finish it, checkpoint,
  stop. The signal only *requests* a stop; the trainer looks at :func:`requested` at its step
  boundaries.
- while nothing would be lost (building the model, the first evaluation, the final evaluation
  after the final checkpoint): stop at once. Inside :func:`stop_at_once` the signal raises
  :class:`Stopped` where the program is.

The reward processes ignore SIGTERM (rlreason/rewards/_pool.py, _worker.py): the trainer closes them.
A second Ctrl-C raises KeyboardInterrupt at once, as usual.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):  # noqa: N818 (not an error: the program was asked to stop)
    """Raised by a stop signal inside :func:`stop_at_once`. A BaseException, so that ``except
    Exception`` clauses on the way do not swallow it."""


class _State:
    signal_name: str | None = None  # the signal that asked for a stop
    at_once = 0  # depth of stop_at_once() contexts
    installed = 0  # depth of handle_stop_signals() contexts
    started = False  # handle_stop_signals() was entered once: the start-up imports are over


_state = _State()


def requested() -> bool:
    return _state.signal_name is not None


def reason() -> str | None:
    """The name of the signal that requested a stop (SIGTERM, SIGINT), or None."""
    return _state.signal_name


def _say(text: str) -> None:
    # os.write, not print: a handler may run while the main thread is inside a print to stderr
    with contextlib.suppress(OSError):
        os.write(2, (text + "\n").encode())


def _handler(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    if signum == signal.SIGINT and _state.signal_name is not None:
        raise KeyboardInterrupt
    _state.signal_name = name
    if _state.at_once:
        _say(f"{name}: stopping now (nothing trained would be lost)")
        raise Stopped(name)
    _say(f"{name}: stopping after this step, with a checkpoint")


@contextlib.contextmanager
def handle_stop_signals() -> Iterator[None]:
    """Within: SIGTERM and SIGINT request a stop instead of killing the process. Nestable; the
    outermost use installs the handlers (main thread only: elsewhere signals cannot be handled,
    and this does nothing) and restores the previous ones, and clears the request, on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = _state.installed == 0
    old = {}
    _state.started = True
    if outermost:
        _state.signal_name = None
        old = {sig: signal.signal(sig, _handler) for sig in _SIGNALS}
    _state.installed += 1
    try:
        yield
    finally:
        _state.installed -= 1
        if outermost:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            _state.signal_name = None


@contextlib.contextmanager
def stop_at_once(enabled: bool = True) -> Iterator[None]:
    """Within (and within :func:`handle_stop_signals`): a stop signal raises :class:`Stopped`
    at once; a stop requested before entering raises on entry. ``enabled=False`` (several
    processes, which must stop at the same collective) leaves stops to the step boundaries."""
    if not enabled:
        yield
        return
    if requested():
        raise Stopped(_state.signal_name)
    _state.at_once += 1
    try:
        yield
    finally:
        _state.at_once -= 1


def _exit_before_start(signum: int, frame: object) -> None:
    _say(f"{signal.Signals(signum).name}: stopping; no training in progress, nothing to save")
    if not _state.started:
        # During the start-up imports an exception raised here lands inside the import machinery,
        # which can leave a module half-bound (numpy's lazy ``numpy.dtypes`` then recursed until
        # RecursionError, exit status 1). Nothing has started yet: end the process at once.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)
    raise SystemExit(0)


def exit_on_stop_signals() -> None:
    """A script's first lines: until :func:`handle_stop_signals` takes over (it puts this back when
    it returns), SIGTERM and SIGINT exit cleanly with status 0. The imports take seconds, and a stop
    meanwhile finds nothing started; a traceback from inside an import would read as a crash."""
    for sig in _SIGNALS:
        signal.signal(sig, _exit_before_start)

"""Stopping on SIGTERM / SIGINT without losing anything trained.

A preemptible job gets SIGTERM (from Slurm, Kubernetes, ``timeout``: usually to every process
of the job) and some seconds before SIGKILL. What the run should do depends on where it is:

- while nothing would be lost (building the model, the first evaluation, the final evaluation
  after the final checkpoint): stop at once. Inside :func:`stop_at_once` the signal raises
  :class:`Stopped` where the program is.
- during a step, until its update changes anything (generation, scoring, the log-prob and
  backward passes): the weights and the optimizer are still those of the last completed step, so
  the step is abandoned at once (:func:`step_in_flight`) and that step is checkpointed. The stop
  then takes one checkpoint write, not the rest of a step: launchers give a few seconds
  (accelerate 1.16 kills 5 s after its SIGTERM; docs/reliability.md has the table).
- while something trained is not yet in a checkpoint and cannot be undone (the optimizer step,
  a checkpoint write): finish it, checkpoint, stop. The signal only *requests* a stop; the
  trainer looks at :func:`requested` at its step boundaries.

The reward processes ignore SIGTERM (rlreason/rewards/_pool.py, _worker.py): the trainer closes them.
A second Ctrl-C raises KeyboardInterrupt at once, as usual.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import NoReturn

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):  # noqa: N818 (not an error: the program was asked to stop)
    """Raised by a stop signal inside :func:`stop_at_once`. A BaseException, so that ``except
    Exception`` clauses on the way do not swallow it."""


class _State:
    signal_name: str | None = None  # the signal that asked for a stop
    at_once = 0  # depth of stop_at_once() contexts (a step in flight counts until it commits)
    in_flight = False  # inside step_in_flight(), not committed yet
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
    again = _state.signal_name is not None  # e.g. accelerate's launcher passing a group's SIGTERM on once more
    _state.signal_name = name
    if _state.at_once:
        _say(f"{name}: stopping now (nothing trained would be lost)")
        raise Stopped(name)
    _say(f"{name}: already stopping" if again else f"{name}: stopping after this step, with a checkpoint")


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
    _enter_at_once()
    try:
        yield
    finally:
        _state.at_once -= 1


@contextlib.contextmanager
def step_in_flight(enabled: bool = True) -> Iterator[None]:
    """A training step: until :func:`commit`, a stop signal raises :class:`Stopped` at once (the
    caller abandons the step and restores what it changed); after it, stops only request. A stop
    requested before entering raises on entry. ``enabled=False`` (several processes, which must
    abandon at the same collective: the trainer asks them all at its stop points) leaves the
    signal a request throughout."""
    if not enabled:
        yield
        return
    _enter_at_once()
    _state.in_flight = True
    try:
        yield
    finally:
        commit()


def _enter_at_once() -> None:
    """Enter a window where a stop signal raises: at once, if one came before."""
    if requested():
        raise Stopped(_state.signal_name)
    _state.at_once += 1


def commit() -> None:
    """The step in flight starts changing what a checkpoint holds (the optimizer step): from here a
    stop signal only requests a stop, served at the step boundary. A no-op outside a step in flight."""
    if _state.in_flight:
        _state.at_once -= 1  # first: a signal from here on only requests
        _state.in_flight = False


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within: a stop signal only requests a stop, even inside :func:`stop_at_once` or a step in
    flight, for what must not be cut in the middle (a weight transfer to the rollout engine, which a
    vLLM server receives in a collective). On leaving, a stop requested meanwhile raises
    :class:`Stopped` where it would have."""
    saved, _state.at_once = _state.at_once, 0
    try:
        yield
    finally:
        _state.at_once = saved
    if saved and requested():
        raise Stopped(_state.signal_name)


def exit_stopped() -> NoReturn:
    """A script's last line when its run was stopped by a signal and everything is written: the
    atexit handlers, then exit status 0 at once, without the interpreter's teardown of its modules
    (1.2 s with torch and transformers loaded, benchmarks/stop_latency.py's tiny runs), which a
    launcher's grace period may not leave (accelerate 1.16 kills 5 s after its SIGTERM)."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


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

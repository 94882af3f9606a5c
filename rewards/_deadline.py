"""A wall-clock limit for a block of Python code: the one timer every scorer uses.

``time_limit(seconds)`` raises :class:`TimeoutError` inside the block once ``seconds`` have
passed, through a real-time timer signal (SIGALRM). Signals reach only the main thread, so
elsewhere (a worker thread) it sets no limit and the caller's own guards must bound the work;
and it never replaces a timer someone else set (an outer ``time_limit`` keeps its own, shorter
or not), since ``setitimer`` would silently move theirs.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``TimeoutError`` in the block after ``seconds`` (main thread, no other SIGALRM
    handler installed; otherwise no limit)."""
    usable = (
        seconds > 0
        and hasattr(signal, "SIGALRM")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN, None)
    )
    if not usable:
        yield
        return

    def _expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

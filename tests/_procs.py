"""Process helpers shared by the tests (and benchmarks/stop_latency.py): whether a pid still runs,
the live processes of a process group, and polling."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(predicate, timeout_s: float = 5.0) -> bool:
    """Poll ``predicate`` every 20 ms for up to ``timeout_s``; its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def in_group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (a launcher's session: the run and its workers)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(d.name))
    return out


def assert_all_end(pids: list[int], timeout_s: float = 5.0) -> None:
    """Every one of ``pids`` ends within ``timeout_s``; those that do not are SIGKILLed after the check."""
    try:
        assert wait_until(lambda: not any(alive(p) for p in pids), timeout_s), [p for p in pids if alive(p)]
    finally:
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)

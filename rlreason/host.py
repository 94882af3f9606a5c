"""What this process gets from the machine it runs on: the CPUs it may use, and its launcher.

Thread counts follow ``usable_cpus()``, the cores this process may actually run on (its CPU
affinity, as ``taskset`` or a container's cpuset sets it) capped by its cgroup CPU quota (as
``docker --cpus`` or a Kubernetes limit sets it), never ``os.cpu_count()``: more OpenMP threads
than cores is the oversubscription collapse. Even within that, the tiny models default to one
thread: on 2 shared cores, next to one single-threaded busy loop, the tiny model's build with 2
threads ran its first 100 warm-up steps in 541 s instead of 26 s alone (20.8x; issue 22); one
thread took 36 s there on a busy shared machine (a rough check: ``benchmarks/busy_machine.py``
measures it). Each parallel region of a 0.8M model is tens of microseconds, so a thread that
waits for a descheduled sibling at every barrier loses a scheduler time slice each time.

``exit_with_launcher()`` ties a training process to the ``accelerate launch`` (or torchrun)
process that started it: killing the launcher, which does not forward signals to the process it
started, delivers SIGTERM to the training process, which then checkpoints and stops as on a
direct SIGTERM.
"""

from __future__ import annotations

import ctypes
import math
import os
import signal
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP) -> float | None:
    """The cgroup CPU quota in cores (e.g. 1.5), or None when there is none.

    cgroup v2: ``<root>/cpu.max`` holds ``"<quota> <period>"`` or ``"max <period>"``.
    cgroup v1: ``<root>/cpu/cpu.cfs_quota_us`` (-1 = none) and ``cpu.cfs_period_us``
    (also under ``cpu,cpuacct/``)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for sub in ("cpu", "cpu,cpuacct"):
        try:
            quota = int((root / sub / "cpu.cfs_quota_us").read_text())
            period = int((root / sub / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota <= 0 or period <= 0 else quota / period
    return None


def usable_cpus(affinity: set[int] | None = None, cgroup_root: Path = CGROUP) -> int:
    """Cores this process may use: its affinity set (``os.sched_getaffinity(0)`` unless given),
    capped by the cgroup quota rounded down (1.5 cores of quota is 1 full core); at least 1."""
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    n = len(affinity) or 1
    limit = cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        n = min(n, math.floor(limit))
    return max(1, n)


def capped_threads(requested: int | None, usable: int | None = None) -> int:
    """Intra-op threads for a request: ``requested`` (None = one per usable core), never more
    than the usable cores."""
    usable = usable_cpus() if usable is None else usable
    return max(1, min(requested or usable, usable))


def under_launcher(env: dict[str, str] | None = None) -> bool:
    """Whether a launcher started this process: accelerate's single-process launcher (it sets
    ACCELERATE_USE_CPU) or torchrun / accelerate's multi-process one (TORCHELASTIC_RUN_ID)."""
    env = os.environ if env is None else env
    return "ACCELERATE_USE_CPU" in env or "TORCHELASTIC_RUN_ID" in env


def exit_with_launcher(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel for ``sig`` when the parent process (the launcher) ends (Linux
    ``PR_SET_PDEATHSIG``): ``accelerate launch`` dies on SIGTERM without passing it on, which
    left the run going on its own. Only under a launcher (a recipe started directly, e.g. with
    nohup, outlives its shell as before). Returns whether it is armed."""
    if not under_launcher() or not os.path.exists("/proc/self"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(sig), 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the launcher ended before the request took effect
        os.kill(os.getpid(), sig)
    return True

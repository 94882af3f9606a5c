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


def _own_cgroups(proc_cgroup: Path) -> tuple[str, str]:
    """This process's (cgroup v2 path, cgroup v1 cpu controller path) from /proc/self/cgroup."""
    v2 = v1 = "/"
    try:
        for line in proc_cgroup.read_text().splitlines():
            num, controllers, path = line.split(":", 2)
            if num == "0" and not controllers:
                v2 = path
            elif "cpu" in controllers.split(","):
                v1 = path
    except (OSError, ValueError):
        pass
    return v2, v1


def _ancestry(base: Path, path: str) -> list[Path]:
    """``base/path`` and every folder above it up to ``base``: a parent's limit applies too."""
    parts = [p for p in path.split("/") if p and p != ".."]
    return [base.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _read_limit(folder: Path) -> float | None:
    try:  # cgroup v2: "<quota> <period>" or "max <period>"
        quota, period = (folder / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1: quota -1 = none
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else quota / period


def cgroup_cpu_limit(root: Path = CGROUP, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The cgroup CPU quota in cores (e.g. 1.5), or None when there is none: the smallest over
    this process's cgroup and its ancestors (a container sees its own as ``/``).

    cgroup v2: ``<root>/<path>/cpu.max``; v1: ``<root>/cpu/<path>/cpu.cfs_quota_us`` and
    ``cpu.cfs_period_us`` (also under ``cpu,cpuacct/``)."""
    v2, v1 = _own_cgroups(proc_cgroup)
    folders = _ancestry(root, v2) + [f for sub in ("cpu", "cpu,cpuacct") for f in _ancestry(root / sub, v1)]
    limits = [x for x in map(_read_limit, folders) if x is not None]
    return min(limits) if limits else None


def usable_cpus(affinity: set[int] | None = None, cgroup_root: Path = CGROUP,
                proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """Cores this process may use: its affinity set (``os.sched_getaffinity(0)`` unless given),
    capped by the cgroup quota rounded down (1.5 cores of quota is 1 full core); at least 1."""
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    n = len(affinity) or 1
    limit = cgroup_cpu_limit(cgroup_root, proc_cgroup)
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

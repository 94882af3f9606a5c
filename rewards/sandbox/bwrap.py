"""The bubblewrap command line, the interpreter the sandbox runs, and the availability probe.

:func:`bwrap_argv` is a pure function from a :class:`BwrapConfig` (what the host looks like, which
paths to show, the /tmp size) to the argv prefix put before ``python3 -I -S -c <harness>``. What a
program sees inside: a read-only /usr (and the merged-/usr links /bin, /lib, /lib64 as the host has
them), the interpreter's own prefix read-only when it lives elsewhere, a private size-limited /tmp,
its own /proc, a minimal read-only /dev with a private size-limited /dev/shm; no /etc, /root,
/home, the repository, the virtual environment or the run folder; no network (an empty network
namespace with only its own loopback), no environment variables but PATH, LANG and HOME; no
capabilities and no further user namespaces.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ._types import SandboxUnavailable

PYTHON_ENV = "RLREASON_SANDBOX_PYTHON"  # another interpreter for the programs (must be stdlib-complete)
DEFAULT_PYTHON = "/usr/bin/python3"  # the system's: under /usr, readable by the unprivileged sandbox user
# The top-level names the dynamic loader and the interpreter may use on a merged-/usr or classic host.
_ROOT_NAMES = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
SANDBOX_ENV = (("PATH", "/usr/bin:/bin"), ("LANG", "C.UTF-8"), ("HOME", "/tmp"))
# The unprivileged identity a sandbox runs under when the trainer is root: RLIMIT_NPROC does not apply
# to root, and a program must not be root on the host's files. A uid no account uses; nogroup.
SANDBOX_UID = 61000
SANDBOX_GID = 65534


@dataclass(frozen=True)
class BwrapConfig:
    """What :func:`bwrap_argv` needs: all host facts passed in, so the argv is a pure function."""

    bwrap: str
    tmp_size_bytes: int
    # name under / -> its symlink target ("usr/lib") or "" when it is a real directory
    root_layout: tuple[tuple[str, str], ...] = ()
    ro_binds: tuple[str, ...] = ("/usr",)


def bwrap_argv(config: BwrapConfig) -> list[str]:
    """The bubblewrap argv prefix (ends before the command) for ``config``."""
    size = str(config.tmp_size_bytes)
    argv = [config.bwrap,
            "--unshare-all", "--unshare-user",  # user, pid, net, ipc, uts, cgroup: --unshare-user is
            # explicit because --unshare-all only *tries* it when bwrap is setuid
            "--disable-userns",  # no nested user namespace: no `unshare -r` to regain capabilities
            "--die-with-parent",  # killing bwrap (the host's wall-clock kill) ends the pid namespace
            "--new-session",  # no controlling terminal: TIOCSTI cannot type into the host's terminal
            # The harness is pid 1: no bwrap init in the namespace holding the result channel open for a
            # program to ptrace or pidfd_getfd; a program cannot signal pid 1; when pid 1 ends, all do.
            "--as-pid-1",
            "--cap-drop", "ALL"]
    for path in config.ro_binds:
        argv += ["--ro-bind", path, path]
    for name, target in config.root_layout:
        if f"/{name}" in config.ro_binds:
            continue
        argv += ["--symlink", target, f"/{name}"] if target else ["--ro-bind", f"/{name}", f"/{name}"]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--size", size, "--tmpfs", "/tmp",
             "--size", size, "--tmpfs", "/dev/shm",  # POSIX semaphores (multiprocessing) need it
             # The root and /dev are tmpfs that bwrap made: without a size, writable, they are memory a
             # program could fill; read-only (not recursive: /tmp, /dev/shm, /dev/null stay writable).
             "--remount-ro", "/dev", "--remount-ro", "/",
             "--chdir", "/tmp", "--clearenv"]
    for key, value in SANDBOX_ENV:
        argv += ["--setenv", key, value]
    argv.append("--")
    return argv


def host_root_layout() -> tuple[tuple[str, str], ...]:
    """The host's /bin, /lib, ... as (name, symlink target or "" for a directory), those that exist."""
    layout = []
    for name in _ROOT_NAMES:
        path = Path("/", name)
        if path.is_symlink():
            layout.append((name, os.readlink(path)))
        elif path.is_dir():
            layout.append((name, ""))
    return tuple(layout)


def find_python(python: str | None = None) -> str:
    """The interpreter programs run with: ``python``, else $RLREASON_SANDBOX_PYTHON, else the system's
    /usr/bin/python3 (not the trainer's: it may live under /root, unreadable to the sandbox user, and
    its site-packages must not be visible)."""
    chosen = python or os.environ.get(PYTHON_ENV) or DEFAULT_PYTHON
    found = shutil.which(chosen)
    if found is None:
        raise SandboxUnavailable(
            f"the sandbox's Python interpreter {chosen!r} was not found; install python3 "
            f"(`apt-get install python3`) or choose one with python=... or ${PYTHON_ENV}")
    return found


def python_binds(python: str) -> tuple[str, ...]:
    """Read-only binds for ``python``: /usr, plus the interpreter's prefix if it lives elsewhere
    (``/opt/py/bin/python3`` -> ``/opt/py``)."""
    real = Path(os.path.realpath(python))
    if real.is_relative_to("/usr"):
        return ("/usr",)
    return ("/usr", str(real.parent.parent))


def sandbox_user() -> dict:
    """Popen's ``user``/``group``/``extra_groups`` for the sandbox: an unprivileged uid when we are root
    (not preexec_fn: the reward pool may have threads)."""
    if os.geteuid() != 0:
        return {}
    return {"user": SANDBOX_UID, "group": SANDBOX_GID, "extra_groups": []}


HOW_TO_INSTALL = ("install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install "
                  "bubblewrap`; see docs/install.md), or opt in explicitly to the unsafe mode "
                  "(sandbox: unsafe-rlimits / Sandbox(mode=\"unsafe-rlimits\"): rlimits only, no isolation "
                  "of files, network or processes)")


@functools.cache
def _probe(bwrap: str | None, python: str) -> str:
    """"" when bubblewrap runs a Python program here; else why not (cached: probed once)."""
    if bwrap is None:
        return "bubblewrap (`bwrap`) is not installed"
    argv = bwrap_argv(BwrapConfig(bwrap, 1 << 20, host_root_layout(), python_binds(python)))
    try:
        proc = subprocess.run([*argv, python, "-I", "-S", "-c", "print('sandbox-ok')"], capture_output=True,
                              timeout=30, cwd="/", env={"PATH": "/usr/bin:/bin"}, **sandbox_user())
    except (OSError, subprocess.SubprocessError) as e:
        return f"running {bwrap} failed: {e}"
    if proc.returncode != 0 or proc.stdout.strip() != b"sandbox-ok":
        err = proc.stderr.decode(errors="replace").strip()[-500:]
        return f"{bwrap} failed its probe (exit {proc.returncode}): {err or proc.stdout[-200:]!r}"
    return ""


def check_available(python: str | None = None) -> None:
    """Raise :class:`SandboxUnavailable` unless bubblewrap can run ``python`` here (probed once)."""
    interpreter = find_python(python)
    why = _probe(shutil.which("bwrap"), interpreter)
    if why:
        raise SandboxUnavailable(f"the code sandbox cannot start: {why}. To fix it, {HOW_TO_INSTALL}.")

"""One run per output folder: a lock file holding the owner's pid and host.

Two runs writing one ``output_dir`` mix their logs and rotate each other's checkpoints away, and
both pass the start-up check when neither has saved yet. The lock is an ``fcntl`` record lock
on ``output_dir/.rlreason.run.lock``: the kernel drops it when its process dies however it dies
(SIGKILL included), so a lock left by a dead run is stale by construction and is taken over
with a warning naming the old holder. Record locks belong to the process, not to the file
descriptor, so the reward processes forked later do not hold it. Where the filesystem has no
record locks (some network mounts), the pid in the file decides: a live pid on this host holds
the folder; a lock from another host must be removed by hand.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".rlreason.run.lock"
logger = logging.getLogger("rlreason.run.lock")


class OutputDirLocked(RuntimeError):  # noqa: N818 (what the user reads: the folder is locked)
    """Another live run holds the output folder."""


_held: dict[str, int] = {}  # lock path -> open descriptor, for the locks this process holds


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    with contextlib.suppress(ValueError):
        info = json.loads(raw)
        if isinstance(info, dict):
            return info
    return {}


def _describe(info: dict) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"])) if "started" in info else "?"
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {when}"


def acquire(output_dir: str | Path) -> Path:
    """Lock ``output_dir`` for this process (created if needed); OutputDirLocked if a live run
    holds it. Held until :func:`release` or the end of the process. Re-entrant in one process."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    key = str(path.resolve())
    if key in _held:
        return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        previous = _holder(fd)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked_by_kernel = True
        except OSError as e:
            if e.errno in (errno.EACCES, errno.EAGAIN):
                raise OutputDirLocked(
                    f"output_dir {out} is in use by another run ({_describe(previous)}): wait for it to end, "
                    f"stop it, or choose another 'output_dir'") from None
            locked_by_kernel = False  # no record locks here (ENOLCK): the pid decides
        host = socket.gethostname()
        if previous.get("pid") not in (None, os.getpid()):
            same_host = previous.get("host") == host
            if not locked_by_kernel and (not same_host or _pid_alive(int(previous["pid"]))):
                raise OutputDirLocked(
                    f"output_dir {out} is in use by another run ({_describe(previous)}); if that run is gone, "
                    f"delete {path}, or choose another 'output_dir'")
            logger.warning("output_dir %s: taking over a stale lock left by a run that is gone (%s)", out,
                           _describe(previous))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": host, "started": time.time()}).encode())
    except BaseException:
        os.close(fd)
        raise
    _held[key] = fd
    return path


def release(output_dir: str | Path) -> None:
    """Give up the lock on ``output_dir`` (if held): the file goes, then the kernel lock."""
    path = Path(output_dir) / LOCK_NAME
    fd = _held.pop(str(path.resolve()), None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        path.unlink()
    os.close(fd)


@atexit.register
def _release_all() -> None:
    for key in list(_held):
        release(Path(key).parent)

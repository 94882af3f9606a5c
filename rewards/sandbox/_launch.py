"""One sandbox launch, host side: start the harness (inside bubblewrap, or bare in the unsafe mode),
send it the program and the inputs over its stdin, read its result channel, and enforce the
launch's own wall-clock deadline by killing the whole process group.

The harness enforces each input's limits itself (:mod:`._harness`); the host's deadline is the
backstop for a harness that cannot (killed, wedged, a sandbox that never started), so it is the
sum of the inputs' wall limits (or ``total_wall_s``) plus a start-up allowance.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from ._types import Limits, RunResult

HARNESS_SOURCE = (Path(__file__).parent / "_harness.py").read_text()
# Start-up allowance on top of the inputs' limits: bubblewrap + interpreter start take ~50 ms on an
# idle machine; a loaded one (2 cores, many parallel launches) needs far more before it is "broken".
_STARTUP_S = 10.0
_AFTER_KILL_S = 5.0  # reading what is left after the kill
_STDERR_KEEP = 2000  # characters of the harness's / bwrap's own stderr kept in a sandbox_error's detail


def launch(prefix: list[str], python: str, code: str, inputs: list[str], limits: Limits,
           total_wall_s: float | None, *, kill_all: bool, popen_user: dict) -> list[RunResult]:
    """Run ``code`` once per input in one launch of ``[*prefix, python, -I, -S, -c, harness]``."""
    workdir = "/tmp" if kill_all else tempfile.mkdtemp(prefix="rlreason-sandbox-")
    try:
        if not kill_all and popen_user:  # the unsafe mode's private working directory, owned by the sandbox user
            os.chown(workdir, popen_user["user"], popen_user["group"])
        request = {"code": code, "inputs": inputs, "limits": asdict(limits), "total_wall_s": total_wall_s,
                   "workdir": workdir, "kill_all": kill_all}
        deadline = _STARTUP_S + (total_wall_s if total_wall_s is not None
                                 else len(inputs) * (limits.wall_s + 2.5))  # 2.5: each input's clean-up
        return _run(prefix, python, request, len(inputs), deadline, workdir, popen_user)
    finally:
        if not kill_all:
            shutil.rmtree(workdir, ignore_errors=True)


def _run(prefix: list[str], python: str, request: dict, n: int, deadline_s: float, workdir: str,
         popen_user: dict) -> list[RunResult]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir}  # nothing of the trainer's
    start = time.monotonic()
    try:
        proc = subprocess.Popen([*prefix, python, "-I", "-S", "-c", HARNESS_SOURCE], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir, env=env,
                                start_new_session=True, **popen_user)
    except OSError as e:
        return [_failed("sandbox_error", f"could not start the sandbox: {e}", 0.0) for _ in range(n)]
    timed_out = False
    try:
        out, err = proc.communicate(json.dumps(request).encode(), timeout=deadline_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc)
        try:
            out, err = proc.communicate(timeout=_AFTER_KILL_S)
        except subprocess.TimeoutExpired:  # cannot happen once the group is dead; never hang the trainer
            proc.kill()
            out, err = b"", b"the sandbox did not end after SIGKILL"
    wall = time.monotonic() - start
    return _results(out, err, proc.returncode, n, timed_out, wall)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the launch's process group; the pid is not reaped yet, so the group id cannot be reused.
    Inside bwrap, killing bwrap ends the pid namespace (--die-with-parent)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _failed(status: str, detail: str, wall: float, returncode: int | None = None) -> RunResult:
    return RunResult(status=status, returncode=returncode, stdout="", stderr="", wall_s=wall, detail=detail)


def _results(out: bytes, err: bytes, returncode: int | None, n: int, timed_out: bool, wall: float) -> list[RunResult]:
    """The per-input results from the harness's result channel; what is missing, explained."""
    lines = out.decode(errors="replace").splitlines()
    errtext = err.decode(errors="replace")[-_STDERR_KEEP:]
    try:
        ready = bool(lines) and json.loads(lines[0]).get("ready") == 1
    except (json.JSONDecodeError, AttributeError):
        ready = False
    if not ready:
        why = "did not start in time" if timed_out else f"failed to start (exit {returncode})"
        return [_failed("sandbox_error", f"the sandbox {why}: {errtext.strip()}", wall, returncode) for _ in range(n)]
    found: dict[int, RunResult] = {}
    for line in lines[1:]:
        try:
            message = json.loads(line)
            index = message.pop("i")
            found[index] = RunResult(**message)
        except (json.JSONDecodeError, KeyError, TypeError):
            return [_failed("sandbox_error", f"the harness sent an unreadable result: {line[:200]!r}", wall)
                    for _ in range(n)]
    results = []
    for i in range(n):
        if i in found:
            results.append(found[i])
        elif timed_out:
            results.append(_failed("timeout", "the launch's total time limit was reached", wall))
        elif i == len(found):  # the harness ended while this input ran: the program killed it
            results.append(_failed("error", f"the sandbox's harness was killed during this run (exit {returncode})",
                                   wall, returncode))
        else:
            results.append(_failed("error", "not run: the harness was killed by an earlier input", wall))
    return results

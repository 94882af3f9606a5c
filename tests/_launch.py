"""Launching real multi-process runs from tests (and benchmarks/dist_shutdown.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_dist_worker.py"
# What a clean shutdown never prints: C++ aborts, Python tracebacks, gloo errors, and torch's
# warning about a process group left for the interpreter to destroy.
BAD_EXIT = ("terminate called", "Aborted", "core dumped", "Traceback", "ProcessGroupGloo", "destroy_process_group")


class LaunchTimeout(RuntimeError):
    pass


def run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group: on a timeout (a hung collective) the launcher's
    workers are killed with it instead of outliving the test."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                          start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise LaunchTimeout(f"{cmd} timed out after {timeout}s; stderr:\n{err[-4000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def torchrun(nproc: int) -> list[str]:
    # --standalone: a local rendezvous on a free port, so parallel test runs do not collide
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            str(WORKER)]


def assert_clean_exit(res: subprocess.CompletedProcess) -> None:
    assert res.returncode == 0, res.stderr[-4000:]
    bad = [s for s in BAD_EXIT if s in res.stderr]
    assert not bad, (bad, res.stderr[-4000:])


def free_port() -> int:
    """A port nothing listens on now (for launchers whose static rendezvous cannot take 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(config_file: Path) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            "--main_process_port", str(free_port()), str(WORKER)]

"""A real ``rlreason-vllm-serve`` subprocess for the vLLM server tests (test_vllm.py,
test_vllm_async.py), its output kept in a log file.

The server's log is where a failure's cause is: a request that fails on the trainer's side
only carries vLLM's summary (``HTTP 500: EngineCore encountered an issue. See stack trace
(above)``); the stack trace is in the server's output. ``running_server`` registers the log
on the test module (``SERVER_LOG``) while the server runs, and the ``pytest_runtest_makereport``
hook in conftest.py adds the log's tail to the report of every test of that module that fails.

The server starts with the environment the test session started with (``SESSION_ENV``, recorded
when conftest.py imports this module, before any test imports vLLM), as a user's server starts
from a shell: not with this process's current one. A colocated engine (``VLLMEngine``) sets
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` and other ``VLLM_*`` variables in this process; inherited,
they made the suite's servers run their worker inside the engine-core process (vLLM's uniproc
executor, which vLLM's CPU platform replaces by the multiprocessing one because "OMP requires the
MP executor to function correctly"), a server no user runs, and a test run alone got the other.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

SESSION_ENV = dict(os.environ)
SERVER_LOG = pytest.StashKey[Path]()
TAIL_LINES = 150  # vLLM's EngineCore traceback with its context: ~60-100 lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(log: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of the server's log (the file may be big: vLLM logs every request)."""
    with open(log, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 400 * lines))  # generous: traceback lines are long
        text = f.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def running_server(tiny_path: Path, log: Path, node: pytest.Item | pytest.Collector,
                   ) -> Iterator[tuple[str, subprocess.Popen]]:
    """(url, process) of a vLLM server on localhost, started the way users start it, in fp32 like
    the policy (its outputs are compared with the HF model's), in its own session (a test kills its
    whole process group). stdout and stderr go to ``log``, which is registered on ``node``."""
    port = free_port()
    env = dict(SESSION_ENV, VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "rlreason.rollout.vllm_server", "--model", str(tiny_path), "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--weight-transfer", "gloo", "--enforce-eager"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    node.stash[SERVER_LOG] = log
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {proc.returncode}:\n{log_tail(log, 60)}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vLLM server did not come up:\n{log_tail(log, 60)}") from None
                time.sleep(1)
        yield url, proc
    finally:
        del node.stash[SERVER_LOG]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

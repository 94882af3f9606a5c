"""Stopping a launcher that dies at once stops the run: SIGTERM or SIGINT to an ``accelerate launch``
1.15 process (what ``kill <pid>`` does; it passes no signal on: tests/_launcher_115.py) reaches the
training process, which asked the kernel for a SIGTERM when its launcher ends (rlreason/run/host.py),
checkpoints and exits as on a direct SIGTERM, and nothing of the run is left behind. accelerate
1.16, which passes the signal on and kills 5 s later: tests/test_resume.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _procs import in_group

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = Path(__file__).parent / "_launcher_115.py"
ARGS = ["--max_steps", "200", "--save_steps", "0", "--per_device_train_batch_size", "32",
        "--gradient_accumulation_steps", "1", "--num_generations", "4", "--eval_steps", "0",
        "--final_eval_size", "40", "--eval_size", "40", "--progress", "false", "--num_threads", "1"]
STOP_WITHIN_S = 90  # a step of this run takes ~1 s alone; the margin is for a busy machine


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a parent that does not reap it counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]




@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_launcher_checkpoints_and_stops_the_run(tiny_path, tmp_path, sig):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    # stderr to a file, not an unread pipe: a full pipe (64 KiB) would block the launcher's last
    # write (its KeyboardInterrupt traceback) or the trainer's, and the file shows what happened
    err = tmp_path / "launcher.err"
    with open(err, "w") as f:
        launcher = subprocess.Popen([sys.executable, str(LAUNCHER), "recipes/grpo_math.py", "--config",
                                     "recipes/configs/tiny_cpu.yaml", "--output_dir", str(out), *ARGS],
                                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=f,
                                    start_new_session=True,  # its own group: the test can clean up
                                    # SIGINT as in a terminal: a test run started as a background job
                                    # (`cmd &` in a script) inherits SIGINT ignored, and exec keeps that
                                    preexec_fn=_default_sigint)
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while not (metrics.exists() and '"step": 1,' in metrics.read_text()):
            assert launcher.poll() is None, err.read_text()[-3000:]
            assert time.monotonic() < deadline, "no training step within 300 s"
            time.sleep(0.1)
        (trainer,) = children(launcher.pid)
        launcher.send_signal(sig)  # to the launcher only, as `kill <pid>` does
        try:
            launcher.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the launcher outlived {sig.name} by 30 s; its stderr:\n{err.read_text()[-3000:]}")
        deadline = time.monotonic() + STOP_WITHIN_S
        while alive(trainer):
            assert time.monotonic() < deadline, f"the training process outlived its launcher by {STOP_WITHIN_S} s"
            time.sleep(0.2)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["interrupted"] and 1 <= summary["steps"] < 200
        assert (out / "checkpoints" / f"step-{summary['steps']:07d}").is_dir()
        assert not (out / "final_model").exists()
        assert in_group(launcher.pid) == []  # no orphan: no process of the run remains
    finally:
        if in_group(launcher.pid):
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()

"""The reward processes under a job's signals and a reward's misbehaviour towards its own
process (issue 19): a SIGTERM to the whole process group does not cost the in-flight batch; a
reward that forks, starts detached subprocesses, prints megabytes or loses its manager cannot
mis-score, leak processes or flood the log. Real processes and signals throughout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from _procs import assert_all_end, wait_until

from rlreason.rewards.runner import RewardRunner

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the worker pool is Linux-first")
ROOT = Path(__file__).resolve().parents[1]




def length_reward(prompts: list, completions: list, **kwargs: object) -> list[float]:
    return [float(len(c)) for c in completions]


def forking_reward(prompts: list, completions: list, **kwargs: object) -> list[float]:
    """Forks and lets the child return (wrong scores) through the worker's own code, as a
    reward calling a library that forks without exec might."""
    if os.fork() == 0:
        return [-1.0] * len(completions)
    return [float(len(c)) for c in completions]


def _python(script: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_sigterm_to_the_process_group_does_not_cost_the_batch_in_flight() -> None:
    """Slurm, Kubernetes and `timeout` signal every process of the job: the reward manager and
    workers leave the stop to the trainer, which gets its whole batch scored."""
    script = """
        import os, signal, sys, time
        from rlreason.rewards.runner import RewardRunner

        def slow(prompts, completions, **kw):
            time.sleep(0.3)
            return [float(len(c)) for c in completions]

        got = []
        signal.signal(signal.SIGTERM, lambda *a: got.append(1))  # the trainer: stop after this step
        runner = RewardRunner([slow], num_workers=2, timeout_s=5.0, chunk_size=2)
        print("scoring", flush=True)
        out = runner.score(["p"] * 12, ["x" * i for i in range(12)], {})
        runner.close()
        print(got, out.total.tolist(), out.failures, flush=True)
    """
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, start_new_session=True)
    assert proc.stdout.readline().strip() == "scoring"
    time.sleep(0.4)  # the batch is in the workers now
    os.killpg(proc.pid, signal.SIGTERM)  # what `kill -TERM -<pgid>` does
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert out.strip() == f"[1] {[float(i) for i in range(12)]} {{'slow': 0}}", (out, err[-2000:])


def test_a_batch_abandoned_by_a_stop_signal_closes_the_pool_at_once(tmp_path) -> None:
    """The trainer abandons a step in flight on a stop signal (tests/test_preemption.py): the pool
    is closed while its workers still score. The manager stops at once (it used to finish the
    batch first, or be killed after 5 s, the whole grace period of accelerate's launcher), and what
    the reward started dies with it."""
    pids = tmp_path / "pids"
    script = f"""
        import signal, subprocess, time
        from rlreason.rewards.runner import RewardRunner

        class Stop(BaseException):
            pass

        def slow(prompts, completions, **kw):
            child = subprocess.Popen(["sleep", "3600"], start_new_session=True)
            with open({str(pids)!r}, "a") as f:
                f.write(f"{{child.pid}}\\n")
            time.sleep(60)
            return [1.0] * len(completions)

        def stop(*a):
            raise Stop

        signal.signal(signal.SIGTERM, stop)  # what rlreason/run/stopping.py does in a step in flight
        runner = RewardRunner([slow], num_workers=2, timeout_s=120.0, chunk_size=2)
        print("scoring", flush=True)
        try:
            runner.score(["p"] * 4, ["c"] * 4, {{}})
        except Stop:
            t0 = time.monotonic()
            runner.close()
            print(f"closed in {{time.monotonic() - t0:.2f}} s", flush=True)
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.stdout.readline().strip() == "scoring"
    assert wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2)  # both workers in the reward
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert out.startswith("closed in ") and float(out.split()[2]) < 1.5, (out, err[-2000:])
    sleepers = [int(p) for p in pids.read_text().split()]
    assert_all_end(sleepers)


def test_a_reward_whose_forked_child_returns_cannot_answer_for_it() -> None:
    with RewardRunner([forking_reward], num_workers=2, chunk_size=2, timeout_s=5.0) as runner:
        for _ in range(3):
            completions = ["x" * i for i in range(16)]
            out = runner.score(["p"] * 16, completions, {})
            assert out.total.tolist() == [float(i) for i in range(16)]
            assert out.failures == {"forking_reward": 0}


def test_subprocesses_that_leave_the_workers_session_die_with_the_pool(tmp_path) -> None:
    pids = tmp_path / "pids"

    def detached_sleeper(prompts: list, completions: list, **kwargs: object) -> list[float]:
        # a new session: out of the worker's process group, so a group kill alone misses it
        child = subprocess.Popen(["sleep", "3600"], start_new_session=True)
        with open(pids, "a") as f:
            f.write(f"{child.pid}\n")
        return [1.0] * len(completions)

    with RewardRunner([detached_sleeper], num_workers=2, chunk_size=1) as runner:
        assert runner.score(["p"] * 4, ["a"] * 4, {}).failures == {"detached_sleeper": 0}
    sleepers = [int(p) for p in pids.read_text().split()]
    assert len(sleepers) == 4
    assert_all_end(sleepers)


def test_a_rewards_output_is_captured_and_capped() -> None:
    res = _python("""
        import sys
        from rlreason.rewards.runner import RewardRunner

        def chatty(prompts, completions, **kw):
            print("x" * 1_000_000)  # a megabyte per call
            sys.stderr.write("E" * 1_000_000)
            return [1.0] * len(completions)

        with RewardRunner([chatty], num_workers=2, chunk_size=1) as runner:
            out = runner.score(["p"] * 8, ["c"] * 8, {})
        print("scored", out.total.tolist())
    """)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "scored [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]" in res.stdout
    assert len(res.stdout) + len(res.stderr) < 8 * 3000, (len(res.stdout), len(res.stderr))  # not 16 MB
    assert "first 2000 of 2000001 bytes" in res.stderr


def test_a_manager_killed_mid_batch_is_restarted_and_the_batch_scored() -> None:
    def slowish(prompts: list, completions: list, **kwargs: object) -> list[float]:
        time.sleep(0.2)
        return [float(len(c)) for c in completions]

    with RewardRunner([slowish], num_workers=2, chunk_size=2, timeout_s=5.0) as runner:
        manager = runner._pool.manager_pid
        threading.Timer(0.3, os.kill, (manager, signal.SIGKILL)).start()
        out = runner.score(["p"] * 8, ["x" * i for i in range(8)], {})
        assert runner._pool.manager_pid != manager
        assert out.total.tolist() == [float(i) for i in range(8)] and out.failures == {"slowish": 0}
        # and the next batches too
        assert runner.score(["p"], ["abc"], {}).total.tolist() == [3.0]

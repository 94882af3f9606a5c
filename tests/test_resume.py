"""Runs survive the real faults: killed with SIGKILL after a checkpoint, or stopped with SIGTERM,
then resumed, they end with the same per-step metrics and the same weights as a run that
was never interrupted. Each run is a real recipe process on the tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
STEPS, SAVE_EVERY = 6, 3
ARGS = ["--max_steps", str(STEPS), "--save_steps", str(SAVE_EVERY), "--per_device_train_batch_size", "32",
        "--gradient_accumulation_steps", "1", "--num_generations", "4", "--learning_rate", "1e-4",
        "--eval_steps", "0", "--final_eval_size", "40", "--eval_size", "40", "--log_completions_steps", "1",
        "--progress", "false", "--num_threads", "1"]
# wall-clock measurements differ between any two runs; everything else must not
TIMING = ("time", "time/", "perf/")


def launch(out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(ROOT / "recipes" / "grpo_math.py"), "--output_dir", str(out),
                             *ARGS, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def wait_for(pred, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert proc.poll() is None, f"run ended before the fault could be injected:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.02)


def step_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "final_model" / "model.safetensors")


def assert_same_run(a: Path, b: Path) -> None:
    ra, rb = step_rows(a), step_rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert x == y, f"step {x['step']} differs: " + str({k: (x.get(k), y.get(k)) for k in x if x.get(k) != y.get(k)})
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:  # bit for bit: same RNG streams, same data order, same single-threaded kernels
        assert torch.equal(wa[k], wb[k]), k
    ca = (a / "completions.jsonl").read_text().splitlines()
    assert ca == (b / "completions.jsonl").read_text().splitlines()


@pytest.fixture(scope="module")
def straight(tiny_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    finish(launch(out))
    return out


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_equals_an_uninterrupted_run(straight, tmp_path):
    out = tmp_path / "run"
    proc = launch(out)
    ckpt = out / "checkpoints" / f"step-{SAVE_EVERY:07d}"
    wait_for(ckpt.exists, proc)
    proc.kill()  # SIGKILL: no handler runs, nothing is flushed or saved
    proc.wait()
    assert not (out / "final_model").exists()
    log = finish(launch(out, "--resume_from_checkpoint", "auto"))
    assert f"resumed from {ckpt}" in log.replace("\n", "")
    assert_same_run(straight, out)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_cleanly_then_resume_equals_an_uninterrupted_run(straight, tmp_path):
    out = tmp_path / "run"
    proc = launch(out)
    wait_for(lambda: (out / "metrics.jsonl").exists() and '"step": 1,' in (out / "metrics.jsonl").read_text(), proc)
    proc.send_signal(signal.SIGTERM)
    log = finish(proc, timeout=120)  # exit code 0: a clean, expected stop
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and 1 <= summary["steps"] < STEPS
    assert (out / "checkpoints" / f"step-{summary['steps']:07d}").is_dir()
    assert "resume_from_checkpoint auto" in log and (out / "report.html").exists()
    finish(launch(out, "--resume_from_checkpoint", "auto"))
    assert_same_run(straight, out)


def test_refuses_an_output_dir_with_another_runs_checkpoints(straight, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "recipes" / "grpo_math.py"), "--output_dir", str(straight),
                           *ARGS], capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode != 0
    assert "holds another run's checkpoints" in proc.stderr and "resume_from_checkpoint" in proc.stderr

"""Runs survive the real faults: killed with SIGKILL after a checkpoint, or stopped with SIGTERM
(to the trainer alone or to the whole process group, at any phase), resumed past torn logs and
damaged checkpoints, they end with the same per-step metrics and the same weights as a run that
was never interrupted. Each run is a real recipe process on the tiny model."""

from __future__ import annotations

import json
import os
import shutil
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


def launch(out: Path, *extra: str, session: bool = False, env: dict | None = None) -> subprocess.Popen:
    """The recipe; with ``session`` in its own session and process group, as a batch job runs,
    so that ``os.killpg`` reaches every process of the run (reward manager and workers too)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen([sys.executable, str(ROOT / "recipes" / "grpo_math.py"), "--output_dir", str(out),
                             *ARGS, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                            start_new_session=session)


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


# ---------------------------------------------------------------------- issue 19: signals to the whole job


def logged(out: Path, step: int) -> bool:
    path = out / "metrics.jsonl"
    return path.exists() and f'"step": {step},' in path.read_text()


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.mark.slow
def test_group_sigterm_checkpoints_the_last_fully_scored_step_then_resume_past_torn_logs_is_exact(straight, tmp_path):
    """What Slurm, Kubernetes and `timeout` do: SIGTERM to every process of the job, here while
    step 2's batch is being scored. The reward processes leave the stop to the trainer, so that
    batch is scored in full, trained and checkpointed. Then a full disk's torn last lines in both
    logs: dropped with a warning."""
    out = tmp_path / "run"
    arm = tmp_path / "arm"
    # the built-in accuracy reward, which sleeps while scoring once armed (same name, same scores)
    reward = ["--reward_funcs", f"[{ROOT / 'tests' / '_signal_reward.py'}:accuracy_reward]"]
    proc = launch(out, *reward, session=True, env={"RLREASON_TEST_ARM": str(arm)})
    wait_for(lambda: logged(out, 1), proc)
    arm.touch()
    wait_for(Path(f"{arm}.scoring").exists, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    log = finish(proc, timeout=120)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and 1 <= summary["steps"] < STEPS, log[-2000:]
    assert (out / "checkpoints" / f"step-{summary['steps']:07d}").is_dir()
    rows = step_rows(out)
    assert all(v == 0 for r in rows for k, v in r.items() if k.endswith("/failures")), "a step was scored None"
    for name in ("metrics.jsonl", "completions.jsonl"):
        with open(out / name, "a") as f:
            f.write('{"step": ')  # what a full disk left behind
    log = finish(launch(out, *reward, "--resume_from_checkpoint", "auto", session=True))
    for name in ("metrics.jsonl", "completions.jsonl"):
        assert f"{out / name}: its last line is torn" in log.replace("\n", "")
    assert_same_run(straight, out)


@pytest.mark.slow
def test_sigterm_before_the_first_step_stops_at_once_and_auto_then_starts_over(straight, tmp_path):
    """Building the model, then the held-out evaluation before training: nothing trained yet,
    so the run stops at once (exit 0, no checkpoint); a resume with auto starts afresh and the
    result is the uninterrupted run's (what the stopped runs logged is dropped)."""
    out = tmp_path / "run"
    proc = launch(out, session=True)
    wait_for((out / "config.yaml").exists, proc)  # start-up done: the model is being built
    os.killpg(proc.pid, signal.SIGTERM)
    log = finish(proc, timeout=120)
    assert "stopped before training started" in log and not (out / "checkpoints").exists()
    proc = launch(out, "--resume_from_checkpoint", "auto", session=True)
    wait_for(lambda: children(proc.pid), proc)  # the trainer started its reward manager: the first eval is next
    os.killpg(proc.pid, signal.SIGTERM)
    log = finish(proc, timeout=120)
    assert "nothing trained" in log and not (out / "checkpoints").exists(), log[-2000:]
    finish(launch(out, "--resume_from_checkpoint", "auto"))
    assert_same_run(straight, out)


@pytest.mark.slow
def test_sigterm_during_the_final_eval_loses_nothing_and_resume_finishes_the_run(straight, tmp_path):
    out = tmp_path / "run"
    proc = launch(out, session=True)
    # the last step's checkpoint is written before the final evaluation
    wait_for((out / "checkpoints" / f"step-{STEPS:07d}").exists, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    log = finish(proc, timeout=120)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == STEPS and (out / "report.html").exists(), log[-2000:]
    if summary["interrupted"]:  # stopped in the final eval (not after it): no final model yet
        assert not (out / "final_model").exists()
        finish(launch(out, "--resume_from_checkpoint", "auto"))
    assert_same_run(straight, out)


@pytest.mark.slow
def test_auto_skips_a_damaged_checkpoint_and_resumes_exactly_from_the_intact_one(straight, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    newest = out / "checkpoints" / f"step-{STEPS:07d}" / "model.safetensors"
    data = bytearray(newest.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 2000):
        data[i] ^= 0x01  # 2,000 flipped bits: loads silently without checksums
    newest.write_bytes(data)
    log = finish(launch(out, "--resume_from_checkpoint", "auto"))
    assert f"{newest} does not match its checksum" in log.replace("\n", "") and "falling back" in log
    assert f"resumed from {out / 'checkpoints' / f'step-{SAVE_EVERY:07d}'}" in log.replace("\n", "")
    assert_same_run(straight, out)


def test_resume_refuses_changed_settings_naming_each_and_the_flag(straight, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    res = subprocess.run([sys.executable, str(ROOT / "recipes" / "grpo_math.py"), "--output_dir", str(out), *ARGS,
                          "--resume_from_checkpoint", "auto", "--num_generations", "2", "--learning_rate", "1e-3"],
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert res.returncode != 0
    assert "num_generations: 4 -> 2 (cannot change in a resumed run" in res.stderr
    assert "learning_rate: 0.0001 -> 0.001 (an optimizer setting" in res.stderr
    assert "--allow_config_changes learning_rate" in res.stderr


@pytest.mark.slow
def test_an_allowed_learning_rate_change_is_applied_to_the_optimizer_and_recorded(straight, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    shutil.rmtree(out / "checkpoints" / f"step-{STEPS:07d}")  # continue from step 3
    finish(launch(out, "--resume_from_checkpoint", "auto", "--max_steps", str(SAVE_EVERY + 1),
                  "--learning_rate", "1e-3", "--allow_config_changes", "[learning_rate]"))
    rows = {r["step"]: r for r in step_rows(out) if "lr" in r}
    assert rows[SAVE_EVERY]["lr"] == 1e-4 and rows[SAVE_EVERY + 1]["lr"] == 1e-3
    state = json.loads((out / "checkpoints" / f"step-{SAVE_EVERY + 1:07d}" / "trainer_state.json").read_text())
    assert state["config"]["learning_rate"] == 1e-3
    assert state["config_changes"] == [{"step": SAVE_EVERY, "key": "learning_rate", "from": 1e-4, "to": 1e-3}]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_during_start_up_exits_cleanly(sig, tmp_path):
    """The seconds of `import torch, transformers` before the recipe's first line: status 0."""
    out = tmp_path / "run"
    proc = launch(out, session=True)
    time.sleep(0.5)
    os.killpg(proc.pid, sig)
    log = finish(proc, timeout=120)
    assert "no training in progress, nothing to save" in log or "stopped before training started" in log, log
    assert not (out / "checkpoints").exists()


# ---------------------------------------------------------------------- issue 21: overlapped rollouts

ASYNC = ("--async_rollouts", "true")


@pytest.fixture(scope="module")
def straight_async(tiny_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight-async") / "run"
    finish(launch(out, *ASYNC))
    return out


@pytest.mark.slow
def test_async_sigterm_with_a_batch_in_flight_then_resume_equals_an_uninterrupted_async_run(straight_async, tmp_path):
    """The checkpoint holds the next step's batch (generated by the weights before the last
    update): the resumed run trains on exactly it, and from there on samples what the
    uninterrupted run sampled."""
    out = tmp_path / "run"
    proc = launch(out, *ASYNC)
    wait_for(lambda: logged(out, 1), proc)
    proc.send_signal(signal.SIGTERM)
    finish(proc, timeout=120)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and 1 <= summary["steps"] < STEPS
    assert (out / "checkpoints" / f"step-{summary['steps']:07d}" / "pending_rollout.pt").is_file()
    log = finish(launch(out, *ASYNC, "--resume_from_checkpoint", "auto"))
    assert "async rollouts" in log
    assert_same_run(straight_async, out)
    staleness = [json.loads(x).get("async/staleness") for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in staleness if s is not None] == [0.0] + [1.0] * (STEPS - 1)


@pytest.mark.slow
def test_async_sigkill_after_a_checkpoint_then_resume_equals_an_uninterrupted_async_run(straight_async, tmp_path):
    out = tmp_path / "run"
    proc = launch(out, *ASYNC)
    ckpt = out / "checkpoints" / f"step-{SAVE_EVERY:07d}"
    wait_for(ckpt.exists, proc)
    proc.kill()
    proc.wait()
    finish(launch(out, *ASYNC, "--resume_from_checkpoint", "auto"))
    assert_same_run(straight_async, out)

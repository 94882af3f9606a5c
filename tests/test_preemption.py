"""A stop signal abandons the step in flight (rlreason/stopping.py, ``GRPOTrainer._in_flight``):
until the update commits, nothing of the step is kept, and the checkpoint written at once is the
one the previous step's end wrote in an uninterrupted run, file for file; resuming from it gives
the uninterrupted run's metrics and weights. In-process trainers on the real tiny model, a real
SIGTERM sent by the reward while it scores (the step's longest phase in real runs). Launchers and
their grace periods, with real processes: tests/test_resume.py (accelerate launch, python) and
tests/test_launcher_signals.py."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from test_async_rollouts import SMALL, _varied_reward
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason.build import assemble, close_engine
from rlreason.config import GRPOConfig
from rlreason.data import arith_dataset, prepare
from rlreason.trainer import GRPOTrainer

STEPS = 4
TIMING = ("time", "time/", "perf/")
STATE_FILES = ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl")


def _signalling_reward(at_step: int | None, sleep_s: float):
    """The varied reward; while it scores step ``at_step + 1`` it sends SIGTERM to this (the
    trainer's) process and sleeps ``sleep_s``: the trainer abandons the step meanwhile."""
    trainer_pid = os.getpid()

    def reward(completions, trainer_state, **kw):
        if trainer_state.global_step == at_step:
            os.kill(trainer_pid, signal.SIGTERM)
            time.sleep(sleep_s)
        return _varied_reward(completions)

    return reward


def _trainer(tiny_path, out: Path, reward, **overrides) -> GRPOTrainer:
    cfg = GRPOConfig(output_dir=str(out), **{**SMALL, "max_steps": STEPS, "save_total_limit": 10, **overrides})
    tok = AutoTokenizer.from_pretrained(tiny_path)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    train = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)
    return GRPOTrainer(cfg, assemble(cfg, model, tok, train, [reward], accelerator=Accelerator(cpu=True)))


def _train(tr: GRPOTrainer) -> dict:
    try:
        return tr.train()
    finally:
        close_engine(tr.engine)


def _rows(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if not k.startswith(TIMING)} for x in lines if x.strip()]


def _untimed(x):
    """A pending batch's contents without its wall-clock measurements."""
    if isinstance(x, dict):
        return {k: _untimed(v) for k, v in x.items() if not str(k).startswith(TIMING)}
    if isinstance(x, list | tuple):
        return [_untimed(v) for v in x]
    return x.tolist() if isinstance(x, torch.Tensor) else x


def _assert_same_checkpoint(a: Path, b: Path) -> None:
    for name in STATE_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    sa, sb = (json.loads((c / "trainer_state.json").read_text()) for c in (a, b))
    sa.pop("config"), sb.pop("config")  # save_steps differs between the runs
    assert sa == sb
    if (a / "pending_rollout.pt").exists() or (b / "pending_rollout.pt").exists():
        pa, pb = (torch.load(c / "pending_rollout.pt", weights_only=False) for c in (a, b))
        assert _untimed(pa) == _untimed(pb)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_stop_signal_abandons_the_step_and_checkpoints_the_one_before_exactly(tiny_path, tmp_path, mode):
    extra = {"async_rollouts": True} if mode == "async" else {}
    ref = tmp_path / "reference"
    _train(_trainer(tiny_path, ref, _signalling_reward(None, 0), save_steps=1, **extra))
    out = tmp_path / "stopped"
    # sync: scoring step 3 (the trainer waits for it); async: scoring step 3 on the rollout thread
    # while step 2 trains or the trainer waits for the batch (either is abandoned); the async stop
    # waits for a batch in flight that was not taken, so its reward sleeps less
    t0 = time.monotonic()
    summary = _train(_trainer(tiny_path, out, _signalling_reward(2, 30.0 if mode == "sync" else 3.0), save_steps=0,
                              **extra))
    assert time.monotonic() - t0 < 60 and summary["interrupted"]
    (ckpt,) = sorted((out / "checkpoints").glob("step-*"))  # the stop's checkpoint, the only one
    step = summary["steps"]
    assert ckpt.name == f"step-{step:07d}" and 1 <= step < STEPS
    if mode == "sync":
        assert step == 2  # the step being scored (3) abandoned
    _assert_same_checkpoint(ref / "checkpoints" / ckpt.name, ckpt)
    assert [r["step"] for r in _rows(out) if "loss" in r] == list(range(1, step + 1))  # nothing of the abandoned step
    _train(_trainer(tiny_path, out, _signalling_reward(None, 0), save_steps=0, resume_from_checkpoint="auto", **extra))
    assert _rows(out) == _rows(ref)
    fa, fb = (load_file(c / "checkpoints" / f"step-{STEPS:07d}" / "model.safetensors") for c in (ref, out))
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)

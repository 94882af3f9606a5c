"""A stop signal abandons the step in flight (rlreason/run/stopping.py, ``GRPOTrainer._in_flight``):
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

import datasets
import pytest
import torch
from _configs import demo_config
from accelerate import Accelerator
from safetensors.torch import load_file
from test_async_rollouts import SMALL, _varied_reward
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason.build import assemble
from rlreason.data import arith_dataset, prepare
from rlreason.eval.suites import arith_suite
from rlreason.loop.trainer import GRPOTrainer
from rlreason.rewards import accuracy_reward
from rlreason.rollout.errors import RolloutServerError, find_server_error
from rlreason.rollout.factory import close as close_engine
from rlreason.rollout.hf import HFEngine

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


class _DyingServer(HFEngine):
    """The transformers engine on the policy, failing its ``fail_at``-th generation as a vLLM server's
    client does once its retries are spent (rlreason/rollout/gloo_transfer.py; the real server
    killed mid-run: tests/test_vllm_async.py)."""

    def __init__(self, model, tokenizer, fail_at: int) -> None:
        super().__init__(model, tokenizer)
        self.calls, self.fail_at = 0, fail_at

    def generate(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RolloutServerError("http://127.0.0.1:8000/generate", 500, "EngineCore encountered an issue", 4)
        return super().generate(*args, **kwargs)


def _trainer(tiny_path, out: Path, reward, fail_at: int | None = None, eval_fn=None, **overrides) -> GRPOTrainer:
    cfg = demo_config(output_dir=str(out), **{**SMALL, "max_steps": STEPS, "save_total_limit": 10, **overrides})
    tok = AutoTokenizer.from_pretrained(tiny_path)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    train = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)
    engine = _DyingServer(model, tok, fail_at) if fail_at else None
    heldout = list(prepare(datasets.Dataset.from_list(arith_suite(16)), tokenizer=tok)) if eval_fn else None
    return GRPOTrainer(cfg, assemble(cfg, model, tok, train, [reward], engine=engine, eval_rows=heldout,
                                     eval_accuracy_fn=eval_fn, accelerator=Accelerator(cpu=True)))


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
        pa, pb = (torch.load(c / "pending_rollout.pt", weights_only=True) for c in (a, b))
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


@pytest.mark.slow
def test_a_rollout_server_that_fails_for_good_stops_the_run_with_an_exact_checkpoint(tiny_path, tmp_path):
    """The server's retries spent while step 3 generates: the run stops with the checkpoint of step 2
    (the one an uninterrupted run wrote, file for file) and an error naming the server, its status,
    its message and the checkpoint; the resume finishes the uninterrupted run."""
    ref = tmp_path / "reference"
    _train(_trainer(tiny_path, ref, _signalling_reward(None, 0), save_steps=1))
    out = tmp_path / "failed"
    with pytest.raises(RolloutServerError) as e:
        _train(_trainer(tiny_path, out, _signalling_reward(None, 0), fail_at=3, save_steps=0))
    ckpt = out / "checkpoints" / "step-0000002"
    message = str(e.value)
    assert "http://127.0.0.1:8000/generate: HTTP 500: EngineCore encountered an issue (4 attempts)" in message
    assert f"stopped at step 2 with a checkpoint in {ckpt}" in message and find_server_error(e.value) is e.value
    assert [p.name for p in (out / "checkpoints").iterdir()] == [ckpt.name]
    _assert_same_checkpoint(ref / "checkpoints" / ckpt.name, ckpt)
    _train(_trainer(tiny_path, out, _signalling_reward(None, 0), save_steps=0, resume_from_checkpoint="auto"))
    assert _rows(out) == _rows(ref)


def _signalling_eval(calls: Path, at_call: int):
    """The accuracy reward of the held-out evaluation; on its ``at_call``-th batch (counted in a file:
    it runs in worker processes) it sends SIGTERM to the trainer while it scores."""
    trainer_pid = os.getpid()

    def accuracy(prompts, completions, answer, **kw):
        with open(calls, "a") as f:
            f.write("x")
        if len(calls.read_text()) == at_call:
            os.kill(trainer_pid, signal.SIGTERM)
            time.sleep(5.0)
        return accuracy_reward(prompts, completions, answer=answer, **kw)

    return accuracy


@pytest.mark.slow
def test_a_stop_during_a_periodic_evaluation_leaves_the_steps_row_to_the_resume(tiny_path, tmp_path):
    """SIGTERM while the evaluation after step 2 is scored: step 2 is done, so it is checkpointed with
    its metrics row kept aside (its evaluation cut short), and the resumed run evaluates it and writes
    the row the uninterrupted run wrote: the logs are the same, the evaluation included."""
    common = dict(eval_steps=2, save_steps=0, final_eval_size=16, eval_size=16)
    ref = tmp_path / "reference"
    _train(_trainer(tiny_path, ref, _signalling_reward(None, 0), eval_fn=_signalling_eval(tmp_path / "c0", -1),
                    **common))
    out = tmp_path / "stopped"
    # call 1: the evaluation before training; call 2: the one after step 2
    summary = _train(_trainer(tiny_path, out, _signalling_reward(None, 0),
                              eval_fn=_signalling_eval(tmp_path / "c1", 2), **common))
    assert summary["interrupted"] and summary["steps"] == 2
    state = json.loads((out / "checkpoints" / "step-0000002" / "trainer_state.json").read_text())
    assert state["pending_row"]["loss"] == next(r for r in _rows(ref) if r.get("step") == 2)["loss"]
    assert [r["step"] for r in _rows(out)] == [0, 1]  # the before-training row and step 1; step 2 pending
    _train(_trainer(tiny_path, out, _signalling_reward(None, 0), eval_fn=_signalling_eval(tmp_path / "c2", -1),
                    resume_from_checkpoint="auto", **common))
    assert _rows(out) == _rows(ref)
    assert "eval/accuracy" in next(r for r in _rows(out) if r["step"] == 2)

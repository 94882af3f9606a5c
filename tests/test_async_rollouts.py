"""Overlapped rollouts (async_rollouts, rlreason/loop/async_rollout.py) on the real tiny model: the run
trains, is deterministic, bounds the staleness, surfaces the rollout thread's errors, and refuses
what it cannot run. Exact resume with a batch in flight: tests/test_resume.py."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import os
import re
import threading
import time
from enum import StrEnum
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from _configs import demo_config
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason.build import assemble
from rlreason.config import ASYNC_IS_CAP, ConfigError, GRPOConfig
from rlreason.data import arith_dataset, prepare
from rlreason.eval.suites import arith_suite
from rlreason.loop.async_rollout import PENDING_ROLLOUT, Batch, Overlap, RolloutThread
from rlreason.loop.experience import plain, rollout_from_state, rollout_state
from rlreason.loop.trainer import GRPOTrainer
from rlreason.rewards import accuracy_reward, completion_text
from rlreason.rollout.factory import close as close_engine
from rlreason.rollout.hf import HFEngine
from rlreason.rollout.hf_process import ProcessHFEngine
from rlreason.run.checkpoint import CorruptCheckpointError, write_manifest

SMALL = dict(num_generations=4, per_device_train_batch_size=8, gradient_accumulation_steps=1,
             max_completion_length=40, learning_rate=1e-3, eval_steps=0, save_steps=0, progress=False,
             log_completions_steps=0, final_eval_size=0)
TIMING = ("time", "time/", "perf/")  # wall-clock measurements differ between any two runs


def _varied_reward(completions, **kw):
    """Differs between samples of a prompt, so every group carries a gradient."""
    return [float(int(hashlib.md5(completion_text(c).encode()).hexdigest(), 16) % 3) for c in completions]


def make(tiny_path, tmp_path, name="run", engine_factory=None, eval_n=0, **overrides) -> GRPOTrainer:
    cfg = demo_config(output_dir=str(tmp_path / name), async_rollouts=True, **{**SMALL, "max_steps": 4, **overrides})
    tok = AutoTokenizer.from_pretrained(tiny_path)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    train = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)
    engine = engine_factory(model, tok) if engine_factory else None
    heldout = list(prepare(datasets.Dataset.from_list(arith_suite(eval_n)), tokenizer=tok)) if eval_n else None
    return GRPOTrainer(cfg, assemble(cfg, model, tok, train, [_varied_reward], engine=engine, eval_rows=heldout,
                                     eval_accuracy_fn=accuracy_reward if eval_n else None,
                                     accelerator=Accelerator(cpu=True)))


def rows(tr) -> list[dict]:
    lines = (tr.run_dir.path / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if not k.startswith(TIMING)} for x in lines if x.strip()]


def weights(tr) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tr.acc.unwrap_model(tr.model).named_parameters()}


def test_config_resolves_and_refuses():
    cfg = GRPOConfig(async_rollouts=True)
    assert cfg.generation_seed_per_prompt and cfg.importance_sampling_cap == ASYNC_IS_CAP
    assert GRPOConfig(async_rollouts=True, importance_sampling_cap=5.0).importance_sampling_cap == 5.0
    assert GRPOConfig().importance_sampling_cap is None  # unchanged without async
    for bad, key in [(dict(dynamic_sampling=True), "dynamic_sampling"), (dict(use_vllm=True), "vllm_mode"),
                     (dict(weight_sync_steps=2), "weight_sync_steps"), (dict(use_peft=True), "use_peft"),
                     (dict(max_staleness=0), "max_staleness")]:
        with pytest.raises(ConfigError, match=f"'{key}'"):
            GRPOConfig(async_rollouts=True, **bad)
    GRPOConfig(async_rollouts=True, use_vllm=True, vllm_mode="server")  # the natural case


def test_async_run_trains_logs_staleness_and_is_deterministic(tiny_path, tmp_path):
    a = make(tiny_path, tmp_path, "a")
    assert a.engine.model is not a.acc.unwrap_model(a.model)  # generates with a copy of the policy
    before = weights(a)
    a.train()
    ra = rows(a)
    assert [r["async/staleness"] for r in ra] == [0.0, 1.0, 1.0, 1.0]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in ra)
    for r in ra:  # a step whose groups were all flat trains no token: its weight statistics are NaN (null)
        if r["skipped_groups_frac"] == 1.0:
            assert r["is_weight_mean"] is None and r["is_weight_capped_frac"] is None
        else:
            assert 0 < r["is_weight_mean"] <= ASYNC_IS_CAP and 0 <= r["is_weight_capped_frac"] <= 1
    assert any(r["skipped_groups_frac"] < 1.0 for r in ra)
    # the weight compares the trained policy with the sampler's own log-probs: 1 (up to numerics)
    # at step 0, whose batch the same weights sampled; off 1 once the sampler lags an update at lr 1e-3
    assert ra[0]["is_weight_mean"] == pytest.approx(1.0, abs=1e-4)
    assert any(abs(r["is_weight_mean"] - 1.0) > 1e-2 for r in ra[1:] if r["is_weight_mean"] is not None)
    after = weights(a)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # the engine holds the weights of the last sync (after update 2), not the final ones
    b = make(tiny_path, tmp_path, "b")
    b.train()
    assert rows(b) == ra
    wb = weights(b)
    assert all(torch.equal(after[k], wb[k]) for k in after)


def test_the_child_process_generator_trains_as_the_rollout_thread_does(tiny_path, tmp_path):
    """async_generator "process" (the engine in a child process on shared-memory weights) through the
    trainer: the weight syncs reach the child, which samples what the rollout thread would, so
    the run logs the same metrics and ends with the same weights as the thread's run."""
    a = make(tiny_path, tmp_path, "thread")
    assert type(a.engine) is HFEngine
    a.train()
    b = make(tiny_path, tmp_path, "process", async_generator="process")
    try:
        assert isinstance(b.engine, ProcessHFEngine) and b.engine._proc.is_alive()
        b.train()
    finally:
        b.close()
        close_engine(b.engine)
    assert not b.engine._proc.is_alive()
    assert rows(b) == rows(a)
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

def test_max_staleness_bounds_the_lag(tiny_path, tmp_path):
    tr = make(tiny_path, tmp_path, max_steps=5, max_staleness=2)
    tr.train()
    # the engine takes weights only when the next batch would be more than 2 steps behind
    assert [r["async/staleness"] for r in rows(tr)] == [0.0, 1.0, 2.0, 1.0, 2.0]


def test_evaluations_use_the_current_weights(tiny_path, tmp_path):
    """A periodic eval waits for the batch in flight, then gives the engine the policy's weights:
    the schedule of which weights sample which batch is unchanged, and the final eval (and the
    engine after it) has the trained weights."""
    tr = make(tiny_path, tmp_path, eval_n=16, eval_steps=2, eval_size=16, final_eval_size=16)
    tr.train()
    steps = [r for r in rows(tr) if "async/staleness" in r]
    assert [r["async/staleness"] for r in steps] == [0.0, 1.0, 1.0, 1.0]
    assert "eval/accuracy" in steps[1]  # step 2's eval
    policy = dict(tr.acc.unwrap_model(tr.model).named_parameters())
    assert all(torch.equal(p, policy[k]) for k, p in tr.engine.model.named_parameters())


class _FailingEngine(HFEngine):
    """A transformers engine on a copy of the policy whose second ``generate`` raises."""

    def __init__(self, model, tok) -> None:
        super().__init__(copy.deepcopy(model).eval(), tok)
        self.calls = 0

    def generate(self, *a, **kw):
        self.calls += 1
        if self.calls == 2:
            raise OSError("the generator died")
        return super().generate(*a, **kw)


def test_rollout_thread_error_surfaces_in_the_trainer(tiny_path, tmp_path):
    tr = make(tiny_path, tmp_path, engine_factory=_FailingEngine)
    with pytest.raises(RuntimeError, match="rollout thread: OSError: the generator died"):
        tr.train()
    assert not [t for t in threading.enumerate() if t.name.startswith("rlreason-rollout")]


def test_rollout_thread_order_errors_and_restore():
    rt = RolloutThread()
    rt.submit(3, 2, lambda: (time.sleep(0.05), "x")[1])
    with pytest.raises(RuntimeError, match="already in flight"):
        rt.submit(4, 2, lambda: None)
    b = rt.take(3)
    assert (b.step, b.version, b.result) == (3, 2, "x") and not rt.busy
    rt.put(Batch(5, 4, "restored"))
    with pytest.raises(RuntimeError, match="expected the rollout of step 6"):
        rt.take(6)
    assert rt.take(5).result == "restored"  # a wrong step takes nothing
    rt.submit(7, 6, lambda: 1 / 0)
    with pytest.raises(RuntimeError, match="ZeroDivisionError") as e:
        rt.take(7)
    assert isinstance(e.value.__cause__, ZeroDivisionError) and not rt.busy
    rt.close()


def test_rollout_state_round_trip(tiny_path, tmp_path):
    tr = make(tiny_path, tmp_path)
    tr.overlap.start(0)
    ro = tr.collect()
    back = rollout_from_state(copy.deepcopy(rollout_state(ro)))
    assert back.samples == ro.samples and back.prompt_ids == ro.prompt_ids and back.prompts == ro.prompts
    assert torch.equal(back.rewards, ro.rewards) and torch.equal(back.advantages, ro.advantages)
    assert back.metrics == ro.metrics and back.extra == ro.extra
    assert all(torch.equal(back.per_func[k], v) for k, v in ro.per_func.items())
    tr.close()


class _RunsCode:
    """Unpickled, it runs a shell command: what a doctored checkpoint file carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pending_rollout_that_carries_code_is_refused_naming_the_file(tiny_path, tmp_path):
    """pending_rollout.pt (the batch in flight) is loaded as tensors and plain data (weights_only): a
    checkpoint's file doctored to run a command when unpickled, re-hashed into the manifest so that it
    passes verification, is refused with an error naming it, and the command never runs. What the
    trainer writes loads so, numpy values a reward logged included."""
    tr = make(tiny_path, tmp_path, max_steps=2, save_steps=1)
    tr.train()
    ckpt = tmp_path / "run" / "checkpoints" / "step-0000001"
    pending = ckpt / PENDING_ROLLOUT
    saved = torch.load(pending, weights_only=True)
    assert saved["step"] == 1
    batch = {"metrics": {"m": np.float64(0.5), "n": np.int64(3)}, "extra": {"col": [np.float32(1.5), np.arange(2)]},
             "errors": (StrEnum("E", ["boom"]).boom, Path("/x"))}
    back = torch.load(io.BytesIO(_saved(plain(batch))), weights_only=True)
    assert back == {"metrics": {"m": 0.5, "n": 3}, "extra": {"col": [1.5, [0, 1]]}, "errors": ("boom", "/x")}
    assert type(back["metrics"]["m"]) is float and type(back["errors"][0]) is str
    marker = tmp_path / "the-command-ran"
    saved["shards"][0]["errors"]["doctored"] = _RunsCode(marker)
    torch.save(saved, pending)
    write_manifest(ckpt)
    resumed = make(tiny_path, tmp_path, max_steps=2, save_steps=1, resume_from_checkpoint=str(ckpt))
    with pytest.raises(CorruptCheckpointError, match=re.escape(str(pending))) as e:
        resumed.train()
    assert "posix.system" in str(e.value) and "refused" in str(e.value)
    assert not marker.exists()


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@dataclasses.dataclass
class _FakeRollout:
    step: int
    metrics: dict = dataclasses.field(default_factory=dict)


def test_an_abandoned_step_puts_the_batch_it_took_back_in_flight():
    """A stop signal abandons step t after it took its batch and started step t+1's: the checkpoint
    of step t - 1 must hold step t's batch as it came (not the fields the trainer set since), and
    the dropped rollout of t+1 must not land anywhere when it finishes."""
    syncs = []

    def job(step):
        return lambda: (time.sleep(0.3 if step else 0.0), (_FakeRollout(step, {"reward": float(step)}), {}))[1]

    ov = Overlap(1, 10, job, lambda: syncs.append(1), Accelerator(cpu=True))
    ov.start(0)
    ro, _ = ov.take(0)
    ov.launch_next(0)  # step 1 generating
    ro.metrics = {**ro.metrics, "advantages": 1.0}  # what the trainer's collect sets
    ov.abandon()
    again = ov.thread.take(0)
    assert (again.step, again.version) == (0, 0) and again.result[0].metrics == {"reward": 0.0}
    time.sleep(0.6)  # the dropped rollout of step 1 ends: nothing may appear
    assert not ov.thread.busy and ov.thread.peek_step() is None
    # not taken yet (the signal came while the trainer waited): nothing to put back
    ov.thread.submit(1, 0, job(1))
    ov.thread.last_taken = None
    ov.abandon()
    assert ov.thread.peek_step() == 1
    ov.close()


def test_a_wait_cut_short_by_a_signal_still_finds_the_batch_later():
    """A stop signal abandons a step while the trainer waits for its batch (the exception raises out
    of the wait); the checkpoint then waits again and must get the batch. Waiting in Thread.join made
    CPython 3.11 mark the running thread stopped on such an exception: the second wait returned at
    once, and the checkpoint held no batch."""
    import signal

    class Cut(BaseException):
        pass

    def cut(*a):
        raise Cut

    old = signal.signal(signal.SIGALRM, cut)
    rt = RolloutThread()
    try:
        rt.submit(1, 0, lambda: (time.sleep(1.0), "batch")[1])
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Cut):
            rt.finish()
        assert rt.finish().result == "batch"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        rt.close()

"""A failed reward is not a 0 (issue 29, items 1-4): a reward that fails on a completion leaves its
total unknown (out of its group's statistics and out of the loss), a reward that never worked stops
the run at once while None on purpose never does, rewards too large for float32 are failures and the
statistics of the rest run in float64, and rewards run in the trainer's process cannot end the run,
move its outputs or change what the next reward sees. The real tiny model and real reward calls."""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
from _configs import demo_config
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason.build import assemble
from rlreason.data import arith_dataset, prepare
from rlreason.loop.trainer import GRPOTrainer
from rlreason.rewards import completion_text
from rlreason.rewards.health import RewardFailureError
from rlreason.rewards.runner import RewardRunner

SMALL = dict(num_generations=4, per_device_train_batch_size=16, gradient_accumulation_steps=1,
             max_completion_length=24, learning_rate=1e-4, eval_steps=0, save_steps=0, progress=False,
             log_completions_steps=0, final_eval_size=0)


def _trainer(tiny_path, tmp_path, rewards, **overrides) -> GRPOTrainer:
    cfg = demo_config(output_dir=str(tmp_path / "run"), **{**SMALL, "max_steps": 2, **overrides})
    tok = AutoTokenizer.from_pretrained(tiny_path)
    train = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)
    return GRPOTrainer(cfg, assemble(cfg, AutoModelForCausalLM.from_pretrained(tiny_path), tok, train, rewards,
                                     accelerator=Accelerator(cpu=True)))


# ---------------------------------------------------------------------- 1. a failure is not a 0


def right_or_broken(completions, **kw):
    """Per group of 4: right, FAILED (an invalid value: NaN), wrong, wrong."""
    return [[1.0, math.nan, 0.0, 0.0][i % 4] for i in range(len(completions))]


def format_ok(completions, **kw):
    return [1.0] * len(completions)


def test_a_completion_a_reward_failed_on_has_no_total_and_is_not_trained_on(tiny_path, tmp_path):
    """Summed as a 0, the failed completion (format 1, accuracy failed) scored like the wrong ones
    and the group's advantages were those of [2, 1, 1, 1]. Its total is unknown: the group's
    statistics are those of [2, 1, 1] and its tokens are out of the loss."""
    tr = _trainer(tiny_path, tmp_path, [right_or_broken, format_ok], reward_num_workers=1)
    try:
        ro = tr.collect()
        assert ro.failed.tolist() == [False, True, False, False] * 4
        grouped = ro.rewards.view(-1, 4)
        assert torch.isnan(grouped[:, 1]).all() and (grouped[:, [0, 2, 3]] == torch.tensor([2.0, 1.0, 1.0])).all()
        # [2, 1, 1]: mean 4/3, unbiased std sqrt(1/3); by hand
        expected = torch.tensor([(2 - 4 / 3) / math.sqrt(1 / 3), 0.0, (1 - 4 / 3) / math.sqrt(1 / 3)] + [
            (1 - 4 / 3) / math.sqrt(1 / 3)]).repeat(4)
        assert torch.allclose(ro.advantages, expected, atol=1e-3), ro.advantages.view(-1, 4)
        for sl, batch in tr.actor.micro_batches(ro):
            mask = batch["completion_mask"]
            failed = ro.failed[sl]
            assert (mask[failed] == 0).all() and (mask[~failed].sum(1) > 0).all()
        assert tr.actor.completion_tokens(ro) == sum(len(s.token_ids) for i, s in enumerate(ro.samples) if i % 4 != 1)
        assert ro.metrics["rewards/right_or_broken/failures"] == 4.0 and ro.metrics["reward/unknown_frac"] == 0.25
    finally:
        tr.close()


# ---------------------------------------------------------------------- 2. never worked / None on purpose


def always_raises(completions, **kw):
    raise KeyError("answer")  # the column is called something else


def test_a_run_whose_only_reward_never_worked_stops_after_step_1_without_a_final_model(tiny_path, tmp_path):
    tr = _trainer(tiny_path, tmp_path, [always_raises], max_steps=2, max_failed_reward_steps=3)
    with pytest.raises(RewardFailureError, match=r"always_raises.*not scored a single one.*KeyError"):
        tr.train()
    assert tr.step == 1 and (tmp_path / "run" / "checkpoints" / "step-0000001").is_dir()


def absent_task(completions, trainer_state, **kw):
    """TRL's multi-task example, where this reward's task is absent from the first 3 steps' batches:
    None (does not apply) on every completion, then scores."""
    if trainer_state.global_step < 3:
        return [None] * len(completions)
    return [float(len(completion_text(c)) % 2) for c in completions]


def never_applies(completions, **kw):
    return [None] * len(completions)


def test_none_on_purpose_never_stops_a_run(tiny_path, tmp_path):
    """A task absent for more than max_failed_reward_steps steps, and a reward that returns None
    everywhere while another trains: the run goes on. (Before: both stopped it as 'a reward that
    scores nothing' after max_failed_reward_steps steps.)"""
    tr = _trainer(tiny_path, tmp_path, [absent_task, never_applies, format_ok], max_steps=5,
                  max_failed_reward_steps=2)
    summary = tr.train()
    assert summary["steps"] == 5 and not summary["interrupted"]


def test_steps_with_no_reward_value_at_all_stop_the_run(tiny_path, tmp_path):
    tr = _trainer(tiny_path, tmp_path, [never_applies], max_steps=6, max_failed_reward_steps=2)
    with pytest.raises(RewardFailureError, match="no completion had a reward .* in 2 steps in a row"):
        tr.train()
    assert tr.step == 2


# ---------------------------------------------------------------------- 3. huge values


def huge(completions, **kw):
    """Per group of 4: 1e300 (beyond float32), 1e39 (too), 1e30 and 0 (both fine)."""
    return [[1e300, 1e39, 1e30, 0.0][i % 4] for i in range(len(completions))]


def test_rewards_beyond_float32_are_failures_and_the_rest_keep_their_signal(tiny_path, tmp_path, caplog):
    """1e300 and 1e39 became inf in float32: the group's advantages were all 0 and reward/mean null,
    with no failure counted. Now they are failures named in the log, and [1e30, 0], whose squares
    overflow float32, still give the group its +-0.71."""
    tr = _trainer(tiny_path, tmp_path, [huge], reward_num_workers=1)
    try:
        with caplog.at_level("WARNING", logger="rlreason.rewards"):
            ro = tr.collect()
        assert ro.failed.tolist() == [True, True, False, False] * 4
        assert ro.metrics["rewards/huge/failures"] == 8.0 and math.isfinite(ro.metrics["reward/mean"])
        assert torch.allclose(ro.advantages.view(-1, 4)[:, 2:], torch.tensor([1 / math.sqrt(2), -1 / math.sqrt(2)]),
                              atol=1e-3)
        assert "beyond float32's range" in caplog.text
    finally:
        tr.close()


# ---------------------------------------------------------------------- 4. rewards in the trainer's process


def exits(completions, **kw):
    sys.exit(0)


def interrupts(completions, **kw):
    raise KeyboardInterrupt


def wanders(completions, **kw):
    os.chdir("/")
    return [1.0] * len(completions)


def edits(completions, **kw):
    for c in completions:
        c[-1]["content"] = ""  # edits the message dicts in place
    return [0.0] * len(completions)


def reads(completions, **kw):
    return [float(len(c[-1]["content"])) for c in completions]


def test_rewards_in_the_trainers_process_cannot_end_the_run_move_its_outputs_or_edit_others_inputs(tmp_path):
    completions = [[{"role": "assistant", "content": "abc"}], [{"role": "assistant", "content": "de"}]]
    cwd = os.getcwd()
    with RewardRunner([exits, interrupts, wanders, edits, reads], in_process=True) as runner:
        out = runner.score(["p", "p"], completions, {})
    assert os.getcwd() == cwd  # checkpoints and the final model still go where the log says
    assert out.failures == {"exits": 2, "interrupts": 2, "wanders": 0, "edits": 0, "reads": 0}
    assert "sys.exit(0)" in out.errors["exits"] and "KeyboardInterrupt" in out.errors["interrupts"]
    assert out.per_func["reads"].tolist() == [3.0, 2.0]  # what the completions said, not what `edits` left
    assert completions[0][-1]["content"] == "abc"  # the trainer's own copy is untouched too

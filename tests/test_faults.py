"""Guarded training and clear errors: non-finite updates are skipped, counted and finally stop
the run with a checkpoint; degenerate batches train without error; every bad input fails
before any training starts with a message naming the key (or column, reward, file) and the fix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from rlreason.rollout.base import Sample
from rlreason.run.checkpoint import checkpoint_dirs, read_state

sys.path.insert(0, str(Path(__file__).parent))
import _recipes  # noqa: E402
from _configs import DEMO  # noqa: E402
from test_trainer import _varied_reward, make_trainer, one_step, params  # noqa: E402

# ---------------------------------------------------------------------- non-finite updates


def test_nonfinite_updates_are_skipped_then_stop_the_run_with_a_checkpoint(tiny_path, tmp_path):
    torch.manual_seed(0)
    tr = make_trainer(tiny_path, tmp_path, reward_funcs=[_varied_reward], max_steps=10, max_nonfinite_steps=3)
    initial = params(tr)
    head = tr.acc.unwrap_model(tr.model).get_output_embeddings()
    # a numerical blow-up in the training forward pass only (sampling, in eval mode, stays sane)
    head.register_forward_hook(lambda m, i, o: o * float("nan") if m.training else o)
    with pytest.raises(FloatingPointError, match="3 updates in a row.*non-finite.*max_nonfinite_steps"):
        tr.train()
    assert tr.step == 3 and tr.actor.nonfinite_skipped == 3
    assert all(torch.equal(v, initial[k]) for k, v in params(tr).items())  # nothing poisoned the weights
    (ckpt,) = checkpoint_dirs(tmp_path / "run")
    assert read_state(ckpt)["step"] == 3 and read_state(ckpt)["nonfinite_skipped"] == 3
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert '"nonfinite_skipped": 3.0' in rows[-1]


def test_a_single_nonfinite_update_is_skipped_and_training_goes_on(tiny_path, tmp_path):
    torch.manual_seed(0)
    tr = make_trainer(tiny_path, tmp_path, reward_funcs=[_varied_reward])
    head = tr.acc.unwrap_model(tr.model).get_output_embeddings()
    handle = head.register_forward_hook(lambda m, i, o: o * float("nan") if m.training else o)
    before = params(tr)
    m = one_step(tr)
    assert m["nonfinite_skipped"] == 1 and tr.actor.nonfinite_streak == 1
    assert all(torch.equal(v, before[k]) for k, v in params(tr).items())
    handle.remove()
    m = one_step(tr)
    assert tr.actor.nonfinite_streak == 0 and m["nonfinite_skipped"] == 1
    assert any(not torch.equal(v, before[k]) for k, v in params(tr).items())


def test_a_skipped_update_does_not_step_the_learning_rate_schedule(tiny_path, tmp_path):
    """The schedule counts optimizer steps: a skipped (non-finite) update leaves the warm-up where it
    was. (Before: the scheduler stepped anyway, so warm-up and decay ran ahead of the weights.)"""
    torch.manual_seed(0)
    tr = make_trainer(tiny_path, tmp_path, reward_funcs=[_varied_reward], warmup_steps=4, num_iterations=2)
    head = tr.acc.unwrap_model(tr.model).get_output_embeddings()
    handle = head.register_forward_hook(lambda m, i, o: o * float("nan") if m.training else o)
    m = one_step(tr)
    assert m["nonfinite_skipped"] == 2 and m["lr"] == 0.0  # both optimizer steps skipped: still at warm-up's 0
    handle.remove()
    m = one_step(tr)
    assert m["nonfinite_skipped"] == 2 and m["lr"] == pytest.approx(2 / 4 * 1e-3)  # two real steps of four


# ---------------------------------------------------------------------- degenerate batches


def test_all_groups_without_signal_train_without_error(tiny_path, tmp_path):
    tr = make_trainer(tiny_path, tmp_path, reward_funcs=[lambda completions, **kw: [1.0] * len(completions)])
    before = params(tr)
    m = one_step(tr)
    assert m["frac_zero_std_groups"] == 1.0 and m["loss"] == 0.0 and m["grad_norm"] == 0.0
    assert all(torch.equal(v, before[k]) for k, v in params(tr).items())


def test_all_completions_truncated_and_masked_train_without_error(tiny_path, tmp_path):
    tr = make_trainer(tiny_path, tmp_path, reward_funcs=[_varied_reward], max_completion_length=2,
                      mask_truncated_completions=True)
    m = one_step(tr)
    assert m["completion/truncated_frac"] == 1.0
    assert m["loss"] == 0.0 and all(v == v for v in m.values() if isinstance(v, float))  # no NaN from 0/0


class EmptyCompletions:
    """The real transformers engine, with every completion cut to nothing (as a model that
    answers with end-of-sequence at once, or a server that returns no tokens, gives)."""

    def __init__(self, engine):
        self.engine = engine

    def generate(self, prompts, n, sampling, seeds=None):
        groups = self.engine.generate(prompts, n, sampling)
        return [[Sample(token_ids=[], text="", logprobs=[], finish_reason="stop") for _ in g] for g in groups]

    def load_weights(self, named_tensors):
        self.engine.load_weights(named_tensors)

    def close(self):
        self.engine.close()


def test_empty_completions_train_without_error(tiny_path, tmp_path):
    tr = make_trainer(tiny_path, tmp_path, reward_funcs=[_varied_reward])
    tr.engine = EmptyCompletions(tr.engine)
    m = one_step(tr)
    assert m["completion/mean_length"] == 0.0
    assert all(v == v for v in m.values() if isinstance(v, float))


# ---------------------------------------------------------------------- clear errors, before training


def _bad_signature(completions):  # no **kwargs: cannot take the dataset columns
    return [0.0] * len(completions)


BAD_INPUTS = {
    "unknown key": (["--num_generation", "4"], "unknown config key 'num_generation'.*num_generations"),
    "wrong type": (["--learning_rate", "fast"], "config key 'learning_rate'"),
    "unknown reward": (["--reward_funcs", "[accuracy, no_such_reward]"], "no_such_reward"),
    "bad reward signature": (["--reward_funcs", "[test_faults:_bad_signature]"], "_bad_signature.*kwargs"),
    "missing model": (["--model_name_or_path", "./no/such/model"], "model_name_or_path.*no model folder"),
    "batch not divisible": (["--per_device_train_batch_size", "10", "--gradient_accumulation_steps", "1",
                             "--num_generations", "4"], "per_device_train_batch_size.*multiple of num_generations"),
    "missing dataset column": (["--dataset_name", "{jsonl}", "--prompt_column", "question"], "question"),
    "missing dataset file": (["--dataset_name", "./no/such/data.jsonl"], "no/such/data.jsonl"),
    "resume from nothing": (["--resume_from_checkpoint", "./no/such/ckpt"], "resume_from_checkpoint.*no/such/ckpt"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_before_training_and_names_the_problem(case, tiny_path, tmp_path, monkeypatch):
    argv, match = BAD_INPUTS[case]
    data = tmp_path / "data.jsonl"
    data.write_text('{"problem": "1+1", "answer": "2"}\n')
    argv = [a.replace("{jsonl}", str(data)) for a in argv]
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    out = tmp_path / "run"
    with pytest.raises(Exception, match=match):
        _recipes.grpo(["--output_dir", str(out), "--model_name_or_path", str(tiny_path), *argv])
    assert not (out / "metrics.jsonl").exists() and not checkpoint_dirs(out)  # nothing trained, nothing written


def test_output_dir_with_another_runs_checkpoints_is_refused_unless_told(tiny_path, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints" / "step-0000010").mkdir(parents=True)
    (out / "checkpoints" / "step-0000010" / "trainer_state.json").write_text('{"step": 10}')
    (out / "metrics.jsonl").write_text('{"step": 10}\n')
    with pytest.raises(FileExistsError, match="another run.s checkpoints.*resume_from_checkpoint.*overwrite_output"):
        _recipes.grpo(["--output_dir", str(out), "--model_name_or_path", str(tiny_path)])
    assert (out / "checkpoints" / "step-0000010").exists()  # refused, and lost nothing
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**DEMO, "max_steps": 1, "per_device_train_batch_size": 8,
                                   "gradient_accumulation_steps": 1, "num_generations": 4, "final_eval_size": 10,
                                   "eval_size": 10, "save_steps": 0, "progress": False}))
    summary = _recipes.grpo(["--config", str(cfg), "--output_dir", str(out), "--model_name_or_path", str(tiny_path),
                              "--overwrite_output_dir", "true"])
    assert summary["steps"] == 1
    assert [p.name for p in checkpoint_dirs(out)] == ["step-0000001"]

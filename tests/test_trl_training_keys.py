"""TRL 1.16 keys that change the training loop: sync_ref_model, multi_objective_aggregation's wiring,
steps_per_generation / generation_batch_size, num_generations_eval (on the embedded model)."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from test_trainer import _alternating_reward, _varied_reward, make_trainer, one_step, params
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason import algorithms as A
from rlreason.build import assemble
from rlreason.config import ConfigError, GRPOConfig, from_dict
from rlreason.data import arith_dataset, prepare
from rlreason.loop.trainer import GRPOTrainer

BASE = dict(num_generations=4, per_device_train_batch_size=8, gradient_accumulation_steps=1, max_completion_length=24,
            learning_rate=1e-3, epsilon=0.2, epsilon_high=0.2, scale_rewards="group", loss_type="dapo",
            num_iterations=1, eval_steps=0, save_steps=0, final_eval_size=0, log_completions_steps=0,
            reward_num_workers=0, progress=False)


def _ref(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.actor.ref_model.named_parameters()}


def test_reference_is_the_mixture_of_policy_snapshots(tiny_path, tmp_path):
    """sync_ref_model with alpha 0.6 every 2 optimizer steps: after 4 steps the reference is
    0.6 * theta_4 + 0.4 * (0.6 * theta_2 + 0.4 * theta_0), computed here from the policy's snapshots."""
    torch.manual_seed(0)
    tr = make_trainer(tiny_path, tmp_path, [_varied_reward], **{**BASE, "beta": 0.05, "sync_ref_model": True,
                                                                  "ref_model_mixup_alpha": 0.6,
                                                                  "ref_model_sync_steps": 2, "max_steps": 4})
    theta = [params(tr)]
    refs = [_ref(tr)]
    for _ in range(4):
        one_step(tr)
        theta.append(params(tr))
        refs.append(_ref(tr))
    for name, t0 in theta[0].items():
        assert torch.equal(refs[1][name], t0)  # step 1: not a multiple of 2
        mixed2 = 0.6 * theta[2][name] + 0.4 * t0
        torch.testing.assert_close(refs[2][name], mixed2, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(refs[3][name], mixed2, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(refs[4][name], 0.6 * theta[4][name] + 0.4 * mixed2, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(theta[4][n], t) for n, t in theta[0].items())  # the policy moved
    assert tr.actor.ref_sync.optimizer_steps == 4 and tr.actor.ref_sync.syncs == 2


def test_resume_restores_the_mixed_reference_exactly(tiny_path, tmp_path):
    """A run stopped at step 2 (a checkpoint) and resumed ends with the reference of the run that went on."""
    kw = {**BASE, "beta": 0.05, "sync_ref_model": True, "ref_model_sync_steps": 1, "max_steps": 3, "save_steps": 2}
    torch.manual_seed(0)
    full = make_trainer(tiny_path, tmp_path / "a", [_varied_reward], **kw)
    full.train()
    ckpt = tmp_path / "a" / "run" / "checkpoints" / "step-0000002"
    assert (ckpt / "reference_model.pt").is_file()
    resumed = make_trainer(tiny_path, tmp_path / "b", [_varied_reward], **{**kw, "resume_from_checkpoint": str(ckpt)})
    initial = _ref(resumed)
    resumed.train()
    assert resumed.actor.ref_sync.optimizer_steps == 3
    for name, want in _ref(full).items():
        assert torch.equal(_ref(resumed)[name], want), name
    assert any(not torch.equal(initial[n], w) for n, w in _ref(full).items())  # it was not the initial one


def test_sync_ref_model_needs_a_reference():
    base = {"per_device_train_batch_size": 8, "num_generations": 4, "max_steps": 2}
    with pytest.raises(ConfigError, match="config key 'sync_ref_model': needs a reference model"):
        from_dict({**base, "sync_ref_model": True, "beta": 0.0})
    with pytest.raises(ConfigError, match="config key 'sync_ref_model': with use_peft"):
        from_dict({**base, "sync_ref_model": True, "beta": 0.1, "use_peft": True})
    for key, value in (("ref_model_mixup_alpha", 1.5), ("ref_model_sync_steps", 0)):
        with pytest.raises(ConfigError, match=f"config key '{key}'"):
            from_dict({**base, key: value})
    # TRL's defaults load (a full TRL config dump carries them)
    cfg = from_dict({**base, "sync_ref_model": False, "ref_model_mixup_alpha": 0.6, "ref_model_sync_steps": 512})
    assert cfg.sync_ref_model is False


def test_normalize_then_sum_gives_the_advantages_of_the_reward_matrix(tiny_path, tmp_path):
    """multi_objective_aggregation: normalize_then_sum reaches the rollout's advantages: those of the
    step's reward matrix (each reward's column as the rewards returned it) under GDPO, with the weights."""
    torch.manual_seed(0)
    cfg = GRPOConfig(output_dir=str(tmp_path / "run"), **{**BASE, "multi_objective_aggregation": "normalize_then_sum",
                                                           "max_steps": 1})
    tok = AutoTokenizer.from_pretrained(tiny_path)
    train = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)
    tr = GRPOTrainer(cfg, assemble(cfg, AutoModelForCausalLM.from_pretrained(tiny_path), tok, train,
                                   [_varied_reward, _alternating_reward], reward_weights=[1.0, 0.5],
                                   accelerator=Accelerator(cpu=True)))
    ro = tr.collect()
    per_func = torch.stack([ro.per_func["_varied_reward"], ro.per_func["_alternating_reward"]], dim=1)
    assert torch.equal(per_func[:, 1], torch.tensor([float(i % 2) for i in range(len(per_func))], dtype=per_func.dtype))
    want, _ = A.gdpo_advantages(per_func, torch.tensor([1.0, 0.5], dtype=torch.float64), 4)
    torch.testing.assert_close(ro.advantages, want.float())
    summed, _ = tr.compute_advantages(ro.rewards)
    assert not torch.allclose(ro.advantages, summed)  # not the default aggregation's
    tr.close()

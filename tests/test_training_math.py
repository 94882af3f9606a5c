"""Training math that single-process float32 tests do not see (issue 18), on the real trainer:
mixed precision of the reference, the presets' clip ranges, dropout in the log-prob passes,
truncated sampling and the importance weight, a stale sampler."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import yaml
from _configs import demo_config
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason import algorithms as A
from rlreason.build import assemble
from rlreason.config import GRPOConfig, from_dict, parse_args
from rlreason.data import arith_dataset, prepare
from rlreason.loop.logprobs import completion_logprobs
from rlreason.loop.trainer import GRPOTrainer
from rlreason.rewards import completion_text

SMALL = dict(num_generations=4, per_device_train_batch_size=8, gradient_accumulation_steps=2,
             max_completion_length=24, learning_rate=1e-3, eval_steps=0, save_steps=0, progress=False,
             log_completions_steps=0, final_eval_size=0, reward_num_workers=0)


def _varied_reward(completions, **kw):
    """Differs between samples of a prompt, so every group carries a gradient."""
    return [float(int(hashlib.md5(completion_text(c).encode()).hexdigest(), 16) % 3) for c in completions]


def make_trainer(tiny_path, tmp_path, model=None, accelerator=None, **overrides) -> GRPOTrainer:
    cfg = demo_config(output_dir=str(tmp_path / "run"), **{**SMALL, **overrides})
    tok = AutoTokenizer.from_pretrained(tiny_path)
    model = model if model is not None else AutoModelForCausalLM.from_pretrained(tiny_path)
    train = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)
    return GRPOTrainer(cfg, assemble(cfg, model, tok, train, [_varied_reward],
                                     accelerator=accelerator or Accelerator(cpu=True)))


def one_step(trainer) -> dict[str, float]:
    ro = trainer.collect()
    m = {**ro.metrics, **trainer.update(ro)}
    trainer.step += 1
    return m


@pytest.fixture()
def bf16_accelerator():
    """An Accelerator with bf16 autocast on CPU. accelerate's state is a per-process singleton that
    refuses a second precision, so it is reset around the test."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield Accelerator(cpu=True, mixed_precision="bf16")
    AcceleratorState._reset_state(reset_partial_state=True)


# ---------------------------------------------------------------------- (2) mixed precision


@pytest.mark.parametrize("chunk", [512, 0])
def test_kl_at_step_one_is_zero_under_bf16_autocast(tiny_path, tmp_path, bf16_accelerator, chunk):
    """policy = reference at step 1: the KL must be exactly 0, which needs the reference's pass
    under the same bf16 autocast as the policy's (it was 8e-6: float32 against bf16)."""
    torch.manual_seed(0)
    tr = make_trainer(tiny_path, tmp_path, accelerator=bf16_accelerator, beta=0.04, logprob_chunk_size=chunk)
    assert tr.acc.mixed_precision == "bf16" and tr.actor.ref_model is not None
    m = one_step(tr)
    assert m["kl"] == 0.0
    # and bf16 is really on: the reference's pass differs from a float32 pass of the same weights
    batches = tr.actor.micro_batches(tr.collect())
    bf16 = tr.actor.reference_logprobs(batches)[0]
    with torch.no_grad():
        fp32 = completion_logprobs(tr.actor.ref_model, batches[0][1], tr.cfg.temperature, chunk_size=chunk)[0]
    mask = batches[0][1]["completion_mask"].bool()
    assert (bf16[mask] - fp32[mask]).abs().max() > 1e-4


# ---------------------------------------------------------------------- (3) clip ranges: TRL's defaults


@pytest.mark.parametrize("loss_type", list(A.PRESETS))
def test_loss_types_take_trls_clip_defaults(loss_type):
    """TRL 1.16: loss_type changes no clip range (epsilon 0.2, epsilon_high = epsilon); rlreason's gspo
    alone brings its paper's 3e-4 / 4e-4 while both keys are at those defaults. (Before: dapo 0.2 / 0.28.)"""
    expected = (3e-4, 4e-4) if loss_type == "gspo" else (0.2, 0.2)
    cfg = GRPOConfig(loss_type=loss_type)
    assert cfg.clip_range() == expected
    # the run's config.yaml (the recipe writes yaml.safe_dump(cfg.to_dict())) holds the resolved values,
    # and reading it back gives the same run
    saved = yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    assert (saved["epsilon"], saved["epsilon_high"]) == expected
    assert from_dict(saved).clip_range() == expected
    assert from_dict(saved).ratio_level() == cfg.ratio_level() == ("sequence" if loss_type == "gspo" else "token")


def test_the_demo_config_trains_as_before():
    """tiny_cpu.yaml states the demo's own choices (README's numbers were measured with them): dapo, clip
    0.2 / 0.28, group scaling, token ratios; TRL's defaults would clip at 0.2 / 0.2."""
    default = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "tiny_cpu.yaml"
    base = parse_args([], default_config=default)
    assert (base.loss_type, base.clip_range(), base.scale_rewards, base.ratio_level()) == (
        "dapo", (0.2, 0.28), "group", "token")


def test_explicit_epsilon_is_used_as_given():
    assert GRPOConfig(loss_type="gspo", epsilon=0.1).clip_range() == (0.1, 0.1)  # epsilon alone: symmetric
    assert GRPOConfig(loss_type="dapo", epsilon=0.2, epsilon_high=0.28).clip_range() == (0.2, 0.28)
    assert GRPOConfig(loss_type="grpo", epsilon_high=0.3).clip_range() == (0.2, 0.3)
    assert GRPOConfig(loss_type="gspo", epsilon=1e-3, epsilon_high=2e-3).clip_range() == (1e-3, 2e-3)


@pytest.mark.parametrize(("loss_type", "ratio", "clipped"), [
    ("gspo", 1.001, True),  # outside 1 + 4e-4: clipped (with eps 0.2 it was not)
    ("gspo", 1.0003, False),
    ("dapo", 1.15, False),
    ("dapo", 1.25, True),  # TRL's 0.2 / 0.2 (the dapo preset's 0.28 no longer)
    ("grpo", 1.25, True),
])
def test_trainer_loss_clips_at_the_preset_range(tiny_path, tmp_path, loss_type, ratio, clipped):
    tr = make_trainer(tiny_path, tmp_path, loss_type=loss_type)
    old = torch.zeros(2, 3)
    logp = old + torch.log(torch.tensor(ratio))
    mask = torch.ones(2, 3)
    _, stats = A.policy_loss(logp, old, torch.tensor([1.0, 1.0]), mask, tr.actor.loss_settings)
    assert int(stats.clipped) == (6 if clipped else 0)


# ---------------------------------------------------------------------- (5) dropout


def _lora(tiny_path, dropout: float):
    peft = pytest.importorskip("peft")
    base = AutoModelForCausalLM.from_pretrained(tiny_path)
    return peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                     lora_dropout=dropout, init_lora_weights=False))


def test_dropout_is_off_in_the_log_prob_passes(tiny_path, tmp_path):
    """LoRA dropout 0.5, two updates per rollout at a learning rate too small to move a weight: the
    training passes must reproduce the old pass exactly (ratio 1, nothing clipped), and the KL to
    the reference must be 0 where the adapter is zero. With dropout on, every pass drew its own
    masks: log-ratios of order 1 and spurious clipping."""
    torch.manual_seed(0)
    tr = make_trainer(tiny_path, tmp_path, model=_lora(tiny_path, 0.5), num_iterations=2, learning_rate=1e-30)
    m = one_step(tr)
    assert m["ratio/max_abs_log"] < 1e-5, m["ratio/max_abs_log"]
    assert m["clip_frac"] == 0.0
    drop = [m for m in tr.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drop and all(m.p == 0 for m in drop)


def test_sft_keeps_dropout(tiny_path, tmp_path):
    """SFT's NLL compares no two passes: its parts keep LoRA dropout as a regulariser
    (recipes/distill.py's build_offline builds them with keep_dropout=True)."""
    import inspect

    from _recipes import recipe
    cfg = demo_config(output_dir=str(tmp_path / "run"), **{**SMALL})
    tok = AutoTokenizer.from_pretrained(tiny_path)
    train = prepare(arith_dataset(8, 0, "train"), tokenizer=tok)
    parts = assemble(cfg, _lora(tiny_path, 0.5), tok, train, [], accelerator=Accelerator(cpu=True), keep_dropout=True)
    drop = [m for m in parts.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drop and all(m.p == 0.5 for m in drop)
    parts.rewards.close()
    assert "keep_dropout=True" in inspect.getsource(recipe("distill")["build_offline"])


# ---------------------------------------------------------------------- (4) truncated sampling and TIS


@pytest.mark.parametrize(("top_p", "top_k", "chunk"), [(0.9, 0, 512), (1.0, 10, 512), (0.9, 0, 0), (0.9, 10, 512)])
def test_importance_weight_is_one_with_top_p_and_top_k(tiny_path, tmp_path, top_p, top_k, chunk):
    """The HF engine samples with the trainer's own weights and numerics: pi_old / pi_sampler = 1
    when pi_old is the truncated distribution the sampler drew from. Against the full one it was
    the kept mass. (Temperature 2: the tiny model is so sure of itself at 1 that top-k 10 keeps
    all but ~1e-4 of the mass.)"""
    torch.manual_seed(0)
    tr = make_trainer(tiny_path, tmp_path, importance_sampling_cap=2.0, top_p=top_p, top_k=top_k,
                      logprob_chunk_size=chunk, temperature=2.0)
    m = one_step(tr)
    assert m["is_weight_mean"] == pytest.approx(1.0, abs=1e-3)


def test_truncated_logprobs_are_the_samplers(tiny_path, tmp_path):
    """Per token, not only on average: the trainer's truncated log-probs equal the engine's."""
    torch.manual_seed(0)
    tr = make_trainer(tiny_path, tmp_path, importance_sampling_cap=2.0, top_p=0.8, top_k=20)
    ro = tr.collect()
    batches = tr.actor.micro_batches(ro, sampler_logprobs=True)
    got = tr.actor.frozen_logprobs(tr.model, batches, truncation=(20, 0.8))
    full = tr.actor.frozen_logprobs(tr.model, batches)
    for lp, fl, (_, b) in zip(got, full, batches, strict=True):
        m = b["completion_mask"].bool()
        torch.testing.assert_close(lp[m], b["sampler_logp"][m], atol=1e-4, rtol=0)
        assert (lp[m] - fl[m]).max() > 1e-2  # truncation really changed them


# ---------------------------------------------------------------------- (8) a stale sampler


@pytest.mark.parametrize("extra", [{}, {"importance_sampling_cap": 2.0, "top_p": 0.9}])
def test_stale_sampler_is_the_behaviour_policy(tiny_path, tmp_path, extra):
    """A separate engine synced every 2 steps: at step 2 it samples with step 0's weights. The PPO
    ratio must then compare the policy with the sampler (log-ratio far from 0, as the update moved
    the weights), not with itself (ratio 1: the lag ignored). Steps 1 and 3 sample fresh: ratio 1.
    With TIS on, its weight is 1 at every step: the lag is the ratio's business, not the weight's."""
    from rlreason.rollout.hf import HFEngine

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_path)
    engine = HFEngine(AutoModelForCausalLM.from_pretrained(tiny_path), tok)
    cfg = demo_config(output_dir=str(tmp_path / "run"), weight_sync_steps=2, **SMALL, **extra)
    train = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)
    tr = GRPOTrainer(cfg, assemble(cfg, AutoModelForCausalLM.from_pretrained(tiny_path), tok, train, [_varied_reward],
                     engine=engine, accelerator=Accelerator(cpu=True)))
    assert not tr.engine_shares_policy
    logged = [tr._one_step()[0] for _ in range(3)]
    assert [m["stale_sampler"] for m in logged] == [0.0, 1.0, 0.0]
    assert logged[0]["ratio/max_abs_log"] == 0.0 and logged[2]["ratio/max_abs_log"] == 0.0
    assert logged[1]["ratio/max_abs_log"] > 1e-2, logged[1]["ratio/max_abs_log"]
    if extra:
        assert [m["is_weight_mean"] for m in logged] == pytest.approx([1.0] * 3, abs=1e-3)


# ---------------------------------------------------------------------- (6) settings that compute something else


def test_setting_warnings():
    from rlreason.build import setting_warnings

    assert any("k1" in w for w in setting_warnings(GRPOConfig(beta=0.04, kl_estimator="k1"), False))
    assert setting_warnings(GRPOConfig(beta=0.04, kl_estimator="k3"), False) == []
    assert setting_warnings(GRPOConfig(beta=0.0, kl_estimator="k1"), False) == []  # no KL term: harmless
    stale_truncated = GRPOConfig(weight_sync_steps=2, top_p=0.9)
    assert any("kept mass" in w for w in setting_warnings(stale_truncated, True))
    assert setting_warnings(stale_truncated, False) == []  # the engine is the policy: never stale


def test_a_sequence_ratio_with_a_token_scale_clip_range_gets_a_warning():
    from rlreason.build import setting_warnings

    (w,) = setting_warnings(GRPOConfig(loss_type="gspo", epsilon=0.2, epsilon_high=0.28), False)
    assert "sequence-level importance ratio (loss_type gspo) with a token-scale clip range 0.2/0.28" in w
    assert setting_warnings(GRPOConfig(loss_type="gspo"), False) == []  # the paper's 3e-4 / 4e-4
    assert setting_warnings(GRPOConfig(loss_type="gspo", epsilon=1e-3), False) == []
    assert any("token-scale" in w for w in setting_warnings(
        GRPOConfig(loss_type="grpo", importance_sampling_level="sequence"), False))  # grpo's 0.2 / 0.2
    assert setting_warnings(GRPOConfig(loss_type="dapo"), False) == []  # a token ratio: 0.2 / 0.28 is its scale
    # under async_rollouts the lag's per-token weight multiplies a sequence-level ratio's loss: said once
    (w,) = setting_warnings(GRPOConfig(loss_type="gspo", async_rollouts=True), True)
    assert "per token" in w and "sequence-level" in w


def test_trainer_warns_about_k1_with_a_kl_term(tiny_path, tmp_path):
    with pytest.warns(UserWarning, match="k1"):
        make_trainer(tiny_path, tmp_path, beta=0.04, kl_estimator="k1").close()

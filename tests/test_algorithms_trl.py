"""TRL 1.16's loss types and options as pure functions (rlreason/algorithms/surrogates.py, masks.py and
``policy_loss``): each against values worked out by hand on tiny tensors, properties with hypothesis,
and the config keys that choose them. The gradients against TRL's own loss: tests/test_trl_crosscheck.py.

Hand values use float64 and math.* only (never the functions under test).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlreason import algorithms as A
from rlreason.config import ConfigError, GRPOConfig

F64 = torch.float64
LOG = math.log


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---------------------------------------------------------------------- surrogates


def test_cispo_weights_every_token_by_its_capped_detached_ratio():
    logp = t([[-0.5, -2.0]]).requires_grad_(True)
    ratio = t([[0.5, 3.0]])
    loss, clipped = A.cispo_surrogate(logp, ratio, t([[1.0]]), eps_max=2.0)
    # -min(r, 2) * A * logp: 0.5 * 0.5 = 0.25, 2 * 2 = 4
    assert loss.flatten().tolist() == pytest.approx([0.25, 4.0], abs=1e-12)
    loss.sum().backward()
    assert logp.grad.flatten().tolist() == pytest.approx([-0.5, -2.0], abs=1e-12)  # every token keeps a gradient
    assert clipped.tolist() == [[False, True]]
    _, clipped = A.cispo_surrogate(logp, ratio, t([[-1.0]]), eps_max=2.0)
    assert clipped.tolist() == [[False, False]]  # TRL counts only A > 0 (its cispo_clip_ratio)


def test_sapo_gate_by_hand():
    ratio = t([[1.0, 2.0], [2.0, 0.5]])
    adv = t([[1.0], [-1.0]])
    loss = A.sapo_surrogate(ratio, adv, tau_pos=1.0, tau_neg=1.05)
    want = [-4 * sigmoid(0.0), -4 * sigmoid(1.0), 4 / 1.05 * sigmoid(1.05 * 1.0), 4 / 1.05 * sigmoid(1.05 * -0.5)]
    assert loss.flatten().tolist() == pytest.approx(want, abs=1e-12)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(a=st.floats(-3, 3), tau_pos=st.floats(0.1, 5), tau_neg=st.floats(0.1, 5), r=st.floats(0.0, 5.0))
def test_sapo_gate_is_smooth_bounded_and_unclipped_at_ratio_one(a, tau_pos, tau_neg, r):
    adv = t([[a]])
    one = t([[1.0]]).requires_grad_(True)
    A.sapo_surrogate(one, adv, tau_pos, tau_neg).sum().backward()
    assert one.grad.item() == pytest.approx(-a, abs=1e-9)  # the unclipped surrogate -r A has slope -A
    x = t([[r]]).requires_grad_(True)
    loss = A.sapo_surrogate(x, adv, tau_pos, tau_neg)
    loss.sum().backward()
    tau = tau_pos if a > 0 else tau_neg
    assert abs(loss.item()) <= 4 / tau * abs(a) * (1 + 1e-12)
    assert abs(x.grad.item()) <= abs(a) + 1e-12  # the gate's slope 4 s (1 - s) is at most 1: never steeper


def test_vespo_gamma_weights_by_hand():
    # phi(w) = e^lam w^k e^(-lam w); (k, lam) = (2, 3) for A >= 0, (3, 2) for A < 0
    log_ratio = t([[0.0, 0.0], [LOG(2.0), 0.0], [LOG(0.5), 7.0]])  # the masked 7 does not count
    mask = torch.tensor([[1, 1], [1, 1], [1, 0]])
    phi = A.vespo_gamma_weights(log_ratio, t([1.0, 1.0, -1.0]), mask)
    want = [1.0, math.exp(3) * 4 * math.exp(-6), math.exp(2) * 0.125 * math.exp(-1)]
    assert phi.squeeze(1).tolist() == pytest.approx(want, rel=1e-12)
    # the sampler correction multiplies w: token weights 2 and 1 make w = 2 on a ratio-1 sequence
    phi = A.vespo_gamma_weights(t([[0.0, 0.0]]), t([1.0]), torch.ones(1, 2), is_weight=t([[2.0, 1.0]]))
    assert phi.item() == pytest.approx(math.exp(3) * 4 * math.exp(-6), rel=1e-12)
    # a masked-out token (weight 0) floors w at 1e-8
    phi = A.vespo_gamma_weights(t([[0.0]]), t([1.0]), torch.ones(1, 1), is_weight=t([[0.0]]))
    assert phi.item() == pytest.approx(math.exp(3) * 1e-16 * math.exp(-3e-8), rel=1e-9)


def test_vespo_loss_is_a_policy_gradient_scaled_by_phi():
    logp = t([[-1.0, -0.5]]).requires_grad_(True)
    A.vespo_surrogate(logp, t([[0.25]]), t([[2.0]])).sum().backward()
    assert logp.grad.flatten().tolist() == pytest.approx([-0.5, -0.5], abs=1e-12)  # -phi * A per token


def test_delta_caps_the_unclipped_ratio_on_both_sides():
    old = torch.zeros(2, 1, dtype=F64)
    logp = t([[LOG(3.0)], [LOG(3.0)]])
    adv = t([-1.0, 1.0])
    plain, _ = A.token_surrogate(logp, old, adv, 0.2, 0.2)
    capped, clipped = A.token_surrogate(logp, old, adv, 0.2, 0.2, delta=2.0)
    # A = -1: max(3, 1.2) = 3 without delta, max(min(3, 2), 1.2) = 2 with; A = +1: max(-3, -1.2) = -1.2 both
    assert plain.flatten().tolist() == pytest.approx([3.0, -1.2], abs=1e-12)
    assert capped.flatten().tolist() == pytest.approx([2.0, -1.2], abs=1e-12)
    assert clipped.flatten().tolist() == [True, True]  # neither token has a gradient left


def test_seq_sum_aggregation_is_luspos_length_weighted_mean():
    loss = t([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert A.aggregate(loss, mask, "seq_sum").item() == pytest.approx((3.0 + 3.0) / 2, abs=1e-12)
    assert A.aggregate(loss, mask, "seq_sum", denom=4).item() == pytest.approx(6.0 / 4, abs=1e-12)


# ---------------------------------------------------------------------- weights and masks


def test_importance_sampling_weight_in_each_mode_by_hand():
    sampler = torch.zeros(1, 3, dtype=F64)
    old = t([[LOG(2.0), LOG(0.5), LOG(4.0)]])  # the third token is masked: difference 0, ratio 1
    mask = torch.tensor([[1, 1, 0]])
    w, out = A.importance_sampling_weight(old, sampler, mask, "token_truncate", None, 1.5)
    assert w.flatten().tolist() == pytest.approx([1.5, 0.5, 1.0], abs=1e-12) and out.tolist() == [[True, False, False]]
    w, out = A.importance_sampling_weight(old, sampler, mask, "token_mask", 0.6, 3.0)
    assert w.flatten().tolist() == pytest.approx([2.0, 0.0, 1.0], abs=1e-12) and out.tolist() == [[False, True, False]]
    # sequence: exp(log 2 + log 0.5) = 1 for the whole row, [N, 1]
    w, _ = A.importance_sampling_weight(old, sampler, mask, "sequence_truncate", 0.5, 3.0)
    assert w.shape == (1, 1) and w.item() == pytest.approx(1.0, abs=1e-12)
    w, out = A.importance_sampling_weight(old, sampler, mask, "sequence_mask", None, 0.9)
    assert w.item() == 0.0 and out.tolist() == [[True, True, False]]  # the real tokens of a masked sequence
    nan = t([[float("nan"), LOG(2.0)]])  # a token the sampler did not score counts as ratio 1
    w, _ = A.importance_sampling_weight(torch.zeros(1, 2, dtype=F64), -nan, torch.ones(1, 2), "token_truncate", None, 3)
    assert w.flatten().tolist() == pytest.approx([1.0, 2.0], abs=1e-12)
    with pytest.raises(ValueError, match="vllm_importance_sampling_mode"):
        A.importance_sampling_weight(old, sampler, mask, "token", None, 3.0)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), mode=st.sampled_from(["token_truncate", "token_mask", "sequence_truncate",
                                                             "sequence_mask"]),
       lo=st.one_of(st.none(), st.floats(0.1, 0.9)), hi=st.floats(1.1, 4.0))
def test_importance_sampling_weights_stay_in_their_range(seed, mode, lo, hi):
    g = torch.Generator().manual_seed(seed)
    old, sampler = torch.randn(3, 5, generator=g, dtype=F64), torch.randn(3, 5, generator=g, dtype=F64)
    mask = torch.rand(3, 5, generator=g) < 0.7
    w, out = A.importance_sampling_weight(old, sampler, mask, mode, lo, hi)
    low = 0.0 if lo is None else lo
    if mode.endswith("truncate"):
        assert ((w >= low - 1e-12) & (w <= hi + 1e-12)).all()
    else:  # masked to 0, else inside the range
        assert ((w == 0) | ((w >= low) & (w <= hi))).all()
    assert not (out & ~mask).any()


def test_off_policy_mask_drops_negative_sequences_that_drifted():
    logp = torch.zeros(4, 2, dtype=F64)
    sampler = t([[0.5, 0.5], [0.5, 0.5], [0.05, 0.05], [0.3, 9.0]])  # mean KL 0.5, 0.5, 0.05, 0.3 (masked 9)
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]])
    keep = A.off_policy_mask(t([1.0, -1.0, -1.0, -0.5]), logp, sampler, mask, threshold=0.1)
    assert keep.flatten().tolist() == [1.0, 0.0, 1.0, 0.0]  # positive advantage or small drift: kept


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), threshold=st.floats(-1.0, 1.0))
def test_off_policy_mask_is_0_or_1_and_keeps_every_non_negative_advantage(seed, threshold):
    g = torch.Generator().manual_seed(seed)
    adv = torch.randn(5, generator=g, dtype=F64)
    logp, sampler = torch.randn(5, 4, generator=g, dtype=F64), torch.randn(5, 4, generator=g, dtype=F64)
    keep = A.off_policy_mask(adv, logp, sampler, torch.rand(5, 4, generator=g) < 0.7, threshold).flatten()
    assert set(keep.tolist()) <= {0.0, 1.0}
    assert (keep[adv >= 0] == 1).all()


def test_high_entropy_mask_keeps_the_top_quantile_of_real_tokens():
    ent = t([[0.1, 0.5, 0.9], [0.3, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])  # 7.0 is padding: not in the quantile, never kept
    cut = A.entropy_threshold(ent[mask.bool()], 0.5)  # median of 0.1, 0.3, 0.5, 0.9 (linear): 0.4
    assert cut.item() == pytest.approx(0.4, abs=1e-7)
    assert A.high_entropy_mask(ent, mask, cut).tolist() == [[False, True, True], [False, False, False]]
    assert A.entropy_threshold(torch.zeros(0), 0.2) is None
    assert not A.high_entropy_mask(ent, mask, None).any()


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), q=st.floats(0.0, 1.0))
def test_high_entropy_mask_is_a_subset_of_real_tokens_of_about_the_top_fraction(seed, q):
    g = torch.Generator().manual_seed(seed)
    ent, mask = torch.rand(4, 6, generator=g, dtype=F64), torch.rand(4, 6, generator=g) < 0.8
    if not mask.any():
        return
    keep = A.high_entropy_mask(ent, mask, A.entropy_threshold(ent[mask], q))
    assert not (keep & ~mask).any() and keep.any()  # at least the highest-entropy token
    n = int(mask.sum())
    assert int(keep.sum()) <= math.ceil(q * (n - 1)) + 1


# ---------------------------------------------------------------------- policy_loss with the options


def test_entropy_bonus_is_the_mean_token_entropy_over_the_step_whatever_the_loss_type():
    logp = old = torch.zeros(2, 2, dtype=F64)
    ent = t([[1.0, 2.0], [3.0, 8.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    for agg, denom in (("token_mean", 10.0), ("seq_mean", 5.0), ("seq_sum_norm", None), ("seq_sum", 4.0)):
        s = A.LossSettings(aggregation=agg, max_len=2, entropy_coef=0.1)
        loss, st_ = A.policy_loss(logp, old, torch.zeros(2, dtype=F64), mask, s, entropy=ent, denom=denom, n_micro=2)
        # advantages 0: only the bonus, -0.1 * mean(1, 2, 3) / 2 micro-batches
        assert loss.item() == pytest.approx(-0.1 * 2.0 / 2, abs=1e-12), agg
        assert (st_.bonus_entropy.item(), st_.bonus_tokens.item()) == (6.0, 3.0)


def test_bias_corrected_kl_is_the_k3_estimate_times_the_ratio():
    old, ref = torch.zeros(1, 1, dtype=F64), torch.zeros(1, 1, dtype=F64)
    logp = t([[LOG(1.2)]])
    k3 = 1 / 1.2 + LOG(1.2) - 1  # exp(d) - d - 1 with d = log ref - log pi = -log 1.2
    zero = torch.zeros(1, dtype=F64)
    plain, _ = A.policy_loss(logp, old, zero, torch.ones(1, 1), A.LossSettings(beta=1.0), ref_logp=ref)
    corrected, _ = A.policy_loss(logp, old, zero, torch.ones(1, 1), A.LossSettings(beta=1.0, bias_correction_kl=True),
                                 ref_logp=ref)
    assert plain.item() == pytest.approx(k3, abs=1e-12)
    assert corrected.item() == pytest.approx(k3 * 1.2, abs=1e-12)


def test_trls_correction_weights_the_surrogate_and_rlreasons_cap_the_kl_too():
    logp = old = ref = torch.zeros(1, 1, dtype=F64)
    sampler = t([[-LOG(2.0)]])  # pi_old / pi_sampler = 2
    ref = t([[LOG(0.5)]])  # k3 at d = log 0.5: 0.5 - log 0.5 - 1
    k3 = 0.5 - LOG(0.5) - 1
    one = t([1.0])
    trl, _ = A.policy_loss(logp, old, one, torch.ones(1, 1), A.LossSettings(
        beta=0.1, is_mode="token_truncate", is_clip_max=3.0, is_weight_kl=False), ref_logp=ref, sampler_logp=sampler)
    ours, _ = A.policy_loss(logp, old, one, torch.ones(1, 1), A.LossSettings(beta=0.1, is_cap=3.0),
                            ref_logp=ref, sampler_logp=sampler)
    assert trl.item() == pytest.approx(-1.0 * 2 + 0.1 * k3, abs=1e-12)  # (-r A) * w + beta KL
    assert ours.item() == pytest.approx((-1.0 + 0.1 * k3) * 2, abs=1e-12)  # (-r A + beta KL) * w


def test_off_policy_and_entropy_masks_cut_the_surrogate_not_the_kl():
    logp = old = torch.zeros(2, 1, dtype=F64)
    ref = t([[LOG(0.5)], [LOG(0.5)]])
    k3 = 0.5 - LOG(0.5) - 1
    sampler = t([[1.0], [1.0]])  # drift 1 per token: the negative sequence is dropped at threshold 0.5
    loss, _ = A.policy_loss(logp, old, t([1.0, -1.0]), torch.ones(2, 1), A.LossSettings(
        beta=0.1, off_policy_threshold=0.5), ref_logp=ref, sampler_logp=sampler)
    assert loss.item() == pytest.approx((-1.0 + 0.1 * k3 + 0.1 * k3) / 2, abs=1e-12)
    ent = t([[0.1], [0.9]])  # top half by entropy: only the second token's surrogate (+1) remains
    loss, _ = A.policy_loss(logp, old, t([1.0, -1.0]), torch.ones(2, 1), A.LossSettings(top_entropy_quantile=0.5),
                            entropy=ent)
    assert loss.item() == pytest.approx((0.0 + 1.0) / 2, abs=1e-12)


def test_is_cap_is_token_truncate_at_the_cap():
    s = A.LossSettings(is_cap=2.0)
    assert (s.is_mode, s.is_clip_min, s.is_clip_max, s.is_weight_kl) == ("token_truncate", None, 2.0, True)
    with pytest.raises(ValueError, match="is_cap"):
        A.LossSettings(is_cap=2.0, is_mode="sequence_mask")


def test_missing_inputs_of_the_options_are_errors():
    logp = old = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="sampler_logp"):
        A.policy_loss(logp, old, torch.ones(1), torch.ones(1, 2), A.LossSettings(is_mode="token_mask", is_clip_max=2))
    with pytest.raises(ValueError, match="entropy"):
        A.policy_loss(logp, old, torch.ones(1), torch.ones(1, 2), A.LossSettings(top_entropy_quantile=0.2))


# ---------------------------------------------------------------------- the config keys


def test_the_sampler_correction_applies_where_the_sampler_is_separate():
    assert GRPOConfig().is_correction() is None  # the transformers engine: the policy is its own sampler (TRL too)
    vllm = GRPOConfig(use_vllm=True)
    assert vllm.is_correction() == ("sequence_mask", None, 3.0)  # TRL's defaults
    assert GRPOConfig(use_vllm=True, vllm_importance_sampling_correction=False).is_correction() is None
    assert GRPOConfig(use_vllm=True, vllm_importance_sampling_mode="token_mask", vllm_importance_sampling_clip_min=0.5
                      ).is_correction() == ("token_mask", 0.5, 3.0)
    # rlreason's importance_sampling_cap: token_truncate at the cap, any engine (async_rollouts sets 2.0)
    assert GRPOConfig(importance_sampling_cap=1.5).is_correction() == ("token_truncate", None, 1.5)
    assert GRPOConfig(async_rollouts=True).is_correction() == ("token_truncate", None, 2.0)


def test_bad_loss_option_values_name_their_key():
    for kw, key in [({"top_entropy_quantile": 1.5}, "top_entropy_quantile"), ({"delta": 0.5}, "delta"),
                    ({"sapo_temperature_neg": 0.0}, "sapo_temperature_neg"), ({"vespo_lambda_pos": -1.0},
                                                                               "vespo_lambda_pos"),
                    ({"entropy_coef_min": 2.0}, "entropy_coef_min"),
                    ({"vllm_importance_sampling_clip_min": 4.0}, "vllm_importance_sampling_clip_min"),
                    ({"use_vllm": True, "vllm_importance_sampling_mode": "token_truncate",
                      "vllm_importance_sampling_clip_max": None}, "vllm_importance_sampling_mode"),
                    ({"use_vllm": True, "loss_type": "vespo"}, "vllm_importance_sampling_mode"),
                    ({"vllm_importance_sampling_mode": "token"}, "vllm_importance_sampling_mode")]:
        with pytest.raises(ConfigError, match=f"config key '{key}'"):
            GRPOConfig(**kw)
    # vespo with a token mode is fine, as TRL
    GRPOConfig(use_vllm=True, loss_type="vespo", vllm_importance_sampling_mode="token_mask")


def test_trl_keys_are_read_with_trls_meaning():
    from rlreason.config import from_dict

    cfg = from_dict({"loss_type": "luspo", "importance_sampling_level": "sequence", "delta": None,
                     "top_entropy_quantile": 1.0, "vllm_importance_sampling_cap": 2.5, "use_vllm": True,
                     "vllm_importance_sampling_mode": "token_truncate", "off_policy_mask_threshold": None})
    assert cfg.vllm_importance_sampling_clip_max == 2.5  # TRL's deprecated name for clip_max
    assert cfg.is_correction() == ("token_truncate", None, 2.5)
    assert (cfg.ratio_level(), cfg.clip_range()) == ("sequence", (0.2, 0.2))
    # a full TRL dump has the deprecated alias at its default beside the new key: not a conflict, not a null
    cfg = from_dict({"vllm_importance_sampling_cap": None, "vllm_importance_sampling_clip_max": 3.0})
    assert cfg.vllm_importance_sampling_clip_max == 3.0
    assert from_dict({"vllm_importance_sampling_cap": None}).vllm_importance_sampling_clip_max == 3.0


# ---------------------------------------------------------------------- adaptive entropy: training state


def _trainer(tiny_path, tmp_path, **kw):
    import hashlib

    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.build import assemble
    from rlreason.data import arith_dataset, prepare
    from rlreason.loop.trainer import GRPOTrainer
    from rlreason.rewards import completion_text

    def varied(completions, **_):
        return [float(int(hashlib.md5(completion_text(c).encode()).hexdigest(), 16) % 3) for c in completions]

    cfg = GRPOConfig(output_dir=str(tmp_path), num_generations=4, per_device_train_batch_size=8,
                     gradient_accumulation_steps=2, max_completion_length=16, learning_rate=1e-4, max_steps=2,
                     loss_type="dapo", epsilon=0.2, scale_rewards="group", num_iterations=1, eval_steps=0,
                     save_steps=0, final_eval_size=0, log_completions_steps=0, reward_num_workers=0, progress=False,
                     **kw)
    tok = AutoTokenizer.from_pretrained(tiny_path)
    train = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)
    torch.manual_seed(0)
    return GRPOTrainer(cfg, assemble(cfg, AutoModelForCausalLM.from_pretrained(tiny_path), tok, train, [varied],
                                     accelerator=Accelerator(cpu=True)))


def test_the_adaptive_entropy_coefficient_is_checkpointed(tiny_path, tmp_path):
    import json

    from rlreason.run.checkpoint import parts_state

    kw = dict(use_adaptive_entropy=True, entropy_coef=0.01, entropy_target=100.0, entropy_coef_delta=0.005)
    tr = _trainer(tiny_path, tmp_path / "a", **kw)
    ro = tr.collect()
    m = tr.update(ro)
    # one optimizer step; the tiny model's entropy (a few nats) is below the target of 100: up by 0.005
    assert m["entropy_coef"] == pytest.approx(0.015)
    assert 0 < tr.actor.last_world_entropy < 100
    state, _ = parts_state(tr._checkpointed())  # what trainer_state.json holds
    state = json.loads(json.dumps(state))
    assert state["entropy_coef"] == pytest.approx(0.015) and state["last_world_entropy"] == tr.actor.last_world_entropy
    fresh = _trainer(tiny_path, tmp_path / "b", **kw)
    assert fresh.actor.state_dict()["last_world_entropy"] is None  # before the first step (inf: no bonus yet)
    fresh.actor.load_state_dict(state)
    assert (fresh.actor.entropy_coef, fresh.actor.last_world_entropy) == (tr.actor.entropy_coef,
                                                                          tr.actor.last_world_entropy)
    fresh.actor.load_state_dict({})  # a checkpoint from before the controller: the config's initial state
    assert (fresh.actor.entropy_coef, fresh.actor.last_world_entropy) == (0.01, math.inf)
    tr.close()
    fresh.close()


def test_the_actor_gets_trls_correction_for_a_separate_sampler_and_rlreasons_cap_otherwise():
    from rlreason.loop.actor import Actor

    s = Actor.settings_from(GRPOConfig(use_vllm=True, loss_type="cispo", epsilon_high=5.0, delta=None))
    assert (s.is_mode, s.is_clip_min, s.is_clip_max, s.is_weight_kl) == ("sequence_mask", None, 3.0, False)
    assert (s.surrogate, s.aggregation, s.eps_high, s.bias_correction_kl) == ("clipped_weight", "token_mean", 5.0, True)
    s = Actor.settings_from(GRPOConfig(importance_sampling_cap=2.0, loss_type="luspo",
                                       importance_sampling_level="sequence"))
    assert (s.is_mode, s.is_clip_max, s.is_weight_kl, s.aggregation, s.ratio_level) == (
        "token_truncate", 2.0, True, "seq_sum", "sequence")
    s = Actor.settings_from(GRPOConfig(loss_type="sapo", top_entropy_quantile=0.2, off_policy_mask_threshold=0.5))
    assert (s.is_mode, s.surrogate, s.top_entropy_quantile, s.off_policy_threshold) == (None, "soft_gate", 0.2, 0.5)
    # SFT's tokens were given, not sampled: nothing to correct against
    s = Actor.settings_from(GRPOConfig(use_vllm=True, off_policy_mask_threshold=0.5), sampled=False)
    assert (s.is_mode, s.off_policy_threshold) == (None, None)

"""Every algorithm term against values computed by hand."""

from __future__ import annotations

import math
from typing import get_args

import pytest
import torch

from rlreason import algorithms as A


def test_group_advantages_group_scale():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv, m = A.group_advantages(r, 4, "group")
    # group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    assert torch.allclose(adv, torch.tensor([a, -a, -a, a, 0, 0, 0, 0]), atol=1e-6)
    assert m["frac_zero_std_groups"] == 0.5


def test_group_advantages_no_scale_and_batch_scale():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv, _ = A.group_advantages(r, 4, "none")
    assert adv.tolist() == [0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]
    adv, _ = A.group_advantages(r, 4, "batch")
    # batch mean 1.25; squared deviations sum to 5.5; unbiased var 5.5 / 7
    s = math.sqrt(5.5 / 7)
    a = 0.5 / (s + 1e-4)
    assert torch.allclose(adv, torch.tensor([a, -a, -a, a, 0, 0, 0, 0]), atol=1e-6)


def test_zero_variance_is_exact_not_tolerance():
    # float32 mean of three 0.7s is not exactly 0.7; the group must still get exactly 0.
    r = torch.full((3,), 0.7, dtype=torch.float32)
    adv, m = A.group_advantages(r, 3, "group", eps=0.0)
    assert adv.tolist() == [0.0, 0.0, 0.0]
    assert m["frac_zero_std_groups"] == 1.0
    # a genuinely different reward, however small, is signal
    r2 = torch.tensor([0.0, 0.0, 1e-3])
    adv2, m2 = A.group_advantages(r2, 3, "group")
    assert m2["frac_zero_std_groups"] == 0.0
    assert adv2[2] > 0 > adv2[0]


def test_group_advantages_rejects_ragged():
    with pytest.raises(ValueError, match="multiple of 4"):
        A.group_advantages(torch.zeros(6), 4)


def test_token_surrogate_clip_low_high():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.5]]))
    adv = torch.tensor([1.0])
    loss, clipped = A.token_surrogate(logp, old, adv, eps_low=0.2, eps_high=0.28)
    # A > 0: min(r, clip(r)) -> 1.28 (clipped at the high end), 0.5 (not clipped)
    assert torch.allclose(loss, torch.tensor([[-1.28, -0.5, -0.5, -1.28]]))
    assert clipped.tolist() == [[True, False, False, True]]
    loss, clipped = A.token_surrogate(logp, old, -adv, eps_low=0.2, eps_high=0.28)
    # A < 0: min(-r, -clip(r)) -> -1.5 (unclipped), -0.8 (clipped at the low end)
    assert torch.allclose(loss, torch.tensor([[1.5, 0.8, 0.8, 1.5]]))
    assert clipped.tolist() == [[False, True, True, False]]


def test_token_surrogate_gradient_is_advantage_on_policy():
    # at ratio 1 the gradient of -r*A w.r.t. logp is -A
    logp = torch.zeros(2, 3, requires_grad=True)
    loss, _ = A.token_surrogate(logp, logp.detach(), torch.tensor([2.0, -1.0]), 0.2, 0.2)
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[-2.0] * 3, [1.0] * 3]))


def test_kl_k3_hand_value():
    logp = torch.log(torch.tensor([[0.5, 0.3]]))
    ref = torch.log(torch.tensor([[0.25, 0.3]]))
    kl = A.kl_k3(logp, ref)
    # d = log(0.25/0.5); k3 = exp(d) - d - 1 = 0.5 + log 2 - 1
    assert torch.allclose(kl, torch.tensor([[0.5 + math.log(2) - 1, 0.0]]), atol=1e-6)


def test_aggregate_modes():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert A.aggregate(loss, mask, "token_mean").item() == pytest.approx(10 / 4)
    assert A.aggregate(loss, mask, "seq_mean").item() == pytest.approx((2 + 4) / 2)
    assert A.aggregate(loss, mask, "token_mean", denom=8).item() == pytest.approx(10 / 8)
    with pytest.raises(ValueError, match="aggregate mode"):
        A.aggregate(loss, mask, "nope")


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean"])
def test_micro_batches_sum_to_full_batch(mode):
    g = torch.Generator().manual_seed(0)
    loss = torch.rand(6, 5, generator=g)
    mask = (torch.rand(6, 5, generator=g) > 0.3).long()
    mask[:, 0] = 1
    full = A.aggregate(loss, mask, mode)
    denom = mask.sum().item() if mode == "token_mean" else 6
    parts = A.aggregate(loss[:2], mask[:2], mode, denom) + A.aggregate(loss[2:], mask[2:], mode, denom)
    assert torch.allclose(full, parts)


def test_selective_log_softmax_matches_full():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 11, generator=g)
    ids = torch.randint(0, 11, (3, 4), generator=g)
    ref = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(A.selective_log_softmax(logits, ids), ref, atol=1e-6)


def test_entropy_uniform_and_peaked():
    logits = torch.zeros(1, 1, 8)
    assert A.entropy_from_logits(logits).item() == pytest.approx(math.log(8), abs=1e-6)
    peaked = torch.tensor([[[100.0, 0.0, 0.0]]])
    assert A.entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)


def test_masked_mean():
    x = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    assert A.masked_mean(x, torch.tensor([[1, 0], [1, 1]])).item() == pytest.approx(13 / 3)
    assert A.masked_mean(x, torch.zeros(2, 2)).item() == 0.0


# ---------------------------------------------------------------- the rest of the family


def test_rloo_leave_one_out():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0])
    adv, m = A.rloo_advantages(r, 4)
    # r=1: others (0+0+1)/3 -> 1 - 1/3; r=0: others (1+0+1)/3 -> 0 - 2/3
    assert torch.allclose(adv, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0]))
    assert m["frac_zero_std_groups"] == 0.5


def test_single_sample_groups_get_zero():
    r = torch.tensor([1.0, 0.0, 5.0])
    for est in ("grpo", "rloo", "reinforce_pp"):
        adv, m = A.advantages(r, 1, est)
        assert adv.tolist() == [0.0, 0.0, 0.0], est
        assert m["frac_zero_std_groups"] == 1.0


def test_reinforce_pp_batch_normalised():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv, _ = A.reinforce_pp_advantages(r, 4)
    s = math.sqrt(5.5 / 7) + 1e-4  # batch mean 1.25, unbiased batch var 5.5/7
    assert torch.allclose(adv, torch.tensor([-0.25 / s, -1.25 / s, -1.25 / s, -0.25 / s, 0, 0, 0, 0]), atol=1e-6)


def test_advantages_dispatch_rejects_unknown():
    with pytest.raises(ValueError, match="advantage estimator"):
        A.advantages(torch.zeros(4), 2, "ppo")


def test_sequence_level_ratio_is_masked_mean():
    logp = torch.tensor([[0.1, 0.3, 9.0], [0.0, 0.0, 0.0]])
    old = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    lr = A.log_importance_ratio(logp, old, mask, "sequence")
    assert torch.allclose(lr, torch.tensor([[0.2, 0.2, 0.2], [0.0, 0.0, 0.0]]))
    assert torch.allclose(A.log_importance_ratio(logp, old, mask, "token"), logp)
    with pytest.raises(ValueError, match="importance sampling level"):
        A.log_importance_ratio(logp, old, mask, "word")


def test_gspo_clips_the_whole_sequence():
    # token log-ratios 0.5 and -0.1 (mean 0.2): s = e^0.2 = 1.2214 > 1 + 0.1, so with A > 0 both tokens are clipped
    logp = torch.tensor([[0.5, -0.1]])
    loss, clipped = A.token_surrogate(logp, torch.zeros(1, 2), torch.tensor([2.0]), 0.1, 0.1,
                                      mask=torch.ones(1, 2), level="sequence")
    assert torch.allclose(loss, torch.tensor([[-2.2, -2.2]]))
    assert clipped.tolist() == [[True, True]]


def test_dual_clip_bounds_negative_advantage_loss():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[5.0, 2.0, 0.5]]))
    adv = torch.tensor([-1.0])
    loss, clipped = A.token_surrogate(logp, old, adv, 0.2, 0.2, dual_clip=3.0)
    # ratio 5: max(5, 1.2) = 5 -> capped at c*|A| = 3; ratio 2: 2 < 3 stays; ratio 0.5: max(0.5, 0.8) = 0.8
    assert torch.allclose(loss, torch.tensor([[3.0, 2.0, 0.8]]))
    assert clipped.tolist() == [[True, False, True]]
    # positive advantages are untouched by the dual clip
    loss_pos, _ = A.token_surrogate(logp, old, -adv, 0.2, 0.2, dual_clip=3.0)
    assert torch.allclose(loss_pos, torch.tensor([[-1.2, -1.2, -0.5]]))
    with pytest.raises(ValueError, match="dual_clip"):
        A.token_surrogate(logp, old, adv, 0.2, 0.2, dual_clip=0.5)


def test_ratio_overflow_stays_finite():
    logp = torch.tensor([[100.0, -100.0]])
    loss, _ = A.token_surrogate(logp, torch.zeros(1, 2), torch.tensor([-1.0]), 0.2, 0.2)
    assert torch.isfinite(loss).all()
    assert loss[0, 0].item() == pytest.approx(math.exp(A.MAX_LOG_RATIO), rel=1e-5)
    kl = A.kl_estimate(logp, torch.zeros(1, 2), "k3")
    assert torch.isfinite(kl).all()


def test_truncated_is_weight():
    old = torch.log(torch.tensor([[0.6, 0.2, 0.3]]))
    sampler = torch.log(torch.tensor([[0.2, 0.4, 0.3]]))
    w = A.truncated_is_weight(old, sampler, cap=2.0)
    # ratios 3 (capped at 2), 0.5, 1
    assert torch.allclose(w, torch.tensor([[2.0, 0.5, 1.0]]))
    with pytest.raises(ValueError, match="cap"):
        A.truncated_is_weight(old, sampler, 0.0)


def test_kl_estimators_hand_values():
    logp = torch.log(torch.tensor([[0.5]]))
    ref = torch.log(torch.tensor([[0.25]]))
    d = math.log(0.5)  # ref - logp
    assert A.kl_estimate(logp, ref, "k1").item() == pytest.approx(-d)
    assert A.kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * d * d)
    assert A.kl_estimate(logp, ref, "k3").item() == pytest.approx(math.exp(d) - d - 1)
    assert A.kl_estimate(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError, match="KL estimator"):
        A.kl_estimate(logp, ref, "k4")


def test_aggregate_dr_grpo_and_empty_completion():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # token sum 10 / (2 sequences * max_len 5)
    assert A.aggregate(loss, mask, "seq_sum_norm", max_len=5).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="max_len"):
        A.aggregate(loss, mask, "seq_sum_norm")
    # an empty completion adds nothing to the token mean and 0 to the sequence mean (but counts as a sequence)
    loss2 = torch.tensor([[1.0, 2.0], [5.0, 5.0]])
    mask2 = torch.tensor([[1, 1], [0, 0]])
    assert A.aggregate(loss2, mask2, "token_mean").item() == pytest.approx(1.5)
    assert A.aggregate(loss2, mask2, "seq_mean").item() == pytest.approx(0.75)


def test_presets_cover_the_config_choices():

    assert set(A.PRESETS) == set(get_args(A.LossType))
    # TRL 1.16: loss_type picks the aggregation (and cispo / sapo / vespo's surrogate), nothing else
    assert {k: (p.aggregation, p.surrogate) for k, p in A.PRESETS.items()} == {
        "grpo": ("seq_mean", "clip"), "dr_grpo": ("seq_sum_norm", "clip"), "dapo": ("token_mean", "clip"),
        "bnpo": ("token_mean", "clip"), "gspo": ("seq_mean", "clip"), "cispo": ("token_mean", "clipped_weight"),
        "sapo": ("seq_mean", "soft_gate"), "luspo": ("seq_sum", "clip"), "vespo": ("token_mean", "gamma_weight")}
    assert not A.PRESETS["bnpo"].batch_normalised and A.PRESETS["dapo"].batch_normalised
    # only rlreason's gspo fixes a level and brings a clip range
    assert {k for k, p in A.PRESETS.items() if p.ratio_level or p.clip} == {"gspo"}
    assert A.ratio_level("gspo", "token") == "sequence" and A.ratio_level("luspo", "token") == "token"
    assert A.clip_range("dapo", 0.2, None) == (0.2, 0.2) and A.clip_range("gspo", 0.2, None) == (3e-4, 4e-4)
    assert A.clip_range("gspo", 0.2, 0.28) == (0.2, 0.28) and A.clip_range("grpo", 0.1, 0.3) == (0.1, 0.3)


@pytest.mark.parametrize("preset", sorted(A.PRESETS))
def test_on_policy_gradient_equals_plain_policy_gradient(preset):
    """num_iterations=1, beta=0: r = 1, so each preset's gradient must be the plain policy
    gradient -agg(A * grad log pi) of its aggregation (GSPO included: its sequence ratio has
    the gradient of the mean token log-prob, which seq_mean also takes; SAPO's gate has slope 1
    at r = 1; CISPO's weight and VESPO's phi(1) are 1)."""
    p = A.PRESETS[preset]
    torch.manual_seed(0)
    policy = torch.nn.Linear(6, 7)  # toy policy: features -> logits over 7 tokens
    x = torch.randn(4, 5, 6)
    ids = torch.randint(0, 7, (4, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5])
    # cispo caps the ratio itself at eps_high (TRL's meaning; ScaleRL's 5.0): 0.28 would scale every weight to 0.28
    settings = A.LossSettings(eps_low=0.2, eps_high=5.0 if preset == "cispo" else 0.28,
                              ratio_level=A.ratio_level(preset, "token"), aggregation=p.aggregation, max_len=5,
                              surrogate=p.surrogate)

    def grads(loss_fn):
        policy.zero_grad()
        logp = A.selective_log_softmax(policy(x), ids)
        loss_fn(logp).backward()
        return [q.grad.clone() for q in policy.parameters()]

    def surrogate(logp):
        return A.policy_loss(logp, logp.detach(), adv, mask, settings)[0]

    def plain(logp):
        return A.aggregate(-adv[:, None] * logp, mask, p.aggregation, max_len=5)

    for a, b in zip(grads(surrogate), grads(plain), strict=True):
        assert torch.allclose(a, b, atol=1e-6), preset


def test_nan_rewards_are_left_out_of_group_statistics_and_get_zero_advantage():
    # issue 17: [1, None, 1, 0] used to be [1, 0, 1, 0] -> [.87, -.87, .87, -.87]; the None row
    # (no applicable reward term) carries no signal: the statistics are those of [1, 1, 0]
    nan = math.nan
    r = torch.tensor([1.0, nan, 1.0, 0.0, nan, nan, nan, nan, 3.0, nan, nan, nan])
    adv, m = A.group_advantages(r, 4, "group")
    s = math.sqrt(1 / 3)  # unbiased std of [1, 1, 0]
    want = [(1 / 3) / (s + 1e-4), 0, (1 / 3) / (s + 1e-4), (-2 / 3) / (s + 1e-4), 0, 0, 0, 0, 0, 0, 0, 0]
    assert torch.allclose(adv, torch.tensor(want), atol=1e-6), adv
    assert not adv.isnan().any()
    assert m["frac_zero_std_groups"] == pytest.approx(2 / 3)  # no valid row / one valid row: no signal
    adv, _ = A.group_advantages(r, 4, "none")
    assert torch.allclose(adv, torch.tensor([1 / 3, 0, 1 / 3, -2 / 3, 0, 0, 0, 0, 0, 0, 0, 0]), atol=1e-6)
    adv, _ = A.group_advantages(r, 4, "batch")
    bs = torch.tensor([1.0, 1.0, 0.0, 3.0]).std().item()
    assert torch.allclose(adv[:4], torch.tensor([1 / 3, 0, 1 / 3, -2 / 3]) / (bs + 1e-4), atol=1e-6)
    # RLOO: the others are the non-NaN rows of the group
    adv, _ = A.rloo_advantages(r, 4)
    assert torch.allclose(adv[:4], torch.tensor([0.5, 0.0, 0.5, -1.0]), atol=1e-6)
    adv, _ = A.reinforce_pp_advantages(r, 4)
    valid = torch.tensor([1.0, 1.0, 0.0, 3.0])
    want = (torch.tensor([1.0, 0.0, 1.0, 0.0]) - valid.mean()) / (valid.std() + 1e-4)
    assert torch.allclose(adv[:4], want * torch.tensor([1.0, 0.0, 1.0, 1.0]), atol=1e-6)
    assert adv[4:].eq(0).all()
    assert A.signal_groups(r, 4).tolist() == [True, False, False]


def test_nan_free_rewards_give_the_same_advantages_as_before():
    # the NaN-aware statistics equal the plain ones when nothing is NaN (same values as above tests)
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0.5, 0.25, 0.0, 1.0])
    for scale in ("group", "batch", "none"):
        grouped = r.view(-1, 4)
        centered = grouped - grouped.mean(1, keepdim=True)
        if scale == "group":
            centered = centered / (grouped.std(1, keepdim=True) + 1e-4)
        elif scale == "batch":
            centered = centered / (r.std() + 1e-4)
        centered[1] = 0
        adv, _ = A.group_advantages(r, 4, scale)
        assert torch.allclose(adv, centered.reshape(-1), atol=1e-6), scale

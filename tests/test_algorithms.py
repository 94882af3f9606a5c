"""Every algorithm term against values computed by hand."""

from __future__ import annotations

import math

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

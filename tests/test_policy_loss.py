"""``algorithms.policy_loss`` without a model, as verl tests ``compute_policy_loss``: each term against
values worked out by hand on tiny tensors, the statistics, masks, and where the gradient goes.

Rows of the tensors below are sequences, columns tokens; float64 so hand values match to 1e-12.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlreason import algorithms as A

F64 = torch.float64
LOG = math.log


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


def run(logp, old, adv, mask, **kw):
    """policy_loss with the settings given as keywords, the other inputs passed through."""
    extra = {k: kw.pop(k) for k in ("ref_logp", "teacher_logp", "behaviour_logp", "sampler_logp", "entropy",
                                    "denom", "token_loss") if k in kw}
    return A.policy_loss(logp, old, adv, mask, A.LossSettings(**kw), **extra)


# ---------------------------------------------------------------------- the clipped surrogate


def test_token_clip_both_sides_and_the_pessimistic_side():
    # ratios per token: seq 0 (A = +1): 1.5, 1.1; seq 1 (A = -1): 0.5, 1.5
    old = torch.zeros(2, 2, dtype=F64)
    logp = t([[LOG(1.5), LOG(1.1)], [LOG(0.5), LOG(1.5)]])
    mask = torch.ones(2, 2)
    loss, s = run(logp, old, t([1.0, -1.0]), mask, eps_low=0.2, eps_high=0.28)
    # A > 0, r 1.5: max(-1.5, -1.28) = -1.28 (clipped high); r 1.1: -1.1 (inside)
    # A < 0, r 0.5: max(0.5, 0.8) = 0.8 (clipped low); r 1.5: max(1.5, 1.28) = 1.5 (not clipped: pessimistic)
    assert loss.item() == pytest.approx((-1.28 - 1.1 + 0.8 + 1.5) / 4, abs=1e-12)
    assert s.clipped.item() == 2


def test_dual_clip_caps_negative_advantage_tokens():
    logp, old = t([[LOG(5.0), LOG(1.0)]]), torch.zeros(1, 2, dtype=F64)
    loss, s = run(logp, old, t([-1.0]), torch.ones(1, 2), dual_clip=3.0)
    # r 5, A -1: max(5, 1.2) = 5, capped at -3 * A = 3; r 1: 1
    assert loss.item() == pytest.approx((3.0 + 1.0) / 2, abs=1e-12)
    assert s.clipped.item() == 1


def test_sequence_ratio_gspo_is_the_mean_log_ratio_of_the_real_tokens():
    # token log-ratios 0.05, 0.15 and a masked 5.0: s = exp(0.1) for every token, whatever the masked one
    logp = t([[0.05, 0.15, 5.0], [0.0001, 0.0001, 0.0]])
    old = torch.zeros(2, 3, dtype=F64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    loss, s = run(logp, old, t([1.0, 1.0]), mask, eps_low=3e-4, eps_high=4e-4, ratio_level="sequence",
                  aggregation="seq_mean")
    # seq 0: s = e^0.1 > 1.0004: clipped, -1.0004 per token; seq 1: s = e^1e-4 inside: -e^1e-4
    assert loss.item() == pytest.approx((-1.0004 - math.exp(1e-4)) / 2, abs=1e-12)
    assert s.clipped.item() == 2
    # with eps 0.2 neither is clipped
    loss, s = run(logp, old, t([1.0, 1.0]), mask, ratio_level="sequence", aggregation="seq_mean")
    assert loss.item() == pytest.approx((-math.exp(0.1) - math.exp(1e-4)) / 2, abs=1e-12)
    assert s.clipped.item() == 0


# ---------------------------------------------------------------------- the other terms


def test_truncated_importance_weight_multiplies_and_is_summed():
    logp = old = torch.zeros(1, 3, dtype=F64)  # ratio 1, loss -A per token
    sampler = t([[-LOG(2.0), LOG(2.0), -LOG(4.0)]])  # pi_old / pi_sampler = 2, 0.5, 4 (the last masked)
    mask = torch.tensor([[1, 1, 0]])
    loss, s = run(logp, old, t([1.0]), mask, is_cap=1.5, sampler_logp=sampler)
    assert loss.item() == pytest.approx(-(1.5 + 0.5) / 2, abs=1e-12)  # min(2, 1.5), 0.5
    assert s.is_weight.item() == pytest.approx(2.0, abs=1e-12)
    assert s.is_capped.item() == 1  # the first token's 2 was cut to 1.5; the masked 4 does not count
    # behaviour_logp is pi_old of the weight when given (the truncated sampling distribution)
    loss, s = run(logp, old, t([1.0]), mask, is_cap=1.5, sampler_logp=sampler, behaviour_logp=t([[LOG(0.5)] * 3]))
    # pi_old / pi_sampler = 0.5 * 2 = 1, 0.5 * 0.5 = 0.25
    assert loss.item() == pytest.approx(-(1.0 + 0.25) / 2, abs=1e-12)
    assert s.is_weight.item() == pytest.approx(1.25, abs=1e-12)
    assert s.is_capped.item() == 0


def test_no_cap_no_weight():
    logp = old = torch.zeros(1, 2, dtype=F64)
    loss, s = run(logp, old, t([1.0]), torch.ones(1, 2), sampler_logp=t([[-5.0, 5.0]]))
    assert loss.item() == -1.0 and s.is_weight.item() == 0.0


@pytest.mark.parametrize(("kind", "value"), [
    ("k1", -LOG(2.0)),  # -d, d = log ref - log pi = log 2
    ("k2", 0.5 * LOG(2.0) ** 2),
    ("k3", 2.0 - LOG(2.0) - 1.0),  # e^d - d - 1
])
def test_kl_times_beta_is_added_per_token(kind, value):
    logp = old = torch.zeros(1, 2, dtype=F64)
    ref = t([[LOG(2.0), 7.0]])  # the second token is masked
    mask = torch.tensor([[1, 0]])
    loss, s = run(logp, old, t([0.0]), mask, beta=0.1, kl_estimator=kind, ref_logp=ref)
    assert loss.item() == pytest.approx(0.1 * value, abs=1e-12)
    assert s.kl.item() == pytest.approx(value, abs=1e-12)  # the estimate itself, without beta


def test_kl_is_after_the_clip():
    # r = 2 with A = 1 is clipped at 1.2; the KL term still moves the loss (and its gradient)
    logp, old, ref = t([[LOG(2.0)]]), t([[0.0]]), t([[0.0]])
    loss, _ = run(logp, old, t([1.0]), torch.ones(1, 1), beta=0.5, kl_estimator="k2", ref_logp=ref)
    assert loss.item() == pytest.approx(-1.2 + 0.5 * 0.5 * LOG(2.0) ** 2, abs=1e-12)


def test_the_importance_weight_multiplies_the_kl_term_too():
    # pi_old / pi_sampler = 1.5 (under the cap 2): the sampler drew the token, so both the surrogate
    # and the KL are reweighted to pi_old's expectation (tests/test_offpolicy_bias.py, exactly)
    logp = old = t([[0.0]])
    loss, _ = run(logp, old, t([1.0]), torch.ones(1, 1), beta=0.5, kl_estimator="k2", ref_logp=t([[LOG(2.0)]]),
                  is_cap=2.0, sampler_logp=t([[-LOG(1.5)]]))
    assert loss.item() == pytest.approx(1.5 * (-1.0 + 0.5 * 0.5 * LOG(2.0) ** 2), abs=1e-12)


def test_entropy_bonus_is_subtracted_and_summed():
    logp = old = torch.zeros(1, 3, dtype=F64)
    ent = t([[1.0, 2.0, 9.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, s = run(logp, old, t([0.0]), mask, entropy_coef=0.01, entropy=ent)
    assert loss.item() == pytest.approx(-0.01 * 1.5, abs=1e-12)
    assert s.entropy.item() == 3.0
    # coef 0: logged, not in the loss
    loss, s = run(logp, old, t([0.0]), mask, entropy=ent)
    assert loss.item() == 0.0 and s.entropy.item() == 3.0


def test_teacher_advantages_replace_the_sequence_advantage():
    logp = old = t([[-1.0, -2.0, -3.0]])  # ratio 1: loss = -A_t per token
    teacher = t([[-1.5, -1.75, 0.0]])  # log pi_student - log pi_teacher = 0.5, -0.25 (the third masked)
    mask = torch.tensor([[1, 1, 0]])
    loss, s = run(logp, old, t([2.0]), mask, teacher_kl_coef=2.0, teacher_logp=teacher)
    # A_t = -2 * (0.5, -0.25) = (-1, 0.5); the verifier's advantage 2 is not mixed in
    assert loss.item() == pytest.approx(-(-1.0 + 0.5) / 2, abs=1e-12)
    assert s.reverse_kl.item() == pytest.approx(0.25, abs=1e-12)
    # teacher_reward_weight 0.5 adds 0.5 * 2 = 1 to every real token's advantage
    loss, _ = run(logp, old, t([2.0]), mask, teacher_kl_coef=2.0, teacher_reward_weight=0.5, teacher_logp=teacher)
    assert loss.item() == pytest.approx(-(0.0 + 1.5) / 2, abs=1e-12)


def test_token_loss_replaces_the_surrogate():
    logp = t([[-1.0, -3.0]])
    loss, s = run(logp, logp + 5.0, t([7.0]), torch.ones(1, 2), token_loss=A.nll_token_loss)  # SFT's objective
    assert loss.item() == 2.0 and s.clipped.item() == 0


# ---------------------------------------------------------------------- aggregation


# ratio 1: token losses -A: seq 0 (1 token, A = 1): -1; seq 1 (3 tokens, A = 2): -2, -2, -2; seq 2 empty
AGG_MASK = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize(("mode", "denom", "expected"), [
    ("token_mean", None, -7 / 4),  # over the 4 tokens
    ("token_mean", 10.0, -7 / 10),  # over the whole batch's 10
    ("seq_mean", None, (-1 - 2 + 0) / 3),  # per-sequence means, then over the 3 sequences
    ("seq_mean", 6.0, (-1 - 2) / 6),
    ("seq_sum_norm", None, -7 / (3 * 4)),  # sum / (sequences x L), L = 4
    ("seq_sum_norm", 6.0, -7 / (6 * 4)),
])
def test_aggregation_modes_and_denominators(mode, denom, expected):
    logp = old = torch.zeros(3, 4, dtype=F64)
    loss, _ = run(logp, old, t([1.0, 2.0, 5.0]), AGG_MASK, aggregation=mode, max_len=4, denom=denom)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------- statistics and masks


def test_log_ratio_statistics_are_sums_over_real_tokens():
    old = torch.zeros(2, 3, dtype=F64)
    logp = t([[0.1, -0.3, 8.0], [0.2, 0.0, -9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    _, s = run(logp, old, t([1.0, 1.0]), mask)
    assert s.log_ratio.item() == pytest.approx(0.0, abs=1e-12)
    assert s.log_ratio_sq.item() == pytest.approx(0.01 + 0.09 + 0.04, abs=1e-12)
    assert s.max_abs_log_ratio.item() == pytest.approx(0.3, abs=1e-12)
    assert set(s.sums()) == {"clipped", "entropy", "kl", "is_weight", "is_capped", "log_ratio", "log_ratio_sq",
                              "reverse_kl", "clip_low", "clip_high", "sequences", "phi_seq", "is_units",
                              "is_unit_weight", "bonus_entropy", "bonus_tokens"}
    assert all(not v.requires_grad and v.dim() == 0 for v in s.sums().values())


def test_absent_terms_sum_to_zero():
    logp = old = torch.zeros(1, 2, dtype=F64)
    _, s = run(logp, old, t([1.0]), torch.ones(1, 2))
    assert s.kl.item() == s.is_weight.item() == s.reverse_kl.item() == s.entropy.item() == 0.0


def test_missing_inputs_are_errors():
    logp = old = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="ref_logp"):
        run(logp, old, torch.ones(1), torch.ones(1, 2), beta=0.1)
    with pytest.raises(ValueError, match="sampler_logp"):
        run(logp, old, torch.ones(1), torch.ones(1, 2), is_cap=2.0)
    with pytest.raises(ValueError, match="entropy"):
        run(logp, old, torch.ones(1), torch.ones(1, 2), entropy_coef=0.1)


FULL = dict(eps_low=0.2, eps_high=0.28, beta=0.05, kl_estimator="k3", entropy_coef=0.01, is_cap=2.0, dual_clip=3.0,
            aggregation="seq_mean", max_len=5, teacher_reward_weight=0.5)


def _inputs(g: torch.Generator, n: int, T: int) -> dict[str, torch.Tensor]:
    r = lambda: -torch.rand(n, T, generator=g, dtype=F64) * 3  # log-probs in (-3, 0]
    return dict(logp=r(), old=r(), ref_logp=r(), teacher_logp=r(), behaviour_logp=r(), sampler_logp=r(),
                entropy=torch.rand(n, T, generator=g, dtype=F64))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 4), T=st.integers(1, 6),
       level=st.sampled_from(["token", "sequence"]), mode=st.sampled_from(["token_mean", "seq_mean", "seq_sum_norm"]))
def test_values_at_masked_positions_change_nothing(seed, n, T, level, mode):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, T, generator=g) < 0.6
    adv = torch.randn(n, generator=g, dtype=F64)
    a, b = _inputs(g, n, T), _inputs(g, n, T)
    b = {k: torch.where(mask, a[k], v) for k, v in b.items()}  # equal on real tokens only
    out = []
    for x in (a, b):
        logp = x.pop("logp").requires_grad_(True)
        loss, s = run(logp, x.pop("old"), adv, mask, ratio_level=level, **{**FULL, "aggregation": mode}, **x)
        loss.backward()
        out.append((loss, s, logp.grad))
    (la, sa, ga), (lb, sb, gb) = out
    assert torch.equal(la, lb)
    assert all(torch.equal(sa.sums()[k], sb.sums()[k]) for k in sa.sums())
    if mask.any():
        assert torch.equal(sa.max_abs_log_ratio, sb.max_abs_log_ratio)
    assert torch.equal(ga, gb)
    assert not ga[~mask].any()  # and no gradient reaches a masked token


@settings(max_examples=60, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 4), T=st.integers(1, 6),
       mode=st.sampled_from(["token_mean", "seq_mean", "seq_sum_norm"]))
def test_on_policy_gradient_is_the_advantage_weighted_score(seed, n, T, mode):
    """With old_logp = logp (ratio 1, nothing clipped) and no other term, d loss / d logp_{i,t} is
    -A_i times the weight the aggregation gives token t of sequence i: the policy gradient."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, T, generator=g) < 0.7
    adv = torch.randn(n, generator=g, dtype=F64)
    logp = (-torch.rand(n, T, generator=g, dtype=F64)).requires_grad_(True)
    loss, s = run(logp, logp.detach(), adv, mask, aggregation=mode, max_len=T)
    loss.backward()
    m = mask.to(F64)
    lengths = m.sum(1, keepdim=True)
    weight = {"token_mean": m / max(m.sum().item(), 1.0),
              "seq_mean": m / lengths.clamp(min=1) / n,
              "seq_sum_norm": m / (n * T)}[mode]
    assert torch.allclose(logp.grad, -adv[:, None] * weight, atol=1e-12, rtol=0)
    assert s.clipped.item() == 0 and s.log_ratio.item() == 0.0


@pytest.mark.parametrize("entropy_coef", [0.0, 0.01])
def test_gradient_reaches_only_logp_and_entropy_when_it_is_a_bonus(entropy_coef):
    g = torch.Generator().manual_seed(0)
    x = {k: v.requires_grad_(True) for k, v in _inputs(g, 3, 4).items()}
    adv = torch.randn(3, generator=g, dtype=F64).requires_grad_(True)
    logp, old = x.pop("logp"), x.pop("old")
    loss, s = run(logp, old, adv, torch.ones(3, 4), **{**FULL, "entropy_coef": entropy_coef}, **x)
    loss.backward()
    assert logp.grad is not None and logp.grad.abs().sum() > 0
    for name, v in [("old", old), ("adv", adv)] + [(k, v) for k, v in x.items() if k != "entropy"]:
        assert v.grad is None, name
    if entropy_coef:
        assert torch.allclose(x["entropy"].grad, torch.full((3, 4), -entropy_coef / 4 / 3, dtype=F64))
    else:
        assert x["entropy"].grad is None

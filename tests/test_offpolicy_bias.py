"""The loss under a lagging sampler (async_rollouts), by exact enumeration: a tabular policy over
a few tokens, every sequence enumerated, so expected gradients are finite sums and nothing is
sampled (benchmarks/offpolicy_bias.py, whose tables docs/scaling.md shows)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from rlreason import algorithms as A

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import offpolicy_bias as B  # noqa: E402


def test_the_enumeration_gives_the_objectives_exact_gradient():
    """On-policy, the expected gradient of policy_loss is the gradient of the objective itself,
    here in closed form: token_mean of -A over T tokens and beta * KL(ref || pi) (k3's gradient)."""
    x = B.problem(B.KL_TOY_LONG)
    toy, theta = B.KL_TOY_LONG, x["theta"]
    adv = B.centred(x["rewards"], theta, toy)
    theta_ = theta.clone().requires_grad_(True)
    seq_logp = B.token_logp(theta_, toy).sum(1)
    # grad of E_pi[A] with A fixed: sum_y grad pi(y) A(y); the loss is its negation over T tokens
    (exact,) = torch.autograd.grad(-(seq_logp.exp() * adv).sum() / toy.T, theta_)
    g = B.expected_gradient(theta, theta, toy, adv, A.LossSettings(is_cap=B.CAP))
    assert torch.allclose(g, exact, atol=1e-12, rtol=0)
    one = B.KL_TOY  # one token: k3's expected gradient is grad KL(ref || pi)
    x = B.problem(one)
    theta_ = x["theta"].clone().requires_grad_(True)
    logp, ref = torch.log_softmax(theta_, -1), torch.log_softmax(x["ref"], -1)
    (exact,) = torch.autograd.grad(B.BETA * (ref.exp() * (ref - logp)).sum(), theta_)
    g = B.expected_gradient(x["theta"], x["theta"], one, torch.zeros(one.V), A.LossSettings(beta=B.BETA, is_cap=B.CAP),
                            x["ref"])
    assert torch.allclose(g, exact, atol=1e-12, rtol=0)


@pytest.mark.parametrize("scale", B.KL_SCALES)
def test_the_kl_term_is_importance_weighted_like_the_surrogate(scale):
    """beta > 0 under a sampler that lags: the KL term inside the truncated weight, as the surrogate.
    One-token sequences, where the per-token weight is the whole sequence's: the expected gradient
    is then exactly the on-policy one. (Before: the KL term was added after the weight, and its
    expected gradient was the sampler's: 6.9% off at KL(mu || pi) = 0.003 per token, 25% at 0.04.)"""
    r = B.kl_term_bias(B.KL_TOY, scale)
    assert r["now"] < 1e-9 and r["kl_only_now"] < 1e-9
    assert r["kl_only_before"] > 0.05 and r["before"] > 1e-3


def test_with_longer_sequences_the_prefixes_stay_uncorrected():
    """Three tokens: weighting the KL term shrinks its bias, but a per-token weight corrects each
    token's distribution given its prefix, never the prefix the sampler drew."""
    r = B.kl_term_bias(B.KL_TOY_LONG, B.KL_SCALES[0])
    assert r["kl_only_now"] < r["kl_only_before"] / 3
    assert r["now"] > 0.01


def test_the_bias_of_a_per_token_weight_grows_with_the_lag():
    rows = B.lag_bias(B.LAG_TOY, B.LAGS, B.LAG_LR)
    per_token = [r["per_token"] for r in rows]
    assert per_token == sorted(per_token) and per_token[0] > 0.01 and per_token[-1] > 5 * per_token[0]
    # below the cap a sequence-level weight is exact: what the per-token weight leaves is the prefixes'
    assert all(r["per_sequence"] < 1e-9 and r["capped"] == 0 for r in rows)


def test_the_docs_say_what_the_code_does():
    """docs/scaling.md shows the script's tables as it computes them now; no page claims the weight is
    pi_theta / pi_sampler (it is pi_prox's, a fixed weight) or that it carries the whole correction."""
    scaling = (ROOT / "docs" / "scaling.md").read_text()
    assert B.tables() in scaling.split(B.BEGIN)[1].split(B.END)[0]
    for page in ("docs/scaling.md", "docs/algorithms.md", "rlreason/config/__init__.py", "rlreason/loop/trainer.py"):
        text = " ".join((ROOT / page).read_text().split())
        assert "whole correction" not in text, page
        for claim in ("min(pi_theta / pi_sampler", "min(π_θ/π_sampler", "min(pi_current / pi_sampler"):
            assert claim not in text, (page, claim)
        assert "prox" in text, page

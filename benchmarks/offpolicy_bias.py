"""Exact expected gradients of rlreason's loss when the sampler lags the policy (``async_rollouts``).

A toy where nothing is sampled: a tabular policy over V tokens and T positions (one row of
logits per prefix, so every sequence's probability is exact), all V^T sequences enumerated. The
expected gradient of ``algorithms.policy_loss`` over sequences drawn from q is then a finite sum,
sum_y q(y) grad loss(y). Compared:

- on-policy (q = pi_theta): what the synchronous trainer estimates, the reference;
- behaviour sampling (q = mu, the lagging sampler): the same loss with the truncated importance
  weight min(pi_prox / mu, C) per token (C = 2, async_rollouts' default), pi_prox = pi_theta
  (the weights at the start of the update; ``num_iterations: 1``, the ratio is 1).

The relative bias is |g_mu - g_pi| / |g_pi| over all logits. Two tables:

1. ``beta > 0``: the KL term (k3, beta 0.04) added after the importance weight (unweighted, as
   before issue 29 and as TRL 1.16 does) or inside it (weighted, as now); mu is pi_theta with
   its logits perturbed, at several KL(mu || pi_theta) per token.
2. the lag (``max_staleness``): mu = the weights k updates before pi_theta, the updates being
   exact on-policy gradient steps on the toy's objective. A per-token weight corrects each
   token's own distribution, not its prefix, which mu drew: the bias grows with the lag. The
   sequence-level weight min(prod_t pi_prox / mu, C) (TRL's ``sequence_truncate``; rlreason has
   no such mode) for comparison.

The numbers are the toy's (V, T, rewards, step size): they show the mechanism and its order of
magnitude, measured against KL(mu || pi_theta) per token, which a run logs as is_weight statistics.

    .venv/bin/python benchmarks/offpolicy_bias.py [--docs]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rlreason import algorithms as A  # noqa: E402

F64 = torch.float64
CAP = 2.0  # async_rollouts' importance_sampling_cap (rlreason.config.ASYNC_IS_CAP)
BETA = 0.04  # GRPO's KL coefficient (DeepSeekMath)


@dataclasses.dataclass(frozen=True)
class Toy:
    """Every sequence of T tokens over V, and for each (sequence, position) the row of the
    logits table [P, V] (P = 1 + V + ... + V^(T-1) prefixes) that position's distribution is."""

    V: int
    T: int

    @property
    def sequences(self) -> torch.Tensor:
        """[N, T] long, N = V^T, every sequence once."""
        return torch.tensor(list(itertools.product(range(self.V), repeat=self.T)), dtype=torch.long)

    @property
    def num_prefixes(self) -> int:
        return sum(self.V ** t for t in range(self.T))

    @property
    def prefix_rows(self) -> torch.Tensor:
        """[N, T] long: the logits row of position t of each sequence (its prefix's)."""
        y = self.sequences
        rows = torch.zeros_like(y)
        offset, code = 0, torch.zeros(len(y), dtype=torch.long)
        for t in range(self.T):
            rows[:, t] = offset + code
            offset += self.V ** t
            code = code * self.V + y[:, t]
        return rows


def token_logp(theta: torch.Tensor, toy: Toy) -> torch.Tensor:
    """theta [P, V] logits -> [N, T] log-prob of each sequence's token t given its prefix."""
    logp = torch.log_softmax(theta, dim=-1)[toy.prefix_rows]  # [N, T, V]
    return logp.gather(-1, toy.sequences.unsqueeze(-1)).squeeze(-1)


def expected_gradient(theta: torch.Tensor, behaviour: torch.Tensor, toy: Toy, adv: torch.Tensor,
                      settings: A.LossSettings, ref: torch.Tensor | None = None,
                      seq_weight_cap: float | None = None) -> torch.Tensor:
    """sum_y mu(y) grad_theta loss(y), y ~ mu = the behaviour logits' sequence distribution.

    theta, behaviour, ref: [P, V] logits; adv: [N] -> [P, V]. loss(y) is ``policy_loss`` of the one
    sequence y with old_logp = pi_theta (detached: the first pass) and sampler_logp = log mu(y).
    ``seq_weight_cap``: multiply each loss by min(pi_theta(y) / mu(y), cap), the sequence-level
    truncated weight, instead (set settings.is_cap None then)."""
    theta = theta.detach().clone().requires_grad_(True)
    logp = token_logp(theta, toy)
    mu_tok = token_logp(behaviour, toy)
    mu = mu_tok.sum(1).exp()
    ref_tok = token_logp(ref, toy) if ref is not None else None
    mask = torch.ones(1, toy.T)
    total = theta.new_zeros(())
    for i in range(len(mu)):
        row = slice(i, i + 1)
        loss, _ = A.policy_loss(logp[row], logp[row].detach(), adv[row], mask, settings,
                                ref_logp=None if ref_tok is None else ref_tok[row], sampler_logp=mu_tok[row])
        if seq_weight_cap is not None:
            loss = loss * torch.exp(logp[i].detach().sum() - mu_tok[i].sum()).clamp(max=seq_weight_cap)
        total = total + mu[i] * loss
    (grad,) = torch.autograd.grad(total, theta)
    return grad


def kl_per_token(mu: torch.Tensor, pi: torch.Tensor, toy: Toy) -> float:
    """KL(mu || pi) of the sequence distributions divided by T."""
    mu_tok, pi_tok = token_logp(mu, toy), token_logp(pi, toy)
    return float((mu_tok.sum(1).exp() * (mu_tok - pi_tok).sum(1)).sum()) / toy.T


def rel(g: torch.Tensor, target: torch.Tensor) -> float:
    return float((g - target).norm() / target.norm())


def problem(toy: Toy, seed: int = 0) -> dict[str, torch.Tensor]:
    """The toy's policy, reference (both [P, V] logits) and rewards [N] in {0, 1}, from a seed."""
    g = torch.Generator().manual_seed(seed)
    P, N = toy.num_prefixes, toy.V ** toy.T
    return dict(theta=torch.randn(P, toy.V, generator=g, dtype=F64),
                ref=torch.randn(P, toy.V, generator=g, dtype=F64),
                rewards=(torch.rand(N, generator=g, dtype=F64) < 0.4).to(F64),
                direction=torch.randn(P, toy.V, generator=g, dtype=F64))


def centred(rewards: torch.Tensor, logits: torch.Tensor, toy: Toy) -> torch.Tensor:
    """[N] rewards minus their mean under ``logits``' sequence distribution (the group's baseline)."""
    p = token_logp(logits, toy).sum(1).exp()
    return rewards - (p * rewards).sum()


# ---------------------------------------------------------------------- 1. the KL term


def kl_term_bias(toy: Toy, scale: float, seed: int = 0, beta: float = BETA) -> dict[str, float]:
    """One behaviour policy mu = pi_theta with its logits moved by ``scale`` along a fixed random
    direction: the relative bias of the whole expected gradient with the KL term unweighted (before)
    and weighted (now), and of the KL term's gradient alone."""
    x = problem(toy, seed)
    theta, ref = x["theta"], x["ref"]
    mu = theta + scale * x["direction"]
    adv = centred(x["rewards"], mu, toy)
    zero = torch.zeros_like(adv)
    surrogate = A.LossSettings(is_cap=CAP)  # token_mean, nothing but the weighted surrogate
    kl = A.LossSettings(beta=beta, is_cap=CAP)
    kl_unweighted = A.LossSettings(beta=beta)
    target = expected_gradient(theta, theta, toy, adv, kl, ref)  # on-policy: every weight is 1
    now = expected_gradient(theta, mu, toy, adv, kl, ref)
    # before: the weighted surrogate plus the KL term's gradient with no weight (adv 0: only the KL)
    before = expected_gradient(theta, mu, toy, adv, surrogate) + expected_gradient(theta, mu, toy, zero,
                                                                                     kl_unweighted, ref)
    kl_target = expected_gradient(theta, theta, toy, zero, kl, ref)
    return dict(kl_mu_pi=kl_per_token(mu, theta, toy), before=rel(before, target), now=rel(now, target),
                kl_only_before=rel(expected_gradient(theta, mu, toy, zero, kl_unweighted, ref), kl_target),
                kl_only_now=rel(expected_gradient(theta, mu, toy, zero, kl, ref), kl_target))


# ---------------------------------------------------------------------- 2. the lag


def lag_bias(toy: Toy, lags: tuple[int, ...], lr: float, seed: int = 0) -> list[dict[str, float]]:
    """mu = theta_0; theta_k = k exact on-policy gradient steps of size ``lr`` from it (beta 0).
    For each lag k: KL(mu || pi_k) per token, the relative bias of the expected gradient at theta_k
    with the per-token weight (rlreason) and with a sequence-level one, and the fraction of token
    probability mass whose weight the cap cut."""
    x = problem(toy, seed)
    mu, rewards = x["theta"], x["rewards"]
    tok = A.LossSettings(is_cap=CAP)
    plain = A.LossSettings()
    thetas, theta = {0: mu}, mu
    for k in range(1, max(lags) + 1):
        theta = theta - lr * expected_gradient(theta, theta, toy, centred(rewards, theta, toy), plain)
        thetas[k] = theta
    out = []
    for k in lags:
        theta = thetas[k]
        adv = centred(rewards, mu, toy)  # the group's baseline is estimated from mu's samples
        target = expected_gradient(theta, theta, toy, adv, tok)
        per_token = expected_gradient(theta, mu, toy, adv, tok)
        per_seq = expected_gradient(theta, mu, toy, adv, plain, seq_weight_cap=CAP)
        w = torch.exp(token_logp(theta, toy) - token_logp(mu, toy))
        mu_p = token_logp(mu, toy).sum(1).exp()
        capped = float((mu_p[:, None] * (w >= CAP)).sum()) / toy.T
        out.append(dict(lag=k, kl_mu_pi=kl_per_token(mu, theta, toy), per_token=rel(per_token, target),
                        per_sequence=rel(per_seq, target), capped=capped))
    return out


KL_TOY = Toy(V=6, T=1)  # one token: a per-token weight is the whole sequence's
KL_TOY_LONG = Toy(V=4, T=3)
KL_SCALES = (0.07, 0.25)  # KL(mu || pi) ~ 0.003 and ~0.04 per token on the one-token toy
LAG_TOY = Toy(V=4, T=3)
LAGS = (1, 2, 4, 8)
LAG_LR = 2.0  # toy step size: KL(pi_0 || pi_1) ~ 1e-3 per token


def tables(seed: int = 0) -> str:
    """Both tables as markdown (what docs/scaling.md shows between its offpolicy-bias markers)."""
    lines = [f"`beta > 0`: mu is pi with its logits moved along a fixed random direction; k3 at beta {BETA}, "
             f"cap {CAP}. The relative bias of the expected gradient under mu against the on-policy one, with the "
             "KL term added after the truncated weight (before) and inside it (now). With one token (T=1) the "
             "per-token weight is the sequence's and the result is exact; with three, weighting removes most of "
             "the KL term's own bias, and the prefixes' bias (both terms) remains.", "",
             "| toy | KL(mu‖pi) per token | whole gradient, before | now | KL term's gradient, before | now |",
             "|---|---|---|---|---|---|"]
    for toy in (KL_TOY, KL_TOY_LONG):
        for scale in KL_SCALES:
            r = kl_term_bias(toy, scale, seed)
            lines.append(f"| V={toy.V}, T={toy.T} | {r['kl_mu_pi']:.4f} | {r['before']:.1%} | {r['now']:.1%} "
                         f"| {r['kl_only_before']:.1%} | {r['kl_only_now']:.1%} |")
    lines += ["", f"The lag: mu = the weights k updates before pi (exact on-policy gradient steps of size {LAG_LR} on "
              f"the toy's objective; V={LAG_TOY.V}, T={LAG_TOY.T}, beta 0, cap {CAP}). The relative bias of the "
              "expected gradient under mu against the on-policy one at pi, with rlreason's per-token weight and "
              "with a sequence-level one.", "",
              "| lag k | KL(mu‖pi) per token | bias, per-token weight (rlreason) | bias, sequence-level weight "
              "| probability mass at the cap |", "|---|---|---|---|---|"]
    for r in lag_bias(LAG_TOY, LAGS, LAG_LR, seed):
        lines.append(f"| {r['lag']} | {r['kl_mu_pi']:.4f} | {r['per_token']:.1%} | {r['per_sequence']:.1%} "
                     f"| {r['capped']:.1%} |")
    return "\n".join(lines)


DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "scaling.md")
BEGIN, END = "<!-- offpolicy-bias:begin -->", "<!-- offpolicy-bias:end -->"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--docs", action="store_true", help=f"write the tables into {DOC} between its markers")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = tables(args.seed)
    print(out)
    if args.docs:
        from _common import replace_block

        body = f"Produced by `python benchmarks/offpolicy_bias.py --docs` (exact, no sampling).\n\n{out}"
        if not replace_block(Path(DOC), BEGIN, END, body):
            raise SystemExit(f"{DOC} has no {BEGIN} / {END} markers")


if __name__ == "__main__":
    main()

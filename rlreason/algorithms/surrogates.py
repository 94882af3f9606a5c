"""The per-token surrogates of TRL 1.16's newer loss types, as pure functions (no model, no I/O).

Notation as in ``rlreason.algorithms``: N sequences, T completion tokens, ``mask`` [N, T] the real
completion tokens, ``ratio`` r = pi / pi_old per token ([N, T]) or per sequence ([N, 1]), ``adv``
[N, 1] or [N, T]. Each returns the loss to minimise per token, before masks, importance weights,
the KL term and the aggregation (``policy_loss`` adds those), and what it clipped.
"""

from __future__ import annotations

import math

import torch

# VESPO's log-weight bounds, as TRL's get_gamma_weights: log(1e-8) below (the original implementation's
# floor), +20 above (exp(20) ~ 5e8, far beyond where phi is ~0 anyway).
VESPO_LOG_MIN = math.log(1e-8)
VESPO_LOG_MAX = 20.0


def cispo_surrogate(logp: torch.Tensor, ratio: torch.Tensor, adv: torch.Tensor, eps_max: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1, arXiv 2506.13585): REINFORCE with a clipped, detached IS weight.

    logp [N, T] (with gradient), ratio [N, T] or [N, 1] (pi / pi_old), adv [N, 1] or [N, T]
    -> loss [N, T], clipped [N, T] bool

    loss = -sg(min(r, eps_max)) * A * log pi. The weight is clipped, never the token: every token
    keeps a gradient (PPO's clip zeroes it), only its size is bounded. TRL 1.16 clips at
    ``epsilon_high`` itself (not 1 + epsilon_high; ScaleRL recommends 5.0) and no lower bound.
    ``clipped``: r > eps_max with A > 0 (TRL's cispo_clip_ratio).
    """
    weight = torch.clamp(ratio, max=eps_max).detach()
    loss = -weight * adv * logp
    clipped = ((ratio > eps_max) & (adv > 0)).expand_as(loss)
    return loss, clipped


def sapo_surrogate(ratio: torch.Tensor, adv: torch.Tensor, tau_pos: float, tau_neg: float) -> torch.Tensor:
    """SAPO (Soft Adaptive Policy Optimization, arXiv 2511.20347): a smooth gate instead of the clip.

    ratio [N, T] or [N, 1], adv [N, 1] or [N, T] -> loss [N, T] (or [N, 1])

    loss = -f(r) * A with f(r) = 4 / tau * sigmoid(tau * (r - 1)), tau = tau_pos where A > 0, else
    tau_neg. f'(r) = 4 sigmoid(x)(1 - sigmoid(x)) is 1 at r = 1 (the unclipped surrogate's gradient
    on-policy) and decays smoothly as r leaves 1, faster for larger tau: no hard cut-off.
    """
    # in the ratio's precision (Python floats in torch.where would make a float32 tensor)
    tau = torch.where(adv > 0, ratio.new_tensor(tau_pos), ratio.new_tensor(tau_neg))
    return -torch.sigmoid(tau * (ratio - 1)) * 4 / tau * adv


def vespo_gamma_weights(log_ratio: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                        is_weight: torch.Tensor | None = None, k_pos: float = 2.0, lambda_pos: float = 3.0,
                        k_neg: float = 3.0, lambda_neg: float = 2.0) -> torch.Tensor:
    """VESPO's sequence weight (arXiv 2602.10693): phi(w) = e^lambda * w^k * e^(-lambda w), no gradient.

    log_ratio [N, T] (log pi - log pi_old per token), adv [N, 1] or [N], mask [N, T], is_weight [N, T]
    or None (the sampler correction, token modes) -> phi [N, 1]

    w is the sequence's whole importance weight, prod_t pi / pi_old (a sum of log-ratios, not GSPO's
    mean), times prod_t of the sampler correction pi_old / pi_sampler when given (its log floored at
    log 1e-8, so a masked-out token, weight 0, counts as 1e-8). phi(1) = 1; (k, lambda) = (k_pos,
    lambda_pos) where A >= 0, else the negative pair. Token log-ratios are clamped to +-20 and log w to
    [log 1e-8, 20], in log space throughout, as TRL 1.16's get_gamma_weights.
    """
    with torch.no_grad():
        m = mask.to(log_ratio.dtype)
        seq = (log_ratio.clamp(-20.0, 20.0) * m).sum(-1, keepdim=True)
        if is_weight is not None:
            log_is = torch.log(is_weight.to(log_ratio.dtype)).clamp(VESPO_LOG_MIN, VESPO_LOG_MAX)
            seq = seq + (log_is * m).sum(-1, keepdim=True)
        log_w = seq.clamp(VESPO_LOG_MIN, VESPO_LOG_MAX)
        a = adv.reshape(adv.shape[0], -1)[:, :1]
        k = torch.where(a >= 0, log_w.new_tensor(k_pos), log_w.new_tensor(k_neg))
        lam = torch.where(a >= 0, log_w.new_tensor(lambda_pos), log_w.new_tensor(lambda_neg)).clamp(min=1e-4)
        phi = torch.exp(lam + k * log_w - lam * torch.exp(log_w))
        return phi.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def vespo_surrogate(logp: torch.Tensor, phi: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """VESPO's loss: -phi(w) * A * log pi per token (phi from ``vespo_gamma_weights``, detached).

    logp [N, T], phi [N, 1], adv [N, 1] or [N, T] -> loss [N, T]. The gradient is phi * A * grad log pi:
    a policy gradient whose weight vanishes smoothly for sequences far off-policy in either direction.
    """
    return -phi.detach() * adv * logp

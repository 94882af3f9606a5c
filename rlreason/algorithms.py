"""The math of GRPO as pure tensor functions: no I/O, no model, shapes in docstrings.

Notation: N = B*G sequences (B prompts, G completions each, a prompt's completions
adjacent), T = completion length (padded), V = vocabulary size.

GRPO (Shao et al. 2024, DeepSeekMath, eq. 3) maximises, per completion token,

    min(r_t * A, clip(r_t, 1 - eps_low, 1 + eps_high) * A) - beta * KL_t

with r_t = pi(o_t) / pi_old(o_t) and A the completion's reward relative to its group.
Separate low/high epsilons are DAPO's clip-higher (Yu et al. 2025, eq. 10).
"""

from __future__ import annotations

from typing import Literal

import torch

AdvantageScale = Literal["group", "batch", "none"]
AggregateMode = Literal["token_mean", "seq_mean"]


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: AdvantageScale = "group", eps: float = 1e-4
) -> tuple[torch.Tensor, dict[str, float]]:
    """Each reward minus its group's mean, optionally divided by a std.

    rewards: [B*G] -> advantages: [B*G]

    ``scale="group"`` divides by the group's std (GRPO), ``"batch"`` by the whole batch's
    std, ``"none"`` not at all (Dr. GRPO, Liu et al. 2025). A group whose rewards are all
    equal carries no signal: its advantages are exactly 0, decided by exact equality
    (max == min), because a float tolerance on the std can be defeated by rounding and
    then ``eps`` would blow tiny differences up into +-1 advantages.
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of {group_size} entries, got {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)
    centered = grouped - grouped.mean(dim=1, keepdim=True)
    flat = grouped.max(dim=1).values == grouped.min(dim=1).values  # [B]
    if scale == "group":
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.ones_like(centered[:, :1])
        centered = centered / (std + eps)
    elif scale == "batch":
        std = rewards.std() if rewards.numel() > 1 else rewards.new_tensor(1.0)
        centered = centered / (std + eps)
    elif scale != "none":
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")
    adv = torch.where(flat[:, None], torch.zeros_like(centered), centered)
    return adv.reshape(-1), {"frac_zero_std_groups": flat.float().mean().item()}


def selective_log_softmax(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[ids] without materialising the [..., V] log-probabilities.

    logits: [N, T, V], ids: [N, T] -> [N, T]
    """
    picked = torch.gather(logits, -1, ids.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax distribution at every position.

    logits: [N, T, V] -> [N, T]
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def token_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    eps_low: float,
    eps_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss (to minimise) with separate low/high clip ranges.

    logp, old_logp: [N, T]; adv: [N] -> loss: [N, T], clipped: [N, T] bool

    loss = -min(r * A, clip(r, 1 - eps_low, 1 + eps_high) * A), r = exp(logp - old_logp).
    ``clipped`` marks tokens where the clipped term was the smaller one, i.e. where the
    gradient was cut off; its mean over completion tokens is the clip fraction.
    """
    ratio = torch.exp(logp - old_logp)
    a = adv.unsqueeze(1)
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) (Schulman 2020): unbiased and >= 0.

    logp, ref_logp: [N, T] -> [N, T];  k3 = exp(ref - logp) - (ref - logp) - 1
    """
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def aggregate(
    loss: torch.Tensor, mask: torch.Tensor, mode: AggregateMode = "token_mean", denom: float | None = None
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar over the completion tokens in ``mask``.

    loss, mask: [N, T] -> scalar

    ``token_mean``: sum of token losses / number of tokens (DAPO: every token weighs the same,
    so long answers are not diluted). ``seq_mean``: each sequence's token mean, then the mean
    over sequences (the original GRPO). ``denom`` is the number of tokens (token_mean) or of
    sequences (seq_mean) in the *whole* batch: pass it when the batch is split into
    micro-batches, so that the summed micro-batch gradients equal the full-batch gradient.
    """
    mask = mask.to(loss.dtype)
    if mode == "token_mean":
        total = (loss * mask).sum()
        return total / (denom if denom is not None else mask.sum().clamp(min=1))
    if mode == "seq_mean":
        per_seq = (loss * mask).sum(1) / mask.sum(1).clamp(min=1)
        return per_seq.sum() / (denom if denom is not None else max(loss.shape[0], 1))
    raise ValueError(f"aggregate mode must be 'token_mean' or 'seq_mean', got {mode!r}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is set (0 if none). x, mask: [N, T]."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)

"""Several rewards -> one advantage per completion: TRL's ``multi_objective_aggregation``.

Notation as in ``rlreason.algorithms``: N = B*G completions (a prompt's G adjacent), K reward
functions, ``per_func`` [N, K] their scores with NaN where a function returned None (does not
apply) or the completion's total is unknown (a reward failed).

- ``"sum_then_normalize"`` (TRL's default, rlreason's behaviour before the key existed): the
  weighted sum of the K scores, then the advantage estimator on it (``rlreason.algorithms.advantages``).
- ``"normalize_then_sum"`` (GDPO, Liu et al. 2026, "Group reward-Decoupled Normalization Policy
  Optimization"): each reward is normalised within its group first, so a reward with a large
  scale or spread does not drown the others; then the weighted sum, then one normalisation over
  the whole batch (``gdpo_advantages``). TRL 1.16 ignores ``scale_rewards`` in this mode, and so
  does rlreason.
"""

from __future__ import annotations

from typing import Literal

import torch

MultiObjectiveAggregation = Literal["sum_then_normalize", "normalize_then_sum"]


def nanstd_bessel(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """The unbiased std of the non-NaN entries of ``x``; NaN where fewer than two (TRL's ``nanstd``).

    x: any shape -> the reduced shape (``dim`` None: a 0-d tensor)."""
    valid = ~torch.isnan(x)
    n = valid.sum() if dim is None else valid.sum(dim=dim, keepdim=True)
    mean = x.nanmean() if dim is None else x.nanmean(dim=dim, keepdim=True)
    sq = torch.where(valid, (x - mean) ** 2, torch.zeros_like(x))
    ss = sq.sum() if dim is None else sq.sum(dim=dim, keepdim=True)
    std = torch.where(n > 1, torch.sqrt(ss / (n - 1).clamp(min=1)), torch.full_like(ss, float("nan")))
    return std if keepdim or dim is None else std.squeeze(dim)


def normalize_then_sum(per_func: torch.Tensor, weights: torch.Tensor, group_size: int,
                       eps: float = 1e-4) -> torch.Tensor:
    """GDPO's combined reward: each function's scores normalised within their group, then weighted and summed.

    per_func [N, K], weights [K] -> rewards [N]::

        r_i = sum_k w_k * (s_ik - mean_g(s_k)) / (std_g(s_k) + eps)

    with the group's NaN-aware mean and unbiased std. A term that is NaN (the function gave None,
    or it is the only score of its function in the group: no std) is left out of the sum; a row
    with no score at all stays NaN (it carries no signal, as in TRL).
    """
    if per_func.ndim != 2 or per_func.shape[0] % group_size or weights.shape != per_func.shape[1:]:
        raise ValueError(f"per_func must be [N, K] with N a multiple of {group_size} and weights [K]; got "
                         f"{tuple(per_func.shape)} and {tuple(weights.shape)}")
    k = per_func.shape[1]
    grouped = per_func.view(-1, group_size, k)  # [B, G, K]
    mean = grouped.nanmean(dim=1, keepdim=True)
    std = nanstd_bessel(grouped, dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    normed = ((grouped - mean) / (std + eps)).reshape(-1, k)  # [N, K]
    rewards = (normed * weights.to(normed).unsqueeze(0)).nansum(dim=1)
    # unscorable: no function applied (TRL's unscorable_mask), so not a 0 but "no signal"
    return torch.where(per_func.isnan().all(dim=1), torch.full_like(rewards, float("nan")), rewards)


def gdpo_advantages(per_func: torch.Tensor, weights: torch.Tensor, group_size: int,
                    eps: float = 1e-4) -> tuple[torch.Tensor, dict[str, float]]:
    """Advantages of ``multi_objective_aggregation: normalize_then_sum`` over the whole batch (all processes).

    per_func [N, K], weights [K] -> (advantages [N], metrics). The combined reward of
    ``normalize_then_sum``, then (r - mean(r)) / (std(r) + eps) over the batch (NaN-aware;
    unbiased std); rows without a score get 0. As in TRL, a group whose rewards are all equal
    does not get exactly 0 here: the batch mean is subtracted, not the group's.
    ``frac_zero_std_groups``: groups whose combined rewards are all equal (rlreason's metric).
    """
    rewards = normalize_then_sum(per_func, weights, group_size, eps)
    std = nanstd_bessel(rewards) if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype)
    adv = torch.nan_to_num((rewards - rewards.nanmean()) / (std + eps), nan=0.0)
    grouped = rewards.view(-1, group_size)
    valid = ~grouped.isnan()
    top = torch.where(valid, grouped, -torch.inf).amax(dim=1)
    bottom = torch.where(valid, grouped, torch.inf).amin(dim=1)
    flat = (top - bottom <= 0) | (valid.sum(dim=1) < 2)
    return adv, {"frac_zero_std_groups": flat.float().mean().item()}

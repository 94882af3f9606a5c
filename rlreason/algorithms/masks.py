"""Token and sequence weights that multiply the per-token loss, as TRL 1.16 computes them: the
sampler/trainer importance-sampling correction, DeepSeek-V3.2's off-policy sequence mask and the
high-entropy token mask. Pure functions; none carries a gradient.

Notation as in ``rlreason.algorithms``: N sequences, T completion tokens, ``mask`` [N, T].
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

ISMode = Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


def importance_sampling_weight(old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                               mode: ISMode, clip_min: float | None = None, clip_max: float | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The correction for tokens drawn by a sampler that is not exactly pi_old (vLLM's kernels, a lagging
    engine): w = pi_old / pi_sampler, truncated or masked (TRL 1.16's vllm_importance_sampling_mode;
    truncation: Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL training",
    eq. 3; masking: Liu et al. 2025, "When speed kills stability", MIS).

    old_logp (the trainer's log-probs of pi_old), sampler_logp (the engine's), mask: [N, T]
    -> weight [N, T] (token modes) or [N, 1] (sequence modes), outside [N, T] bool (the raw ratio fell
    outside [clip_min, clip_max]: truncated or masked), both without gradient.

    token_*: w_t = exp(old_t - sampler_t); sequence_*: w = exp(sum_t (old_t - sampler_t)), the whole
    sequence's ratio (a product, not a geometric mean). *_truncate clamps w into [clip_min, clip_max]
    (None: no bound on that side); *_mask sets w = 0 where it is outside. Differences at masked
    positions and NaN sampler log-probs (tokens the sampler did not score) count as 0 (w = 1).
    """
    if mode not in get_args(ISMode):
        raise ValueError(f"vllm_importance_sampling_mode must be one of {get_args(ISMode)}, got {mode!r}")
    with torch.no_grad():
        diff = torch.nan_to_num((old_logp - sampler_logp) * mask.to(old_logp.dtype), nan=0.0)
        if mode.startswith("sequence"):
            diff = diff.sum(-1, keepdim=True)
        ratio = torch.exp(diff)
        lo = -math.inf if clip_min is None else clip_min
        hi = math.inf if clip_max is None else clip_max
        outside = (ratio < lo) | (ratio > hi)
        if mode.endswith("truncate"):
            w = torch.clamp(ratio, min=clip_min, max=clip_max)
        else:
            w = ratio.masked_fill(outside, 0.0)
        return w, outside.expand_as(mask) & mask.bool()


def off_policy_mask(adv: torch.Tensor, logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                    threshold: float) -> torch.Tensor:
    """DeepSeek-V3.2's off-policy sequence masking (DeepSeek-AI 2025, "DeepSeek-V3.2", eq. 9).

    adv [N] or [N, 1], logp (current policy), sampler_logp (the policy that sampled), mask: [N, T]
    -> keep [N, 1] in {0, 1} (logp's dtype), no gradient

    A sequence is dropped when its advantage is negative AND its mean per-token KL estimate
    mean_t(log pi_sampler - log pi) exceeds ``threshold``: pushing down a sample the policy has
    already moved far from is the update most likely to be noise. NaN sampler log-probs count 0.
    """
    with torch.no_grad():
        m = mask.to(logp.dtype)
        kl = torch.nan_to_num(sampler_logp - logp.detach(), nan=0.0)
        seq_kl = (kl * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1.0)
        a = adv.reshape(adv.shape[0], -1)[:, :1]
        return ((a >= 0) | (seq_kl <= threshold)).to(logp.dtype)


def entropy_threshold(entropies: torch.Tensor, top_quantile: float) -> torch.Tensor | None:
    """The entropy above which a token is among the top ``top_quantile`` fraction ("Beyond the 80/20
    rule", Wang et al. 2025, arXiv 2506.01939: train only on the ~20% highest-entropy "forking" tokens).

    entropies [K] (the real tokens' entropies, every process's) -> 0-d threshold, or None when K = 0:
    torch.quantile(entropies, 1 - top_quantile), linear interpolation, as TRL 1.16.
    """
    if entropies.numel() == 0:
        return None
    x = entropies.detach()
    # in the entropies' own precision (float32 in training): a threshold rounded to another precision could
    # sit above the largest entropy and keep no token
    return torch.quantile(x if x.dtype in (torch.float32, torch.float64) else x.float(), 1.0 - top_quantile)


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, threshold: torch.Tensor | None) -> torch.Tensor:
    """entropy, mask [N, T], threshold (``entropy_threshold``; None: no tokens) -> [N, T] bool: real tokens
    whose entropy is >= threshold."""
    if threshold is None:
        return torch.zeros_like(mask, dtype=torch.bool)
    return (entropy.detach() >= threshold.to(entropy.dtype)) & mask.bool()

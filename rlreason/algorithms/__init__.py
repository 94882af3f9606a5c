"""The math of the GRPO family as pure tensor functions: no I/O, no model, shapes in docstrings.

Notation: N = B*G sequences (B prompts, G completions each, a prompt's completions
adjacent), T = completion length (padded), V = vocabulary size. ``mask`` [N, T] marks
real completion tokens.

The objective, per completion token (GRPO: Shao et al. 2024, DeepSeekMath, eq. 3)::

    J = agg_t[ min(r_t * A, clip(r_t, 1 - eps_low, 1 + eps_high) * A) ] - beta * KL

with r_t = pi(o_t) / pi_old(o_t) and A the completion's reward relative to its group.
The members of the family differ in four choices, each one function below:

- advantage estimator: ``group_advantages`` (GRPO, Dr. GRPO), ``rloo_advantages``,
  ``reinforce_pp_advantages``;
- importance ratio: per token (PPO/GRPO) or per sequence (GSPO), ``log_importance_ratio``;
- the surrogate: ``token_surrogate`` (PPO's clip, clip-higher, dual clip, INTELLECT-2's delta),
  or TRL 1.16's newer ones in ``surrogates`` (CISPO, SAPO, VESPO);
- aggregation over tokens: ``aggregate``.

Weights on the per-token loss (``masks``): the sampler/trainer importance-sampling correction
(``importance_sampling_weight``, TRL's four modes), DeepSeek-V3.2's off-policy sequence mask and the
high-entropy token mask ("Beyond the 80/20 rule").

On-policy distillation reuses the same surrogate with per-token advantages from a teacher's
log-probs: ``teacher_advantages``.

``PRESETS`` names the combinations (``loss_type``), each with the paper it follows.
``policy_loss`` puts the terms together into one micro-batch's loss and token statistics:
the whole objective the trainer minimises, in one function.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from rlreason.algorithms.masks import (
    ISMode,
    entropy_threshold,
    high_entropy_mask,
    importance_sampling_weight,
    off_policy_mask,
)

# Several rewards -> one advantage: TRL's multi_objective_aggregation (its own module)
from rlreason.algorithms.rewards_aggregation import MultiObjectiveAggregation, gdpo_advantages, normalize_then_sum
from rlreason.algorithms.surrogates import cispo_surrogate, sapo_surrogate, vespo_gamma_weights, vespo_surrogate

__all__ = ["ISMode", "MultiObjectiveAggregation", "cispo_surrogate", "entropy_threshold", "gdpo_advantages",
           "high_entropy_mask", "importance_sampling_weight", "normalize_then_sum", "off_policy_mask",
           "sapo_surrogate", "vespo_gamma_weights", "vespo_surrogate"]  # and the names below

# The allowed values of each choice, defined once: the config's fields are annotated with these
# and validated against them (``typing.get_args``), and the functions below check against them.
LossType = Literal["grpo", "dr_grpo", "dapo", "bnpo", "gspo", "cispo", "sapo", "luspo", "vespo"]  # PRESETS' keys
AdvantageEstimator = Literal["grpo", "rloo", "reinforce_pp"]
AdvantageScale = Literal["group", "batch", "none"]
AggregateMode = Literal["token_mean", "seq_mean", "seq_sum_norm", "seq_sum"]
Surrogate = Literal["clip", "clipped_weight", "soft_gate", "gamma_weight"]  # PPO | CISPO | SAPO | VESPO
RatioLevel = Literal["token", "sequence"]
KLKind = Literal["k1", "k2", "k3"]

# exp(20) ~ 5e8: far outside any clip range. Clamping the log-ratio there keeps a stale or
# mismatched token from producing inf (and then nan) without changing any clipped value.
MAX_LOG_RATIO = 20.0


# ---------------------------------------------------------------------------- advantages


def _flat_groups(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards [B*G] -> (rewards [B, G], flat [B] bool: the group carries no signal).

    A group is flat when every reward it has is equal, or when fewer than two are not NaN.
    NaN marks a completion with no applicable reward term (every reward returned None or
    failed): it is left out of its group's statistics, as TRL's NaN-aware statistics do.
    Equality is exact (max == min over the non-NaN rewards): a float tolerance on the std can
    be defeated by rounding, and then the std division blows tiny differences up into +-1
    advantages.
    """
    if rewards.ndim != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of {group_size} entries, got {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)
    valid = ~torch.isnan(grouped)
    top = torch.where(valid, grouped, -math.inf).max(dim=1).values
    bottom = torch.where(valid, grouped, math.inf).min(dim=1).values
    return grouped, (top == bottom) | (valid.sum(dim=1) < 2)


def signal_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """rewards [B*G] -> [B] bool: the group carries a learning signal (two or more non-NaN
    rewards that are not all equal)."""
    return ~_flat_groups(rewards, group_size)[1]


def _zero_flat(adv: torch.Tensor, flat: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """adv [B, G], flat [B] -> (adv [B*G] with flat groups and NaN entries exactly 0, metrics)."""
    adv = torch.where(flat[:, None] | torch.isnan(adv), torch.zeros_like(adv), adv)
    return adv.reshape(-1), {"frac_zero_std_groups": flat.float().mean().item()}


def _nanstd(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """The unbiased std of the non-NaN entries (as ``torch.std`` on them; NaN with fewer than two)."""
    valid = ~torch.isnan(x)
    n = valid.sum() if dim is None else valid.sum(dim=dim, keepdim=True)
    mean = x.nanmean() if dim is None else x.nanmean(dim=dim, keepdim=True)
    sq = torch.where(valid, (x - mean) ** 2, torch.zeros_like(x))
    ss = sq.sum() if dim is None else sq.sum(dim=dim, keepdim=True)
    std = torch.sqrt(ss / (n - 1))
    return std if keepdim or dim is None else std.squeeze(dim)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: AdvantageScale = "group", eps: float = 1e-4
) -> tuple[torch.Tensor, dict[str, float]]:
    """Each reward minus its group's mean, optionally divided by a std (GRPO, eq. in sec. 4.1.2).

    rewards: [B*G] -> advantages: [B*G]

    ``scale="group"``: divide by the group's std (GRPO). ``"batch"``: by the std of the raw
    rewards over the whole batch (TRL's scale_rewards "batch"; more robust to groups with tiny
    spread). That is not REINFORCE++-baseline (Hu 2025), which divides the group-centred
    rewards by their own batch std. ``"none"``: not at all (Dr. GRPO, Liu et al. 2025, sec. 3.1: the std
    division over-weights nearly solved or nearly hopeless prompts). A group whose rewards
    are all equal carries no signal: its advantages are exactly 0. A NaN reward (no applicable
    term) is left out of every mean and std and gets advantage 0: ``[1, nan, 1, 0]`` gives
    ``[.58, 0, .58, -1.15]``, the statistics of ``[1, 1, 0]``.
    """
    grouped, flat = _flat_groups(rewards, group_size)
    centered = grouped - grouped.nanmean(dim=1, keepdim=True)
    if scale == "group":
        std = _nanstd(grouped, dim=1, keepdim=True) if group_size > 1 else torch.ones_like(centered[:, :1])
        centered = centered / (std + eps)
    elif scale == "batch":
        std = _nanstd(rewards) if (~torch.isnan(rewards)).sum() > 1 else rewards.new_tensor(1.0)
        centered = centered / (std + eps)
    elif scale != "none":
        raise ValueError(f"scale must be one of {get_args(AdvantageScale)}, got {scale!r}")
    return _zero_flat(centered, flat)


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, dict[str, float]]:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, eq. 7): r_i - mean_{j != i} r_j.

    rewards: [B*G] -> advantages: [B*G]. Equal to G/(G-1) * (r_i - group mean); a group
    of one has no other sample to compare with and gets 0. NaN rewards (no applicable term)
    are not among the "others" and get 0.
    """
    grouped, flat = _flat_groups(rewards, group_size)
    if group_size == 1:
        return _zero_flat(torch.zeros_like(grouped), torch.ones_like(flat))
    valid = ~torch.isnan(grouped)
    total = torch.where(valid, grouped, torch.zeros_like(grouped)).sum(dim=1, keepdim=True)
    others_mean = (total - grouped) / (valid.sum(dim=1, keepdim=True) - 1)
    return _zero_flat(grouped - others_mean, flat)


def reinforce_pp_advantages(
    rewards: torch.Tensor, group_size: int, eps: float = 1e-4
) -> tuple[torch.Tensor, dict[str, float]]:
    """REINFORCE++ (Hu 2025, eq. 9-10, outcome reward, no KL in the reward): the reward
    normalised over the whole batch, (r - mean_batch) / std_batch; no per-prompt baseline.

    rewards: [B*G] -> advantages: [B*G]. Groups with equal rewards still get exactly 0, as
    for every estimator here, so that an all-correct prompt is not pushed up merely for
    being easier than the batch average. So it is not the paper's form: the batch mean and std
    include the flat groups' rewards (the kept advantages are not zero-mean over the batch), and
    no KL penalty is folded into the reward (here the KL, if any, is a loss term). NaN rewards
    are left out of the batch statistics and get 0.
    """
    grouped, flat = _flat_groups(rewards, group_size)
    std = _nanstd(rewards) if (~torch.isnan(rewards)).sum() > 1 else rewards.new_tensor(1.0)
    return _zero_flat((grouped - rewards.nanmean()) / (std + eps), flat)


# ---------------------------------------------------------------------------- log-probs


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


# ---------------------------------------------------------------------------- surrogate


def log_importance_ratio(
    logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor, level: RatioLevel = "token"
) -> torch.Tensor:
    """log(pi / pi_old) per token, or per sequence broadcast over its tokens.

    logp, old_logp, mask: [N, T] -> [N, T]

    ``"token"``: log r_t = logp_t - old_logp_t (PPO, GRPO). ``"sequence"``: GSPO (Zheng et al.
    2025, eq. 7), the length-normalised sequence ratio s_i = (pi(y_i) / pi_old(y_i))^(1/|y_i|),
    i.e. the mean of the token log-ratios, the same for every token of the sequence.
    Clamped to +-MAX_LOG_RATIO so exp() never overflows.
    """
    log_r = logp - old_logp
    if level == "sequence":
        m = mask.to(log_r.dtype)
        seq = (log_r * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)
        log_r = seq.expand_as(log_r)
    elif level != "token":
        raise ValueError(f"importance sampling level must be one of {get_args(RatioLevel)}, got {level!r}")
    return log_r.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


def token_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    eps_low: float,
    eps_high: float,
    mask: torch.Tensor | None = None,
    level: RatioLevel = "token",
    dual_clip: float | None = None,
    delta: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss (to minimise) with separate low/high clip ranges.

    logp, old_logp: [N, T]; adv: [N] (one advantage per sequence) or [N, T] (per token, e.g.
    on-policy distillation's ``teacher_advantages``); mask: [N, T] (needed for level="sequence")
    -> loss: [N, T], clipped: [N, T] bool

    loss = max(-r * A, -clip(r, 1 - eps_low, 1 + eps_high) * A), the negated PPO objective
    (Schulman et al. 2017, eq. 7); eps_high > eps_low is DAPO's clip-higher (Yu et al. 2025,
    eq. 10). ``dual_clip = c > 1`` also bounds the loss of negative-advantage tokens by
    -c * A (Ye et al. 2020, eq. 5), so one token with a huge ratio cannot dominate.
    ``delta`` (INTELLECT-2, Prime Intellect 2025, arXiv 2505.07291, two-sided clipping; TRL's ``delta``) caps the
    ratio of the unclipped term: loss = max(-min(r, delta) * A, -clip(r) * A), the same bound for
    negative advantages, where PPO's clip leaves r unbounded above.
    ``clipped`` marks tokens whose gradient was cut by a clip; its mean over completion
    tokens is the clip fraction.
    """
    if mask is None:
        mask = torch.ones_like(logp)
    ratio = torch.exp(log_importance_ratio(logp, old_logp, mask, level))
    a = adv.unsqueeze(1) if adv.dim() == 1 else adv
    capped = ratio if delta is None else torch.clamp(ratio, max=delta)
    unclipped = -capped * a
    clipped_loss = -torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a
    loss = torch.maximum(unclipped, clipped_loss)
    clipped = clipped_loss > unclipped
    if delta is not None:  # the unclipped term was chosen, but its ratio was capped: no gradient either
        clipped = clipped | ((clipped_loss <= unclipped) & (ratio > delta) & (a != 0))
    if dual_clip is not None:
        if dual_clip <= 1:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        bound = -dual_clip * a  # > 0 where A < 0
        hit = (a < 0) & (loss > bound)
        loss = torch.where(hit, bound.expand_as(loss), loss)
        clipped = clipped | hit
    return loss, clipped


def truncated_is_weight(old_logp: torch.Tensor, sampler_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance-sampling weight for sampler/trainer mismatch (Yao et al. 2025,
    "Your efficient RL framework secretly brings you off-policy RL training", eq. 3).

    old_logp (trainer's log-probs of the sampling policy), sampler_logp (the engine's): [N, T]
    -> weight [N, T] = min(pi_old / pi_sampler, cap), no gradient.

    vLLM and the trainer never compute exactly the same probabilities (kernels, precision),
    so the samples are slightly off-policy; this reweights them, with the cap bounding variance.
    """
    if cap <= 0:
        raise ValueError(f"importance sampling cap must be > 0, got {cap}")
    log_w = (old_logp - sampler_logp).detach().clamp(max=MAX_LOG_RATIO)
    return torch.exp(log_w).clamp(max=cap)  # = importance_sampling_weight(..., "token_truncate", None, cap)


# ---------------------------------------------------------------------------- KL


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: KLKind = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman 2020, "Approximating
    KL divergence").

    logp, ref_logp: [N, T] -> [N, T], with d = ref_logp - logp:
    k1 = -d (unbiased, can be negative), k2 = d^2 / 2 (biased, low variance),
    k3 = exp(d) - d - 1 (unbiased and >= 0; GRPO's choice, eq. 4).

    Those are properties of the values. As loss terms (differentiated through logp only, on the
    policy's own samples) their expected per-token gradients are: k1: E[grad log pi] = 0, noise
    only; k2: E[(log pi - log ref) grad log pi] = grad KL(pi || ref); k3: E[(1 - ref/pi) grad
    log pi] = grad KL(ref || pi), the forward KL's gradient.
    """
    d = (ref_logp - logp).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    if kind == "k1":
        return -d
    if kind == "k2":
        return 0.5 * d * d
    if kind == "k3":
        return torch.exp(d) - d - 1
    raise ValueError(f"KL estimator must be one of {get_args(KLKind)}, got {kind!r}")


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimate of KL(pi || pi_ref); see ``kl_estimate``. logp, ref_logp: [N, T] -> [N, T]"""
    return kl_estimate(logp, ref_logp, "k3")


# ---------------------------------------------------------------------------- distillation


def teacher_advantages(
    student_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float = 1.0,
    seq_adv: torch.Tensor | None = None,
    reward_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token advantages of on-policy distillation (Agarwal et al. 2024, "On-policy
    distillation of language models" (GKD) with the reverse KL; Lu et al. 2025, Thinking Machines,
    "On-policy distillation").

    student_logp (the sampling policy's log-probs of its own sampled tokens, no gradient),
    teacher_logp (the teacher's log-probs of the same tokens), mask: [N, T]; seq_adv: [N] or None
    -> adv [N, T], reverse_kl [N, T] (both zero outside ``mask``)

    reverse_kl_t = log pi_student(o_t) - log pi_teacher(o_t) is the one-sample estimate of
    KL(pi_student || pi_teacher) at step t, from the student's own samples. Its negation is a
    dense reward: a token the teacher finds likely (relative to the student) is reinforced.
    With the policy-gradient surrogate, adv_t = -kl_coef * reverse_kl_t makes the gradient
    kl_coef * sum_t reverse_kl_t * grad log pi(o_t), the per-token (discount 0) estimator of the
    reverse KL's gradient, minimised by the student: mode-seeking, so the student learns the
    teacher's most likely behaviour on the states the student itself reaches.
    ``reward_weight`` * ``seq_adv`` mixes in the verifier's group-relative advantage (the same
    value on every token of a completion).
    """
    m = mask.to(student_logp.dtype)
    reverse_kl = (student_logp - teacher_logp).detach() * m
    adv = -kl_coef * reverse_kl
    if seq_adv is not None and reward_weight:
        adv = adv + reward_weight * seq_adv.unsqueeze(1) * m
    return adv, reverse_kl


# ---------------------------------------------------------------------------- aggregation


def aggregate(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: AggregateMode = "token_mean",
    denom: float | None = None,
    max_len: int | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss to a scalar over the completion tokens in ``mask``.

    loss, mask: [N, T] -> scalar

    - ``token_mean``: sum of token losses / number of tokens: every token weighs the same
      (DAPO, eq. 12; BNPO when the count is per micro-batch).
    - ``seq_mean``: each sequence's token mean, then the mean over sequences (GRPO, eq. 3);
      a token of a short answer weighs more than one of a long answer.
    - ``seq_sum_norm``: token sum / (sequences * max_len), a constant (Dr. GRPO, eq. 4 /
      sec. 3.1): no length bias in either direction.
    - ``seq_sum``: each sequence's token sum, then the mean over sequences (LUSPO, arXiv
      2602.05261: GSPO's sequence loss scaled by its length, so long answers are not under-weighted).

    ``denom`` replaces the divisor's count (tokens for token_mean, sequences for the others):
    pass the whole batch's count when the batch is split into micro-batches, so that the
    summed micro-batch gradients equal the full-batch gradient.
    """
    mask = mask.to(loss.dtype)
    if mode == "token_mean":
        return (loss * mask).sum() / (denom if denom is not None else mask.sum().clamp(min=1))
    n_seq = denom if denom is not None else max(loss.shape[0], 1)
    if mode == "seq_mean":
        return ((loss * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / n_seq
    if mode == "seq_sum_norm":
        if not max_len:
            raise ValueError("aggregate mode 'seq_sum_norm' needs max_len (the max completion length)")
        return (loss * mask).sum() / (n_seq * max_len)
    if mode == "seq_sum":
        return (loss * mask).sum() / n_seq
    raise ValueError(f"aggregate mode must be one of {get_args(AggregateMode)}, got {mode!r}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is set (0 if none). x, mask: [N, T]."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


# ---------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class LossPreset:
    """A named member of the family, as TRL 1.16's ``loss_type`` means it: the aggregation, and the
    surrogate for cispo / sapo / vespo. Nothing else: the reward scaling, the clip range and the ratio
    level are their own keys with TRL's defaults (scale_rewards "group", epsilon 0.2 = epsilon_high,
    importance_sampling_level "token"). rlreason's one extension, ``gspo``, is TRL's grpo at the
    sequence level with its paper's clip range when the clip keys are at their defaults."""

    aggregation: AggregateMode
    batch_normalised: bool  # token counts over the whole batch (True) or per micro-batch (BNPO)
    source: str
    surrogate: Surrogate = "clip"
    ratio_level: RatioLevel | None = None  # a level the loss type fixes (gspo); None: importance_sampling_level
    paper_level: RatioLevel | None = None  # the level its paper uses, when not TRL's default (luspo: a warning)
    # the paper's clip range (eps_low, eps_high), used when epsilon / epsilon_high are TRL's defaults (gspo)
    clip: tuple[float, float] | None = None


PRESETS: dict[LossType, LossPreset] = {
    # J = 1/G sum_i 1/|o_i| sum_t min(r A, clip(r) A)                  (Shao et al. 2024, eq. 3)
    "grpo": LossPreset("seq_mean", True, "DeepSeekMath, Shao et al. 2024, eq. 3"),
    # J = 1/(G L) sum_i sum_t min(r A, clip(r) A)                       (Liu et al. 2025, eq. 4)
    # (the paper also drops the std division: scale_rewards none, which is not TRL's default)
    "dr_grpo": LossPreset("seq_sum_norm", True, "Understanding R1-Zero, Liu et al. 2025, eq. 4"),
    # J = 1/sum_i|o_i| sum_i sum_t min(r A, clip(r, 1-el, 1+eh) A)       (Yu et al. 2025, eq. 8/12)
    # (the paper's clip-higher, epsilon_high 0.28, is a key of its own, as in TRL)
    "dapo": LossPreset("token_mean", True, "DAPO, Yu et al. 2025, eq. 8"),
    # token mean per micro-batch: TRL's loss_type "bnpo" ("batch-normalised"). Not the method of
    # Xiao et al. 2025 (BNPO, Beta normalisation of rewards), which only shares the acronym.
    "bnpo": LossPreset("token_mean", False, "TRL's loss_type bnpo (token mean per local batch)"),
    # J = 1/G sum_i min(s_i A, clip(s_i) A), s_i = (pi/pi_old)^(1/|y_i|) (Zheng et al. 2025, eq. 5-7)
    # s_i is a per-token geometric mean, so its range is tiny: eps 3e-4 / 4e-4 (sec. 5.1); 0.2
    # would almost never clip it
    "gspo": LossPreset("seq_mean", True, "GSPO, Zheng et al. 2025, eq. 5-7", ratio_level="sequence",
                       clip=(3e-4, 4e-4)),
    # J = 1/sum_i|o_i| sum_i sum_t sg(min(r, eps_max)) A log pi          (MiniMax-M1, 2025, CISPO)
    "cispo": LossPreset("token_mean", True, "MiniMax-M1, arXiv 2506.13585 (CISPO)", surrogate="clipped_weight"),
    # J = 1/G sum_i 1/|o_i| sum_t 4/tau sigmoid(tau (r - 1)) A           (SAPO, arXiv 2511.20347)
    "sapo": LossPreset("seq_mean", True, "SAPO, arXiv 2511.20347", surrogate="soft_gate"),
    # J = 1/G sum_i sum_t min(s_i A, clip(s_i) A): GSPO's term times |y_i| (LUSPO, arXiv 2602.05261);
    # the paper's sequence level is importance_sampling_level: sequence (TRL warns without it)
    "luspo": LossPreset("seq_sum", True, "LUSPO, arXiv 2602.05261", paper_level="sequence"),
    # J = 1/sum_i|o_i| sum_i sum_t sg(phi(w_i)) A log pi                 (VESPO, arXiv 2602.10693)
    "vespo": LossPreset("token_mean", True, "VESPO, arXiv 2602.10693", surrogate="gamma_weight"),
}

TRL_EPSILON = 0.2  # TRL 1.16's epsilon default (epsilon_high None = epsilon)


def clip_range(loss_type: LossType, epsilon: float, epsilon_high: float | None) -> tuple[float, float]:
    """The (eps_low, eps_high) a run uses, as TRL: (epsilon, epsilon_high or epsilon). rlreason's
    gspo alone brings its paper's range when both keys are at TRL's defaults (0.2, None)."""
    paper = PRESETS[loss_type].clip
    if paper is not None and epsilon == TRL_EPSILON and epsilon_high is None:
        return paper
    return epsilon, epsilon if epsilon_high is None else epsilon_high


def ratio_level(loss_type: LossType, level: RatioLevel) -> RatioLevel:
    """The importance ratio's level: ``importance_sampling_level``, except for gspo, which is the
    sequence level by definition (TRL's grpo + importance_sampling_level sequence)."""
    return PRESETS[loss_type].ratio_level or level


def advantages(
    rewards: torch.Tensor, group_size: int, estimator: AdvantageEstimator = "grpo", scale: AdvantageScale = "group"
) -> tuple[torch.Tensor, dict[str, float]]:
    """Dispatch to an advantage estimator. rewards: [B*G] -> advantages: [B*G]"""
    if estimator == "grpo":
        return group_advantages(rewards, group_size, scale)
    if estimator == "rloo":
        return rloo_advantages(rewards, group_size)
    if estimator == "reinforce_pp":
        return reinforce_pp_advantages(rewards, group_size)
    raise ValueError(f"advantage estimator must be one of {get_args(AdvantageEstimator)}, got {estimator!r}")


# ---------------------------------------------------------------------------- the policy loss


@dataclass(frozen=True)
class LossSettings:
    """How ``policy_loss`` combines the terms: the run's config and ``loss_type`` preset as plain values.

    Defaults are GRPO's surrogate with nothing else: no KL, no entropy bonus, no importance weight.
    """

    eps_low: float = 0.2
    eps_high: float = 0.2
    ratio_level: RatioLevel = "token"
    dual_clip: float | None = None
    aggregation: AggregateMode = "token_mean"
    max_len: int | None = None  # L of seq_sum_norm (max_completion_length)
    beta: float = 0.0  # KL coefficient
    kl_estimator: KLKind = "k3"
    entropy_coef: float = 0.0  # the bonus's coefficient on this micro-batch (adaptive: the controller's)
    is_cap: float | None = None  # rlreason's importance_sampling_cap: is_mode token_truncate, is_clip_max = cap
    teacher_kl_coef: float = 1.0
    teacher_reward_weight: float = 0.0
    surrogate: Surrogate = "clip"  # clip (PPO's, with dual_clip and delta) | clipped_weight | soft_gate | gamma_weight
    delta: float | None = None  # two-sided clipping's cap on the unclipped ratio (INTELLECT-2)
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo: tuple[float, float, float, float] = (2.0, 3.0, 3.0, 2.0)  # k_pos, lambda_pos, k_neg, lambda_neg
    top_entropy_quantile: float = 1.0  # < 1: train only the tokens in this top fraction of entropy
    off_policy_threshold: float | None = None  # DeepSeek-V3.2's off-policy sequence mask; None = off
    bias_correction_kl: bool = False  # the KL term times the (differentiable) ratio pi / pi_old, as TRL's default
    is_mode: ISMode | None = None  # the sampler correction (importance_sampling_weight); None = off
    is_clip_min: float | None = None
    is_clip_max: float | None = None
    # the sampler correction also multiplies the KL term (rlreason's importance_sampling_cap: both terms are
    # expectations over the sampler's tokens, tests/test_offpolicy_bias.py); False: TRL's keys, the KL after it
    is_weight_kl: bool = True

    def __post_init__(self) -> None:
        if self.is_cap is not None:
            if self.is_mode not in (None, "token_truncate") or self.is_clip_max not in (None, self.is_cap):
                raise ValueError(f"is_cap {self.is_cap} is token_truncate at clip max {self.is_cap}, and is_mode "
                                 f"{self.is_mode!r} / is_clip_max {self.is_clip_max} say otherwise")
            object.__setattr__(self, "is_mode", "token_truncate")
            object.__setattr__(self, "is_clip_max", self.is_cap)
        if self.surrogate not in get_args(Surrogate):
            raise ValueError(f"surrogate must be one of {get_args(Surrogate)}, got {self.surrogate!r}")


@dataclass(frozen=True)
class PolicyLossStats:
    """A micro-batch's token statistics as SUMS over its completion tokens (0-d tensors, no gradient),
    so micro-batches and processes add them up before dividing by the total token count.
    A term the loss did not have (no KL, no teacher, no importance weight, no entropy given) sums to 0.
    The few that are not sums (``NOT_SUMMED``: a max, a min) are combined with max / min instead."""

    clipped: torch.Tensor  # tokens whose gradient a clip cut (the clip fraction's numerator)
    entropy: torch.Tensor
    kl: torch.Tensor  # KL estimate, without beta
    is_weight: torch.Tensor  # the sampler correction's weight, per token
    is_capped: torch.Tensor  # tokens whose raw correction ratio fell outside [clip min, clip max]
    log_ratio: torch.Tensor  # log(pi / pi_old) per token (not clamped, not the sequence ratio)
    log_ratio_sq: torch.Tensor
    reverse_kl: torch.Tensor  # log pi_old - log pi_teacher (on-policy distillation)
    clip_low: torch.Tensor  # TRL's clip_ratio/low: r < 1 - eps_low with A < 0 (clip surrogate)
    clip_high: torch.Tensor  # ... high: r > 1 + eps_high with A > 0
    sequences: torch.Tensor  # sequences with at least one real token
    phi_seq: torch.Tensor  # VESPO's phi(w), summed over those sequences
    is_units: torch.Tensor  # the correction's units: tokens (token modes) or sequences (sequence modes) ...
    is_unit_weight: torch.Tensor  # ... and their weights' sum (TRL's sampling/importance_sampling_ratio/mean)
    bonus_entropy: torch.Tensor  # entropy over the tokens the bonus acts on (the adaptive controller's input) ...
    bonus_tokens: torch.Tensor  # ... and their count
    max_abs_log_ratio: torch.Tensor  # a max, not a sum
    is_ratio_min: torch.Tensor  # the correction weight's min over its units (inf: none)
    is_ratio_max: torch.Tensor  # ... and max (-inf: none)

    def sums(self) -> dict[str, torch.Tensor]:
        """The summed statistics by name (``SUMMED_STATS``)."""
        return {name: getattr(self, name) for name in SUMMED_STATS}


NOT_SUMMED = ("max_abs_log_ratio", "is_ratio_min", "is_ratio_max")
# The statistics that add up, in field order: the one list of them the update accumulates over
# micro-batches, sums over processes and averages per token (rlreason/loop/actor.py).
SUMMED_STATS = tuple(f.name for f in dataclasses.fields(PolicyLossStats) if f.name not in NOT_SUMMED)


TokenLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def nll_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Supervised fine-tuning's per-token loss (a ``TokenLoss``): the negative log-likelihood
    -logp [N, T], nothing clipped; ``old_logp`` and ``adv`` are unused."""
    return -logp, torch.zeros_like(mask, dtype=torch.bool)


def _surrogate(s: LossSettings, logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
               is_w: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The loss type's per-token surrogate -> (loss [N, T], clipped [N, T] bool, VESPO's phi [N, 1] or None)."""
    a = adv.unsqueeze(1) if adv.dim() == 1 else adv
    if s.surrogate == "clip":
        loss, clipped = token_surrogate(logp, old_logp, adv, s.eps_low, s.eps_high, mask=mask, level=s.ratio_level,
                                        dual_clip=s.dual_clip, delta=s.delta)
        return loss, clipped, None
    if s.surrogate == "gamma_weight":  # VESPO: the token log-ratios, summed per sequence inside
        phi = vespo_gamma_weights(logp.detach() - old_logp, a, mask, is_w, *s.vespo)
        return vespo_surrogate(logp, phi, a).expand_as(logp), torch.zeros_like(mask, dtype=torch.bool), phi
    ratio = torch.exp(log_importance_ratio(logp, old_logp, mask, s.ratio_level))
    if s.surrogate == "clipped_weight":
        loss, clipped = cispo_surrogate(logp, ratio, a, s.eps_high)
        return loss, clipped, None
    loss = sapo_surrogate(ratio, a, s.sapo_temperature_pos, s.sapo_temperature_neg)
    return loss.expand_as(logp), torch.zeros_like(mask, dtype=torch.bool), None


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    settings: LossSettings,
    *,
    ref_logp: torch.Tensor | None = None,
    teacher_logp: torch.Tensor | None = None,
    behaviour_logp: torch.Tensor | None = None,
    sampler_logp: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    denom: float | None = None,
    n_micro: float = 1,
    entropy_cut: torch.Tensor | None = None,
    token_loss: TokenLoss | None = None,
) -> tuple[torch.Tensor, PolicyLossStats]:
    """The loss of one micro-batch (to minimise) and its token statistics: every term above, in one place.

    logp (the policy's, with gradient), old_logp (pi_old: the sampling policy's), mask: [N, T];
    adv: [N] (one advantage per sequence) or, without a teacher, [N, T]; ref_logp, teacher_logp,
    behaviour_logp, sampler_logp, entropy: [N, T] or None
    -> loss: scalar, stats: ``PolicyLossStats`` (sums over ``mask``)

    Per token, in this order (TRL 1.16's ``_compute_loss``)::

        A_t   = teacher_advantages(old_logp, teacher_logp)   if teacher_logp is given, else adv
        w_t   = importance_sampling_weight(pi_old, sampler_logp, mode, clip min/max)   if is_mode
        l_t   = the surrogate: token_surrogate (clip, dual clip, delta) | cispo | sapo | vespo (w_t inside)
        l_t  *= off_policy_mask(A, logp, sampler_logp or old_logp)       if off_policy_threshold
        l_t  *= high_entropy_mask(entropy, top_entropy_quantile)          if top_entropy_quantile < 1
        l_t  *= w_t                                                       if is_mode (not vespo)
        l_t  += beta * kl_estimate(logp, ref_logp) [* r_t if bias_correction_kl]   if ref_logp is given
                (inside the weight w_t when is_weight_kl: rlreason's importance_sampling_cap)
        loss  = aggregate(l, mask, aggregation, denom, max_len) [/ n_micro when denom is None]
        loss -= entropy_coef * mean of entropy over the bonus's tokens / n_micro    if entropy_coef > 0

    The KL is after the clip and inside the aggregation (GRPO, eq. 3); it is not masked by the
    off-policy or entropy masks (as TRL). With rlreason's ``importance_sampling_cap`` (``is_weight_kl``) the
    weight multiplies the KL term too: the tokens were drawn by the sampler, and both terms are
    expectations over the policy's tokens, so both need the weight. Without it the KL term's expected
    gradient is the sampler's, not the policy's: with a lagging sampler (async_rollouts), by exact
    enumeration on a one-token toy, 6.9% off at KL(sampler || policy) = 0.003 per token and 25% at 0.04,
    0.0% weighted (benchmarks/offpolicy_bias.py, tests/test_offpolicy_bias.py). With TRL's
    vllm_importance_sampling_* keys it is TRL's: the KL added after the weight. The weight is per token (or
    sequence): it does not correct the prefix a token follows.

    The entropy bonus is TRL 1.16's: the mean entropy over the micro-batch's tokens it acts on (the
    high-entropy ones when top_entropy_quantile < 1), divided by ``n_micro``, the optimizer step's
    micro-batches, whatever the loss type's normaliser: L = L_policy - coef * H. ``n_micro`` also
    divides the loss when ``denom`` is None (a micro-batch mean: BNPO), so the step's gradient is the
    micro-batches' mean. ``denom`` is ``aggregate``'s: the whole batch's count when the batch is split
    into micro-batches (None: this micro-batch's).
    ``behaviour_logp``: the trainer's log-probs of the distribution the sampler drew from (truncated
    as it was, top-k/top-p), pi_old of the importance weight; None: ``old_logp``. ``entropy_cut``: the
    high-entropy threshold (``entropy_threshold`` over every process's tokens); None: this micro-batch's.
    ``entropy`` carries a gradient only if the bonus should push it (entropy_coef > 0).
    ``token_loss(logp, old_logp, adv, mask) -> (loss [N, T], clipped [N, T] bool)`` replaces the
    surrogate (then the clip settings are unused), e.g. SFT's negative log-likelihood.
    Gradients reach only ``logp`` (and ``entropy`` when entropy_coef > 0): every other input is
    detached, a fixed target or weight.
    """
    s = settings
    # Only logp (and entropy) may carry a gradient: the rest are targets and weights.
    old_logp, adv = old_logp.detach(), adv.detach()
    ref_logp, teacher_logp, behaviour_logp, sampler_logp = (
        None if x is None else x.detach() for x in (ref_logp, teacher_logp, behaviour_logp, sampler_logp))
    zero = logp.new_zeros(())
    real = mask.bool()
    reverse_kl = None
    if teacher_logp is not None:  # on-policy distillation: per-token advantages [N, T]
        adv, reverse_kl = teacher_advantages(old_logp, teacher_logp, mask, s.teacher_kl_coef, adv,
                                             s.teacher_reward_weight)
    is_w = None
    is_weight = is_capped = is_units = is_unit_weight = zero
    is_min, is_max = logp.new_tensor(math.inf), logp.new_tensor(-math.inf)
    if s.is_mode is not None:
        if sampler_logp is None:
            raise ValueError("an importance-sampling correction needs the sampler's log-probs (sampler_logp)")
        pi_old = behaviour_logp if behaviour_logp is not None else old_logp
        is_w, outside = importance_sampling_weight(pi_old, sampler_logp, mask, s.is_mode, s.is_clip_min,
                                                   s.is_clip_max)
        units = is_w.expand_as(logp)[real] if is_w.shape[1] > 1 else is_w[real.any(-1, keepdim=True)]
        is_weight = (is_w.expand_as(logp) * mask).sum()
        is_capped = outside.sum()
        is_units, is_unit_weight = logp.new_tensor(float(units.numel())), units.sum()
        if units.numel():
            is_min, is_max = units.min(), units.max()
    phi = None
    if token_loss is None:
        vespo_w = is_w if is_w is not None and is_w.shape[1] > 1 else None
        loss_tok, clipped, phi = _surrogate(s, logp, old_logp, adv, mask, vespo_w)
    else:
        loss_tok, clipped = token_loss(logp, old_logp, adv, mask)
    a = adv.unsqueeze(1) if adv.dim() == 1 else adv
    if s.off_policy_threshold is not None:
        drift_from = sampler_logp if sampler_logp is not None else old_logp
        loss_tok = loss_tok * off_policy_mask(a, logp, drift_from, mask, s.off_policy_threshold)
    ent_mask = None
    if s.top_entropy_quantile < 1.0:
        if entropy is None:
            raise ValueError("top_entropy_quantile < 1 needs the policy's entropy per token")
        cut = entropy_cut if entropy_cut is not None else entropy_threshold(entropy.detach()[real],
                                                                            s.top_entropy_quantile)
        ent_mask = high_entropy_mask(entropy, mask, cut)
        loss_tok = loss_tok * ent_mask
    kl_sum = zero
    kl_term = None
    if ref_logp is not None:
        kl = kl_estimate(logp, ref_logp, s.kl_estimator)
        kl_sum = (kl.detach() * mask).sum()
        kl_term = s.beta * kl
        if s.bias_correction_kl:  # DeepSeek-V3.2: the estimate under pi_old, reweighted to pi (TRL's default)
            kl_term = kl_term * torch.exp(log_importance_ratio(logp, old_logp, mask, s.ratio_level))
    elif s.beta:
        raise ValueError("beta > 0 needs the reference's log-probs (ref_logp)")
    if kl_term is not None and s.is_weight_kl:
        loss_tok = loss_tok + kl_term
    if is_w is not None and s.surrogate != "gamma_weight":  # VESPO folds the weight into phi
        loss_tok = loss_tok * is_w
    if kl_term is not None and not s.is_weight_kl:
        loss_tok = loss_tok + kl_term
    loss = aggregate(loss_tok, mask, s.aggregation, denom=denom, max_len=s.max_len)
    if denom is None:
        loss = loss / n_micro
    bonus_mask = mask.to(logp.dtype) if ent_mask is None else ent_mask.to(logp.dtype)
    bonus_entropy = bonus_tokens = zero
    if entropy is not None:
        bonus_entropy, bonus_tokens = (entropy.detach() * bonus_mask).sum(), bonus_mask.sum()
    if s.entropy_coef > 0:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs the policy's entropy per token")
        loss = loss - s.entropy_coef * (entropy * bonus_mask).sum() / bonus_mask.sum().clamp(min=1) / n_micro
    log_ratio = (logp.detach() - old_logp) * mask
    seq_real = real.any(-1)
    clip_low = clip_high = zero
    if token_loss is None and s.surrogate == "clip":
        r = torch.exp(log_importance_ratio(logp.detach(), old_logp, mask, s.ratio_level))
        clip_low = ((r < 1 - s.eps_low) & (a < 0) & real).sum()
        clip_high = ((r > 1 + s.eps_high) & (a > 0) & real).sum()
    stats = PolicyLossStats(
        clipped=(clipped & real).sum(),
        entropy=(entropy.detach() * mask).sum() if entropy is not None else zero,
        kl=kl_sum,
        is_weight=is_weight,
        is_capped=is_capped,
        log_ratio=log_ratio.sum(),
        log_ratio_sq=log_ratio.pow(2).sum(),
        reverse_kl=reverse_kl.sum() if reverse_kl is not None else zero,
        clip_low=clip_low,
        clip_high=clip_high,
        sequences=seq_real.sum(),
        phi_seq=phi.squeeze(1)[seq_real].sum() if phi is not None else zero,
        is_units=is_units,
        is_unit_weight=is_unit_weight,
        bonus_entropy=bonus_entropy,
        bonus_tokens=bonus_tokens,
        max_abs_log_ratio=log_ratio.abs().max(),
        is_ratio_min=is_min,
        is_ratio_max=is_max,
    )
    return loss, stats

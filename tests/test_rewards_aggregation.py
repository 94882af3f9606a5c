"""multi_objective_aggregation: normalize_then_sum (GDPO) against TRL 1.16's own code path."""

from __future__ import annotations

import math

import pytest
import torch
from trl.trainer.utils import nanstd

from rlreason import algorithms as A
from rlreason.config import ConfigError, from_dict


def trl_normalize_then_sum(rewards_per_func: torch.Tensor, reward_weights: torch.Tensor, num_generations: int):
    """TRL 1.16 GRPOTrainer._generate_and_score_completions, the ``normalize_then_sum`` branch and the
    NaN handling around it, line for line (trl/trainer/grpo_trainer.py), with TRL's own ``nanstd``."""
    unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)
    grouped = rewards_per_func.view(-1, num_generations, rewards_per_func.shape[1])
    mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
    std_k = nanstd(grouped, dim=1, keepdim=True) if num_generations > 1 else torch.zeros_like(mean_k)
    reward_k = (grouped - mean_k) / (std_k + 1e-4)
    reward_k = reward_k.view(-1, rewards_per_func.shape[1])
    rewards = (reward_k * reward_weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable_mask] = torch.nan
    std_rewards = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    advantages = (rewards - torch.nanmean(rewards)) / (std_rewards + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


def _matrix(seed: int, n_groups: int, G: int, K: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n_groups * G, K, generator=g, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1][:K])
    scores[:, 0] = scores[:, 0].round()  # a 0/1-like reward with ties
    nan = torch.rand(scores.shape, generator=g) < 0.2  # "does not apply" (None)
    scores[nan] = math.nan
    scores[3] = math.nan  # unscorable: every function returned None
    scores[G:2 * G, 1] = 2.5  # a flat reward in one group (std 0)
    scores[2 * G:3 * G - 1, 2] = math.nan  # one score only of a function in a group: no std
    return scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gdpo_advantages_equal_trls(seed):
    G, K = 4, 3
    per_func = _matrix(seed, 5, G, K)
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    got, metrics = A.gdpo_advantages(per_func, weights, G)
    want = trl_normalize_then_sum(per_func, weights, G)
    # 1e-6, not 1e-12: TRL's nanstd computes Bessel's count / (count - 1) in float32 (an integer division)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert got[3] == 0 and not torch.isnan(got).any()
    assert 0 <= metrics["frac_zero_std_groups"] <= 1


def test_normalize_then_sum_weighs_rewards_by_their_weights_not_their_scales():
    """Two rewards with spreads 1 and 1000: summed first, the large one decides the ranking; normalised
    first (GDPO), each counts by its weight. Hand-computed on one group of 2: each reward normalised
    is +-1/sqrt(2) / (1 + ...) so the sums are w1 * s1 + w2 * s2 with s = +-0.7071."""
    per_func = torch.tensor([[1.0, 0.0], [0.0, 1000.0]], dtype=torch.float64)
    weights = torch.tensor([1.0, 1.0], dtype=torch.float64)
    combined = A.normalize_then_sum(per_func, weights, 2)
    s = 0.5 / (math.sqrt(0.5) + 1e-4)  # (x - mean) / (std + eps) for a pair 0/1 (std = sqrt(0.5))
    s2 = 500.0 / (math.sqrt(2 * 500.0 ** 2) + 1e-4)
    torch.testing.assert_close(combined, torch.tensor([s - s2, -s + s2], dtype=torch.float64))
    summed = (per_func * weights).sum(1)
    assert summed[1] > summed[0] and abs(combined[0] - combined[1]) < 1e-3  # equal after GDPO


def test_the_config_key():
    base = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "num_generations": 4,
            "max_completion_length": 16, "learning_rate": 1e-5, "max_steps": 2}
    assert from_dict(base).multi_objective_aggregation == "sum_then_normalize"  # TRL's default
    assert from_dict({**base, "multi_objective_aggregation": "normalize_then_sum"}).multi_objective_aggregation \
        == "normalize_then_sum"
    with pytest.raises(ConfigError, match="config key 'multi_objective_aggregation'"):
        from_dict({**base, "multi_objective_aggregation": "sum"})
    with pytest.raises(ConfigError, match="config key 'multi_objective_aggregation'.*advantage_estimator"):
        from_dict({**base, "multi_objective_aggregation": "normalize_then_sum", "advantage_estimator": "rloo"})

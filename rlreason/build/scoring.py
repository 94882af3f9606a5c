"""Config -> reward runners: how every runner of the run scores (worker processes, timeout,
memory cap), the training rewards' runner."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from rlreason.config import GRPOConfig
from rlreason.data.tasks import EMBEDDED_TASKS
from rlreason.rewards import accuracy_reward, build_rewards, format_reward
from rlreason.rewards.math import AccuracyReward
from rlreason.rewards.runner import RewardRunner


def scoring_settings(cfg: GRPOConfig) -> dict[str, Any]:
    """How every reward runner of the run scores: in ``reward_num_workers`` worker processes with
    a timeout and a memory cap per call, or in this process with ``reward_num_workers: 0``."""
    return dict(num_workers=max(cfg.reward_num_workers, 1), timeout_s=cfg.reward_timeout_s,
                memory_mb=cfg.reward_memory_mb, in_process=cfg.reward_num_workers == 0)


def reward_runner(cfg: GRPOConfig, funcs: list[Callable], weights: list[float] | None) -> RewardRunner:
    """The training rewards' runner (``scoring_settings``)."""
    return RewardRunner(funcs, weights, **scoring_settings(cfg))


def heldout_rewards(cfg: GRPOConfig, reward_funcs: list[Callable]) -> tuple[Callable, Callable | None]:
    """(correctness reward, format reward or None) of the held-out eval: ``eval_reward_funcs`` when
    set; else the built-in accuracy and format rewards when the task is the embedded one or the
    training rewards use the built-in accuracy; else the first training reward (a task of your own:
    its reward is its scorer). A completion is correct when the first gives it >= 1."""
    if cfg.eval_reward_funcs:
        funcs, _ = build_rewards(cfg.eval_reward_funcs)
        return funcs[0], (funcs[1] if len(funcs) > 1 else None)
    if cfg.dataset_name in EMBEDDED_TASKS or any(_is_accuracy(fn) for fn in reward_funcs) or not reward_funcs:
        return accuracy_reward, format_reward
    return reward_funcs[0], None


def _is_accuracy(fn: Callable) -> bool:
    while isinstance(fn, functools.partial):  # a chunk_size or kwargs entry
        fn = fn.func
    return isinstance(fn, AccuracyReward)

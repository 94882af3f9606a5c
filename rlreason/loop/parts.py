"""What the loop trains with: ``Parts``, a plain dataclass the builders fill (rlreason/build/)
and ``GRPOTrainer`` receives. It sits below the loop, so nothing in the loop imports a builder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import torch
from accelerate import Accelerator

from rlreason.rewards.runner import RewardRunner
from rlreason.rollout.base import RolloutEngine
from rlreason.run.tracking import RunLogger

if TYPE_CHECKING:
    from rlreason.rollout.tools.executor import ToolExecutor


@dataclass
class RunDir:
    """The output folder, checked: the checkpoint a resume continues from (verified) and the
    config changes made on resumes so far (recorded in every checkpoint)."""

    path: Path
    resume: Path | None = None
    config_changes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Parts:
    """Everything ``GRPOTrainer`` trains with. ``model``, ``optimizer`` and ``scheduler`` are
    prepared by ``acc`` (DDP / FSDP / DeepSpeed wrapped)."""

    acc: Accelerator
    run_dir: RunDir
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    tokenizer: Any
    train: datasets.Dataset
    rewards: RewardRunner  # the training rewards, in worker processes (rewards/runner.py)
    engine: RolloutEngine
    logger: RunLogger
    ref_model: torch.nn.Module | None = None  # the KL reference (beta > 0); None with LoRA: the base is
    ref_is_base_adapter: bool = False  # ... the policy with its adapter disabled
    teacher: torch.nn.Module | None = None  # on-policy distillation's teacher
    eval_rows: list[dict] = field(default_factory=list)  # held-out problems (prompt_ids, answer)
    # held-out accuracy (and format) and benchmark suites score through runners too: the failure
    # policy of the training rewards (timeouts, crash isolation, memory cap; eval/core.py)
    eval_scorer: RewardRunner | None = None
    suite_scorer: RewardRunner | None = None  # the main process's (suites run there)
    # multi-turn rollouts (TRL's tools= / environment_factory=): runs the tools, isolated; None: no tools
    tools: ToolExecutor | None = None
    # the held-out eval's executor when the eval runs beside a training batch (async_rollouts: one executor
    # serves one batch of episodes at a time); None: the eval uses ``tools``
    eval_tools: ToolExecutor | None = None
    rollout_func: Callable | None = None  # TRL's rollout_func(prompts, trainer) -> {prompt_ids, completion_ids, ...}

"""The training-side parts around a loaded policy and prepared data (``assemble``): reward
runners, reference, optimizer, scheduler (prepared with the policy), engine, logger; and the
settings that run but likely do not compute what was meant (``setting_warnings``)."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from transformers import get_scheduler

from rlreason import lora
from rlreason.build.engine import training_engine
from rlreason.build.models import disable_dropout
from rlreason.build.optim import optimizer_class, optimizer_kwargs
from rlreason.build.run_dir import open_run_dir
from rlreason.build.scoring import reward_runner, scoring_settings
from rlreason.config import GRPOConfig
from rlreason.eval.core import heldout_scorer
from rlreason.eval.core import suite_scorer as _suite_scorer
from rlreason.loop.logprobs import enable_gradient_checkpointing
from rlreason.loop.parts import Parts, RunDir
from rlreason.rewards.model import RewardModel
from rlreason.rollout import factory
from rlreason.rollout.base import RolloutEngine
from rlreason.rollout.tools import ToolExecutor
from rlreason.run.tracking import RunLogger

# A clip range at or above this on a sequence-level (GSPO) ratio gets a warning: the ratio is
# exp(mean token log-ratio), and token ratios themselves stay within 0.2 (the learning table in
# docs/algorithms.md: clip fraction 0.0000 at 0.2 for every token-level preset, 19% for GSPO at 3e-4 /
# 4e-4). 0.01 is 25x GSPO's eps_high and 1/20 of the token-level default.
SEQUENCE_CLIP_WARN = 0.01



def assemble(cfg: GRPOConfig, model: torch.nn.Module, tokenizer: Any, train: datasets.Dataset,
             reward_funcs: list[Callable], reward_weights: list[float] | None = None, *,
             eval_rows: list[dict] | None = None, eval_accuracy_fn: Callable | None = None,
             eval_format_fn: Callable | None = None, engine: RolloutEngine | None = None,
             accelerator: Accelerator | None = None, teacher: torch.nn.Module | None = None,
             run_dir: RunDir | None = None, keep_dropout: bool = False, tools: ToolExecutor | None = None,
             rollout_func: Callable | None = None, eval_tools: ToolExecutor | None = None) -> Parts:
    """The training-side parts around a loaded policy and prepared data: reward runner, reference,
    optimizer, scheduler (prepared with the policy), default engine, logger. ``keep_dropout``:
    for an objective that compares no passes (SFT's NLL), where dropout stays a regulariser.
    ``tools`` / ``rollout_func``: the run's tool executor and TRL's rollout function
    (rlreason/build/tools.py), passed on in ``Parts``; ``eval_tools``: the held-out eval's own executor
    (async_rollouts), else the eval uses ``tools``."""
    optim_cls = optimizer_class(cfg.optim)  # first: a missing bitsandbytes fails before any work
    acc = accelerator or Accelerator(log_with=cfg.report_to or None, project_dir=cfg.output_dir)
    set_seed(cfg.seed, device_specific=True)
    if "prompt_ids" not in train.column_names:
        raise ValueError("train_dataset needs a 'prompt_ids' column: build it with rlreason.data.prepare")
    if teacher is not None and not cfg.teacher_model_name_or_path:
        raise ValueError("a teacher model was given but config key 'teacher_model_name_or_path' is not set")
    if acc.distributed_type == DistributedType.DEEPSPEED and cfg.gradient_accumulation_steps > 1:
        # accelerate lets the DeepSpeed engine step after every backward unless it is told
        # about accumulation; the trainer accumulates its micro-batches itself.
        raise ValueError("with DeepSpeed set gradient_accumulation_steps: 1 (one micro-batch per optimizer step; "
                         "the trainer's own micro-batch accumulation does not drive DeepSpeed's yet)")
    # Built first: the runner forks its manager process now, before this process holds much
    # memory or starts threads. A reward that hangs, crashes or blows memory there costs only
    # its completions (scored None, counted), never the run.
    for fn in reward_funcs:  # reward models score on the trainer's device (in this process: rewards/model.py)
        if isinstance(fn, RewardModel):
            fn.to(acc.device)
    rewards = reward_runner(cfg, reward_funcs, reward_weights if reward_weights is not None else cfg.reward_weights)
    eval_scorer = heldout_scorer(eval_accuracy_fn, eval_format_fn, **scoring_settings(cfg)) \
        if eval_accuracy_fn is not None and eval_rows else None
    suite_scorer = _suite_scorer(**scoring_settings(cfg)) if cfg.eval_suites and acc.is_main_process else None
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if not keep_dropout:  # before the reference is copied from it
        disable_dropout(model)
    ref_is_base_adapter = lora.is_peft_model(model) and cfg.beta > 0
    ref_model = None
    if cfg.beta > 0 and not ref_is_base_adapter:
        # The reference is only needed (and only loaded) for the KL term. With LoRA it is the
        # policy with its adapter disabled: no second copy of the weights.
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    params = list(model.parameters())
    sharded = acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
    optimizer = optim_cls(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                          betas=(cfg.adam_beta1, cfg.adam_beta2), **optimizer_kwargs(cfg.optim, params, sharded))
    if cfg.max_steps == -1:  # TRL's rule: the steps num_train_epochs passes over the prompts take
        per_step = cfg.completions_per_step // cfg.num_generations * acc.num_processes
        # generations, each of optimizer_steps_per_generation optimizer steps (max_steps counts those, as TRL)
        generations = max(1, math.ceil(cfg.num_train_epochs * len(train) / per_step))
        cfg.max_steps = generations * cfg.optimizer_steps_per_generation
    total_updates = cfg.max_steps * cfg.num_iterations
    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_updates)  # warmup_steps wins, as in transformers
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                              num_training_steps=total_updates,
                              scheduler_specific_kwargs=cfg.lr_scheduler_kwargs or None)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    # One scheduler step per optimizer step, whatever the process count. accelerate's prepared
    # scheduler otherwise steps the real one num_processes times per call (it assumes each
    # process's dataloader batch adds to the global batch count), which ran the schedule N times
    # too fast on N processes (tests/test_distributed_math.py). It stays prepared, so the
    # checkpoint still holds its state.
    scheduler.step_with_optimizer = False
    if ref_model is not None:
        ref_model = ref_model.to(acc.device)
    if teacher is not None:
        teacher = teacher.to(acc.device).eval().requires_grad_(False)
        rows = teacher.get_output_embeddings().weight.shape[0]
        if rows < len(tokenizer):
            raise ValueError(f"config key 'teacher_model_name_or_path': the teacher's output layer has {rows} rows "
                             f"but the tokenizer has {len(tokenizer)} tokens; teacher and student must share a "
                             f"tokenizer")
    if engine is None:  # the configured engine; vLLM ones are built before the policy is prepared (build.engine)
        engine = training_engine(cfg, model, tokenizer, acc)
    for msg in setting_warnings(cfg, separate_engine=not factory.shares_policy(engine, acc.unwrap_model(model))):
        warnings.warn(msg, stacklevel=2)
    run_dir = run_dir or open_run_dir(cfg, acc)
    logger = RunLogger(cfg.output_dir, cfg.max_steps, enabled=acc.is_main_process, progress=cfg.progress,
                       accelerator=acc)
    if cfg.report_to:
        acc.init_trackers("rlreason", config={k: v for k, v in cfg.to_dict().items()
                                              if isinstance(v, int | float | str | bool)})
    return Parts(acc=acc, run_dir=run_dir, model=model, optimizer=optimizer, scheduler=scheduler, tokenizer=tokenizer,
                 train=train, rewards=rewards, engine=engine, logger=logger, ref_model=ref_model,
                 ref_is_base_adapter=ref_is_base_adapter, teacher=teacher, eval_rows=eval_rows or [],
                 eval_scorer=eval_scorer, suite_scorer=suite_scorer, tools=tools, rollout_func=rollout_func,
                 eval_tools=eval_tools)


def setting_warnings(cfg: GRPOConfig, separate_engine: bool) -> list[str]:
    """Settings that run but likely do not compute what was meant (docs/algorithms.md, "What each
    setting really computes"); the trainer warns about each at start-up."""
    out = []
    if cfg.beta > 0 and cfg.kl_estimator == "k1":
        out.append("kl_estimator k1 with beta > 0: as a loss term k1's gradient, grad log pi, has expectation 0 "
                   "under the policy's own samples, so the KL term adds noise and no pull towards the reference; "
                   "use k2 (gradient of KL(pi || ref)) or k3 (GRPO's; gradient of KL(ref || pi))")
    level = cfg.ratio_level()
    low, high = cfg.clip_range()
    if level == "sequence" and max(low, high) >= SEQUENCE_CLIP_WARN:
        out.append(f"a sequence-level importance ratio (loss_type {cfg.loss_type}) with a token-scale clip range "
                   f"{low}/{high}: GSPO's ratio is the geometric mean of the token ratios, far closer to 1 than "
                   f"any one of them, so it almost never clips; its paper uses 3e-4/4e-4, the gspo preset's "
                   f"values when neither epsilon nor epsilon_high is set")
    if level == "sequence" and cfg.async_rollouts:
        out.append("async_rollouts with a sequence-level importance ratio: the truncated importance weight that "
                   "corrects the sampler's lag is per token, multiplied into the loss of a sequence-level ratio "
                   "(docs/scaling.md)")
    if separate_engine and cfg.weight_sync_steps > 1 and (cfg.top_p < 1 or cfg.top_k > 0):
        out.append("weight_sync_steps > 1 with top_p < 1 or top_k > 0: the stale sampler's log-probs (the "
                   "behaviour policy of the ratio) are of the truncated distribution, the policy's of the full "
                   "one, so lagging steps' ratios are off by the kept mass")
    return out

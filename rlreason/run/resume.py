"""What may change when a run is resumed, and applying the changes that are allowed.

A resumed run continues exactly only with the settings it was started with. A changed setting
is one of three kinds:

- free: it changes nothing trained (where to log, how often to evaluate or save, how many steps
  in all, how rewards are sandboxed); taken as given.
- optimizer hyper-parameters (``OPTIMIZER_KEYS``): allowed when named in
  ``allow_config_changes``, then applied to the restored optimizer and scheduler (not only
  written to the config) and recorded in ``trainer_state.json`` under ``config_changes``.
- everything else (data order, batch shape, the objective, the model): refused. The prompt
  stream is a function of (seed, step, prompts per step), so a new ``num_generations`` or batch
  size would re-train prompts already seen and skip others; a new loss mid-run is another run.

A refusal lists every changed key with its old and new value and what to do about it.
"""

from __future__ import annotations

from typing import Any

from rlreason.algorithms import PRESETS
from rlreason.config import OPTIMIZER_KEYS, ConfigError, GRPOConfig

# Changes nothing the checkpoint holds or the steps compute.
FREE_KEYS = frozenset({
    "output_dir", "resume_from_checkpoint", "overwrite_output_dir", "allow_config_changes", "progress", "num_threads",
    "report_to", "logging_steps", "log_completions_steps", "save_steps", "save_total_limit", "metric_for_best_model",
    "greater_is_better", "eval_steps", "eval_size", "final_eval_size", "eval_max_tokens", "eval_suites",
    "eval_suites_limit", "max_steps", "max_nonfinite_steps", "reward_num_workers", "reward_timeout_s",
    "reward_memory_mb", "vllm_server_base_url", "vllm_server_host", "vllm_server_port", "vllm_server_timeout",
    "vllm_group_port", "vllm_server_max_retries", "vllm_server_retry_delay",
    "max_bad_gold_fraction",  # a start-up check of the data
    "eval_reward_funcs",  # what scores the held-out eval
})


def config_changes(saved: dict[str, Any], cfg: GRPOConfig) -> dict[str, tuple[Any, Any]]:
    """key -> (saved value, new value) for every key that differs, free keys left out."""
    now = cfg.to_dict()
    saved = _resolved(saved)
    return {k: (saved.get(k), now[k]) for k in now
            if k not in FREE_KEYS and k in saved and saved[k] != now[k]}


def _resolved(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with ``scale_rewards`` as ``GRPOConfig.to_dict`` now writes it, so a run saved before
    is the same run: null (the preset's) resolved for the grpo estimator; group (TRL's default) for rloo
    and reinforce_pp, which ignore it (another value is refused now)."""
    if saved.get("advantage_estimator", "grpo") != "grpo":
        return {**saved, "scale_rewards": "group"}  # TRL's default, which they ignore
    if saved.get("scale_rewards") is None and saved.get("loss_type") in PRESETS:
        # before TRL's defaults (issue 31), null meant the loss_type preset's: none for dr_grpo, else group
        # (dr_grpo's: the one preset with the seq_sum_norm aggregation)
        none = PRESETS[saved["loss_type"]].aggregation == "seq_sum_norm"
        return {**saved, "scale_rewards": "none" if none else "group"}
    return saved


def check_config_changes(saved: dict[str, Any], cfg: GRPOConfig, checkpoint: str) -> dict[str, tuple[Any, Any]]:
    """The allowed changes against the checkpoint's config; a ConfigError listing each change that
    is not allowed, with the flag that allows it or why it cannot change."""
    changes = config_changes(saved, cfg)
    allowed = set(cfg.allow_config_changes)
    refused = []
    for key, (old, new) in changes.items():
        if key in OPTIMIZER_KEYS and key not in allowed:
            refused.append(f"  {key}: {old!r} -> {new!r} (an optimizer setting: apply it from here on with "
                           f"--allow_config_changes {key})")
        elif key not in OPTIMIZER_KEYS:
            refused.append(f"  {key}: {old!r} -> {new!r} (cannot change in a resumed run: it changes the data "
                           f"order or what a step computes)")
    if refused:
        raise ConfigError(
            f"resuming from {checkpoint} with settings that differ from the run's:\n" + "\n".join(refused)
            + "\nset them back to the run's values (its config.yaml), or start a new run in another 'output_dir'")
    return changes


def apply_optimizer_changes(optimizer: Any, scheduler: Any, cfg: GRPOConfig, saved: dict[str, Any]) -> None:
    """After the optimizer and scheduler are restored from a checkpoint (with the old
    hyper-parameters), put the allowed new ones in: the learning rate as the schedule's base
    (the current rate is the schedule at its restored position), weight decay and betas in every
    parameter group. Nothing is touched when nothing changed, so an exact resume stays exact."""
    changes = {k: v for k, v in config_changes(saved, cfg).items() if k in OPTIMIZER_KEYS}
    if not changes:
        return
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate wraps the torch scheduler
    groups = optimizer.param_groups
    if "learning_rate" in changes or "warmup_steps" in changes:
        inner.base_lrs = [cfg.learning_rate] * len(groups)
        for group in groups:
            group["initial_lr"] = cfg.learning_rate
        lambdas = getattr(inner, "lr_lambdas", None)
        if lambdas is not None:  # LambdaLR (every transformers schedule): lr = base * lambda(step)
            for group, fn, base in zip(groups, lambdas, inner.base_lrs, strict=True):
                group["lr"] = base * fn(inner.last_epoch)
        else:
            for group in groups:
                group["lr"] = cfg.learning_rate
        inner._last_lr = [group["lr"] for group in groups]
    for group in groups:
        if "weight_decay" in changes:
            group["weight_decay"] = cfg.weight_decay
        if "betas" in group and ("adam_beta1" in changes or "adam_beta2" in changes):
            group["betas"] = (cfg.adam_beta1, cfg.adam_beta2)


class RunConfig:
    """The run's config as a part of its checkpoints (rlreason.run.checkpoint.Stateful): saved as it is;
    loaded back, the changes allowed since (``OPTIMIZER_KEYS``, checked before the trainer is built,
    rlreason.build) are applied to the restored optimizer and scheduler."""

    def __init__(self, cfg: GRPOConfig, optimizer: Any, scheduler: Any) -> None:
        self.cfg, self.optimizer, self.scheduler = cfg, optimizer, scheduler

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.cfg.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        apply_optimizer_changes(self.optimizer, self.scheduler, self.cfg, state.get("config", {}))


def change_record(changes: dict[str, tuple[Any, Any]], step: int) -> list[dict[str, Any]]:
    return [{"step": step, "key": k, "from": old, "to": new} for k, (old, new) in changes.items()]

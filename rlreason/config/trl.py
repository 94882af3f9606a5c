"""TRL's and open-r1's config keys in rlreason: accepted, renamed, ignored (with a warning) or
unsupported (with why), and the TRL value forms rlreason reads.

A TRL ``GRPOConfig`` / transformers ``TrainingArguments`` YAML, or an open-r1 recipe, should run
unchanged apart from paths: :func:`migrate` turns its keys into rlreason's before the config is
built, and collects every problem so that one message names them all. Keys with the same name
and meaning in rlreason's ``GRPOConfig`` are accepted as they are and are not listed here.
docs/migrating_from_trl.md shows these tables (tests/test_config.py checks they agree).
"""

from __future__ import annotations

import difflib
from typing import Any

# TRL / transformers / open-r1 name -> rlreason's name for the same setting.
RENAMED: dict[str, str] = {
    "dataset_prompt_column": "prompt_column",  # open-r1 ScriptArguments
    "dataset_train_split": "dataset_split",  # TRL ScriptArguments
    # TRL 1.16 deprecated it for vllm_importance_sampling_clip_max (the bound of whichever mode)
    "vllm_importance_sampling_cap": "vllm_importance_sampling_clip_max",
    "vllm_server_timeout_s": "vllm_server_timeout",
}

# Keys read and left unused, with why: they concern the hub, logging front-ends, or choices
# that accelerate or rlreason make by themselves. Each is named once in a warning.
IGNORED: dict[str, str] = {
    **dict.fromkeys(("push_to_hub", "hub_model_id", "hub_strategy", "hub_private_repo", "hub_token", "hub_revision",
                     "hub_always_push", "log_completions_hub_repo"), "rlreason does not push to the hub"),
    **dict.fromkeys(("bf16", "fp16", "tf32", "torch_dtype", "dtype", "bf16_full_eval", "fp16_full_eval"),
                    "precision is accelerate's choice (accelerate launch --mixed_precision); weights load in float32"),
    **dict.fromkeys(("logging_strategy", "logging_first_step", "log_level", "log_level_replica", "log_on_each_node",
                     "logging_nan_inf_filter", "disable_tqdm", "log_completions", "num_completions_to_print",
                     "log_unique_prompts", "run_name", "project", "include_num_input_tokens_seen", "wandb_entity",
                     "wandb_project", "wandb_run_group", "log_multimodal"),
                    "rlreason logs every logging_steps to metrics.jsonl and completions.jsonl"),
    **dict.fromkeys(("do_train", "do_eval", "do_predict", "eval_strategy", "evaluation_strategy", "eval_on_start",
                     "per_device_eval_batch_size", "eval_accumulation_steps", "benchmarks",
                     "prediction_loss_only"),
                    "held-out evaluation runs before and after training and every eval_steps"),
    **dict.fromkeys(("save_strategy", "save_only_model", "save_on_each_node", "load_best_model_at_end"),
                    "checkpoints are saved every save_steps (and at the end), with the full training state"),
    **dict.fromkeys(("dataloader_num_workers", "dataloader_pin_memory", "dataloader_drop_last",
                     "dataloader_persistent_workers", "dataloader_prefetch_factor", "remove_unused_columns",
                     "shuffle_dataset", "dataset_num_proc", "ddp_timeout", "ddp_find_unused_parameters",
                     "ddp_backend", "local_rank", "num_processes", "use_cpu", "skip_memory_metrics",
                     "vllm_device"),
                    "rlreason draws its own prompt stream; processes and devices come from accelerate launch"),
    **dict.fromkeys(("model_revision", "attn_implementation", "use_liger_kernel", "use_liger_loss",
                     "gradient_checkpointing_kwargs", "model_init_kwargs", "cast_lm_head_to_fp32", "disable_dropout",
                     "torch_compile", "use_cache", "ds3_gather_for_generation"),
                    "rlreason loads the model's default revision and attention and computes log-probs itself"),
}

# Keys rlreason cannot honour: an error, because silently training differently would be worse.
UNSUPPORTED: dict[str, str] = {
    "deepspeed": "give DeepSpeed to accelerate: accelerate launch --config_file "
                 "recipes/accelerate/deepspeed_zero2.yaml (or deepspeed_zero3.yaml)",
    "fsdp": "give FSDP to accelerate: accelerate launch --config_file recipes/accelerate/fsdp.yaml",
    "fsdp_config": "give FSDP to accelerate: accelerate launch --config_file recipes/accelerate/fsdp.yaml",
    "use_transformers_paged": "generation uses rlreason's engines (transformers or vLLM)",
    "max_tool_calling_iterations": "tools are not supported",
    "neftune_noise_alpha": "not for RL fine-tuning",
    "optim_args": "the optimizer takes learning_rate, weight_decay, adam_beta1 and adam_beta2",
    "adam_epsilon": "the optimizer uses torch's default epsilon (1e-8, as TRL)",
    "auto_find_batch_size": "set per_device_train_batch_size",
    # open-r1's reward options: in rlreason each reward is configured in its own reward_funcs entry
    **dict.fromkeys(("cosine_min_value_wrong", "cosine_max_value_wrong", "cosine_min_value_correct",
                     "cosine_max_value_correct", "cosine_max_len"),
                    "configure the reward in its entry: {name: cosine_length, kwargs: {...}} (docs/rewards.md)"),
    **dict.fromkeys(("repetition_n_grams", "repetition_max_penalty"),
                    "configure the reward in its entry: {name: repetition_penalty, kwargs: {ngram_size: ..., "
                    "max_penalty: ...}}"),
    **dict.fromkeys(("max_completion_len", "soft_punish_cache"),
                    "configure the reward in its entry: {name: soft_overlong, kwargs: {max_length: ..., cache: ...}}"),
    "dataset_configs": "name one configuration with dataset_config",
    "dataset_mixture": "give one dataset in dataset_name",
}

# rlreason defaults that differ from TRL's GRPOConfig, and why (docs/migrating_from_trl.md).
DEFAULTS_DIFFER: dict[str, tuple[Any, Any, str]] = {
    "learning_rate": (1e-6, 1e-5, "the embedded tiny model learns in minutes at 1e-5; set 1e-6 for billion-"
                      "parameter models"),
    "adam_beta2": (0.999, 0.99, "a shorter second-moment memory suits the few, noisy RL updates (as in DAPO)"),
    "lr_scheduler_type": ("linear", "constant_with_warmup", "RL runs are often stopped or extended; a constant "
                          "rate does not tie the run to max_steps"),
    "max_completion_length": (512, 64, "the embedded arithmetic task needs short answers; raise it for real math"),
    "max_steps": (-1, 300, "the default run is the demo; -1 (use num_train_epochs) is accepted"),
    "per_device_train_batch_size": (8, 64, "completions per micro-batch for the tiny model on a CPU"),
    "gradient_accumulation_steps": (1, 2, "two micro-batches make the demo's 128-completion step"),
    "gradient_checkpointing": (True, False, "the tiny model fits; turn it on for large models"),
    "seed": (42, 0, "any fixed seed; runs are reproducible either way"),
    "logging_steps": (10, 1, "every step's metrics go to metrics.jsonl"),
    "save_steps": (500, 100, "shorter runs"),
    "optim": ("adamw_torch_fused", "adamw_torch", "the fused kernel is CUDA-only; adamw_torch_fused is accepted"),
}

# Value forms TRL accepts that rlreason spells otherwise: key -> {TRL value: rlreason value}.
VALUE_FORMS: dict[str, dict[Any, Any]] = {
    "scale_rewards": {True: "group", False: "none"},
    "optim": {"adamw_torch_fused": "adamw_torch"},
    "report_to": {"none": [], "all": []},
}

# A did-you-mean is offered only for names at least this similar (difflib ratio): below it the
# hints mislead (torch_dtype -> loss_type is 0.6).
SUGGEST_CUTOFF = 0.8


def suggest(key: str, known: list[str] | set[str]) -> str:
    """`` (did you mean 'x'?)`` for a close enough known key, else ``""``."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=SUGGEST_CUTOFF)
    return f" (did you mean '{close[0]}'?)" if close else ""


def migrate(values: dict[str, Any], known: set[str]) -> tuple[dict[str, Any], list[str], list[str]]:
    """(values with rlreason's names and value forms, notes to warn about, errors).

    ``known``: rlreason's keys. Renamed keys are moved (a note names the new key), ignored keys
    dropped (a note says why), unsupported and unknown keys are errors; all are collected.
    """
    out: dict[str, Any] = {}
    notes: list[str] = []
    errors: list[str] = []
    ignored: dict[str, list[str]] = {}
    for key, value in values.items():
        if key in known:
            out[key] = value
            continue
        if key in RENAMED:
            new = RENAMED[key]
            if value is None:  # a deprecated alias at its default (a full TRL dump has them): unset, not null
                continue
            if new in values:
                errors.append(f"'{key}' is TRL's name for '{new}', and both are given; keep '{new}'")
                continue
            out[new] = value
            notes.append(f"'{key}' is read as '{new}'")
        elif key in IGNORED:
            ignored.setdefault(IGNORED[key], []).append(key)
        elif key in UNSUPPORTED:
            errors.append(f"'{key}' is not supported: {UNSUPPORTED[key]}")
        else:
            errors.append(f"unknown config key '{key}'{suggest(key, known | set(RENAMED))}")
    for why, keys in ignored.items():
        notes.append(f"ignored {', '.join(repr(k) for k in keys)}: {why}")
    for key, forms in VALUE_FORMS.items():
        if key in out and _hashable(out[key]) and out[key] in forms:
            out[key] = forms[out[key]]
    return out, notes, errors


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def markdown_tables() -> str:
    """The tables above as markdown: what docs/migrating_from_trl.md shows."""
    lines = ["| TRL / open-r1 key | rlreason |", "|---|---|"]
    lines += [f"| `{k}` | renamed: `{v}` |" for k, v in sorted(RENAMED.items())]
    lines += [f"| `{k}` | ignored, with a warning: {v} |" for k, v in sorted(IGNORED.items())]
    lines += [f"| `{k}` | unsupported (an error): {v} |" for k, v in sorted(UNSUPPORTED.items())]
    lines += ["", "| key | TRL default | rlreason default | why |", "|---|---|---|---|"]
    lines += [f"| `{k}` | `{t!r}` | `{r!r}` | {why} |" for k, (t, r, why) in sorted(DEFAULTS_DIFFER.items())]
    return "\n".join(lines) + "\n"

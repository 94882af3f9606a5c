"""TRL's and open-r1's config keys in rlreason: accepted, renamed, ignored (with a warning) or
unsupported (with why), and the TRL value forms rlreason reads.

A TRL ``GRPOConfig`` / transformers ``TrainingArguments`` YAML, or an open-r1 recipe, should run
unchanged apart from paths: :func:`migrate` turns its keys into rlreason's before the config is
built, and collects every problem so that one message names them all. Keys with the same name
and meaning in rlreason's ``GRPOConfig`` are accepted as they are and are not listed here. Every
other field of TRL 1.16's ``GRPOConfig`` (transformers' ``TrainingArguments`` included) is in
exactly one table below, and none is refused at TRL's default value (tests/test_trl_config_dump.py).
docs/migrating_from_trl.md shows these tables (tests/test_config.py checks they agree).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

# TRL / transformers / open-r1 name -> rlreason's name for the same setting.
RENAMED: dict[str, str] = {
    "dataset_prompt_column": "prompt_column",  # open-r1 ScriptArguments
    "dataset_train_split": "dataset_split",  # TRL ScriptArguments
    # TRL 1.16 deprecated it for vllm_importance_sampling_clip_max (the bound of whichever mode)
    "vllm_importance_sampling_cap": "vllm_importance_sampling_clip_max",
    "vllm_server_timeout_s": "vllm_server_timeout",
    # transformers 5 calls it activation checkpointing (gradient_checkpointing is its deprecated alias)
    "activation_checkpointing": "gradient_checkpointing",
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
                     "wandb_project", "wandb_run_group", "log_multimodal", "trackio_space_id", "trackio_bucket_id",
                     "trackio_static_space_id"),
                    "rlreason logs every logging_steps to metrics.jsonl and completions.jsonl"),
    **dict.fromkeys(("do_train", "do_eval", "do_predict", "eval_on_start",
                     "per_device_eval_batch_size", "eval_accumulation_steps", "benchmarks",
                     "prediction_loss_only", "eval_delay", "eval_do_concat_batches", "eval_use_gather_object",
                     "include_for_metrics", "batch_eval_metrics", "label_names"),
                    "held-out evaluation runs before and after training and every eval_steps"),
    **dict.fromkeys(("save_strategy", "save_only_model", "save_on_each_node", "load_best_model_at_end",
                     "enable_jit_checkpoint", "restore_callback_states_from_checkpoint"),
                    "checkpoints are saved every save_steps (and at the end), with the full training state"),
    **dict.fromkeys(("dataloader_num_workers", "dataloader_pin_memory", "dataloader_drop_last",
                     "dataloader_persistent_workers", "dataloader_prefetch_factor", "remove_unused_columns",
                     "dataset_num_proc", "ddp_timeout", "ddp_find_unused_parameters",
                     "ddp_backend", "local_rank", "num_processes", "use_cpu", "skip_memory_metrics",
                     "vllm_device", "dataloader_multiprocessing_context", "dataloader_in_order", "ddp_bucket_cap_mb",
                     "ddp_broadcast_buffers", "ddp_static_graph", "accelerator_config", "train_sampling_strategy",
                     "length_column_name", "debug", "torch_empty_cache_steps"),
                    "rlreason draws its own prompt stream; processes and devices come from accelerate launch"),
    **dict.fromkeys(("model_revision", "attn_implementation", "use_liger_kernel", "use_liger_loss",
                     "gradient_checkpointing_kwargs", "model_init_kwargs", "cast_lm_head_to_fp32", "disable_dropout",
                     "torch_compile", "use_cache", "ds3_gather_for_generation", "activation_checkpointing_kwargs",
                     "torch_compile_backend", "torch_compile_mode", "liger_kernel_config", "pad_to_multiple_of"),
                    "rlreason loads the model's default revision and attention and computes log-probs itself"),
    "dataset_test_split": "held-out rows are eval_holdout_size rows of the training split, eval_dataset's (its split: "
                          "eval_dataset_split) or the embedded task's own",
    "ignore_bias_buffers": "rlreason draws its own prompt stream; processes and devices come from accelerate launch",
    "use_bnb_nested_quant": "QLoRA's base is NF4 with its constants quantised too (bitsandbytes' double quant), always",
    **dict.fromkeys(("label_smoothing_factor", "average_tokens_across_devices"),
                    "TRL's GRPOTrainer computes its own loss (normalised as loss_type says) and does not read it"),
    **dict.fromkeys(("use_transformers_paged", "use_transformers_continuous_batching",
                     "transformers_continuous_batching_config", "cache_implementation", "vllm_model_impl"),
                    "how TRL batches generation: rlreason's engines (transformers or vLLM) batch it themselves"),
}

# TRL keys rlreason reads into its own settings (translate() below).
TRANSLATED: dict[str, str] = {
    "eval_strategy": "'steps' without eval_steps: eval_steps = logging_steps (TRL's rule); 'no': eval_steps "
                     "alone decides; 'epoch': an error (rlreason evaluates every eval_steps)",
    "evaluation_strategy": "transformers' former name of eval_strategy, read the same way",
    "reward_model_name_or_path": "`trl grpo`'s reward model: the first entry of reward_funcs (TRL's order)",
}


def _off(value: Any) -> bool:
    """None, False or empty: the setting is off."""
    return value is None or value is False or value == "" or value == [] or value == {}


# Keys rlreason cannot honour: accepted at TRL's default (or a value that trains the same) and an
# error at any other value, because silently training differently would be worse.
# key -> (the accepted values, or a predicate with a docstring saying which, why).
ONLY_AT_DEFAULT: dict[str, tuple[tuple[Any, ...] | Callable[[Any], bool], str]] = {
    "deepspeed": (_off, "give DeepSpeed to accelerate: accelerate launch --config_file "
                        "recipes/accelerate/deepspeed_zero2.yaml (or deepspeed_zero3.yaml)"),
    "fsdp": (_off, "give FSDP to accelerate: accelerate launch --config_file recipes/accelerate/fsdp.yaml"),
    "fsdp_config": (_off, "give FSDP to accelerate: accelerate launch --config_file recipes/accelerate/fsdp.yaml"),
    "parallelism_config": (_off, "give the processes' layout to accelerate launch (data parallel, DeepSpeed, FSDP)"),
    "neftune_noise_alpha": ((None,), "not for RL fine-tuning"),
    "optim_args": (_off, "the optimizer takes learning_rate, weight_decay, adam_beta1 and adam_beta2"),
    "optim_target_modules": ((None,), "the optimizer trains every trainable parameter (no GaLore/APOLLO)"),
    "adam_epsilon": ((1e-8,), "the optimizer uses torch's default epsilon (1e-8, as TRL)"),
    "auto_find_batch_size": ((False,), "set per_device_train_batch_size"),
    "shuffle_dataset": ((True,), "the prompt stream is a seeded shuffle of the dataset"),
    "data_seed": ((None,), "the prompt order is seeded by seed"),
    "full_determinism": ((False,), "torch's deterministic algorithms are not switched on; runs are seeded by seed"),
    "ignore_data_skip": ((False,), "a resumed run continues the prompt stream exactly where it stopped"),
    "vllm_structured_outputs_regex": ((None,), "sampling is not constrained by a regex"),
    "vllm_max_model_length": ((None,), "vLLM's context is the model's own"),
    # TRL's ScriptArguments and ModelConfig (`trl grpo`'s command line)
    "dataset_streaming": ((False,), "the dataset is loaded whole (its rows are shuffled into the prompt stream)"),
    "lora_target_parameters": ((None,), "LoRA adapts lora_target_modules"),
    "lora_task_type": (("CAUSAL_LM",), "the policy is a causal language model"),
    "use_rslora": ((False,), "LoRA scales by lora_alpha / lora_r"),
    "use_dora": ((False,), "plain LoRA adapters"),
    "load_in_8bit": ((False,), "quantised bases are 4-bit NF4 (load_in_4bit)"),
    "bnb_4bit_quant_type": (("nf4",), "QLoRA's base weights are NF4"),
    "bnb_4bit_quant_storage": ((None,), "bitsandbytes' default storage"),
}

# Keys rlreason cannot honour: an error, because silently training differently would be worse.
UNSUPPORTED: dict[str, str] = {
    # open-r1's reward options: in rlreason each reward is configured in its own reward_funcs entry
    **dict.fromkeys(("cosine_min_value_wrong", "cosine_max_value_wrong", "cosine_min_value_correct",
                     "cosine_max_value_correct", "cosine_max_len"),
                    "configure the reward in its entry: {name: cosine_length, kwargs: {...}} (docs/rewards.md)"),
    **dict.fromkeys(("repetition_n_grams", "repetition_max_penalty"),
                    "configure the reward in its entry: {name: repetition_penalty, kwargs: {ngram_size: ..., "
                    "max_penalty: ...}}"),
    **dict.fromkeys(("max_completion_len", "soft_punish_cache"),
                    "configure the reward in its entry: {name: soft_overlong, kwargs: {max_length: ..., cache: ...}}"),
    # open-r1's code-execution options (E2B / Morph / Piston providers): rlreason runs programs in its
    # own local sandbox, configured in the code_tests entry
    **dict.fromkeys(("code_provider", "parallel_code_exec_per_proc", "e2b_router_url", "morph_router_url",
                     "enforce_same_language"),
                    "programs run in rlreason's local sandbox (bubblewrap): configure the reward in its entry: "
                    "{name: code_tests, kwargs: {mode: binary, max_workers: ...}} (docs/code.md)"),
    "code_language": "code_tests runs Python; rows whose verification_info names another language score None "
                     "(docs/code.md)",
    **dict.fromkeys(("code_eval_test_batch_size", "code_eval_scoring_mode", "ioi_provider"),
                    "open-r1's IOI and Codeforces rewards (ioi_code, cf_code) are not built in; code_tests runs "
                    "stdin/stdout and assert tests (docs/code.md)"),
    "dataset_configs": "name one configuration with dataset_config",
    "dataset_mixture": "give one dataset in dataset_name",
}

# Keys with TRL's name and default whose meaning still differs in rlreason, and how
# (docs/migrating_from_trl.md): what a TRL user must know although the config loads unchanged.
MEANING_DIFFERS: dict[str, str] = {
    "max_steps": "counts the optimizer steps of one pass over each rollout batch (steps_per_generation / "
                 "gradient_accumulation_steps per batch, 1 by default), as TRL does when num_iterations is 1; with "
                 "num_iterations > 1 TRL counts every pass's optimizer steps, rlreason the first pass's",
    "num_generations_eval": "None: one greedy answer per held-out problem (the accuracy rlreason's eval reports); "
                            "in TRL None means num_generations sampled answers. A number: that many sampled answers, "
                            "accuracy their mean (pass@1), as in TRL's sampling",
    "vllm_importance_sampling_correction": "with top_p < 1, top_k or min_p, pi_old of the weight is the policy's "
                                           "truncated distribution, the one the sampler drew from (TRL: the full one, "
                                           "so the weight also carries the kept mass)",
}

# rlreason defaults that differ from TRL's GRPOConfig, and why (docs/migrating_from_trl.md).
DEFAULTS_DIFFER: dict[str, tuple[Any, Any, str]] = {
    # TRL's GRPOConfig resolves these two in __post_init__ (its instance shows the resolved values)
    "steps_per_generation": (1, None, "None = gradient_accumulation_steps, or from generation_batch_size: what "
                             "TRL resolves it to"),
    "generation_batch_size": (8, None, "None = per_device_train_batch_size * num_processes * steps_per_generation, "
                              "what TRL resolves it to"),
    # `trl grpo`'s script and model arguments
    "model_name_or_path": (None, "tiny", "the embedded model, so that a run needs no download"),
    "dataset_name": (None, "arith", "the embedded arithmetic task"),
    "reward_funcs": (None, ["accuracy"], "the embedded task's verifier"),
    "lora_target_modules": (None, "all-linear", "every linear layer, as QLoRA found best; null = peft's choice for "
                            "the architecture, as TRL"),
}

# Value forms TRL accepts that rlreason spells otherwise: key -> {TRL value: rlreason value}.
VALUE_FORMS: dict[str, dict[Any, Any]] = {
    "scale_rewards": {True: "group", False: "none"},
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
    translated: list[str] = []
    for key, value in values.items():
        if key in known:
            out[key] = value
            continue
        if key in RENAMED:
            new = RENAMED[key]
            if value is None:  # a deprecated alias at its default (a full TRL dump has them): unset, not null
                continue
            if new in values:  # a full TRL dump holds both names of an aliased key, with one value
                if values[new] != value:
                    errors.append(f"'{key}' is TRL's name for '{new}', and both are given with different values; "
                                  f"keep '{new}'")
                continue
            out[new] = value
            notes.append(f"'{key}' is read as '{new}'")
        elif key in IGNORED:
            ignored.setdefault(IGNORED[key], []).append(key)
        elif key in ONLY_AT_DEFAULT:
            if not accepted(key, value):
                accepts, why = ONLY_AT_DEFAULT[key]
                errors.append(f"'{key}': {value!r} is not supported, only {shown(accepts)}: {why}")
        elif key in TRANSLATED:
            translated.append(key)
        elif key in UNSUPPORTED:
            errors.append(f"'{key}' is not supported: {UNSUPPORTED[key]}")
        else:
            errors.append(f"unknown config key '{key}'{suggest(key, known | set(RENAMED))}")
    for key in translated:
        problem = _translate(key, values[key], values, out)
        if problem:
            errors.append(problem)
    for why, keys in ignored.items():
        notes.append(f"ignored {', '.join(repr(k) for k in keys)}: {why}")
    for key, forms in VALUE_FORMS.items():
        if key in out and _hashable(out[key]) and out[key] in forms:
            out[key] = forms[out[key]]
    return out, notes, errors


def accepted(key: str, value: Any) -> bool:
    """Whether ONLY_AT_DEFAULT's ``key`` trains as rlreason does at ``value``."""
    accepts, _ = ONLY_AT_DEFAULT[key]
    if callable(accepts):
        return accepts(value)
    for a in accepts:
        if isinstance(a, bool) or a is None:
            if value is a:  # True is not 1 here
                return True
        elif isinstance(a, int | float):
            if _number(value) == a:  # 1e-08 and YAML's string "1e-8" are one value
                return True
        elif value == a:
            return True
    return False


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def shown(accepts: tuple[Any, ...] | Callable[[Any], bool]) -> str:
    """The accepted values as the docs and errors show them."""
    if callable(accepts):
        return (accepts.__doc__ or "").strip().split(":")[0]
    return " or ".join(repr(a) for a in accepts)


def _translate(key: str, value: Any, values: dict[str, Any], out: dict[str, Any]) -> str | None:
    """TRANSLATED's ``key`` into rlreason's settings in ``out`` (after every other key); an error, or None."""
    if key == "reward_model_name_or_path":
        if value is not None:  # trl grpo: the reward model first, then the reward functions named
            funcs = out.get("reward_funcs")
            out["reward_funcs"] = [value, *([] if funcs is None else funcs if isinstance(funcs, list) else [funcs])]
        return None
    # eval_strategy / evaluation_strategy
    if value == "steps":
        if values.get("eval_steps") is None:  # TRL: eval_steps defaults to logging_steps
            out["eval_steps"] = values.get("logging_steps", 10)  # 10: TRL's default logging_steps
        return None
    if value in (None, "no"):
        return None  # eval_steps alone decides (None: only before and after training)
    return (f"'{key}': {value!r} is not supported, only 'no' or 'steps': held-out evaluation runs before and after "
            f"training and every eval_steps")


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
    lines += [f"| `{k}` | read: {v} |" for k, v in sorted(TRANSLATED.items())]
    lines += [f"| `{k}` | accepted at {shown(a)}, an error otherwise: {why} |"
              for k, (a, why) in sorted(ONLY_AT_DEFAULT.items())]
    lines += [f"| `{k}` | unsupported (an error): {v} |" for k, v in sorted(UNSUPPORTED.items())]
    lines += ["", "| key | TRL default | rlreason default | why |", "|---|---|---|---|"]
    lines += [f"| `{k}` | `{t!r}` | `{r!r}` | {why} |" for k, (t, r, why) in sorted(DEFAULTS_DIFFER.items())]
    lines += ["", "| key (TRL's default) | what differs |", "|---|---|"]
    lines += [f"| `{k}` | {why} |" for k, why in sorted(MEANING_DIFFERS.items())]
    return "\n".join(lines) + "\n"

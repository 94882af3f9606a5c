"""The run configuration: one dataclass, YAML file plus command-line overrides.

Field names follow TRL's ``GRPOConfig`` where the concept is the same (num_generations,
max_completion_length, beta, epsilon, epsilon_high, loss_type, scale_rewards,
num_iterations, temperature, top_p, reward_funcs, reward_weights, ...), so a TRL user
can read a config without a glossary. TRL's and open-r1's other keys are renamed, ignored
with a warning, or refused with the reason (rlreason/config/trl.py); every unknown or
unsupported key is named in one error.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rlreason.algorithms import (
    PRESETS,
    AdvantageEstimator,
    AdvantageScale,
    ISMode,
    KLKind,
    LossType,
    RatioLevel,
    clip_range,
    ratio_level,
)
from rlreason.algorithms.rewards_aggregation import MultiObjectiveAggregation
from rlreason.config.trl import RENAMED, migrate
from rlreason.data.tasks import EMBEDDED_TASKS
from rlreason.rollout.base import WeightBackend
from rlreason.rollout.tools.results import Isolation as ToolIsolation

# Keys with a fixed set of values are annotated with a Literal type, defined once (the algorithm's
# choices in rlreason.algorithms, the weight-transfer backends in rlreason.rollout.base, the rest
# here); ``validate`` and ``from_dict`` check every such key against it (``_choices``).
VLLMMode = Literal["colocate", "server"]
RolloutEngineName = Literal["transformers", "vllm", "vllm_server"]  # rlreason.rollout.factory
AsyncGenerator = Literal["process", "thread"]  # rlreason.rollout.hf_process
# rlreason.build.optim; adamw_torch_fused (TRL's default, a CUDA kernel in transformers) is adamw_torch here, which
# is fused wherever torch can fuse it, CPU included
Optimizer = Literal["adamw_torch", "adamw_torch_fused", "adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit"]
DistillMode = Literal["on_policy", "offline"]
DistillSelection = Literal["best_of_k", "all_correct", "shortest_correct"]  # distill.teacher.select_completions


logger = logging.getLogger("rlreason.config")
ASYNC_IS_CAP = 2.0  # importance_sampling_cap when async_rollouts leaves it unset: weights above 2 are cut to 2
MAX_SEED = 2**32 - 1  # numpy's seed range (accelerate's set_seed seeds numpy with the config's seed)


# generation_kwargs keys (GenerationConfig's / SamplingParams' names) that are rlreason keys: they override them
GENERATION_KWARGS_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
                          "repetition_penalty": "repetition_penalty", "max_new_tokens": "max_completion_length",
                          "max_tokens": "max_completion_length"}


def _world_size() -> int:
    """The number of training processes as accelerate launch / torchrun announce it (1 without)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class ConfigError(ValueError):
    """A bad config key or value; the message names the key."""


# The keys a resumed run may change when named in allow_config_changes (rlreason/run/resume.py):
# applied to the restored optimizer / scheduler (max_grad_norm and warmup_steps are read at every
# step / by the schedule, which is rebuilt from the config).
OPTIMIZER_KEYS = ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "max_grad_norm", "warmup_steps")


def accepts_trl_keys(cls: type) -> type:
    """Class decorator (above ``@dataclass``): ``cls(...)`` takes what a YAML config takes.

    ``GRPOConfig(output_dir=..., bf16=False, use_cpu=True, scale_rewards=False, report_to="none")``
    is a TRL user's line; the keyword arguments go through ``clean_values`` (the TRL key table's
    ``migrate``, then each value checked against its annotation), exactly as a YAML file's keys do
    in ``from_dict``: the same warnings, and one ConfigError naming every bad key. Why a wrapper of
    the generated ``__init__`` rather than a TRL-facing subclass or a ``__new__``: there is one
    class, so ``dataclasses.replace``, ``fields``, ``to_dict``, ``isinstance`` and the rest of the
    code see what they always saw, and ``__new__`` cannot change the arguments ``__init__`` gets.
    Positional arguments fill the fields in order (``output_dir`` first, as in TRL)."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if args:
            names = [f.name for f in dataclasses.fields(cls) if f.init]
            if len(args) > len(names):
                raise TypeError(f"{cls.__name__}() takes at most {len(names)} positional arguments")
            twice = sorted(set(names[:len(args)]) & set(kwargs))
            if twice:
                raise TypeError(f"{cls.__name__}() got several values for {twice[0]!r}")
            kwargs = {**dict(zip(names, args, strict=False)), **kwargs}
        init(self, **clean_values(kwargs, cls))

    cls.__init__ = __init__
    return cls


@accepts_trl_keys
@dataclass
class GRPOConfig:
    # --- run ---
    # Defaults are TRL 1.16's GRPOConfig's for every key it has (tests/test_trl_config_dump.py); the
    # embedded demo's own choices are in recipes/configs/tiny_cpu.yaml.
    output_dir: str = "trainer_output"
    seed: int = 42
    max_steps: int = -1  # rollout batches; each gives num_iterations optimizer steps; -1 = num_train_epochs
    num_train_epochs: float = 3.0  # passes over the dataset's prompts when max_steps is -1 (TRL's rule)
    num_threads: int | None = None  # torch intra-op threads, at most the usable cores (None: torch default)

    # --- model ---
    model_name_or_path: str = "tiny"  # "tiny" = the embedded model, built on first use
    trust_remote_code: bool = False
    gradient_checkpointing: bool = True  # recompute each layer's activations in the backward (less memory)
    # tokens per chunk of the LM head + log-softmax in the log-prob passes, so the [batch, seq, vocab]
    # logits never exist at once (rlreason/loop/logprobs.py); 0 or None = the model's full logits
    logprob_chunk_size: int | None = 512
    # Log-prob passes over rows [prompt | its completions] with a block mask (rlreason.data.batching.pack_groups):
    # each prompt is computed once per group and no completion is padded; same log-probs, less compute.
    # Used when micro-batches hold whole groups and the attention takes a custom mask (sdpa, eager).
    pack_prompt_groups: bool = True
    # Longest packed row; a group that does not fit is split over rows (each with the prompt). Masked
    # attention costs the square of the row, so longer rows trade less prompt recompute for more
    # attention; None = the model's hidden size (the best of 64-4096 on the tiny model: docs/benchmarks.md).
    pack_max_row_tokens: int | None = None
    # --- LoRA / QLoRA (peft); the reference model for the KL term is the adapter-disabled base ---
    use_peft: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05  # SFT only: GRPO switches dropout off (it is noise in the ratio and KL)
    # None: peft's choice for the architecture (TRL's ModelConfig default; q_proj, v_proj for Qwen2)
    lora_target_modules: str | list[str] | None = "all-linear"
    lora_modules_to_save: list[str] | None = None  # fully trained (e.g. ["lm_head"])
    load_in_4bit: bool = False  # QLoRA: NF4 base weights (bitsandbytes, CUDA)

    # --- data ---
    # "arith" / "mul" = an embedded task (rlreason.data.tasks: addition chains / 3-digit products with a
    # calculator tool); else a hub id or a local json/jsonl/parquet/csv
    dataset_name: str = "arith"
    dataset_split: str = "train"
    dataset_config: str | None = None  # the hub dataset's configuration (subset), e.g. "main" for openai/gsm8k
    dataset_filter: dict[str, list[Any]] = field(default_factory=dict)  # keep rows with column value in list
    prompt_column: str = "prompt"
    column_map: dict[str, str] = field(default_factory=dict)  # source column -> name the trainer expects
    # As TRL: None = by the prompt's form: a list of messages is conversational (the chat template; rewards
    # get message lists), a string is standard (plain text; rewards get strings) unless system_prompt is set,
    # which makes it conversational (system + user message, as open-r1). True: string prompts become a user
    # message and go through the chat template too (the embedded arith task does, when None); False: no chat
    # template (a conversational dataset is refused). docs/migrating_from_trl.md, "Prompts".
    use_chat_template: bool | None = None
    prompt_template: str | None = None  # e.g. "Question: {prompt}\nAnswer:"; applied to string prompts first
    system_prompt: str | None = None  # a system message first (makes a string prompt conversational, see above)
    chat_template: str | None = None  # a Jinja chat template that replaces the tokenizer's own (as in TRL)
    # TRL's: extra variables for every rendering of the chat template (prompts, tool rollouts), e.g.
    # {enable_thinking: false} for Qwen3's; a template that does not read one ignores it
    chat_template_kwargs: dict[str, Any] | None = None
    arith_difficulty: dict[str, Any] = field(default_factory=dict)  # rlreason.data.tasks.arith.Difficulty fields
    arith_train_size: int = 20000
    mul_difficulty: dict[str, Any] = field(default_factory=dict)  # rlreason.data.tasks.mul.MulDifficulty fields
    mul_train_size: int = 20000

    # --- rewards ---
    # names, "pkg.module:fn", "path/file.py:fn", or {name, weight, kwargs} mappings (docs/rewards.md)
    reward_funcs: list[str | dict[str, Any]] = field(default_factory=lambda: ["accuracy"])
    reward_weights: list[float] | None = None
    reward_num_workers: int = 2  # worker processes scoring rewards (timeouts, memory cap); 0 = in-process
    # per reward call: the whole batch, or a chunk for rewards that opt in (docs/rewards.md)
    reward_timeout_s: float = 10.0
    # A reward that worked before and then fails on every completion this many steps in a row stops
    # the run with an error and a checkpoint, as do this many steps with no reward value at all; one
    # that never worked stops it after its first step (rewards/health.py). None is not a failure.
    max_failed_reward_steps: int = 3
    # Rewards get prompts/completions as strings even for a conversational prompt (the default then is
    # TRL's: message lists, [{"role": "assistant", "content": ...}]); standard prompts give strings anyway.
    rewards_plain_text: bool = False
    reward_memory_mb: int | None = 1024  # address space a reward worker may add; None = no cap
    # The built-in accuracy reward's golds are all read at start-up, by its own parser: when more
    # than this fraction of the rows' golds are blank, unparseable or neither text nor a number, the
    # run is refused (naming the rows); fewer are named in a warning (they score None: no signal).
    max_bad_gold_fraction: float = 0.01

    # --- tools and environments (TRL 1.16's tools / environment_factory / rollout_func; docs/tools.md) ---
    # tool rounds per rollout (TRL's); None = until the model calls no tool or max_completion_length is reached
    max_tool_calling_iterations: int | None = None
    # functions the model may call, "pkg.module:fn" or "path/file.py:fn" (type hints and a Google-style docstring)
    tools: list[str] = field(default_factory=list)
    # "pkg.module:Class" / "path/file.py:Class" (reset(**row), public methods = tools, optional get_reward),
    # or {name: spec}, picked per row by its 'environment' column
    environment_factory: str | dict[str, str] | None = None
    rollout_func: str | None = None  # "pkg.module:fn": TRL's rollout_func(prompts, trainer), full control
    # every tool call runs in one of tool_num_workers worker processes (an episode's environment in one
    # of them throughout), killed after tool_timeout_s, its address space capped at tool_memory_mb above
    # its start (None = no cap), its output cut at tool_max_output_chars; tool_isolation: none runs them in
    # the trainer's process instead (debugging: no kill, no cap)
    tool_timeout_s: float = 10.0
    tool_memory_mb: int | None = 1024
    tool_max_output_chars: int = 4096
    tool_num_workers: int = 2
    tool_isolation: ToolIsolation = "process"

    # --- generation ---
    num_generations: int = 8
    # rlreason's own limit (TRL 1.16 has none): prompts longer than this many tokens are dropped, with a
    # count in the log; None = no limit, nothing dropped
    max_prompt_length: int | None = None
    max_completion_length: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    generation_batch_prompts: int = 64  # prompts per generate() call (memory bound)
    # Seed each prompt's sampling from (seed, its position in the prompt stream): rollouts then
    # do not depend on batching or on the number of processes (the transformers engine then
    # generates one prompt group per call, which is slower on a GPU).
    generation_seed_per_prompt: bool = False
    # --- TRL 1.16's generation, generation-batch, reference-sync and reward-aggregation keys (TRL's defaults) ---
    min_p: float | None = None  # keep tokens with p >= min_p * p(most likely token); None/0 = off
    repetition_penalty: float = 1.0  # > 1 lowers the logits of tokens already in the prompt or completion
    # extra GenerationConfig (transformers) / SamplingParams (vLLM) settings; they override the keys above
    generation_kwargs: dict[str, Any] | None = None
    # held-out eval: samples per prompt (at temperature, pass@1 = their mean accuracy); None = greedy, one each
    num_generations_eval: int | None = None
    # micro-batches one generation feeds (None = gradient_accumulation_steps: one generation per optimizer step)
    steps_per_generation: int | None = None
    generation_batch_size: int | None = None  # completions per generation, all processes; excludes steps_per_generation
    sync_ref_model: bool = False  # TR-DPO: every ref_model_sync_steps, ref = alpha * policy + (1 - alpha) * ref
    ref_model_mixup_alpha: float = 0.6
    ref_model_sync_steps: int = 512
    multi_objective_aggregation: MultiObjectiveAggregation = "sum_then_normalize"  # or normalize_then_sum (GDPO)

    # --- rollout engine ---
    # transformers: the policy generates; vllm: vLLM in this process; vllm_server: a running
    # rlreason-vllm-serve. Unset: from TRL's use_vllm / vllm_mode, which are its aliases.
    rollout_engine: RolloutEngineName | None = None
    use_vllm: bool = False  # generate with vLLM (needs vllm installed; docs/install.md) instead of transformers
    vllm_mode: VLLMMode = "colocate"  # colocate: vLLM in the trainer's process; server: a separate rlreason-vllm-serve
    vllm_gpu_memory_utilization: float = 0.3
    vllm_tensor_parallel_size: int = 1
    vllm_enable_sleep_mode: bool = False  # free vLLM's KV cache while training (GPU)
    vllm_server_base_url: str | None = None  # server mode; None = http://{vllm_server_host}:{vllm_server_port}
    vllm_server_host: str = "0.0.0.0"  # the client connects to it (as TRL's VLLMClient: 0.0.0.0 reaches this host)
    vllm_server_port: int = 8000
    vllm_server_timeout: float = 240.0  # seconds to wait for the server to come up
    vllm_group_port: int = 51216  # port the trainer opens for the weight-transfer group (server mode)
    # server mode: nccl | gloo | auto (nccl with a GPU); must match the server
    vllm_weight_transfer: Literal["auto", WeightBackend] = "auto"
    # server mode: a generation request that fails transiently (HTTP 5xx, a refused, reset or dropped
    # connection, a timeout) is sent again up to vllm_server_max_retries times, after
    # vllm_server_retry_delay seconds, then twice as long each time, each retry logged; then the run
    # fails with rlreason.rollout.errors.RolloutServerError (the URL, HTTP status and server message).
    # A weight update is never repeated: stopped midway, it cannot be finished request by request.
    vllm_server_max_retries: int = 3
    vllm_server_retry_delay: float = 1.0
    # push the policy's weights to a separate engine every N steps; on the steps in between its own
    # log-probs are pi_old (the behaviour policy) of the ratio
    weight_sync_steps: int = 1
    # Overlapped rollouts (rlreason/loop/async_rollout.py, docs/scaling.md): step t+1's batch is generated
    # and scored on a background thread while step t's update runs, by weights at most max_staleness
    # steps older than those it trains. The ratio's pi_old is then pi_prox, the trainer's weights at the
    # start of the update (the clip keeps the update near them), and the truncated importance weight
    # min(pi_prox / pi_sampler, importance_sampling_cap), fixed per token, corrects each token's
    # distribution for the lag but not its prefix's: the gradient bias grows with max_staleness
    # (docs/scaling.md gives it). The cap defaults to 2.0 in this mode. Turns on
    # generation_seed_per_prompt (a batch's samples must not depend on the threads' timing).
    async_rollouts: bool = False
    max_staleness: int = 1
    # where the transformers engine generates with async_rollouts on CPU: "thread", the trainer's
    # rollout thread, or "process", a child process on shared-memory weights (rlreason/rollout/
    # hf_process.py: the decode loop then shares no GIL with the update, which helps when generation is
    # the slower side; the script needs an ``if __name__ == "__main__":`` guard, as for any spawned
    # process). On GPUs, and with a vLLM server, the rollout thread drives the engine either way.
    async_generator: AsyncGenerator = "thread"

    # --- optimisation ---
    per_device_train_batch_size: int = 8  # completions per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # warmup as a fraction of the optimizer steps, when warmup_steps is 0 (TRL's rule)
    lr_scheduler_kwargs: dict[str, Any] | None = None  # e.g. {min_lr_rate: 0.1} (cosine_with_min_lr)
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 1.0
    optim: Optimizer = "adamw_torch_fused"  # adamw_torch(_fused) | adamw_8bit | paged_adamw_8bit (bitsandbytes)

    # --- GRPO family (see rlreason/algorithms/ and docs/algorithms.md) ---
    # TRL 1.16's meaning: loss_type picks the aggregation (and the surrogate of cispo / sapo / vespo), nothing
    # else; grpo | dr_grpo | dapo | bnpo | cispo | sapo | luspo | vespo, and rlreason's gspo (grpo at the
    # sequence level, its paper's 3e-4 / 4e-4 clip while epsilon / epsilon_high are at TRL's defaults)
    loss_type: LossType = "dapo"
    advantage_estimator: AdvantageEstimator = "grpo"  # grpo (group baseline) | rloo | reinforce_pp
    # group | batch | none (TRL's default group; null, as older configs wrote it, = group). The grpo estimator's
    # only: another value with rloo / reinforce_pp is refused
    scale_rewards: AdvantageScale | None = "group"
    importance_sampling_level: RatioLevel | None = "token"  # token | sequence (gspo: always sequence); null = token
    beta: float = 0.0  # KL coefficient; 0 loads no reference model
    kl_estimator: KLKind = "k3"  # k1 | k2 | k3
    epsilon: float = 0.2  # clip range 1 - epsilon ...
    epsilon_high: float | None = None  # ... 1 + epsilon_high (None = epsilon; cispo: the weight's cap itself)
    dual_clip: float | None = None  # c > 1 bounds negative-advantage losses at c * |A| (Ye et al. 2020)
    # rlreason's truncated IS, for any engine: token_truncate at this cap (overrides the vllm_importance_sampling_*
    # keys, and weights the KL term too: docs/algorithms.md); None = TRL's correction below
    importance_sampling_cap: float | None = None
    entropy_coef: float = 0.0  # > 0 adds an entropy bonus (TRL's: the mean token entropy, for every loss_type)
    # --- TRL 1.16's loss options (docs/algorithms.md: each with its paper's equation) ---
    delta: float | None = None  # two-sided clipping (INTELLECT-2): the unclipped ratio capped at delta; None = off
    sapo_temperature_neg: float = 1.05  # SAPO's gate temperature for A <= 0
    sapo_temperature_pos: float = 1.0  # ... for A > 0
    vespo_k_pos: float = 2.0  # VESPO's phi(w) = e^lambda w^k e^(-lambda w): k for A >= 0
    vespo_lambda_pos: float = 3.0  # ... lambda for A >= 0
    vespo_k_neg: float = 3.0  # ... k for A < 0
    vespo_lambda_neg: float = 2.0  # ... lambda for A < 0
    top_entropy_quantile: float = 1.0  # train only this top fraction of tokens by entropy (1 = all; paper: 0.2)
    off_policy_mask_threshold: float | None = None  # DeepSeek-V3.2's off-policy sequence mask (eq. 9); None = off
    use_bias_correction_kl: bool = True  # KL term times the ratio pi / pi_old (DeepSeek-V3.2), as TRL's default
    use_adaptive_entropy: bool = False  # Skywork-OR1's controller for entropy_coef (its initial value)
    entropy_coef_min: float = 0.0  # the controller's lower bound ...
    entropy_coef_max: float = 1.0  # ... upper bound ...
    entropy_coef_delta: float = 0.005  # ... step per optimizer step ...
    entropy_target: float = 0.2  # ... and target mean token entropy (nats): the bonus applies at or below it
    # The sampler correction w = pi_old / pi_sampler (TRL's names; it applies when the engine is a separate
    # sampler: vllm, vllm_server, or async_rollouts; the transformers engine's sampler is the policy itself)
    vllm_importance_sampling_correction: bool = True
    vllm_importance_sampling_mode: ISMode = "sequence_mask"  # token_truncate | token_mask | sequence_truncate | ...
    vllm_importance_sampling_clip_max: float | None = 3.0
    vllm_importance_sampling_clip_min: float | None = None
    mask_truncated_completions: bool = False  # exclude completions cut at max_completion_length from the loss
    dynamic_sampling: bool = False  # DAPO: drop zero-variance groups, sample more prompts to refill
    max_resample_rounds: int = 3  # extra generation rounds per step for dynamic sampling
    num_iterations: int = 1  # updates per rollout batch
    # Leave groups whose advantages are all 0 out of the forward/backward passes: the same update
    # for less compute (applies when nothing else in the loss reaches them: beta 0, no entropy bonus,
    # no teacher, a dense policy, a whole-batch-normalised loss_type). Token metrics (entropy, clip
    # fraction) then cover the trained groups; skipped_groups_frac says how many were left out.
    skip_zero_advantage_groups: bool = True
    # --- mixture-of-experts policies (rlreason/moe.py, docs/moe.md); ignored for dense models ---
    # weight of the Switch load-balancing loss in the objective; None = the model config's
    # router_aux_loss_coef if its output_router_logits is true (transformers' convention), else 0
    router_aux_loss_coef: float | None = None
    routing_replay: bool = False  # training passes reuse the experts chosen in the old-policy pass
    log_expert_load: bool = True  # log every expert's load per layer (moe/layer<i>/load/<e>), not only summaries

    # --- on-policy distillation (rlreason/algorithms/: teacher_advantages; docs/distillation.md) ---
    # A teacher that scores every sampled token: the per-token reverse KL to it is the advantage
    # (times teacher_kl_coef), plus teacher_reward_weight x the verifier's group advantage. The
    # teacher must share the student's tokenizer. None = plain GRPO.
    teacher_model_name_or_path: str | None = None
    teacher_kl_coef: float = 1.0
    teacher_reward_weight: float = 0.0  # 0 = distillation alone (rewards are still computed and logged)

    # --- evaluation, logging, checkpoints ---
    # held-out greedy eval every N steps; None or 0 = only before and after (TRL's default eval_strategy "no";
    # eval_strategy: steps without eval_steps = every logging_steps, as TRL: rlreason.config.trl.migrate)
    eval_steps: int | None = None
    eval_size: int = 200  # problems in the periodic eval
    final_eval_size: int = 1000  # problems in the before/after eval
    # A dataset of your own: this many of its rows held out of training (chosen by a hash of the
    # prompt, so the same rows whatever their order) for the held-out eval; 0 = none. The embedded
    # task brings its own held-out problems.
    eval_holdout_size: int = 0
    # Or a held-out set of its own (TRL's eval_dataset): a data file, save_to_disk folder or hub dataset,
    # loaded as dataset_name is (eval_dataset_split / eval_dataset_config as dataset_split / dataset_config;
    # the same prompt_column, column_map, template and chat template); its rows are the held-out problems.
    eval_dataset: str | None = None
    eval_dataset_split: str = "train"
    eval_dataset_config: str | None = None
    # What scores the held-out eval (reward_funcs' forms); empty: the built-in accuracy (and format)
    # when the training rewards use it or the task is the embedded one, else the first training reward.
    # A completion is correct when the first of them gives it >= 1.
    eval_reward_funcs: list[str | dict[str, Any]] = field(default_factory=list)
    eval_max_tokens: int | None = None  # None = max_completion_length
    eval_suites: list[str] = field(default_factory=list)  # benchmark suites (rlreason.eval.suites) at eval_steps
    eval_suites_limit: int | None = None  # problems per suite (None = all)
    logging_steps: int = 10
    log_completions_steps: int = 10  # write sampled completions every N steps
    save_steps: int = 500
    # newest checkpoints kept (plus the best one if metric_for_best_model is set); None or 0 = all
    save_total_limit: int | None = None
    metric_for_best_model: str | None = None  # e.g. "eval/accuracy": also keep the checkpoint that scored best
    greater_is_better: bool | None = None  # None: transformers' rule, True unless metric_for_best_model ends in "loss"
    resume_from_checkpoint: str | None = None  # "auto" = newest complete checkpoint in output_dir, or a path
    overwrite_output_dir: bool = False  # start over in an output_dir that holds another run's checkpoints
    # keys a resumed run may change (optimizer settings only: rlreason/run/resume.py), e.g. [learning_rate]
    allow_config_changes: list[str] = field(default_factory=list)
    max_nonfinite_steps: int = 3  # stop (with a checkpoint) after this many non-finite updates in a row
    report_to: list[str] = field(default_factory=list)  # accelerate trackers: tensorboard, wandb, ...
    progress: bool = True

    def __post_init__(self) -> None:
        if self.scale_rewards is None:  # older configs: null = the preset's, group for every TRL loss_type
            self.scale_rewards = "group"
        if self.importance_sampling_level is None:
            self.importance_sampling_level = "token"
        self._resolve_engine()
        if self.greater_is_better is None and self.metric_for_best_model:  # transformers' TrainingArguments rule
            self.greater_is_better = not self.metric_for_best_model.endswith("loss")
        self._resolve_generation_kwargs()
        if self.async_rollouts:
            self._resolve_async()
        self.validate()

    def _resolve_engine(self) -> None:
        """``rollout_engine`` and TRL's ``use_vllm`` / ``vllm_mode`` say one thing: unset, the engine is
        read from the aliases; set, it sets them (so code and a TRL reader of config.yaml agree)."""
        from_aliases = ("vllm_server" if self.vllm_mode == "server" else "vllm") if self.use_vllm else "transformers"
        if self.rollout_engine is None:
            self.rollout_engine = from_aliases
            return
        if self.use_vllm and self.rollout_engine == "transformers":
            raise ConfigError("config key 'rollout_engine': transformers, but use_vllm: true asks for vLLM; "
                              "set one of them (use_vllm and vllm_mode are rollout_engine's TRL aliases)")
        self.use_vllm = self.rollout_engine != "transformers"
        if self.use_vllm:
            self.vllm_mode = "server" if self.rollout_engine == "vllm_server" else "colocate"

    def _resolve_async(self) -> None:
        """What overlapped rollouts need, set where left unset (with a log line each)."""
        if not self.generation_seed_per_prompt:
            logger.warning("async_rollouts: setting generation_seed_per_prompt: true (each prompt's samples then "
                           "depend only on the weights and its seed, not on when the rollout thread runs)")
            self.generation_seed_per_prompt = True
        if self.importance_sampling_cap is None:
            logger.warning("async_rollouts: setting importance_sampling_cap: %s (truncated importance sampling "
                           "corrects the one-step-stale sampler)", ASYNC_IS_CAP)
            self.importance_sampling_cap = ASYNC_IS_CAP

    def _resolve_generation_kwargs(self) -> None:
        """TRL's ``generation_kwargs`` override the named sampling keys: those are moved into the keys
        (with a log line), so the trainer's log-probs use the temperature the engine samples at and
        config.yaml says what ran; what is left goes to vLLM's SamplingParams (``sampling_extra``)."""
        if not self.generation_kwargs:
            return
        kwargs = dict(self.generation_kwargs)
        for key, field_name in GENERATION_KWARGS_KEYS.items():
            if key in kwargs:
                value = kwargs.pop(key)
                logger.warning("config: generation_kwargs[%r] = %r overrides %s (as in TRL)", key, value, field_name)
                setattr(self, field_name, _check_type(f"generation_kwargs.{key}", value,
                                                      _field_types(type(self))[field_name]))
        self.generation_kwargs = kwargs or None

    def sampling_extra(self) -> tuple[tuple[str, Any], ...]:
        """The generation_kwargs left for vLLM's SamplingParams (rlreason.rollout.base.SamplingConfig.extra)."""
        return tuple(sorted((self.generation_kwargs or {}).items()))

    def _validate_trl_generation(self, need: Callable[[bool, str, str], None]) -> None:
        """TRL 1.16's min_p, repetition_penalty, generation_kwargs, num_generations_eval,
        steps_per_generation / generation_batch_size, sync_ref_model and multi_objective_aggregation."""
        need(self.min_p is None or 0 <= self.min_p <= 1, "min_p", f"must be in [0, 1] or null, got {self.min_p}")
        need(math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty",
             f"must be a finite number > 0 (1 = off), got {self.repetition_penalty}")
        if self.generation_kwargs and self.rollout_engine == "transformers":
            key = sorted(self.generation_kwargs)[0]
            need(False, f"generation_kwargs.{key}",
                 f"the transformers engine's decode loop implements {', '.join(GENERATION_KWARGS_KEYS)} only; "
                 f"other generation settings need vLLM (use_vllm: true)")
        for key in ("n", "seed", "logprobs", "prompt_logprobs", "detokenize", "output_kind"):
            need(key not in (self.generation_kwargs or {}), f"generation_kwargs.{key}",
                 "is set by rlreason itself (num_generations, the sampling seeds, the sampler's log-probs)")
        self._validate_generation_batch(need)
        need(self.num_generations_eval is None or self.num_generations_eval >= 1, "num_generations_eval",
             f"must be >= 1 or null, got {self.num_generations_eval}")
        need(self.sync_ref_model is False or self.beta > 0, "sync_ref_model",
             "needs a reference model to synchronise: set beta > 0 (with beta 0 there is none, as in TRL)")
        need(not (self.sync_ref_model and self.use_peft), "sync_ref_model",
             "with use_peft the reference is the adapter-disabled base model, which has no weights of its own to "
             "mix (TRL refuses this too): turn off sync_ref_model or use_peft")
        need(0 <= self.ref_model_mixup_alpha <= 1, "ref_model_mixup_alpha",
             f"must be in [0, 1], got {self.ref_model_mixup_alpha}")
        need(self.ref_model_sync_steps >= 1, "ref_model_sync_steps", f"must be >= 1, got {self.ref_model_sync_steps}")
        need(self.multi_objective_aggregation == "sum_then_normalize" or self.advantage_estimator == "grpo",
             "multi_objective_aggregation", "normalize_then_sum (GDPO) normalises each reward within its group "
             f"itself: it takes advantage_estimator 'grpo', got {self.advantage_estimator!r}")

    def _validate_generation_batch(self, need: Callable[[bool, str, str], None]) -> None:
        """steps_per_generation / generation_batch_size: TRL's rules, plus rlreason's: a generation feeds
        whole optimizer steps, and the loop features that assume one generation per step are refused."""
        # TRL refuses both at construction, but its to_dict (a config dump) holds both, resolved: accepted when
        # they agree (tests/test_trl_config_dump.py)
        per_step = self.per_device_train_batch_size * _world_size()
        need(self.steps_per_generation is None or self.generation_batch_size is None
             or self.generation_batch_size == per_step * self.steps_per_generation, "generation_batch_size",
             "and steps_per_generation disagree (TRL's rule: generation_batch_size = "
             "per_device_train_batch_size * num_processes * steps_per_generation); set one of them")
        need(self.steps_per_generation is None or self.steps_per_generation >= 1, "steps_per_generation",
             f"must be >= 1 or null, got {self.steps_per_generation}")
        need(self.generation_batch_size is None or (self.generation_batch_size >= per_step
                                                    and self.generation_batch_size % per_step == 0),
             "generation_batch_size", f"must be a multiple of per_device_train_batch_size * num_processes = "
             f"{per_step}, got {self.generation_batch_size}")
        spg, gas = self.generation_steps, self.gradient_accumulation_steps
        need(spg % gas == 0, "steps_per_generation",
             f"= {spg} must be a multiple of gradient_accumulation_steps = {gas}: each generation feeds whole "
             f"optimizer steps in rlreason (TRL also lets an optimizer step span two generations)")
        if spg == gas:
            return
        k = spg // gas
        need(self.max_steps == -1 or self.max_steps % k == 0, "max_steps",
             f"counts optimizer steps (as in TRL) and one generation makes {k} (steps_per_generation {spg} / "
             f"gradient_accumulation_steps {gas}): use a multiple of {k}, got {self.max_steps}")
        for key in ("dynamic_sampling", "async_rollouts"):
            need(not getattr(self, key), key, f"is not supported with steps_per_generation ({spg}) > "
                 f"gradient_accumulation_steps ({gas}): it assumes one generation per optimizer step")

    @property
    def generation_steps(self) -> int:
        """TRL's ``steps_per_generation`` as resolved by its GRPOConfig: the micro-batches one generation
        feeds; from ``generation_batch_size`` (all processes: WORLD_SIZE, as accelerate launch sets it)
        when that is given; else ``gradient_accumulation_steps`` (one generation per optimizer step)."""
        if self.steps_per_generation is not None:
            return self.steps_per_generation
        if self.generation_batch_size is not None:
            return max(1, self.generation_batch_size // (self.per_device_train_batch_size * _world_size()))
        return self.gradient_accumulation_steps

    @property
    def optimizer_steps_per_generation(self) -> int:
        """Optimizer steps one generation (rollout batch) makes per pass over it: its
        ``generation_steps`` micro-batches in slices of ``gradient_accumulation_steps``."""
        return self.generation_steps // self.gradient_accumulation_steps

    @property
    def completions_per_step(self) -> int:
        """Completions generated per process per generation (TRL's generation batch over the
        processes). As in TRL the batch sizes are per device: the global batch of a generation is this
        times the number of processes, so keep it fixed across process counts by scaling
        per_device_train_batch_size."""
        return self.per_device_train_batch_size * self.generation_steps

    def validate(self) -> None:
        def need(ok: bool, key: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"config key '{key}': {msg}")

        need(self.num_generations >= 2, "num_generations",
             f"must be >= 2 for group advantages, got {self.num_generations}")
        need(self.completions_per_step % self.num_generations == 0, "per_device_train_batch_size",
             f"per_device_train_batch_size * steps_per_generation (default gradient_accumulation_steps) = "
             f"{self.completions_per_step} "
             f"must be a multiple of num_generations = {self.num_generations}")
        for key, tp in _field_types(type(self)).items():
            if _choices(tp):  # loss_type, scale_rewards, kl_estimator, optim, vllm_mode, ...
                _check_type(key, getattr(self, key), tp)  # "must be one of (...), got ..."
        need(self.dual_clip is None or self.dual_clip > 1, "dual_clip", f"must be > 1, got {self.dual_clip}")
        need(self.importance_sampling_cap is None or self.importance_sampling_cap > 0, "importance_sampling_cap",
             f"must be > 0, got {self.importance_sampling_cap}")
        need(self.entropy_coef >= 0, "entropy_coef", f"must be >= 0, got {self.entropy_coef}")
        need(self.router_aux_loss_coef is None or self.router_aux_loss_coef >= 0, "router_aux_loss_coef",
             f"must be >= 0, got {self.router_aux_loss_coef}")
        need(self.max_resample_rounds >= 0, "max_resample_rounds", "must be >= 0")
        need(self.max_failed_reward_steps >= 1, "max_failed_reward_steps",
             f"must be >= 1, got {self.max_failed_reward_steps}")
        need(self.max_nonfinite_steps >= 1, "max_nonfinite_steps", f"must be >= 1, got {self.max_nonfinite_steps}")
        need(self.lora_r >= 1, "lora_r", f"must be >= 1, got {self.lora_r}")
        need(0 <= self.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        need(not self.load_in_4bit or self.use_peft, "load_in_4bit",
             "4-bit weights cannot be trained directly: set use_peft: true (QLoRA)")
        need(self.weight_sync_steps >= 1, "weight_sync_steps", f"must be >= 1, got {self.weight_sync_steps}")
        need(self.max_staleness >= 1, "max_staleness", f"must be >= 1, got {self.max_staleness}")
        if self.async_rollouts:
            self._validate_async(need)
        self._validate_tools(need)
        need(self.reward_num_workers >= 0, "reward_num_workers", f"must be >= 0, got {self.reward_num_workers}")
        need(self.reward_timeout_s > 0, "reward_timeout_s", f"must be > 0, got {self.reward_timeout_s}")
        need(self.pack_max_row_tokens is None or self.pack_max_row_tokens >= 1, "pack_max_row_tokens",
             f"must be >= 1, got {self.pack_max_row_tokens}")
        need(self.logprob_chunk_size is None or self.logprob_chunk_size >= 0, "logprob_chunk_size",
             f"must be >= 0 (0 or None = unchunked), got {self.logprob_chunk_size}")
        need(self.teacher_kl_coef >= 0, "teacher_kl_coef", f"must be >= 0, got {self.teacher_kl_coef}")
        need(self.teacher_reward_weight >= 0, "teacher_reward_weight",
             f"must be >= 0, got {self.teacher_reward_weight}")
        need(not (self.teacher_model_name_or_path and self.dynamic_sampling and not self.teacher_reward_weight),
             "dynamic_sampling", "drops groups whose rewards are all equal, which still carry the teacher's signal: "
             "turn it off for distillation, or mix in the reward with teacher_reward_weight > 0")
        need(math.isfinite(self.learning_rate) and self.learning_rate > 0, "learning_rate",
             f"must be a finite number > 0, got {self.learning_rate}")
        need(self.beta >= 0, "beta", f"must be >= 0, got {self.beta}")
        # scale_rewards is the grpo estimator's choice: rloo's advantages are never scaled, reinforce_pp's
        # always by the batch std. An explicit value with those was silently ignored.
        need(self.scale_rewards == "group" or self.advantage_estimator == "grpo", "scale_rewards",
             f"applies to advantage_estimator 'grpo' only, and advantage_estimator is "
             f"{self.advantage_estimator!r} (rloo's advantages are never scaled, reinforce_pp's always by the "
             f"batch std): remove scale_rewards, or use advantage_estimator 'grpo'")
        # the clip range (1 - eps, 1 + eps): eps >= 1 lets the ratio fall to 0, no clipping at all
        need(0 < self.epsilon < 1, "epsilon", f"must be in (0, 1), got {self.epsilon}")
        need(self.epsilon_high is None or 0 < self.epsilon_high < 10, "epsilon_high",
             f"must be in (0, 10), got {self.epsilon_high}")
        need(self.num_iterations >= 1, "num_iterations", f"must be >= 1, got {self.num_iterations}")
        need(self.max_steps >= 1 or self.max_steps == -1, "max_steps",
             f"must be >= 1, or -1 for num_train_epochs, got {self.max_steps}")
        need(math.isfinite(self.num_train_epochs) and self.num_train_epochs > 0, "num_train_epochs",
             f"must be a finite number > 0, got {self.num_train_epochs}")
        need(self.seed <= MAX_SEED, "seed", f"must be in [0, {MAX_SEED}] (numpy's seeds are 32-bit), got {self.seed}")
        need(self.num_threads is None or self.num_threads >= 1, "num_threads",
             f"must be >= 1, or null for torch's default, got {self.num_threads}")
        need(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        need(0 <= self.max_bad_gold_fraction <= 1, "max_bad_gold_fraction",
             f"must be a fraction of the rows in [0, 1], got {self.max_bad_gold_fraction}")
        need(self.max_completion_length >= 1, "max_completion_length", "must be >= 1")
        need(self.temperature > 0, "temperature", "training samples need temperature > 0")
        need(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        # with an environment, its get_reward may be the only reward source (TRL's rule; checked when it is built)
        need(len(self.reward_funcs) > 0 or self.environment_factory is not None, "reward_funcs",
             "name at least one reward function (or an environment_factory whose environment defines get_reward)")
        self._validate_ranges(need)
        self._validate_trl_generation(need)
        self._validate_loss_options(need)
        need(not (self.eval_holdout_size and self.dataset_name in EMBEDDED_TASKS), "eval_holdout_size",
             f"the embedded task (dataset_name: {self.dataset_name}) has its own held-out problems (final_eval_size, "
             "eval_size); "
             "eval_holdout_size holds rows of your own dataset out of training")
        need(not (self.eval_dataset and self.eval_holdout_size), "eval_dataset",
             f"its rows are the held-out problems, and eval_holdout_size: {self.eval_holdout_size} holds rows of the "
             "training set out as them too: keep one (eval_holdout_size: 0, or no eval_dataset)")
        need(not (self.eval_dataset and self.dataset_name in EMBEDDED_TASKS), "eval_dataset",
             f"the embedded task (dataset_name: {self.dataset_name}) has its own held-out problems (final_eval_size, "
             "eval_size); eval_dataset is the held-out set of a dataset of your own")
        need(bool(self.eval_dataset) or (self.eval_dataset_split == "train" and self.eval_dataset_config is None),
             "eval_dataset_split" if self.eval_dataset_split != "train" else "eval_dataset_config",
             "says how to load eval_dataset, which is not set")
        bad = [k for k in self.allow_config_changes if k not in OPTIMIZER_KEYS]
        need(not bad, "allow_config_changes",
             f"only optimizer settings may change on resume ({', '.join(OPTIMIZER_KEYS)}); got {bad}")
        need(self.reward_weights is None or len(self.reward_weights) == len(self.reward_funcs), "reward_weights",
             f"has {len(self.reward_weights or [])} entries but reward_funcs has {len(self.reward_funcs)}")

    def clip_range(self) -> tuple[float, float]:
        """(eps_low, eps_high): (epsilon, epsilon_high or epsilon), gspo's paper values at TRL's defaults
        (rlreason.algorithms.clip_range)."""
        return clip_range(self.loss_type, self.epsilon, self.epsilon_high)

    def ratio_level(self) -> RatioLevel:
        """The importance ratio's level: importance_sampling_level; gspo's is sequence (rlreason.algorithms)."""
        return ratio_level(self.loss_type, self.importance_sampling_level or "token")

    @property
    def separate_sampler(self) -> bool:
        """The tokens are drawn by an engine other than the policy being trained (vLLM, a vLLM server, or the
        overlapped rollouts' copy): its log-probs may differ from the trainer's, the sampler correction applies
        (TRL applies it with use_vllm) and the off-policy mask measures drift from its log-probs."""
        return self.rollout_engine != "transformers" or self.async_rollouts

    def is_correction(self) -> tuple[ISMode, float | None, float | None] | None:
        """The sampler correction the loss applies, (mode, clip min, clip max), or None: rlreason's
        importance_sampling_cap (token_truncate at the cap, any engine) if set, else TRL's
        vllm_importance_sampling_* keys where the engine is a separate sampler."""
        if self.importance_sampling_cap is not None:
            return "token_truncate", None, self.importance_sampling_cap
        if self.vllm_importance_sampling_correction and self.separate_sampler:
            return (self.vllm_importance_sampling_mode, self.vllm_importance_sampling_clip_min,
                    self.vllm_importance_sampling_clip_max)
        return None

    def _validate_loss_options(self, need: Callable[[bool, str, str], None]) -> None:
        """TRL 1.16's loss options: ranges, and the combinations TRL refuses (or warns about)."""
        for key in ("sapo_temperature_neg", "sapo_temperature_pos", "vespo_lambda_pos", "vespo_lambda_neg",
                    "entropy_coef_delta"):
            value = getattr(self, key)
            need(math.isfinite(value) and value > 0, key, f"must be a finite number > 0, got {value}")
        for key in ("vespo_k_pos", "vespo_k_neg", "entropy_coef_min", "entropy_coef_max", "entropy_target"):
            value = getattr(self, key)
            need(math.isfinite(value) and value >= 0, key, f"must be a finite number >= 0, got {value}")
        need(self.entropy_coef_min <= self.entropy_coef_max, "entropy_coef_min",
             f"must be <= entropy_coef_max ({self.entropy_coef_max}), got {self.entropy_coef_min}")
        need(0 <= self.top_entropy_quantile <= 1, "top_entropy_quantile",
             f"must be in [0, 1] (1 = every token), got {self.top_entropy_quantile}")
        need(self.delta is None or (math.isfinite(self.delta) and self.delta > 1), "delta",
             f"must be > 1 (its paper: > 1 + epsilon_high), or null, got {self.delta}")
        need(self.off_policy_mask_threshold is None or math.isfinite(self.off_policy_mask_threshold),
             "off_policy_mask_threshold", f"must be a finite number or null, got {self.off_policy_mask_threshold}")
        lo, hi = self.vllm_importance_sampling_clip_min, self.vllm_importance_sampling_clip_max
        need(hi is None or hi > 0, "vllm_importance_sampling_clip_max", f"must be > 0 or null, got {hi}")
        need(lo is None or lo >= 0, "vllm_importance_sampling_clip_min", f"must be >= 0 or null, got {lo}")
        need(lo is None or hi is None or lo < hi, "vllm_importance_sampling_clip_min",
             f"must be less than vllm_importance_sampling_clip_max ({hi}), got {lo}")
        correction = self.is_correction()
        need(correction is None or not correction[0].endswith("truncate") or correction[1:] != (None, None),
             "vllm_importance_sampling_mode", "a *_truncate mode needs vllm_importance_sampling_clip_min or "
             "vllm_importance_sampling_clip_max")
        surrogate = PRESETS[self.loss_type].surrogate
        need(not (surrogate == "gamma_weight" and correction is not None and correction[0].startswith("sequence")),
             "vllm_importance_sampling_mode", "loss_type vespo folds the sampler correction into its sequence weight "
             f"token by token: it needs token_truncate or token_mask, got {correction and correction[0]}")
        if surrogate == "clipped_weight" and self.clip_range()[1] < 1:
            logger.warning("loss_type cispo caps the importance weight itself at epsilon_high (%s, TRL's meaning): "
                           "every token's weight is at most that, on-policy too; TRL recommends epsilon_high: 5.0",
                           self.clip_range()[1])
        paper_level = PRESETS[self.loss_type].paper_level
        if paper_level is not None and self.ratio_level() != paper_level:
            logger.warning("loss_type %s: importance_sampling_level is %r; its paper (and TRL) use %r",
                           self.loss_type, self.ratio_level(), paper_level)

    def _validate_async(self, need: Callable[[bool, str, str], None]) -> None:
        """Settings overlapped rollouts cannot run with, each with the reason."""
        need(not self.dynamic_sampling, "dynamic_sampling",
             "refills a batch with more rollouts after scoring it, which an overlapped batch cannot wait for: "
             "turn off dynamic_sampling or async_rollouts")
        need(self.weight_sync_steps == 1, "weight_sync_steps",
             "with async_rollouts the engine's lag is set by max_staleness: leave weight_sync_steps at 1")
        need(self.generation_seed_per_prompt, "generation_seed_per_prompt",
             "async_rollouts needs it (a batch's samples must not depend on the threads' timing)")
        need(self.importance_sampling_cap is not None, "importance_sampling_cap",
             "async_rollouts needs truncated importance sampling (the sampler lags the policy)")
        need(not (self.use_vllm and self.vllm_mode == "colocate"), "vllm_mode",
             "async_rollouts needs an engine that runs beside the trainer: vllm_mode: server, or the "
             "transformers engine (use_vllm: false), which generates with a copy of the policy")
        need(not (self.use_peft and not self.use_vllm), "use_peft",
             "async_rollouts with LoRA needs the vLLM server engine (use_vllm: true, vllm_mode: server): the "
             "transformers engine's copy of the policy takes plain weights")

    def _validate_tools(self, need: Callable[[bool, str, str], None]) -> None:
        need(self.max_tool_calling_iterations is None or self.max_tool_calling_iterations >= 0,
             "max_tool_calling_iterations", f"must be >= 0 or null (no limit), got {self.max_tool_calling_iterations}")
        need(math.isfinite(self.tool_timeout_s) and self.tool_timeout_s > 0, "tool_timeout_s",
             f"must be a finite number of seconds > 0, got {self.tool_timeout_s}")
        need(self.tool_memory_mb is None or self.tool_memory_mb > 0, "tool_memory_mb",
             f"must be > 0 or null (no cap), got {self.tool_memory_mb}")
        need(self.tool_max_output_chars >= 1, "tool_max_output_chars",
             f"must be >= 1, got {self.tool_max_output_chars}")
        need(self.tool_num_workers >= 1, "tool_num_workers", f"must be >= 1, got {self.tool_num_workers}")
        specs = [("tools", s) for s in self.tools] + [("rollout_func", self.rollout_func)]
        factory = self.environment_factory
        specs += ([(f"environment_factory.{k}", v) for k, v in factory.items()] if isinstance(factory, dict)
                  else [("environment_factory", factory)])
        for key, spec in specs:  # resolved at build time (rewards.registry's loader); the form is checked now
            need(spec is None or isinstance(spec, str) and ":" in spec.strip(":"), key,
                 f"{spec!r} is not a spec: write 'pkg.module:name' or 'path/file.py:name'")

    def _validate_ranges(self, need: Callable[[bool, str, str], None]) -> None:
        """Numeric keys whose values make no sense: caught at start-up, not as a reversed update
        (max_grad_norm < 0 flips every gradient) or a KeyError deep in the loop (a batch of 0)."""
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "generation_batch_prompts",
                    "logging_steps", "arith_train_size", "mul_train_size", "eval_size"):
            need(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        need(self.max_prompt_length is None or self.max_prompt_length >= 1, "max_prompt_length",
             f"must be >= 1, or null for no limit, got {self.max_prompt_length}")
        for key in ("save_steps", "eval_steps", "log_completions_steps", "warmup_steps", "final_eval_size",
                    "top_k", "seed", "eval_holdout_size", "save_total_limit"):
            # 0 = off (save/eval only at the end; no sampled completions; no warm-up; nothing held out; keep all);
            # None (eval_steps, save_total_limit) is TRL's default, the same as 0
            value = getattr(self, key)
            need(value is None and key in ("eval_steps", "save_total_limit") or value is not None and value >= 0,
                 key, f"must be >= 0 (0 = off), got {value}")
        for key in ("weight_decay", "beta", "entropy_coef", "teacher_kl_coef", "teacher_reward_weight"):
            value = getattr(self, key)
            need(math.isfinite(value) and value >= 0, key, f"must be a finite number >= 0, got {value}")
        # a negative norm reverses every update (clip coefficient < 0) and 0 zeroes it, with normal-looking logs
        need(math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0, "max_grad_norm",
             f"must be a finite number > 0, got {self.max_grad_norm}")
        for key in ("adam_beta1", "adam_beta2"):
            need(0 <= getattr(self, key) < 1, key, f"must be in [0, 1), got {getattr(self, key)}")
        need(math.isfinite(self.temperature), "temperature", f"must be finite, got {self.temperature}")
        need(self.eval_max_tokens is None or self.eval_max_tokens >= 1, "eval_max_tokens",
             f"must be >= 1 or null, got {self.eval_max_tokens}")
        need(self.reward_memory_mb is None or self.reward_memory_mb > 0, "reward_memory_mb",
             f"must be > 0 or null (no cap), got {self.reward_memory_mb}")
        need(math.isfinite(self.reward_timeout_s), "reward_timeout_s", f"must be finite, got {self.reward_timeout_s}")
        need(self.vllm_tensor_parallel_size >= 1, "vllm_tensor_parallel_size",
             f"must be >= 1, got {self.vllm_tensor_parallel_size}")
        need(0 < self.vllm_gpu_memory_utilization <= 1, "vllm_gpu_memory_utilization",
             f"must be in (0, 1], got {self.vllm_gpu_memory_utilization}")
        need(self.vllm_server_max_retries >= 0, "vllm_server_max_retries",
             f"must be >= 0 (0 = no retry), got {self.vllm_server_max_retries}")
        need(math.isfinite(self.vllm_server_retry_delay) and self.vllm_server_retry_delay >= 0,
             "vllm_server_retry_delay", f"must be a finite number of seconds >= 0, got {self.vllm_server_retry_delay}")
        if self.reward_weights is not None:
            need(all(math.isfinite(w) for w in self.reward_weights), "reward_weights",
                 f"must be finite numbers, got {self.reward_weights}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["epsilon"], d["epsilon_high"] = self.clip_range()  # what the run uses (gspo: its paper's range)
        d["importance_sampling_level"] = self.ratio_level()  # likewise (gspo: sequence)
        return d


@accepts_trl_keys
@dataclass
class DistillConfig(GRPOConfig):
    """``recipes/distill.py``'s config: every GRPO key plus the offline mode's (docs/distillation.md).

    on_policy: GRPO's loop with ``teacher_model_name_or_path`` set (the teacher's per-token log-probs
    are the advantages). offline: the teacher answers ``distill_num_problems`` training problems
    ``distill_samples_per_problem`` times, the reward functions keep the verified answers
    (``distill_selection``), the result is saved as a dataset with its provenance, and the student
    is fine-tuned on it for ``max_steps`` steps of ``per_device_train_batch_size *
    gradient_accumulation_steps`` sequences (rlreason.loop.sft).
    """

    output_dir: str = "runs/distill"
    distill_mode: DistillMode = "on_policy"  # on_policy | offline
    # offline: where the rejection-sampled dataset is saved (None = output_dir/distill_data); if it
    # already holds one made with the same settings, it is reused instead of sampled again
    distill_dataset_path: str | None = None
    distill_num_problems: int = 2000  # training problems the teacher answers (the first of a seeded order)
    distill_samples_per_problem: int = 8  # k answers per problem
    distill_selection: DistillSelection = "best_of_k"  # best_of_k | all_correct | shortest_correct
    distill_min_reward: float = 1.0  # an answer counts as verified when its weighted reward is >= this
    distill_max_per_problem: int | None = 4  # cap on kept answers per problem (all_correct), None = no cap
    distill_temperature: float | None = None  # teacher's sampling temperature; None = temperature

    def validate(self) -> None:
        super().validate()

        def need(ok: bool, key: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"config key '{key}': {msg}")

        need(bool(self.teacher_model_name_or_path), "teacher_model_name_or_path",
             "distillation needs a teacher model (a model folder or hub id sharing the student's tokenizer)")
        need(self.distill_num_problems >= 1, "distill_num_problems", f"must be >= 1, got {self.distill_num_problems}")
        need(self.distill_samples_per_problem >= 1, "distill_samples_per_problem",
             f"must be >= 1, got {self.distill_samples_per_problem}")
        need(self.distill_max_per_problem is None or self.distill_max_per_problem >= 1, "distill_max_per_problem",
             f"must be >= 1 or null, got {self.distill_max_per_problem}")
        need(self.distill_temperature is None or self.distill_temperature >= 0, "distill_temperature",
             f"must be >= 0 (0 = greedy), got {self.distill_temperature}")
        if self.distill_mode == "offline":
            need(self.importance_sampling_cap is None, "importance_sampling_cap",
                 "offline distillation trains on the teacher's tokens, which have no student sampler log-probs")


@functools.cache
def _field_types(cls: type[GRPOConfig] = GRPOConfig) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _choices(tp: Any) -> tuple[Any, ...]:
    """The values a ``Literal`` annotation allows, also inside ``X | None``; () for other types."""
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(v for a in typing.get_args(tp) for v in _choices(a))
    return ()


def _check_type(key: str, value: Any, tp: Any) -> Any:
    """Coerce/validate one value against its annotation; names the key on failure."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"config key '{key}': must be one of {typing.get_args(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(key, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"config key '{key}': bad value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            value = [value] if isinstance(value, str | int | float) else value
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {type(value).__name__}")
        (inner,) = typing.get_args(tp)
        return [_check_type(key, v, inner) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, os.PathLike):  # GRPOConfig(output_dir=tmp_path) from Python
        return os.fspath(value)
    if tp is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-5" as a string
        except ValueError:
            pass
    if tp is Any or (isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"config key '{key}': expected {getattr(tp, '__name__', tp)}, got {value!r}")


def from_dict(values: dict[str, Any], cls: type[GRPOConfig] = GRPOConfig) -> GRPOConfig:
    """Build a config from rlreason's keys and TRL's (rlreason/config/trl.py): ``cls(**values)``,
    whose ``__init__`` cleans them (``accepts_trl_keys``), the same path as a Python caller's."""
    return cls(**values)


def clean_values(values: dict[str, Any], cls: type[GRPOConfig] = GRPOConfig) -> dict[str, Any]:
    """``values`` with rlreason's names and checked types (rlreason/config/trl.py's ``migrate``).

    Every unknown or unsupported key and every ill-typed value is named in one ConfigError;
    renamed and ignored TRL keys are named in one warning each."""
    types_ = _field_types(cls)
    values, notes, errors = migrate(values, set(types_))
    for note in notes:
        logger.warning("config: %s", note)
    clean = {}
    for key, value in values.items():
        try:
            clean[key] = _check_type(key, value, types_[key])
        except ConfigError as e:
            errors.append(str(e))
    if len(errors) == 1:
        raise ConfigError(errors[0])
    if errors:
        raise ConfigError(f"{len(errors)} problems in the config:\n" + "\n".join(f"  - {e}" for e in errors))
    return clean


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config file holds; a ConfigError naming the file and the line when it is
    not UTF-8 or not YAML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"config file {path}, line {line}: byte 0x{raw[e.start]:02x} is not UTF-8 text; save the "
                          f"file as UTF-8") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def yaml_problem(e: yaml.YAMLError) -> str:
    """Where and what a YAML error is, in one line: "line 3, column 5: <problem> (<context> at line 2)"."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context, context_mark = getattr(e, "context", None), getattr(e, "context_mark", None)
    started = f" ({context} at line {context_mark.line + 1})" if context and context_mark is not None else ""
    return f"{where}{problem}{started}"


def parse_overrides(items: list[str], cls: type[GRPOConfig] = GRPOConfig) -> dict[str, Any]:
    """Command-line items -> dict, read as TRL's parser (transformers' ``HfArgumentParser``) reads them,
    typed by ``cls``'s field annotations (TRL's names are typed as the key they are renamed to):

    - ``--key value``, ``--key=value`` (and ``key=value``); a value is read as YAML, so
      ``--reward_weights [1, 0.5]`` and ``--dataset_filter "{level: [3]}"`` work;
    - a bool key: a bare ``--use_peft`` is true, ``--use_peft false`` (yes/no, true/false, t/f, y/n,
      1/0) sets it, ``--no_use_peft`` is false; a key rlreason does not hold as a field (TRL's
      ignored ones, ``--push_to_hub``) is true when bare, as TRL's bools are;
    - a list key takes every value up to the next ``--``: ``--lora_target_modules q_proj v_proj``,
      ``--reward_funcs accuracy format``, ``--report_to none``.
    """
    types_ = _field_types(cls)

    def type_of(key: str) -> Any:
        return types_.get(key) or types_.get(RENAMED.get(key, ""))

    out: dict[str, Any] = {}
    i = 0
    while i < len(items):
        item = items[i]
        i += 1
        if not item.startswith("--"):
            if "=" not in item:
                raise ConfigError(f"cannot read command-line item {item!r}: use --key value, --key=value or key=value")
            key, raw = item.split("=", 1)
            out[key.replace("-", "_")] = _cli_value(key, raw, type_of(key.replace("-", "_")))
            continue
        key, eq, raw = item[2:].partition("=")
        key = key.replace("-", "_")
        if eq:
            out[key] = _cli_value(key, raw, type_of(key))
            continue
        values = []  # the values up to the next --flag
        while i < len(items) and not items[i].startswith("--"):
            values.append(items[i])
            i += 1
        tp = type_of(key)
        if key.startswith("no_") and tp is None and _is_bool(type_of(key[3:])) and not values:
            out[key[3:]] = False  # --no_use_peft, as HfArgumentParser's complement flags
        elif not values:
            if tp is not None and not _is_bool(tp):
                raise ConfigError(f"config key '{key}' given on the command line without a value")
            out[key] = True  # a bare flag: a bool key set to true
        elif len(values) == 1:
            out[key] = _cli_value(key, values[0], tp)
        elif tp is not None and _is_list(tp):
            out[key] = [_cli_value(key, v, None) for v in values]
        else:
            raise ConfigError(f"config key '{key}' takes one value on the command line, got {len(values)}: "
                              f"{' '.join(values)} (quote a value with spaces)")
    return out


def _is_bool(tp: Any) -> bool:
    """``bool`` or ``bool | None``."""
    return tp is bool or (typing.get_origin(tp) in (typing.Union, types.UnionType)
                          and set(typing.get_args(tp)) == {bool, type(None)})


def _is_list(tp: Any) -> bool:
    """A list type, alone or in a union (``str | list[str]``)."""
    if typing.get_origin(tp) is list:
        return True
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and any(_is_list(a) for a in typing.get_args(tp))


# transformers' string_to_bool: the words a bool flag takes
_TRUE, _FALSE = ("yes", "true", "t", "y", "1"), ("no", "false", "f", "n", "0")


def _cli_value(key: str, raw: str, tp: Any) -> Any:
    """One command-line value: a bool key's word as transformers reads it, else YAML (text kept whole)."""
    if _is_bool(tp) and raw.lower() in _TRUE + _FALSE:
        return raw.lower() in _TRUE
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as e:
        raise ConfigError(f"config key '{key}' on the command line: cannot read {raw!r} as a YAML value "
                          f"({getattr(e, 'problem', None) or e}); quote it, or fix its brackets") from None
    if "#" in raw and (value is None or isinstance(value, str)) and value != raw:
        value = raw  # YAML read " #..." as a comment: a command-line text keeps all of it
    return value


def parse_args(argv: list[str] | None = None, default_config: str | Path | None = None,
               cls: type[GRPOConfig] = GRPOConfig) -> GRPOConfig:
    """The config: ``--config`` file (else ``default_config``), then the command line's keys over it
    (``parse_overrides``: TRL's parser's forms). Every unknown key is named in one error."""
    ap = argparse.ArgumentParser(description=f"Train ({cls.__name__}). Any config key can be overridden: --key value",
                                 allow_abbrev=False)  # --conf is an unknown key, not --config
    ap.add_argument("--config", default=str(default_config) if default_config else None, help="YAML config file")
    args, rest = ap.parse_known_args(argv)
    values = load_yaml(args.config) if args.config else {}
    values.update(parse_overrides(rest, cls))
    return from_dict(values, cls)

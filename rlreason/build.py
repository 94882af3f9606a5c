"""Config -> the run's parts, each built once: accelerator, output folder, tokenizer, policy,
reference, teacher, rollout engine, data, reward runner, optimizer, scheduler, logger.

``build(cfg)`` is what a recipe calls: everything from the config, in the order that makes a
wrong setting fail before the expensive steps (the output folder and the reward names before
any model loads; a teacher whose tokenizer differs before the data is prepared).
``assemble(cfg, model, tokenizer, train, reward_funcs, ...)`` is its second half, for callers
that bring their own model and data (tests, benchmarks, notebooks): the training-side parts
around a given policy. ``rlreason.trainer.GRPOTrainer`` receives the result and only trains.
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

from rlreason import algorithms as A
from rlreason import lock, lora, tiny
from rlreason.checkpoint import (
    RUN_LOGS,
    check_output_dir,
    read_state,
    resolve_resume,
    set_aside_newer,
    truncate_jsonl,
)
from rlreason.config import ConfigError, GRPOConfig
from rlreason.data import (
    INTERNAL_COLUMNS,
    arith_dataset,
    check_golds,
    check_tokenizer,
    kept_rows,
    load_dataset_any,
    prepare,
    rename_columns,
)
from rlreason.distill import check_same_tokenizer
from rlreason.eval.core import HELDOUT_METRICS, heldout_scorer, suite_metric_names
from rlreason.eval.core import suite_scorer as _suite_scorer
from rlreason.eval.suites import SUITES, arith_suite
from rlreason.host import capped_threads
from rlreason.logprobs import enable_gradient_checkpointing
from rlreason.optim import optimizer_class, optimizer_kwargs
from rlreason.resume import change_record, check_config_changes
from rlreason.rewards import accuracy_reward, build_rewards, format_reward, parse_gold, reward_name
from rlreason.rewards.math import AccuracyReward
from rlreason.rewards.runner import RESERVED_ARGUMENTS, RewardRunner
from rlreason.rollout.base import RolloutEngine
from rlreason.rollout.hf import HFEngine
from rlreason.rollout.hf_process import ProcessHFEngine
from rlreason.tasks.arith import Difficulty
from rlreason.tracking import RunLogger


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
    rewards: RewardRunner  # the training rewards, in worker processes (rlreason/rewards/runner.py)
    engine: RolloutEngine
    logger: RunLogger
    ref_model: torch.nn.Module | None = None  # the KL reference (beta > 0); None with LoRA: the base is
    ref_is_base_adapter: bool = False  # ... the policy with its adapter disabled
    teacher: torch.nn.Module | None = None  # on-policy distillation's teacher
    eval_rows: list[dict] = field(default_factory=list)  # held-out problems (prompt_ids, answer)
    # held-out accuracy (and format) and benchmark suites score through runners too: the failure
    # policy of the training rewards (timeouts, crash isolation, memory cap; rlreason/eval/core.py)
    eval_scorer: RewardRunner | None = None
    suite_scorer: RewardRunner | None = None  # the main process's (suites run there)


# ---------------------------------------------------------------------------- the whole run


def build(cfg: GRPOConfig) -> Parts:
    """Every part of a GRPO run (on-policy distillation with ``teacher_model_name_or_path``)."""
    acc, run_dir = start(cfg)
    model, tokenizer = load_policy(cfg, acc)
    teacher, _ = load_teacher(cfg, acc, tokenizer)  # before the data: a tokenizer mismatch fails first
    train, eval_rows = load_data(cfg, tokenizer)
    reward_funcs, reward_weights = dataset_rewards(cfg, train)
    engine = build_engine(cfg, model, tokenizer, acc)
    try:
        return assemble(cfg, model, tokenizer, train, reward_funcs, reward_weights, eval_rows=eval_rows,
                        eval_accuracy_fn=accuracy_reward, eval_format_fn=format_reward, engine=engine,
                        accelerator=acc, teacher=teacher, run_dir=run_dir)
    except BaseException:  # a stop signal or an error: the engine's processes and memory go with it
        close_engine(engine)
        raise


def close_engine(engine: RolloutEngine | None) -> None:
    """Stop a vLLM engine's workers or a server client's connection; the transformers engine holds none."""
    if engine is not None and hasattr(engine, "close"):
        engine.close()


def start(cfg: GRPOConfig) -> tuple[Accelerator, RunDir]:
    """The accelerator and the checked output folder, locked for this run; and the reward names
    resolved: what can fail cheaply fails before any model loads."""
    acc = make_accelerator(cfg)
    if acc.is_main_process:  # one run per folder, before anything is written or deleted there
        lock.acquire(cfg.output_dir)
    run_dir = open_run_dir(cfg, acc)
    build_rewards(cfg.reward_funcs, cfg.reward_weights)  # a bad reward name fails now, before any model loads
    check_eval_settings(cfg)
    return acc, run_dir


def check_eval_settings(cfg: GRPOConfig) -> None:
    """Every name in ``eval_suites`` is a suite and ``metric_for_best_model`` a metric this run logs
    (the held-out ``eval/...`` ones with the embedded task, which alone has held-out problems, and
    ``suite/<name>/<metric>`` for the suites): otherwise a suite fails at the first evaluation and a
    misspelt metric never picks a best checkpoint, in silence."""
    unknown = [name for name in cfg.eval_suites if name not in SUITES]
    if unknown:
        raise ConfigError(f"config key 'eval_suites': unknown suite {unknown[0]!r}; the suites are {', '.join(SUITES)}")
    metric = cfg.metric_for_best_model
    if not metric:
        return
    known = [*(HELDOUT_METRICS if cfg.dataset_name == "arith" else ()), *suite_metric_names(cfg.eval_suites)]
    if metric in known:
        return
    if not known:
        why = ("this run evaluates nothing to pick a best checkpoint by (only the embedded task, dataset_name: arith, "
               "has held-out problems, and eval_suites is empty): add eval_suites and name one of their metrics, "
               "e.g. suite/math500/pass@1, or unset it")
    elif metric in HELDOUT_METRICS:
        why = (f"{metric!r} is a held-out metric, and only the embedded task (dataset_name: arith) has held-out "
               f"problems: name one of the suites' metrics ({', '.join(known[:3])}, ...)")
    else:
        close = difflib.get_close_matches(metric, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        why = f"this run logs no metric {metric!r}; {hint}its metrics: {', '.join(known[:3])}, ..."
    raise ConfigError(f"config key 'metric_for_best_model': {why}")


def make_accelerator(cfg: GRPOConfig) -> Accelerator:
    """The one Accelerator of the run, with this process's thread count and quiet libraries."""
    datasets.disable_progress_bars()  # one progress bar: the training one
    transformers.utils.logging.disable_progress_bar()
    # never more threads than usable cores (rlreason.host); unset: torch's default (OMP_NUM_THREADS or the cores)
    torch.set_num_threads(capped_threads(cfg.num_threads or torch.get_num_threads()))
    return Accelerator(log_with=cfg.report_to or None, project_dir=cfg.output_dir)


def open_run_dir(cfg: GRPOConfig, acc: Accelerator) -> RunDir:
    """Check the output folder before anything is loaded or written: another run's checkpoints
    there are refused (or, with ``overwrite_output_dir``, deleted); a resume's checkpoint is
    verified and the settings it may not change are compared; later checkpoints than the resumed
    one are set aside as a dead branch (``set_aside_newer``); what was logged after the resumed
    checkpoint is dropped; the resolved config is written."""
    out = Path(cfg.output_dir)
    check_output_dir(out, cfg.resume_from_checkpoint, cfg.overwrite_output_dir, delete=acc.is_main_process)
    run_dir = RunDir(out, resolve_resume(out, cfg.resume_from_checkpoint))
    if run_dir.resume is not None:
        saved = read_state(run_dir.resume)
        changes = check_config_changes(saved.get("config", {}), cfg, str(run_dir.resume))
        run_dir.config_changes = saved.get("config_changes", []) + change_record(changes, saved["step"])
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.resume_from_checkpoint:  # with "auto" and no checkpoint yet a fresh start: what the dead run logged goes
            done = read_state(run_dir.resume)["step"] if run_dir.resume is not None else -1
            if run_dir.resume is not None:  # later checkpoints (an older one named, or damaged ones): a dead branch
                set_aside_newer(out, done)
            for name in RUN_LOGS:
                truncate_jsonl(out / name, done)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    acc.wait_for_everyone()
    return run_dir


# ---------------------------------------------------------------------------- models


def load_tokenizer(cfg: GRPOConfig, acc: Accelerator, key: str = "model_name_or_path") -> tuple[str, Any]:
    """(resolved path, tokenizer) of the model named by config key ``key``: an embedded tiny
    model (built on first use), a local folder or a hub id."""
    path = getattr(cfg, key)
    if path in tiny.SPECS:  # "tiny" (dense Qwen2), "tiny-moe" (Qwen2-MoE), "tiny-small" (a smaller Qwen2)
        with acc.main_process_first():  # one process builds the cached model, the others reuse it
            path = str(tiny.ensure(tiny.SPECS[path], log=acc.print))
    local = Path(path).expanduser()
    if not local.exists() and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise FileNotFoundError(f"config key '{key}': no model folder at {path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        raise OSError(f"config key '{key}': cannot load a tokenizer from {path!r} (neither a local "
                      f"model folder nor a reachable hub model): {e}") from e
    check_tokenizer(tokenizer, path, f"config key '{key}' ({path})")
    if key == "model_name_or_path" and cfg.chat_template:  # as TRL: the config's template replaces the model's
        tokenizer.chat_template = cfg.chat_template
    if tokenizer.pad_token_id is None:
        raise ValueError(f"config key '{key}': the tokenizer of {path} has no pad token; set one in the model folder")
    return path, tokenizer


def load_policy(cfg: GRPOConfig, acc: Accelerator) -> tuple[torch.nn.Module, Any]:
    """(policy, tokenizer): float32 weights (bf16 under 4/8-bit quantization), LoRA if configured."""
    path, tokenizer = load_tokenizer(cfg, acc)
    quant = lora.quantization_config(cfg)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=cfg.trust_remote_code,
                                                 dtype=torch.bfloat16 if quant else torch.float32,
                                                 quantization_config=quant)
    check_positions(cfg, model.config, path)
    if cfg.use_peft:
        model = lora.apply_lora(model, cfg)
    return model, tokenizer


def check_positions(cfg: GRPOConfig, model_config: Any, path: str) -> None:
    """A prompt of ``max_prompt_length`` tokens and its longest completion (``max_completion_length``,
    or ``eval_max_tokens`` when longer) fit in the model's ``max_position_embeddings``: beyond them
    a model with learned positions fails at that step and a rotary one computes what it was never
    trained on."""
    limit = getattr(model_config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return
    prompt = cfg.max_prompt_length
    key, longest = max([("max_completion_length", cfg.max_completion_length),
                        ("eval_max_tokens", cfg.eval_max_tokens or 0)], key=lambda kv: kv[1])
    if prompt + longest <= limit:
        return
    if prompt >= limit:
        raise ConfigError(f"config key 'max_prompt_length': {prompt} tokens is not below the model's "
                          f"max_position_embeddings ({limit}, {path}), and a prompt's completion must fit there "
                          f"too: set max_prompt_length + {key} ({longest}) <= {limit}")
    raise ConfigError(f"config keys 'max_prompt_length' + '{key}': {prompt} + {longest} = {prompt + longest} tokens "
                      f"is beyond the model's max_position_embeddings ({limit}, {path}); lower one of them, e.g. "
                      f"{key}: {limit - prompt}")


def load_teacher(cfg: GRPOConfig, acc: Accelerator, tokenizer: Any = None) -> tuple[torch.nn.Module | None, Any]:
    """(teacher, its tokenizer) for distillation, or (None, None) without teacher_model_name_or_path.
    With the student's ``tokenizer`` given (on-policy distillation), the two must be the same."""
    if not cfg.teacher_model_name_or_path:
        return None, None
    path, teacher_tok = load_tokenizer(cfg, acc, "teacher_model_name_or_path")
    if tokenizer is not None:
        check_same_tokenizer(tokenizer, teacher_tok, cfg.model_name_or_path, cfg.teacher_model_name_or_path)
    teacher = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=cfg.trust_remote_code,
                                                   dtype=torch.float32 if acc.device.type == "cpu" else torch.bfloat16)
    return teacher.eval().requires_grad_(False), teacher_tok


def build_engine(cfg: GRPOConfig, model: torch.nn.Module, tokenizer: Any, acc: Accelerator) -> RolloutEngine | None:
    """None (the trainer generates with transformers on the policy itself) or a vLLM engine:
    colocated in this process, or a client of a running ``rlreason-vllm-serve`` (server mode)."""
    if not cfg.use_vllm:
        return None
    if cfg.vllm_mode == "server":
        from rlreason.rollout.vllm_server import VLLMServerEngine

        url = cfg.vllm_server_base_url or f"http://{cfg.vllm_server_host}:{cfg.vllm_server_port}"
        engine = VLLMServerEngine(url, tokenizer, weight_transfer=cfg.vllm_weight_transfer,
                                  group_port=cfg.vllm_group_port, seed=cfg.seed + 1000 * acc.process_index,
                                  connect_timeout_s=cfg.vllm_server_timeout, is_sender=acc.is_main_process,
                                  max_retries=cfg.vllm_server_max_retries, retry_delay_s=cfg.vllm_server_retry_delay)
        engine.load_weights(lora.merged_named_parameters(model))  # the server may hold other weights than ours
        acc.wait_for_everyone()
        return engine
    try:  # vllm itself is imported when the engine starts
        from rlreason.rollout.vllm import VLLMEngine

        return VLLMEngine(model, tokenizer, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                          tensor_parallel_size=cfg.vllm_tensor_parallel_size,
                          enable_sleep_mode=cfg.vllm_enable_sleep_mode, seed=cfg.seed)
    except ImportError as e:
        raise SystemExit(f"config key 'use_vllm': vLLM is not installed here ({e}); see docs/install.md") from e


# ---------------------------------------------------------------------------- data and rewards


def load_data(cfg: GRPOConfig, tokenizer: Any) -> tuple[datasets.Dataset, list[dict]]:
    """(training prompts, held-out rows): rendered and tokenized (rlreason.data.prepare). The
    embedded arithmetic task brings its own held-out problems; other datasets have none.

    A dataset's rows (those dataset_filter keeps) are checked first, each bad one named by its row
    in the file: every prompt (``check_prompts``), and every gold of the built-in accuracy reward,
    read by the reward's own parser (``check_golds``)."""
    common = dict(prompt_column=cfg.prompt_column, tokenizer=tokenizer, use_chat_template=cfg.use_chat_template,
                  template=cfg.prompt_template, system_prompt=cfg.system_prompt,
                  max_prompt_length=cfg.max_prompt_length)
    if cfg.dataset_name != "arith":
        raw = load_dataset_any(cfg.dataset_name, cfg.dataset_split, name=cfg.dataset_config)
        rows = kept_rows(raw, cfg.dataset_filter)  # the file's row of each row kept
        data = rename_columns(raw.select(rows) if len(rows) < len(raw) else raw, cfg.column_map)
        source = dataset_source(cfg)
        for reward in accuracy_rewards(cfg):
            column = reward.gold_from(data.column_names)  # none: dataset_rewards names the missing column
            if column is not None:
                check_golds(data, column, reward.read_gold, source=source, rows=rows,
                            max_bad=cfg.max_bad_gold_fraction, reward=f"reward {reward_name(reward)!r}")
        return prepare(data, answer_column=None, source=source, rows=rows, **common), []
    try:
        difficulty = Difficulty(**cfg.arith_difficulty)
    except TypeError as e:
        raise ValueError(f"config key 'arith_difficulty': {e}") from e
    common["column_map"] = cfg.column_map
    train = prepare(arith_dataset(cfg.arith_train_size, cfg.seed, "train", difficulty), **common)
    n_eval = max(cfg.final_eval_size, cfg.eval_size)
    return train, list(prepare(datasets.Dataset.from_list(arith_suite(n_eval, difficulty)), **common))


def dataset_source(cfg: GRPOConfig) -> str:
    """How errors name the configured dataset: "data file 'x.jsonl'", or "dataset 'org/name' (split ...)"."""
    if Path(cfg.dataset_name).expanduser().is_file():
        return f"data file {cfg.dataset_name!r}"
    return f"dataset {cfg.dataset_name!r} (split {cfg.dataset_split!r})"


def accuracy_rewards(cfg: GRPOConfig) -> list[AccuracyReward]:
    """The built-in accuracy rewards among ``reward_funcs`` (named, or configured with kwargs such
    as gold_column), as configured. Entries naming a file of the user's are not built here (that
    would run the file once more): their golds are checked as any reward's (``dataset_rewards``)."""
    out = []
    for entry in cfg.reward_funcs:
        spec = entry.get("name") if isinstance(entry, dict) else entry
        if not isinstance(spec, str) or (":" in spec and any(c in spec.rsplit(":", 1)[0] for c in ("/", "\\", ".py"))):
            continue
        (fn,), _ = build_rewards([entry])
        while isinstance(fn, functools.partial):  # a chunk_size entry
            fn = fn.func
        if isinstance(fn, AccuracyReward):
            out.append(fn)
    return out


def dataset_rewards(cfg: GRPOConfig, train: datasets.Dataset) -> tuple[list[Callable], list[float]]:
    """The reward functions, checked against the dataset's columns (a reward asking for a missing
    column fails here, as does a column named like an argument every reward receives)."""
    own = set(train.column_names) - {cfg.prompt_column, *INTERNAL_COLUMNS}
    check_column_names(own, dataset_source(cfg) if cfg.dataset_name != "arith" else "")
    columns = own | {"completion_ids"}
    funcs, weights = build_rewards(cfg.reward_funcs, cfg.reward_weights, columns=columns)
    if any(_takes(fn, "answer") for fn in funcs):  # a gold column that is all blank trains on nothing
        check_golds(train, "answer", parse=parse_gold, source=dataset_source(cfg))
    return funcs, weights


def check_column_names(columns: set[str], source: str) -> None:
    """Refuse dataset columns named like the arguments every reward receives besides the columns
    (``prompts``, ``completions``, ``completion_ids``, TRL's ``trainer_state``, ``log_extra``,
    ``log_metric``): every reward call of the run would fail at step 1 (``completion_ids``: the
    column would be replaced by the token ids, in silence)."""
    taken = sorted(columns & set(RESERVED_ARGUMENTS))
    if taken:
        raise ValueError(f"{source or 'the dataset'}: column {taken[0]!r} has the name of an argument every reward "
                         f"receives ({', '.join(RESERVED_ARGUMENTS)}); rename it with column_map, e.g. "
                         f"column_map: {{{taken[0]}: {taken[0]}_column}}")


def _takes(fn: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def scoring_settings(cfg: GRPOConfig) -> dict[str, Any]:
    """How every reward runner of the run scores: in ``reward_num_workers`` worker processes with
    a timeout and a memory cap per call, or in this process with ``reward_num_workers: 0``."""
    return dict(num_workers=max(cfg.reward_num_workers, 1), timeout_s=cfg.reward_timeout_s,
                memory_mb=cfg.reward_memory_mb, in_process=cfg.reward_num_workers == 0)


def reward_runner(cfg: GRPOConfig, funcs: list[Callable], weights: list[float] | None) -> RewardRunner:
    """The training rewards' runner (``scoring_settings``)."""
    return RewardRunner(funcs, weights, **scoring_settings(cfg))


# ---------------------------------------------------------------------------- training side


def assemble(cfg: GRPOConfig, model: torch.nn.Module, tokenizer: Any, train: datasets.Dataset,
             reward_funcs: list[Callable], reward_weights: list[float] | None = None, *,
             eval_rows: list[dict] | None = None, eval_accuracy_fn: Callable | None = None,
             eval_format_fn: Callable | None = None, engine: RolloutEngine | None = None,
             accelerator: Accelerator | None = None, teacher: torch.nn.Module | None = None,
             run_dir: RunDir | None = None, keep_dropout: bool = False) -> Parts:
    """The training-side parts around a loaded policy and prepared data: reward runner, reference,
    optimizer, scheduler (prepared with the policy), default engine, logger. ``keep_dropout``:
    for an objective that compares no passes (SFT's NLL), where dropout stays a regulariser."""
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
        cfg.max_steps = max(1, math.ceil(cfg.num_train_epochs * len(train) / per_step))
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
    if engine is None:  # transformers on the policy itself; with async_rollouts on a copy (the update changes it)
        if cfg.async_rollouts and sharded:
            raise ValueError("config key 'async_rollouts': with a sharded policy (FSDP, DeepSpeed) the transformers "
                             "engine's copy would be sharded too, its forwards collectives on the rollout thread; "
                             "generate with the vLLM server (use_vllm: true, vllm_mode: server)")
        policy = acc.unwrap_model(model)
        sampler = copy.deepcopy(policy).eval().requires_grad_(False) if cfg.async_rollouts else policy
        # async on one process: seeded prompts share decode loops (batched, deterministic; the samples
        # then depend on the batch through matmul rounding, so several processes keep one loop per
        # prompt and sample what one process samples)
        # async_generator "process" on CPU: the copy generates in a child process (rlreason/rollout/
        # hf_process.py: a small model's decode loop then shares no GIL with the update)
        in_child = cfg.async_rollouts and cfg.async_generator == "process" and acc.device.type == "cpu"
        engine = (ProcessHFEngine if in_child else HFEngine)(
            sampler, tokenizer, cfg.generation_batch_prompts, batch_seeds=cfg.async_rollouts and acc.num_processes == 1)
    for msg in setting_warnings(cfg, separate_engine=not shares_policy(engine, model, acc)):
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
                 eval_scorer=eval_scorer, suite_scorer=suite_scorer)


def disable_dropout(model: torch.nn.Module) -> int:
    """Switch every dropout of ``model`` off (``nn.Dropout`` modules, LoRA's included, and the
    attention dropout transformers' attention modules hold as a float); -> how many were on.

    Dropout in the log-prob passes is noise in the ratio pi_theta / pi_old: two passes over the
    same tokens with the same weights disagree, so a ratio that should be 1 is clipped at random
    (with num_iterations > 1), and the KL to the reference is not 0 when it should be. Eval mode
    would also switch it off but also switches off transformers' gradient checkpointing, so the
    probabilities are made 0 instead.
    """
    on = 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout) and mod.p > 0:
            mod.p, on = 0.0, on + 1
        if isinstance(getattr(mod, "attention_dropout", None), float) and mod.attention_dropout > 0:
            mod.attention_dropout, on = 0.0, on + 1
    return on


# A clip range at or above this on a sequence-level (GSPO) ratio gets a warning: the ratio is
# exp(mean token log-ratio), and token ratios themselves stay within 0.2 (the learning table in
# docs/algorithms.md: clip fraction 0.0000 at 0.2 for every token-level preset, 19% for GSPO at 3e-4 /
# 4e-4). 0.01 is 25x GSPO's eps_high and 1/20 of the token-level default.
SEQUENCE_CLIP_WARN = 0.01


def setting_warnings(cfg: GRPOConfig, separate_engine: bool) -> list[str]:
    """Settings that run but likely do not compute what was meant (docs/algorithms.md, "What each
    setting really computes"); the trainer warns about each at start-up."""
    out = []
    if cfg.beta > 0 and cfg.kl_estimator == "k1":
        out.append("kl_estimator k1 with beta > 0: as a loss term k1's gradient, grad log pi, has expectation 0 "
                   "under the policy's own samples, so the KL term adds noise and no pull towards the reference; "
                   "use k2 (gradient of KL(pi || ref)) or k3 (GRPO's; gradient of KL(ref || pi))")
    level = cfg.importance_sampling_level or A.PRESETS[cfg.loss_type].ratio_level
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


def shares_policy(engine: RolloutEngine, model: torch.nn.Module, acc: Accelerator) -> bool:
    """Whether ``engine`` generates with the policy's own weights (nothing to sync, never stale)."""
    return isinstance(engine, HFEngine) and engine.model is acc.unwrap_model(model)

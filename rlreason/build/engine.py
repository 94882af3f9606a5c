"""Config -> the rollout engine, through the one factory (rlreason/rollout/factory.py), named by
``rollout_engine`` (TRL's ``use_vllm`` / ``vllm_mode`` are its aliases)."""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from rlreason.config import ConfigError, GRPOConfig
from rlreason.rollout import factory
from rlreason.rollout.base import RolloutEngine


def training_engine(cfg: GRPOConfig, model: torch.nn.Module, tokenizer: Any, acc: Accelerator) -> RolloutEngine:
    """The engine that samples the run's rollouts for ``model`` (prepared by ``acc``).

    transformers: the policy itself; with ``async_rollouts`` a copy (the update changes the policy
    while the copy samples), in a child process on CPU with ``async_generator: process`` (a small
    model's decode loop then shares no GIL with the update). vllm: colocated, weights pushed from
    the policy. vllm_server: a client of the running server, given the policy's weights at once.
    """
    policy = acc.unwrap_model(model)
    if cfg.rollout_engine == "transformers":
        if cfg.async_rollouts and acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            raise ValueError("config key 'async_rollouts': with a sharded policy (FSDP, DeepSpeed) the transformers "
                             "engine's copy would be sharded too, its forwards collectives on the rollout thread; "
                             "generate with the vLLM server (rollout_engine: vllm_server)")
        # async on one process: seeded prompts share decode loops (batched, deterministic; the samples
        # then depend on the batch through matmul rounding, so several processes keep one loop per
        # prompt and sample what one process samples)
        return factory.make_engine(
            "transformers", policy, tokenizer, batch_prompts=cfg.generation_batch_prompts,
            copy_policy=cfg.async_rollouts, batch_seeds=cfg.async_rollouts and acc.num_processes == 1,
            in_child=cfg.async_rollouts and cfg.async_generator == "process" and acc.device.type == "cpu")
    return separate_engine(cfg, policy, tokenizer, acc)


def separate_engine(cfg: GRPOConfig, model: Any, tokenizer: Any, acc: Accelerator) -> RolloutEngine | None:
    """The configured vLLM engine for ``model``, built before the policy is prepared (under ZeRO-3
    the prepared policy's weights are sharded, and vLLM reserves its GPU memory first); None for
    the transformers engine, which ``assemble`` builds on the prepared policy (``training_engine``)."""
    if cfg.rollout_engine == "transformers":
        return None
    if cfg.rollout_engine == "vllm_server":
        url = cfg.vllm_server_base_url or f"http://{cfg.vllm_server_host}:{cfg.vllm_server_port}"
        check_sampling_params(cfg)
        server = factory.ServerSpec(url, weight_transfer=cfg.vllm_weight_transfer, group_port=cfg.vllm_group_port,
                                    connect_timeout_s=cfg.vllm_server_timeout, max_retries=cfg.vllm_server_max_retries,
                                    retry_delay_s=cfg.vllm_server_retry_delay, is_sender=acc.is_main_process)
        engine = factory.make_engine("vllm_server", model, tokenizer, seed=cfg.seed + 1000 * acc.process_index,
                                     server=server)
        acc.wait_for_everyone()  # the server holds the sender's weights before anyone generates
        return engine
    check_sampling_params(cfg)
    try:
        return factory.make_engine("vllm", model, tokenizer, seed=cfg.seed,
                                   gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                                   tensor_parallel_size=cfg.vllm_tensor_parallel_size,
                                   enable_sleep_mode=cfg.vllm_enable_sleep_mode)
    except ImportError as e:
        raise ConfigError(f"config key 'rollout_engine' (TRL's 'use_vllm'): vLLM is not installed here ({e})") from e


def teacher_engine(cfg: GRPOConfig, teacher: torch.nn.Module, tokenizer: Any, acc: Accelerator) -> RolloutEngine:
    """The engine offline distillation samples the teacher with: the configured vLLM engine, or
    transformers on the teacher itself (nothing trains it)."""
    engine = separate_engine(cfg, teacher, tokenizer, acc)
    if engine is not None:
        return engine
    return factory.make_engine("transformers", teacher.to(acc.device), tokenizer,
                               batch_prompts=cfg.generation_batch_prompts)


def check_sampling_params(cfg: GRPOConfig) -> None:
    """Every generation_kwargs key left for vLLM (rlreason.config: the named ones are moved into their
    keys) is a field of vLLM's SamplingParams: checked at start-up, not at the first generate. Without
    vLLM in this environment (a server elsewhere) the server checks each request."""
    if not cfg.generation_kwargs:
        return
    try:
        from vllm import SamplingParams
    except ImportError:
        return
    fields = set(getattr(SamplingParams, "__struct_fields__", ()))
    for key in cfg.generation_kwargs:
        if fields and key not in fields:
            raise ConfigError(f"config key 'generation_kwargs.{key}': not a vLLM SamplingParams field "
                              f"(vLLM takes: {', '.join(sorted(f for f in fields if not f.startswith('_')))})")

"""The one place that knows which rollout engine a run has: ``make_engine`` builds it from one
name, everything else talks to the ``RolloutEngine`` protocol (generate, load_weights, close).

    transformers   the policy's own transformers model generates (``HFEngine``); a copy of it
                   with ``async_rollouts`` (in a child process on CPU: ``ProcessHFEngine``)
    vllm           vLLM in this process, weights pushed from the policy (``VLLMEngine``)
    vllm_server    a client of a running ``rlreason-vllm-serve`` (``VLLMServerEngine``)

The config key is ``rollout_engine``; TRL's ``use_vllm`` / ``vllm_mode`` are read as its
aliases (``GRPOConfig``). vLLM is imported only when a vLLM engine is asked for.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch

from rlreason.rollout.base import RolloutEngine
from rlreason.rollout.hf import HFEngine

EngineName = Literal["transformers", "vllm", "vllm_server"]
ENGINES: tuple[str, ...] = ("transformers", "vllm", "vllm_server")


@dataclass(frozen=True)
class ServerSpec:
    """Where a vLLM server is and how to talk to it (``VLLMServerEngine``'s settings)."""

    url: str
    weight_transfer: str = "auto"
    group_port: int = 51216
    connect_timeout_s: float = 240.0
    max_retries: int = 3
    retry_delay_s: float = 1.0
    is_sender: bool = True  # one process sends the weights; the others only generate


def make_engine(name: str, model: Any, tokenizer: Any, *, seed: int = 0, batch_prompts: int = 64,
                copy_policy: bool = False, in_child: bool = False, batch_seeds: bool = False,
                server: ServerSpec | None = None, **vllm_kwargs: Any) -> RolloutEngine:
    """The engine called ``name`` for ``model`` (a transformers model; vllm also takes a folder).

    ``transformers``: generates with ``model`` itself, or with a frozen copy (``copy_policy``: the
    update then cannot change the weights a batch is sampled with), in a child process when
    ``in_child``. ``batch_seeds``: seeded prompts share decode loops (``HFEngine``).
    ``vllm``: ``vllm_kwargs`` go to ``VLLMEngine`` (gpu_memory_utilization, dtype, ...).
    ``vllm_server``: needs ``server``; the server is given ``model``'s weights at once, since it may
    hold others.
    """
    if name == "transformers":
        if copy_policy:
            model = copy.deepcopy(model).eval().requires_grad_(False)
        if in_child:
            from rlreason.rollout.hf_process import ProcessHFEngine

            return ProcessHFEngine(model, tokenizer, batch_prompts, batch_seeds=batch_seeds)
        return HFEngine(model, tokenizer, batch_prompts, batch_seeds=batch_seeds)
    if name == "vllm":
        try:
            import vllm  # noqa: F401  (fail here, with a clear message, before anything loads)

            from rlreason.rollout.vllm import VLLMEngine
        except ImportError as e:
            raise ImportError(f"the vllm engine needs vLLM, which is not installed here ({e}); see "
                              "docs/install.md, or generate with the transformers engine") from e
        return VLLMEngine(model, tokenizer, seed=seed, **vllm_kwargs)
    if name == "vllm_server":
        if server is None:
            raise ValueError("the vllm_server engine needs the server's address (ServerSpec)")
        from rlreason.lora import merged_named_parameters
        from rlreason.rollout.vllm_server import VLLMServerEngine

        engine = VLLMServerEngine(server.url, tokenizer, weight_transfer=server.weight_transfer,
                                  group_port=server.group_port, seed=seed, connect_timeout_s=server.connect_timeout_s,
                                  is_sender=server.is_sender, max_retries=server.max_retries,
                                  retry_delay_s=server.retry_delay_s)
        engine.load_weights(merged_named_parameters(model))
        return engine
    raise ValueError(f"unknown rollout engine {name!r}; the engines are {', '.join(ENGINES)}")


def shares_policy(engine: RolloutEngine, model: torch.nn.Module) -> bool:
    """Whether ``engine`` generates with ``model``'s own weights (unwrapped): nothing to sync,
    never stale, and it cannot generate beside the update."""
    return isinstance(engine, HFEngine) and engine.model is model


def close(engine: RolloutEngine | None) -> None:
    """Release what ``engine`` holds (vLLM's workers, a server connection, a child process)."""
    if engine is not None:
        engine.close()

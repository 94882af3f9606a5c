"""The rollout engine interface: what the trainer and the evaluator ask of a generator.

Engines are interchangeable (transformers, vLLM in-process, a vLLM server): the trainer
only ever calls ``generate`` and ``load_weights``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import torch

# How a separate vLLM server receives the policy's weights (config key vllm_weight_transfer).
WeightBackend = Literal["gloo", "nccl"]


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample. ``temperature == 0`` means greedy decoding."""

    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop_token_ids: tuple[int, ...] = ()  # extra stop tokens besides the tokenizer's eos
    min_p: float = 0.0  # keep tokens with p >= min_p * p(most likely), after the temperature; 0 = off
    # > 1 divides positive logits (multiplies negative ones) of tokens already in the prompt or the
    # completion, before the temperature (transformers' and vLLM's rule); 1 = off
    repetition_penalty: float = 1.0
    # vLLM only: further SamplingParams settings (TRL's generation_kwargs beyond the keys above), as
    # (name, value) pairs; the transformers engine's decode loop implements none (config refuses them)
    extra: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Sample:
    """One completion: its token ids (including the stop token, if any), text, and the
    per-token log-probabilities under the distribution it was sampled from.

    With tools, ``token_ids`` is everything after the prompt: the model's turns and the inserted
    tool-result tokens; ``logprobs`` has the same length (0.0 at inserted tokens, which
    ``loss_mask`` marks 0) and ``text`` decodes all of it (special tokens skipped)."""

    token_ids: list[int]
    text: str
    logprobs: list[float] = field(default_factory=list)
    finish_reason: Literal["stop", "length"] = "stop"
    # Multi-turn (tools): 1 where the model generated the token, 0 where tool output (and the
    # template's markup around it) was inserted; None = single turn, every token the model's.
    loss_mask: list[int] | None = None
    # The exchange as TRL's conversational completion: [{"role": "assistant", "content": str,
    # "tool_calls": [...]?}, {"role": "tool", "name": str, "content": str}, ...]; None = single turn.
    messages: list[dict] | None = None
    # {"calls": int, "failures": int, "turns": int (assistant turns), "masked_tokens": int,
    #  "per_tool": {name: calls}}; None = single turn
    tool_stats: dict | None = None
    # The rollout could not be run as asked (its environment's reset failed): its reward is unknown.
    error: str | None = None

    @property
    def model_tokens(self) -> int:
        """The tokens the model generated (TRL's completion length with tools): tool output left out."""
        return len(self.token_ids) if self.loss_mask is None else sum(self.loss_mask)


@runtime_checkable
class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig,
                 seeds: Sequence[int] | None = None) -> list[list[Sample]]:
        """``n`` samples for each prompt (token ids), grouped per prompt in input order.

        ``seeds``: one int per prompt, making each group a function of (weights, prompt, seed)
        only, whatever the batch; the trainer passes it only with ``generation_seed_per_prompt``.
        None: the engine's own random stream."""
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Take the policy's current weights."""
        ...

    def close(self) -> None:
        """Release what the engine holds (worker processes, connections); nothing for an in-process model."""
        ...


def check_generate_args(prompts: list[list[int]], seeds: Sequence[int] | None) -> None:
    """The checks every engine's ``generate`` makes: no empty prompt, one seed per prompt."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one token")
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")


def request_seeds(seeds: Sequence[int] | None, n_prompts: int, engine_seed: int, call: int) -> list[int]:
    """One vLLM sampling seed per request (prompt), in [0, 2**31): the caller's ``seeds``, or,
    without them, draws from a stream of (``engine_seed``, ``call``), the engine's count of
    ``generate`` calls, so a run is reproducible and a group does not depend on its batch.
    vLLM's parallel sampling gives request i's n samples the seeds s_i, s_i + 1, ..., s_i + n - 1.
    The colocated and the server engine both seed this way, so they sample the same groups."""
    if seeds is not None:
        return [s % 2**31 for s in seeds]
    rng = random.Random(f"rlreason-vllm:{engine_seed}:{call}")
    return [rng.randrange(2**31) for _ in range(n_prompts)]

"""The rollout engine interface: what the trainer and the evaluator ask of a generator.

Engines are interchangeable (transformers, vLLM in-process, a vLLM server): the trainer
only ever calls ``generate`` and ``load_weights``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample. ``temperature == 0`` means greedy decoding."""

    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    stop_token_ids: tuple[int, ...] = ()  # extra stop tokens besides the tokenizer's eos

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Sample:
    """One completion: its token ids (including the stop token, if any), text, and the
    per-token log-probabilities under the distribution it was sampled from."""

    token_ids: list[int]
    text: str
    logprobs: list[float] = field(default_factory=list)
    finish_reason: Literal["stop", "length"] = "stop"


@runtime_checkable
class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> list[list[Sample]]:
        """``n`` samples for each prompt (token ids), grouped per prompt in input order.

        Engines may also take ``seeds=`` (one int per prompt, making each group a function of
        prompt and seed only); the trainer passes it only with ``generation_seed_per_prompt``."""
        ...

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Take the policy's current weights."""
        ...

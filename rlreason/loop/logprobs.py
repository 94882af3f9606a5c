"""Per-token log-probs of completions without materialising the [N, T, V] logits.

The log-prob pass of GRPO needs, per completion token, only two numbers out of the
vocabulary-wide logits: the sampled token's logit and the logsumexp (plus the entropy when
it is logged or trained). With a 150k vocabulary the full logits of a micro-batch (and their
gradient in the backward) are by far the largest tensors of a training step, so here the
backbone runs once to give hidden states, and the LM head, temperature and log-softmax run in
chunks of tokens. Each chunk is checkpointed: its logits are freed after the forward and
recomputed from its hidden states in the backward, so at most one chunk's logits exist at
any time, forward or backward.

Notation: N sequences, L = P + T positions (P prompt, T completion), H hidden size,
V vocabulary size, C the chunk size in tokens.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate.utils import extract_model_from_parallel
from torch.utils.checkpoint import checkpoint

from rlreason import algorithms as A
from rlreason.data.batching import model_attention_mask
from rlreason.lora import is_peft_model
from rlreason.rollout.base import SamplingConfig
from rlreason.rollout.hf import process_logits

# Tokens per chunk by default: 512 x 151,936 fp32 logits is 311 MB, and a matmul of 512 rows
# is already large enough that chunking costs little time.
DEFAULT_CHUNK_SIZE = 512


@dataclass(frozen=True)
class LogitTransform:
    """What a causal LM does to ``lm_head(hidden)`` before returning logits.

    ``logits * scale``, then ``cap * tanh(logits / cap)`` when ``softcap`` is set: Cohere's
    ``logit_scale``, Granite's ``1 / logits_scaling``, Gemma 2's ``final_logit_softcapping``.
    """

    scale: float = 1.0
    softcap: float | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def logit_transform(config) -> LogitTransform:
    """The ``LogitTransform`` a transformers model config asks for (identity for Llama, Qwen, ...).

    Models that transform their logits some other way are caught by the check in
    ``chunked_completion_logprobs``, which compares against the model's own logits.
    """
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = getattr(cfg, "logit_scale", None)
    if scale is None and getattr(cfg, "logits_scaling", None) is not None:
        scale = 1.0 / cfg.logits_scaling
    return LogitTransform(scale=1.0 if scale is None else float(scale),
                          softcap=getattr(cfg, "final_logit_softcapping", None) or None)


def sampling_logits(logits: torch.Tensor, temperature: float,
                    truncation: tuple[int, float] | tuple[int, float, float] | None = None) -> torch.Tensor:
    """The logits of the distribution the sampler drew from. [..., V] -> [..., V]

    Divided by the temperature; with ``truncation = (top_k, top_p)`` or ``(top_k, top_p, min_p)``
    also cut as the sampler cut them (``rlreason.rollout.hf.process_logits``: top-k, then top-p,
    then min-p; removed tokens -inf), so a log-softmax of them is the sampler's log-prob (vLLM's
    ``processed_logprobs``, the HF engine's), not the full distribution's, which differs by the log
    of the kept mass. The repetition penalty is not applied here (rlreason.loop.actor says why).
    """
    if temperature != 1.0:
        logits = logits / temperature
    if truncation is not None:
        top_k, top_p, *rest = truncation
        cut = SamplingConfig(max_tokens=1, temperature=1.0, top_p=top_p, top_k=top_k, min_p=rest[0] if rest else 0.0)
        logits = process_logits(logits, cut)
    return logits


def _chunk_logprobs(hidden: torch.Tensor, ids: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor],
                    transform: LogitTransform, temperature: float, with_entropy: bool, entropy_grad: bool,
                    truncation: tuple[int, float] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk: hidden [C, H], ids [C] -> (logp [C], entropy [C] or None).

    The same operations, in the same order and precision, as the unchunked path: head in the
    model's dtype, then float32, the model's transform, the temperature, log-softmax.
    """
    logits = sampling_logits(transform(head(hidden).float()), temperature, truncation)
    logp = A.selective_log_softmax(logits, ids)
    ent = None
    if with_entropy:  # after logp: the backward's recompute may stop once logp's inputs are back
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            ent = A.entropy_from_logits(logits if entropy_grad else logits.detach())
    return logp, ent


def chunked_token_logprobs(hidden: torch.Tensor, ids: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor],
                           chunk_size: int = DEFAULT_CHUNK_SIZE, temperature: float = 1.0,
                           transform: LogitTransform | None = None, with_entropy: bool = False,
                           entropy_grad: bool = False, truncation: tuple[int, float] | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(transform(head(hidden)) / temperature)[ids], ``chunk_size`` tokens at a time.

    hidden: [N, T, H] (the states that predict ``ids``), ids: [N, T] -> logp [N, T], and
    entropy [N, T] if ``with_entropy`` (with gradient only if ``entropy_grad``).

    With gradient enabled each chunk runs under non-reentrant activation checkpointing: only
    its hidden states are kept, and its logits [C, V] are recomputed in the backward, so
    neither pass ever holds more than one chunk's logits.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    transform = transform or LogitTransform()
    N, T, H = hidden.shape
    flat_h, flat_ids = hidden.reshape(N * T, H), ids.reshape(N * T)
    logps, ents = [], []
    # split, not slicing: one backward node concatenates the chunks' gradients
    for h, i in zip(flat_h.split(chunk_size), flat_ids.split(chunk_size), strict=True):
        args = (h, i, head, transform, temperature, with_entropy, entropy_grad, truncation)
        if torch.is_grad_enabled():
            lp, ent = checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(*args)
        logps.append(lp)
        ents.append(ent)
    logp = torch.cat(logps).view(N, T)
    return logp, torch.cat(ents).view(N, T) if with_entropy else None


def causal_lm_parts(model) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """(the causal LM, its decoder backbone, its LM head) under DDP/compile and PEFT wrappers.

    The LM head is the module itself (a LoRA-wrapped or quantised head keeps working); the
    decoder is the module whose first output is the final, normalised hidden states.
    """
    core = extract_model_from_parallel(model)
    if is_peft_model(core):
        core = core.get_base_model()
    head = core.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(core).__name__} has no output embeddings (LM head): set logprob_chunk_size: 0")
    decoder = core.get_decoder() if hasattr(core, "get_decoder") else core.base_model
    if "logits_to_keep" not in inspect.signature(type(core).forward).parameters:
        raise ValueError(f"{type(core).__name__}.forward takes no logits_to_keep, so the chunked log-prob pass "
                         "cannot stop it computing the full logits: set logprob_chunk_size: 0")
    return core, decoder, head


def _hidden_states(model, inputs: dict[str, torch.Tensor]):
    """One forward of ``model`` with ``logits_to_keep=1`` -> (core, head, hidden [R, L, H], the
    autocast the forward ran under, the logit transform), after checking on the one position of
    logits the model computed that the head and transform reproduce its logits."""
    core, decoder, head = causal_lm_parts(model)
    captured: list[tuple[torch.Tensor, torch.autocast]] = []

    def grab(mod, args, out) -> None:
        # The head must run under the autocast the model's forward ran under (accelerate's
        # mixed precision wraps only that forward), or its precision would differ.
        device = out[0].device.type
        captured.append((out[0], torch.autocast(device, dtype=torch.get_autocast_dtype(device),
                                                enabled=torch.is_autocast_enabled(device))))

    hook = decoder.register_forward_hook(grab)
    try:
        out = model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        hook.remove()
    hidden, autocast = captured[0]  # hidden [R, L, H]
    transform = logit_transform(core.config)
    with autocast, torch.no_grad():
        expected = out.logits[:, -1].float()  # [R, V]
        ours = transform(head(hidden[:, -1]).float())
        # (non-finite logits are the trainer's non-finite guard's business, not a transform mismatch)
        finite = bool(torch.isfinite(expected).all())
        if finite and not torch.allclose(ours, expected, rtol=2e-2, atol=2e-2 * (1.0 + expected.abs().max().item())):
            raise ValueError(f"{type(core).__name__}: the chunked log-prob pass does not reproduce the model's "
                             f"logits (max difference {(ours - expected).abs().max().item():.3g}); the model "
                             "transforms its logits in a way rlreason does not know. Set logprob_chunk_size: 0")
    return core, head, hidden, autocast, transform


def chunked_completion_logprobs(model, batch: dict[str, torch.Tensor], temperature: float = 1.0,
                                chunk_size: int = DEFAULT_CHUNK_SIZE, with_entropy: bool = False,
                                entropy_grad: bool = False, truncation: tuple[int, float] | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``trainer.completion_logprobs`` without the [N, L, V] logits: logp [N, T] (+ entropy [N, T]).

    ``batch`` as ``rlreason.data.batching.pack`` builds it. The forward goes through ``model`` itself (so DDP
    still synchronises gradients and PEFT adapters apply) with ``logits_to_keep=1``; a hook on
    the decoder picks up the hidden states [N, L, H]. The one position of logits the model does
    compute checks that the chunked head reproduces the model's logits, so a model that
    transforms them in a way ``logit_transform`` does not know fails loudly instead of training
    on wrong log-probs.
    """
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    core, head, hidden, autocast, transform = _hidden_states(model, inputs)
    with autocast:
        p_w = batch["prompt_width"]
        return chunked_token_logprobs(hidden[:, p_w - 1:-1], batch["input_ids"][:, p_w:], head, chunk_size,
                                      temperature, transform, with_entropy, entropy_grad, truncation)


def packed_completion_logprobs(model, batch: dict[str, torch.Tensor], temperature: float = 1.0,
                               chunk_size: int | None = DEFAULT_CHUNK_SIZE, with_entropy: bool = False,
                               entropy_grad: bool = False, truncation: tuple[int, float] | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the completion tokens of a prompt-group-packed batch (``rlreason.data.batching.pack_groups``).

    -> logp [N, T] (+ entropy [N, T]) in the padded layout of ``completion_mask``, zero on
    padding. Only the hidden states that predict completion tokens go through the LM head
    (chunked when ``chunk_size`` > 0, else the model's full logits are taken and indexed).
    """
    core = extract_model_from_parallel(model)
    dtype = next(core.parameters()).dtype
    mask = model_attention_mask(core, batch["attention_mask"], dtype if dtype.is_floating_point else torch.float32)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": mask, "position_ids": batch["position_ids"]}
    valid = batch["token_mask"].bool()  # [N, T]
    src, ids = batch["src"][valid], batch["completion_ids"][valid]  # [n]
    if chunk_size:
        _, head, hidden, autocast, transform = _hidden_states(model, inputs)
        with autocast:
            h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, src)  # [n, H]
            lp, ent = chunked_token_logprobs(h[None], ids[None], head, chunk_size, temperature, transform,
                                             with_entropy, entropy_grad, truncation)
    else:
        logits = model(**inputs, use_cache=False).logits
        logits = logits.reshape(-1, logits.shape[-1]).index_select(0, src).float()  # [n, V]
        logits = sampling_logits(logits, temperature, truncation)
        lp = A.selective_log_softmax(logits, ids)
        ent = None
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                ent = A.entropy_from_logits(logits if entropy_grad else logits.detach())

    def scatter(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(valid.shape, dtype=x.dtype, device=x.device).masked_scatter(valid, x.reshape(-1))

    return scatter(lp), scatter(ent) if ent is not None else None


# ---------------------------------------------------------------------- the trainer's log-prob pass


def completion_logprobs(model, batch: dict[str, torch.Tensor], temperature: float = 1.0,
                        with_entropy: bool = False, entropy_grad: bool = False, chunk_size: int | None = None,
                        truncation: tuple[int, float] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of the completion tokens under ``model``.

    -> logp [N, T] (and entropy [N, T] if asked; with gradient only for an entropy bonus).
    Logits are divided by the sampling temperature so the ratio compares the distribution
    the tokens were drawn from; ``truncation = (top_k, top_p)`` also applies the sampler's cut
    (``sampling_logits``: the importance weight's pi_old must be the sampler's truncated
    distribution). ``chunk_size`` > 0: the LM head and log-softmax run that many
    tokens at a time (``rlreason.loop.logprobs``), never holding the [N, L, V] logits; else the
    model's full logits, the reference the chunked pass is tested against. A batch packed by
    prompt group (``rlreason.data.batching.pack_groups``, it has "src") is scored from its packed rows.
    """
    if truncation is not None and with_entropy:
        raise ValueError("completion_logprobs: the entropy of a truncated distribution is not computed (its "
                         "removed tokens are -inf); ask for one or the other")
    if "src" in batch:
        return packed_completion_logprobs(model, batch, temperature, chunk_size, with_entropy, entropy_grad,
                                          truncation)
    if chunk_size:
        return chunked_completion_logprobs(model, batch, temperature, chunk_size, with_entropy, entropy_grad,
                                           truncation)
    p_w = batch["prompt_width"]
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], use_cache=False)
    logits = sampling_logits(out.logits[:, p_w - 1:-1].float(), temperature, truncation)  # t predicts t + 1
    logp = A.selective_log_softmax(logits, batch["input_ids"][:, p_w:])
    ent = None
    if with_entropy:
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            ent = A.entropy_from_logits(logits if entropy_grad else logits.detach())
    return logp, ent


def enable_gradient_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in the backward instead of keeping them.

    Non-reentrant checkpointing: it needs no ``requires_grad`` inputs (so a LoRA model with
    frozen embeddings works) and supports ``no_sync``. transformers >= 5.2x calls it activation
    checkpointing and deprecates the old name, which older versions (vLLM's pin) still need.
    The training forward passes ``use_cache=False``, as checkpointed layers require.
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

"""The chunked log-prob pass (rlreason/loop/logprobs.py) against the full-logits reference: values,
entropy and gradients, tied and untied heads, temperature, logit soft-capping, LoRA; and that it
really never builds a [N, T, V] tensor, forward or backward."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlreason.data.batching import pack
from rlreason.loop.logprobs import LogitTransform, chunked_token_logprobs, completion_logprobs, logit_transform

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [3]]
COMPLETIONS = [[20, 21, 22, 23, 24], [30, 31], [40, 41, 42, 43, 44, 45, 46], [50]]


def _reference(hidden, ids, weight, temperature=1.0, softcap=None):
    """Independent reference: full logits, log_softmax, gather; entropy as -sum p log p."""
    logits = hidden @ weight.T
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    logp_all = torch.log_softmax(logits / temperature, dim=-1)
    logp = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return logp, -(logp_all.exp() * logp_all).sum(-1)


@pytest.mark.parametrize("chunk_size", [1, 7, 30, 1000])
@pytest.mark.parametrize(("temperature", "softcap"), [(1.0, None), (0.7, None), (1.3, 3.0)])
def test_chunked_equals_full_logits_values_and_gradients(chunk_size, temperature, softcap):
    g = torch.Generator().manual_seed(0)
    N, T, H, V = 3, 10, 16, 50  # N * T = 30 tokens: chunks of 7 leave a remainder
    hidden = torch.randn(N, T, H, generator=g, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(H, V, bias=False, dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=g, dtype=torch.float64))
    ids = torch.randint(0, V, (N, T), generator=g)
    w_lp, w_ent = torch.randn(N, T, generator=g, dtype=torch.float64), torch.randn(N, T, generator=g,
                                                                                   dtype=torch.float64)

    ref_lp, ref_ent = _reference(hidden, ids, head.weight, temperature, softcap)
    ((ref_lp * w_lp).sum() + (ref_ent * w_ent).sum()).backward()
    ref_grads = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None

    # the chunked path upcasts the head's output to float32 (as the trainer does): compare at float32 precision
    lp, ent = chunked_token_logprobs(hidden, ids, head, chunk_size, temperature, LogitTransform(softcap=softcap),
                                     with_entropy=True, entropy_grad=True)
    assert lp.shape == ent.shape == (N, T)
    ((lp * w_lp).sum() + (ent * w_ent).sum()).backward()
    torch.testing.assert_close(lp.double(), ref_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent.double(), ref_ent, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden.grad, ref_grads[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(head.weight.grad, ref_grads[1], atol=1e-5, rtol=1e-4)


def test_entropy_without_gradient_and_no_grad_mode():
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 5, 8, generator=g, requires_grad=True)
    head = torch.nn.Linear(8, 20)
    ids = torch.randint(0, 20, (2, 5), generator=g)
    lp, ent = chunked_token_logprobs(hidden, ids, head, 3, with_entropy=True, entropy_grad=False)
    assert lp.requires_grad and not ent.requires_grad
    with torch.no_grad():
        lp2, ent2 = chunked_token_logprobs(hidden, ids, head, 3)
    assert ent2 is None and not lp2.requires_grad
    torch.testing.assert_close(lp2, lp.detach())
    # a bias in the head is part of the logits too
    ref = torch.log_softmax(head(hidden), -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(lp, ref, atol=1e-6, rtol=1e-6)


def test_logit_transform_reads_the_config():
    assert logit_transform(Qwen2Config()) == LogitTransform()
    cfg = Qwen2Config()
    cfg.final_logit_softcapping, cfg.logit_scale = 30.0, 0.5
    assert logit_transform(cfg) == LogitTransform(scale=0.5, softcap=30.0)
    cfg = Qwen2Config()
    cfg.logits_scaling = 8.0  # Granite divides
    assert logit_transform(cfg) == LogitTransform(scale=0.125)
    x = torch.tensor([-100.0, 0.0, 1.0, 100.0])
    torch.testing.assert_close(LogitTransform(scale=0.5, softcap=30.0)(x), 30.0 * torch.tanh(0.5 * x / 30.0))


def _model(tied: bool, vocab: int = 64, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                      tie_word_embeddings=tied, pad_token_id=0)
    return Qwen2ForCausalLM(cfg).float()


def _loss_and_grads(model, batch, chunk_size, temperature):
    model.zero_grad(set_to_none=True)
    logp, ent = completion_logprobs(model, batch, temperature, with_entropy=True, entropy_grad=True,
                                    chunk_size=chunk_size)
    mask = batch["completion_mask"]
    w = torch.linspace(-1, 1, mask.numel()).view_as(mask)  # distinct per-token weights: a real test of the grads
    ((logp * w * mask).sum() + 0.1 * (ent * mask).sum()).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), ent.detach(), grads


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_model_chunked_equals_unchunked(tied, temperature):
    model = _model(tied).train()
    batch = pack(PROMPTS, COMPLETIONS, 0)
    lp0, ent0, g0 = _loss_and_grads(model, batch, None, temperature)
    lp1, ent1, g1 = _loss_and_grads(model, batch, 5, temperature)
    m = batch["completion_mask"].bool()
    torch.testing.assert_close(lp1[m], lp0[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent1[m], ent0[m], atol=1e-5, rtol=1e-5)
    assert g0.keys() == g1.keys()
    assert len(g0) == len(list(model.parameters()))  # every parameter, the head included, gets a gradient
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], atol=1e-5, rtol=1e-4, msg=k)


def test_mixed_precision_head_runs_under_the_forward_autocast():
    """accelerate's bf16 autocast wraps only the model's forward: the chunked head must run under it too,
    or its log-probs would be computed in another precision than the full-logits ones."""
    model = _model(tied=False, vocab=256)
    # what accelerate's prepare() does with mixed_precision="bf16" (its state is a per-process
    # singleton, so the test cannot build a second Accelerator with another precision)
    model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward)
    batch = pack(PROMPTS, COMPLETIONS, 0)
    m = batch["completion_mask"].bool()
    with torch.no_grad():
        full, _ = completion_logprobs(model, batch, chunk_size=None)
        chunked, _ = completion_logprobs(model, batch, chunk_size=4)
        fp32, _ = completion_logprobs(_model(tied=False, vocab=256), batch, chunk_size=None)  # same weights
    assert (full[m] - fp32[m]).abs().max() > 1e-4  # autocast is really on: bf16 changes the numbers
    torch.testing.assert_close(chunked[m], full[m], atol=1e-5, rtol=0)  # and the chunked head uses it too


def test_softcapping_model_is_reproduced():
    """Gemma 2 soft-caps its logits (final_logit_softcapping): the chunked head applies the same cap."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=0,
                       final_logit_softcapping=0.5)  # a cap small enough to bend every logit
    model = Gemma2ForCausalLM(cfg).float()
    batch = pack(PROMPTS, COMPLETIONS, 0)
    lp0, ent0, g0 = _loss_and_grads(model, batch, None, 0.8)
    lp1, ent1, g1 = _loss_and_grads(model, batch, 3, 0.8)
    m = batch["completion_mask"].bool()
    torch.testing.assert_close(lp1[m], lp0[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent1[m], ent0[m], atol=1e-5, rtol=1e-5)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], atol=1e-5, rtol=1e-4, msg=k)


def test_unknown_logit_transform_fails_loudly():
    model = _model(tied=True)
    model.config.final_logit_softcapping = 0.1  # Qwen2 ignores it, so our head would differ from the model's
    with pytest.raises(ValueError, match="logprob_chunk_size: 0"):
        completion_logprobs(model, pack(PROMPTS, COMPLETIONS, 0), chunk_size=4)


def test_lora_model_and_disabled_adapter():
    peft = pytest.importorskip("peft")
    base = _model(tied=False)
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"],
                                                     init_lora_weights=False))
    batch = pack(PROMPTS, COMPLETIONS, 0)
    lp0, ent0, g0 = _loss_and_grads(lora, batch, None, 1.0)
    lp1, ent1, g1 = _loss_and_grads(lora, batch, 4, 1.0)
    m = batch["completion_mask"].bool()
    torch.testing.assert_close(lp1[m], lp0[m], atol=1e-5, rtol=1e-5)
    assert any("lm_head" in k and "lora" in k for k in g1)  # the adapter on the head is trained too
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], atol=1e-5, rtol=1e-4, msg=k)
    with torch.no_grad(), lora.disable_adapter():
        off0, _ = completion_logprobs(lora, batch, chunk_size=None)
        off1, _ = completion_logprobs(lora, batch, chunk_size=4)
    torch.testing.assert_close(off1[m], off0[m], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(off1[m], lp1[m])  # the adapter really was on outside the context


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def _saved_for_backward(model, fn) -> int:
    """Elements of the distinct activations (not parameters) autograd keeps for the backward
    while ``fn`` runs; what a chunk's checkpoint recomputes is not kept, so it is not counted."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[tuple[int, int], int] = {}

    def pack_hook(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            seen[(t.untyped_storage().data_ptr(), t.numel())] = t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
        out = fn()
    return out, sum(seen.values())


@pytest.mark.parametrize("chunk_size", [None, 8])
def test_full_logits_never_exist_when_chunked(chunk_size):
    V = 8192  # the vocabulary dwarfs everything else, as in real models
    model = _model(tied=False, vocab=V)
    comps = [[(7 * i + j) % V for j in range(32)] for i in range(4)]
    batch = pack([[1, 2, 3]] * 4, comps, 0)
    N, T = batch["completion_mask"].shape
    full = N * T * V
    fwd, bwd = _LargestTensor(), _LargestTensor()
    with fwd:
        (logp, ent), saved = _saved_for_backward(
            model, lambda: completion_logprobs(model, batch, 0.9, with_entropy=True, entropy_grad=True,
                                        chunk_size=chunk_size))
    with bwd:
        (logp.sum() + ent.sum()).backward()
    if chunk_size is None:  # the reference does build and keep them: the probes can see them
        assert fwd.numel >= full and bwd.numel >= full and saved >= full
    else:  # no tensor larger than one chunk's logits or a [V, H] weight, and no chunk's logits kept
        limit = max(chunk_size * V, V * model.config.hidden_size)
        assert fwd.numel <= limit < full
        assert bwd.numel <= limit
        assert saved < full / 2

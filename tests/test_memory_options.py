"""Memory options besides the chunked log-prob pass: gradient checkpointing (same loss and
gradients, layers really recomputed) and the 8-bit optimizer switch (``optim``)."""

from __future__ import annotations

import sys
import types
import warnings

import pytest
import torch
from test_trainer import _varied_reward, make_trainer, one_step, params
from transformers import AutoModelForCausalLM

from rlreason.build.optim import optimizer_class, optimizer_kwargs
from rlreason.config import ConfigError, GRPOConfig
from rlreason.data.batching import pack
from rlreason.loop.logprobs import completion_logprobs, enable_gradient_checkpointing

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
COMPLETIONS = [[20, 21, 22, 23, 24], [30, 31], [40, 41, 42, 43, 44, 45, 46]]


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_gradient_checkpointing_recomputes_layers_with_the_same_gradients(tiny_path, chunk_size):
    batch = pack(PROMPTS, COMPLETIONS, 0)
    results = []
    for checkpointing in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_path).train()
        if checkpointing:
            with warnings.catch_warnings():
                warnings.simplefilter("error", FutureWarning)  # no deprecated entry point on this transformers
                enable_gradient_checkpointing(model)
        calls: list[int] = []
        # a module inside the layer (the layer's own hooks stay outside the checkpoint); a pre-hook, as
        # the recompute stops once it has every saved tensor back, before the module returns
        model.model.layers[0].mlp.register_forward_pre_hook(lambda *a, calls=calls: calls.append(1))
        logp, ent = completion_logprobs(model, batch, 0.8, with_entropy=True, entropy_grad=True, chunk_size=chunk_size)
        mask = batch["completion_mask"]
        loss = (logp * torch.linspace(-1, 1, mask.numel()).view_as(mask) * mask).sum() + 0.1 * (ent * mask).sum()
        forward_calls = len(calls)
        loss.backward()
        results.append((loss.item(), {k: p.grad.clone() for k, p in model.named_parameters()}))
        # checkpointed: the layer runs again in the backward to recompute its activations
        assert (forward_calls, len(calls)) == ((1, 2) if checkpointing else (1, 1))
    (loss0, g0), (loss1, g1) = results
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], atol=1e-6, rtol=1e-5, msg=k)


def test_trainer_with_gradient_checkpointing_makes_the_same_update(tiny_path, tmp_path):
    out = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        tr = make_trainer(tiny_path, tmp_path, reward_funcs=[_varied_reward], gradient_checkpointing=checkpointing)
        layer = tr.acc.unwrap_model(tr.model).model.layers[0]
        assert layer.gradient_checkpointing == checkpointing
        m = one_step(tr)
        out.append((m, params(tr)))
    (m0, p0), (m1, p1) = out
    assert m1["loss"] == pytest.approx(m0["loss"], rel=1e-5, abs=1e-7)
    assert m1["grad_norm"] == pytest.approx(m0["grad_norm"], rel=1e-4)
    for k in p0:
        torch.testing.assert_close(p1[k], p0[k], atol=1e-6, rtol=1e-5, msg=k)


def test_unknown_optim_is_a_config_error():
    with pytest.raises(ConfigError, match="'optim'"):
        GRPOConfig(optim="adamw_9bit")
    assert optimizer_class("adamw_torch") is torch.optim.AdamW


def test_8bit_optim_without_bitsandbytes_fails_at_start_with_the_fix(tiny_path, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not installed, even where it is
    monkeypatch.setitem(sys.modules, "bitsandbytes.optim", None)
    for name in ("adamw_8bit", "paged_adamw_8bit"):
        with pytest.raises(ConfigError, match=r"config key 'optim'.*pip install bitsandbytes"):
            make_trainer(tiny_path, tmp_path, optim=name)


def test_8bit_optim_uses_the_bitsandbytes_class(tiny_path, tmp_path, monkeypatch):
    """bitsandbytes' 8-bit optimizers need its native library (CUDA); a stand-in module checks the wiring."""
    fake = types.ModuleType("bitsandbytes.optim")
    fake.AdamW8bit = type("AdamW8bit", (torch.optim.AdamW,), {})
    fake.PagedAdamW8bit = type("PagedAdamW8bit", (torch.optim.AdamW,), {})
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))
    monkeypatch.setitem(sys.modules, "bitsandbytes.optim", fake)
    for name, cls in (("adamw_8bit", fake.AdamW8bit), ("adamw_bnb_8bit", fake.AdamW8bit),
                      ("paged_adamw_8bit", fake.PagedAdamW8bit)):
        assert optimizer_class(name) is cls
    torch.manual_seed(0)
    tr = make_trainer(tiny_path, tmp_path, reward_funcs=[_varied_reward], optim="paged_adamw_8bit",
                      learning_rate=3e-4, weight_decay=0.01, adam_beta2=0.95)
    opt = tr.optimizer.optimizer
    assert type(opt) is fake.PagedAdamW8bit
    assert opt.defaults["lr"] == 3e-4 and opt.defaults["weight_decay"] == 0.01 and opt.defaults["betas"] == (0.9, 0.95)
    before = params(tr)
    one_step(tr)
    assert any(not torch.equal(before[k], v) for k, v in params(tr).items())


def test_adamw_is_fused_where_it_applies():
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    assert optimizer_kwargs("adamw_torch", params, sharded=False) == {"fused": True}
    assert optimizer_kwargs("adamw_torch", params, sharded=True) == {}  # DeepSpeed / FSDP own their optimizer
    assert optimizer_kwargs("adamw_8bit", params, sharded=False) == {}
    assert optimizer_kwargs("adamw_torch", [torch.nn.Parameter(torch.zeros(2, dtype=torch.int8),
                                                               requires_grad=False)], sharded=False) == {}
    # the fused step is the reference AdamW's up to float rounding
    torch.manual_seed(0)
    w = torch.randn(64, 32)
    grads = [torch.randn(64, 32) for _ in range(5)]
    out = []
    for fused in (False, True):
        p = torch.nn.Parameter(w.clone())
        opt = torch.optim.AdamW([p], lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, fused=fused)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        out.append(p.detach())
    torch.testing.assert_close(out[1], out[0], atol=1e-6, rtol=1e-5)

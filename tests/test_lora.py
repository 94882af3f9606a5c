"""LoRA policies on the real tiny model: merged weights for the generation engine, saving, the
config keys, and a LoRA run through the recipe."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlreason.config import ConfigError, GRPOConfig
from rlreason.lora import apply_lora, merged_named_parameters, quantization_config

peft = pytest.importorskip("peft")

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import _varied_reward, make_trainer, one_step  # noqa: E402


def lora_model(tiny_path, **kw):
    """The tiny model with a non-zero adapter (B is random, not 0), so merging changes outputs."""
    base = AutoModelForCausalLM.from_pretrained(tiny_path)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False,
                          **kw)
    torch.manual_seed(0)
    return peft.get_peft_model(base, cfg)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[5, 17, 42, 9, 77, 3, 11, 8]])
LOGIT_ATOL = 1e-4


def test_merged_weights_are_a_plain_model_computing_like_the_adapter(tiny_path):
    model = lora_model(tiny_path)
    merged = dict(merged_named_parameters(model))
    plain = AutoModelForCausalLM.from_pretrained(tiny_path)
    assert set(merged) == {n for n, _ in plain.named_parameters()}  # the base model's names, nothing else
    # the same numbers as peft's own merge (on a copy: it rewrites the weights in place)
    reference = dict(copy.deepcopy(model).merge_and_unload().named_parameters())
    for n, t in merged.items():
        torch.testing.assert_close(t, reference[n], atol=1e-6, rtol=0)
    changed = [n for n, t in merged.items() if not torch.equal(t, dict(plain.named_parameters())[n])]
    assert changed and all(any(k in n for k in ("q_proj", "v_proj", "up_proj")) for n in changed)
    before = logits(plain, IDS)
    plain.load_state_dict(merged, strict=False)  # the tied lm_head follows embed_tokens
    # (W + BA)x vs Wx + B(Ax): equal up to fp32 rounding (measured 2e-5); the adapter moves logits by far more
    torch.testing.assert_close(logits(plain, IDS), logits(model, IDS), atol=LOGIT_ATOL, rtol=0)
    assert (before - logits(model, IDS)).abs().max() > 100 * LOGIT_ATOL
    # the trained weights themselves are untouched: no merge/unmerge round trip
    assert not any(getattr(m, "merged", False) for m in model.modules())


def test_merged_weights_with_modules_to_save_and_a_disabled_adapter(tiny_path):
    model = lora_model(tiny_path, modules_to_save=["norm"])
    with torch.no_grad():
        model.base_model.model.model.norm.modules_to_save["default"].weight.mul_(1.5)
    merged = dict(merged_named_parameters(model))
    assert "model.norm.weight" in merged and not any("modules_to_save" in n or "original_module" in n for n in merged)
    plain = AutoModelForCausalLM.from_pretrained(tiny_path)
    torch.testing.assert_close(merged["model.norm.weight"], plain.model.norm.weight.detach() * 1.5)
    with model.disable_adapter():  # the LoRA layers compute with the base weights then
        base = dict(merged_named_parameters(model))
    torch.testing.assert_close(base["model.layers.0.self_attn.q_proj.weight"],
                               plain.model.layers[0].self_attn.q_proj.weight.detach(), atol=0, rtol=0)
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])


def test_plain_model_passes_through(tiny_path):
    plain = AutoModelForCausalLM.from_pretrained(tiny_path)
    assert [n for n, _ in merged_named_parameters(plain)] == [n for n, _ in plain.named_parameters()]


def test_lora_training_step_then_save_merged_and_adapter(tiny_path, tmp_path):
    cfg = GRPOConfig(use_peft=True, lora_r=4, lora_alpha=8, lora_target_modules=["q_proj", "v_proj"])
    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_path), cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    tr = make_trainer(tiny_path, tmp_path, reward_funcs=[_varied_reward], model=model, beta=0.05)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    torch.manual_seed(0)
    one_step(tr)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    out = tr.save_final(tmp_path / "final")
    reloaded = AutoModelForCausalLM.from_pretrained(out)  # a plain model: no peft needed to use it
    torch.testing.assert_close(logits(reloaded, IDS), logits(model.eval(), IDS), atol=LOGIT_ATOL, rtol=0)
    adapter = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_path), out / "adapter")
    torch.testing.assert_close(logits(adapter.eval(), IDS), logits(model, IDS), atol=LOGIT_ATOL, rtol=0)


def test_lora_config_errors():
    with pytest.raises(ConfigError, match="load_in_4bit.*use_peft"):
        GRPOConfig(load_in_4bit=True)
    with pytest.raises(ConfigError, match="lora_r"):
        GRPOConfig(use_peft=True, lora_r=0)
    cfg = GRPOConfig(use_peft=True, load_in_4bit=True)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="load_in_4bit.*bitsandbytes"):
            quantization_config(cfg)
    else:
        if not torch.cuda.is_available():
            with pytest.raises(RuntimeError, match="load_in_4bit.*CUDA"):
                quantization_config(cfg)


def test_recipe_trains_a_lora_policy(tmp_path):
    import _recipes

    out = tmp_path / "run"
    summary = _recipes.grpo(["--output_dir", str(out), "--use_peft", "true", "--lora_r", "4",
                              "--lora_target_modules", '["q_proj", "v_proj"]', "--beta", "0.04", "--max_steps", "2",
                              "--eval_steps", "0", "--final_eval_size", "20", "--eval_size", "20",
                              "--save_steps", "0", "--progress", "false", "--learning_rate", "1e-3"])
    assert summary["steps"] == 2
    metrics = (out / "metrics.jsonl").read_text()
    assert '"kl"' in metrics  # the KL term ran against the adapter-disabled base
    plain = AutoModelForCausalLM.from_pretrained(out / "final_model")
    assert not any("lora" in n for n, _ in plain.named_parameters())
    assert (out / "final_model" / "adapter" / "adapter_config.json").exists()

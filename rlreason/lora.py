"""LoRA / QLoRA policies through peft: build the adapter from the config, hand merged weights
to a generation engine, save the adapter and the merged model.

With LoRA the trainable parameters are the adapter's; the frozen base doubles as the
reference model for the KL term (the trainer disables the adapter for that pass), so a KL
penalty costs no second copy of the weights.

A generation engine (vLLM) serves a plain model, so each weight sync sends merged weights,
W + scale * B @ A for every adapted layer, under the base model's parameter names. They are
computed out of place, one layer at a time (``merged_named_parameters`` is a generator):
peft's ``merge_adapter``/``unmerge_adapter`` would add and subtract the delta in the trained
weights themselves, and in bf16 that round trip does not give the original weights back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import torch

# Parameter-name pieces peft inserts into the wrapped model's names.
_MODULES_TO_SAVE = re.compile(r"\.modules_to_save\.[^.]+")


def is_peft_model(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def lora_config(cfg):
    """peft.LoraConfig from the GRPOConfig's lora_* keys."""
    try:
        import peft
    except ImportError as e:
        raise ImportError("config key 'use_peft': peft is not installed; pip install 'rlreason[peft]'") from e
    return peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                           target_modules=cfg.lora_target_modules, modules_to_save=cfg.lora_modules_to_save or None,
                           task_type="CAUSAL_LM")


def quantization_config(cfg):
    """transformers BitsAndBytesConfig for QLoRA (4-bit NF4 base), or None."""
    if not cfg.load_in_4bit:
        return None
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise ImportError("config key 'load_in_4bit': QLoRA needs bitsandbytes (pip install bitsandbytes) "
                          "and a CUDA GPU") from e
    if not torch.cuda.is_available():
        raise RuntimeError("config key 'load_in_4bit': 4-bit QLoRA needs a CUDA GPU; this machine has none")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def apply_lora(model, cfg):
    """Wrap ``model`` with a fresh LoRA adapter per the config (base weights frozen)."""
    import peft

    if cfg.load_in_4bit:
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    return peft.get_peft_model(model, lora_config(cfg))


def _delta(layer) -> torch.Tensor | None:
    """Sum of the active adapters' weight deltas of one peft LoRA layer (None if none apply)."""
    if getattr(layer, "merged", False) or getattr(layer, "disable_adapters", False):
        return None  # merged: already inside the base weight; disabled: the base weight is what it computes
    deltas = []
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        if getattr(layer, "use_dora", {}).get(name, False):
            raise NotImplementedError("merged weights for DoRA adapters are not supported; use plain LoRA")
        deltas.append(layer.get_delta_weight(name))
    return sum(deltas) if deltas else None


def merged_named_parameters(model) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights the policy computes with, as a plain model's ``named_parameters()``.

    For a peft LoRA model: base-model names (no ``base_model.model.``, ``.base_layer`` or
    ``.modules_to_save.<adapter>``; adapter tensors left out) and W + delta for every adapted
    weight, built one layer at a time. Any other model: its own ``named_parameters()``.
    """
    if not is_peft_model(model):
        yield from ((n, p.detach()) for n, p in model.named_parameters())
        return
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    if any(hasattr(p, "ds_id") or type(p).__name__ == "DTensor" for p in base.parameters()):
        # the deltas would be computed from shards; a LoRA policy is small enough for plain DDP
        raise NotImplementedError("merged LoRA weights from a ZeRO-3/FSDP-sharded policy are not supported; "
                                  "train LoRA with DDP or ZeRO-2 (recipes/accelerate/multi_gpu.yaml, "
                                  "deepspeed_zero2.yaml)")
    lora_layers = {name: mod for name, mod in base.named_modules() if isinstance(mod, LoraLayer)}
    for name, p in base.named_parameters():
        if ".lora_" in name or ".original_module." in name:
            continue
        t = p.detach()
        owner, sep, leaf = name.rpartition(".base_layer.")
        if sep and leaf == "weight" and owner in lora_layers:
            delta = _delta(lora_layers[owner])
            if delta is not None:
                t = t + delta.to(t.dtype)
        yield _MODULES_TO_SAVE.sub("", name.replace(".base_layer.", ".")), t


def save_merged(model, tokenizer, out_dir: str | Path) -> Path:
    """A LoRA policy as a plain Hugging Face model (merged weights), loadable without peft."""
    out_dir = Path(out_dir)
    base = model.get_base_model()
    state = {n: t.contiguous() for n, t in merged_named_parameters(model)}
    # save_pretrained on the base (a transformers model) with the clean state dict: the config
    # written is the base model's, with no adapter in it
    base.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir

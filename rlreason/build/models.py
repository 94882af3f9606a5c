"""Config -> models: the tokenizer, the policy (LoRA / quantized if configured), the teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason import lora, tiny
from rlreason.config import ConfigError, GRPOConfig
from rlreason.data import check_tokenizer
from rlreason.distill.teacher import check_same_tokenizer


def load_tokenizer(cfg: GRPOConfig, acc: Accelerator, key: str = "model_name_or_path") -> tuple[str, Any]:
    """(resolved path, tokenizer) of the model named by config key ``key``: an embedded tiny
    model (built on first use), a local folder or a hub id."""
    path = getattr(cfg, key)
    if path in tiny.SPECS:  # "tiny" (dense Qwen2), "tiny-moe" (Qwen2-MoE), "tiny-small" (a smaller Qwen2), "tiny-tools"
        with acc.main_process_first():  # one process builds the cached model, the others reuse it
            path = str(tiny.ensure(tiny.SPECS[path], log=acc.print))
    local = Path(path).expanduser()
    if not local.exists() and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise FileNotFoundError(f"config key '{key}': no model folder at {path}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except OSError as e:
        raise OSError(f"config key '{key}': cannot load a tokenizer from {path!r} (neither a local "
                      f"model folder nor a reachable hub model): {e}") from e
    check_tokenizer(tokenizer, path, f"config key '{key}' ({path})")
    if key == "model_name_or_path" and cfg.chat_template:  # as TRL: the config's template replaces the model's
        tokenizer.chat_template = cfg.chat_template
    if tokenizer.pad_token_id is None:
        raise ValueError(f"config key '{key}': the tokenizer of {path} has no pad token; set one in the model folder")
    return path, tokenizer


def load_policy(cfg: GRPOConfig, acc: Accelerator, model: torch.nn.Module | None = None, tokenizer: Any = None,
                peft_config: Any = None) -> tuple[torch.nn.Module, Any]:
    """(policy, tokenizer): float32 weights (bf16 under 4/8-bit quantization), LoRA if configured.

    A Python caller (TRL's ``GRPOTrainer(model=..., processing_class=..., peft_config=...)``) may
    give the model object (used as it is, a PEFT model included), the tokenizer (else the one of
    the model's path, as TRL loads it) and a peft config (a fresh adapter from it, instead of the
    config's ``lora_*`` keys)."""
    if model is None:
        path, loaded = load_tokenizer(cfg, acc)
        tokenizer = tokenizer if tokenizer is not None else loaded
        quant = lora.quantization_config(cfg)
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=cfg.trust_remote_code,
                                                     dtype=torch.bfloat16 if quant else torch.float32,
                                                     quantization_config=quant)
    else:
        path = getattr(model.config, "_name_or_path", "") or type(model).__name__
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
            except (OSError, ValueError) as e:
                raise OSError(f"GRPOTrainer: the model object has no tokenizer at {path!r} ({e}); pass "
                              f"processing_class=<its tokenizer>") from e
    if tokenizer.pad_token_id is None:  # as TRL: the eos token pads
        tokenizer.pad_token = tokenizer.eos_token
    check_tokenizer(tokenizer, path, f"the policy's tokenizer ({path})")
    if cfg.chat_template:  # as TRL: the config's template replaces the model's
        tokenizer.chat_template = cfg.chat_template
    check_positions(cfg, model.config, path)
    if peft_config is not None:
        import peft

        if lora.is_peft_model(model):
            raise ValueError("GRPOTrainer: peft_config was given but the model already has an adapter; pass one")
        model = peft.get_peft_model(model, peft_config)
    elif cfg.use_peft and not lora.is_peft_model(model):
        model = lora.apply_lora(model, cfg)
    return model, tokenizer


def check_positions(cfg: GRPOConfig, model_config: Any, path: str) -> None:
    """A prompt of ``max_prompt_length`` tokens and its longest completion (``max_completion_length``,
    or ``eval_max_tokens`` when longer) fit in the model's ``max_position_embeddings``: beyond them
    a model with learned positions fails at that step and a rotary one computes what it was never
    trained on."""
    limit = getattr(model_config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return
    prompt = cfg.max_prompt_length or 0  # None: no prompt limit, so only the completion is checked here
    key, longest = max([("max_completion_length", cfg.max_completion_length),
                        ("eval_max_tokens", cfg.eval_max_tokens or 0)], key=lambda kv: kv[1])
    if prompt + longest <= limit:
        return
    if not prompt:
        raise ConfigError(f"config key '{key}': {longest} tokens is beyond the model's max_position_embeddings "
                          f"({limit}, {path}); lower it to at most {limit} minus the longest prompt")
    if prompt >= limit:
        raise ConfigError(f"config key 'max_prompt_length': {prompt} tokens is not below the model's "
                          f"max_position_embeddings ({limit}, {path}), and a prompt's completion must fit there "
                          f"too: set max_prompt_length + {key} ({longest}) <= {limit}")
    raise ConfigError(f"config keys 'max_prompt_length' + '{key}': {prompt} + {longest} = {prompt + longest} tokens "
                      f"is beyond the model's max_position_embeddings ({limit}, {path}); lower one of them, e.g. "
                      f"{key}: {limit - prompt}")


def load_teacher(cfg: GRPOConfig, acc: Accelerator, tokenizer: Any = None) -> tuple[torch.nn.Module | None, Any]:
    """(teacher, its tokenizer) for distillation, or (None, None) without teacher_model_name_or_path.
    With the student's ``tokenizer`` given (on-policy distillation), the two must be the same."""
    if not cfg.teacher_model_name_or_path:
        return None, None
    path, teacher_tok = load_tokenizer(cfg, acc, "teacher_model_name_or_path")
    if tokenizer is not None:
        check_same_tokenizer(tokenizer, teacher_tok, cfg.model_name_or_path, cfg.teacher_model_name_or_path)
    teacher = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=cfg.trust_remote_code,
                                                   dtype=torch.float32 if acc.device.type == "cpu" else torch.bfloat16)
    return teacher.eval().requires_grad_(False), teacher_tok


def disable_dropout(model: torch.nn.Module) -> int:
    """Switch every dropout of ``model`` off (``nn.Dropout`` modules, LoRA's included, and the
    attention dropout transformers' attention modules hold as a float); -> how many were on.

    Dropout in the log-prob passes is noise in the ratio pi_theta / pi_old: two passes over the
    same tokens with the same weights disagree, so a ratio that should be 1 is clipped at random
    (with num_iterations > 1), and the KL to the reference is not 0 when it should be. Eval mode
    would also switch it off but also switches off transformers' gradient checkpointing, so the
    probabilities are made 0 instead.
    """
    on = 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout) and mod.p > 0:
            mod.p, on = 0.0, on + 1
        if isinstance(getattr(mod, "attention_dropout", None), float) and mod.attention_dropout > 0:
            mod.attention_dropout, on = 0.0, on + 1
    return on


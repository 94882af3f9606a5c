"""Our loss against TRL's GRPOTrainer loss on identical inputs (same model, completions,
advantages, old and reference log-probs), for every loss_type both projects have; and the real
GRPOTrainer.update's gradients against TRL's _compute_loss backward."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch

from rlreason import algorithms as A
from rlreason.data.batching import pack
from rlreason.loop.logprobs import completion_logprobs
from rlreason.rewards import completion_text
from rlreason.rollout.base import SamplingConfig
from rlreason.rollout.hf import HFEngine
from rlreason.tiny import prompt_text

trl = pytest.importorskip("trl")

# Same digit counts -> same token count: no left padding, so both projects see identical positions.
QUESTIONS = ["12+34", "56+78", "90+12", "34+56"]

CASES = [  # (our preset, TRL loss_type, TRL importance_sampling_level, beta)
    ("grpo", "grpo", "token", 0.0),
    ("grpo", "grpo", "token", 0.04),
    ("dr_grpo", "dr_grpo", "token", 0.0),
    ("dapo", "dapo", "token", 0.0),
    ("bnpo", "bnpo", "token", 0.04),
    ("gspo", "grpo", "sequence", 0.0),
]


@pytest.fixture(scope="module")
def batch(tiny_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    prompts = [tok(prompt_text(tok, q), add_special_tokens=False)["input_ids"] for q in QUESTIONS]
    assert len({len(p) for p in prompts}) == 1
    torch.manual_seed(0)
    groups = HFEngine(model, tok).generate(prompts, 2, SamplingConfig(max_tokens=40, temperature=1.0))
    samples = [s for g in groups for s in g]
    b = pack([p for p in prompts for _ in range(2)], [s.token_ids for s in samples], tok.pad_token_id)
    with torch.no_grad():
        logp, _ = completion_logprobs(model, b)
    g = torch.Generator().manual_seed(1)
    # old and reference policies a little off the current one, so ratios leave 1 and clipping engages
    old = logp + 0.3 * torch.randn(logp.shape, generator=g)
    ref = logp + 0.2 * torch.randn(logp.shape, generator=g)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 0.0, 0.0])
    return model, tok, b, old, ref, adv


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "trl_loss", "level", "beta"), CASES)
def test_loss_equals_trl(batch, tmp_path, preset, trl_loss, level, beta):
    model, tok, b, old, ref, adv = batch
    mask = b["completion_mask"]
    max_len = mask.shape[1]
    eps, eps_high = 0.2, 0.28

    # ours
    p = A.PRESETS[preset]
    logp, _ = completion_logprobs(model, b)
    loss_tok, _ = A.token_surrogate(logp, old, adv, eps, eps_high, mask=mask, level=A.ratio_level(preset, "token"))
    if beta:
        loss_tok = loss_tok + beta * A.kl_estimate(logp, ref, "k3")
    denom = mask.sum().item() if p.aggregation == "token_mean" and p.batch_normalised else None
    ours = A.aggregate(loss_tok, mask, p.aggregation, denom=denom, max_len=max_len)

    # TRL, on the very same tensors
    from datasets import Dataset

    args = trl.GRPOConfig(output_dir=str(tmp_path), loss_type=trl_loss, importance_sampling_level=level, beta=beta,
                          epsilon=eps, epsilon_high=eps_high, per_device_train_batch_size=8, num_generations=2,
                          max_completion_length=max_len, report_to=[], use_cpu=True, logging_steps=1,
                          bf16=False)  # TRL defaults to bf16 autocast; compare in float32
    trainer = trl.GRPOTrainer(model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                              args=args, train_dataset=Dataset.from_dict({"prompt": QUESTIONS * 2}),
                              processing_class=tok)
    trainer.current_gradient_accumulation_steps = 1
    p_w = b["prompt_width"]
    inputs = {
        "prompt_ids": b["input_ids"][:, :p_w], "prompt_mask": b["attention_mask"][:, :p_w],
        "completion_ids": b["input_ids"][:, p_w:], "completion_mask": mask,
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    trainer.model.train()
    theirs = trainer._compute_loss(trainer.model, inputs)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), (preset, ours.item(), theirs.item())


# ---------------------------------------------------------------------- the real update's gradients

UPDATE_CASES = [  # (our preset, TRL loss_type, TRL importance_sampling_level): every preset TRL has
    ("grpo", "grpo", "token"),
    ("dr_grpo", "dr_grpo", "token"),
    ("dapo", "dapo", "token"),
    ("bnpo", "bnpo", "token"),
    ("gspo", "grpo", "sequence"),
]
LAYOUTS = {  # the log-prob pass layouts of GRPOTrainer.update
    "packed_chunked": dict(pack_prompt_groups=True, logprob_chunk_size=16),
    "padded_chunked": dict(pack_prompt_groups=False, logprob_chunk_size=16),
    "padded_full": dict(pack_prompt_groups=False, logprob_chunk_size=0),
}
G, MICRO, MICRO_BATCHES, MAX_LEN, BETA = 2, 4, 2, 24, 0.04
# Measured relative errors (norm of the difference / norm of TRL's gradient): 1.9e-6 to 3.2e-6 at the
# first update (float32 log-prob numerics: TRL's fused head against ours), 2.3e-6 to 7.4e-6 at the
# second (ratios up to e^1.5 amplify them); a wrong normaliser, a missed micro-batch, a KL or clip
# difference moves it by percents. At lr 5e-5 the second update clips ~2% of tokens (gspo: ~30%).
# Rounding depends on the CPU's kernels: on another x86_64 machine (2026-12-07, the locked torch
# 2.13.0) the second update reached 1.06e-5 (gspo, packed and chunked; the others up to 7.6e-6),
# so the bound leaves room for that and stays three orders below a wrong term.
# With TRL 1.16's loss options (test_loss_options_gradients_equal_trl, 2026-12-07, this machine): first
# update 3.8e-7 to 5.6e-6 (every case within ON_POLICY_RTOL), second 1.1e-6 to 1.23e-5 (top_entropy_quantile;
# vespo 1.21e-5, token_mask importance sampling 1.12e-5, sequence_truncate 1.09e-5).
GRAD_RTOL = 3e-5
ON_POLICY_RTOL = 1e-5  # the first update (ratios 1 up to numerics): the issue's bound holds there


def _varied_reward(completions, **kw):
    import hashlib

    return [float(int(hashlib.md5(completion_text(c).encode()).hexdigest(), 16) % 3) for c in completions]


def update_capturing_steps(ours, ro) -> tuple[dict[str, float], list[tuple[dict, dict]]]:
    """``ours.update(ro)``'s metrics and, before each of its optimizer steps, the policy's weights and
    gradients by parameter name; the trainer is closed after."""
    policy = ours.acc.unwrap_model(ours.model)
    captured: list[tuple[dict, dict]] = []

    def grab(opt, args, kwargs) -> None:
        captured.append(({n: p.detach().clone() for n, p in policy.named_parameters()},
                         {n: p.grad.detach().clone() for n, p in policy.named_parameters()}))

    handle = ours.optimizer.optimizer.register_step_pre_hook(grab)
    try:
        return ours.update(ro), captured
    finally:
        handle.remove()
        ours.close()


def _trl_inputs(ro, rows: range, pad_id: int) -> dict[str, torch.Tensor]:
    """TRL's micro-batch layout: left-padded prompts, right-padded completions."""
    from rlreason.data.batching import left_pad, right_pad

    p_ids, p_mask = left_pad([ro.prompt_ids[i] for i in rows], pad_id)
    c_ids, c_mask = right_pad([ro.samples[i].token_ids for i in rows], pad_id)
    return {"prompt_ids": p_ids, "prompt_mask": p_mask, "completion_ids": c_ids, "completion_mask": c_mask,
            "advantages": ro.advantages[rows.start:rows.stop].float()}


def _trl_is_ratio(old: torch.Tensor, sampling: torch.Tensor, mask: torch.Tensor, mode: str,
                  lo: float | None, hi: float | None) -> torch.Tensor:
    """TRL 1.16's importance_sampling_ratio, as its _generate_and_score_completions builds it from the
    sampler's log-probs (the block under "vllm_importance_sampling_mode"), written out here for the
    TRL side of the comparison."""
    diff = torch.nan_to_num((old - sampling) * mask, nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(dim=-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        return torch.clamp(ratio, min=lo, max=hi)
    low = -math.inf if lo is None else lo
    high = math.inf if hi is None else hi
    return ratio.masked_fill((ratio < low) | (ratio > high), value=0.0)


def _compare_with_trl(tiny_path, tmp_path, ours_kw: dict, trl_kw: dict, layout: str,
                      is_correction: tuple[str, float | None, float | None] | None = None,
                      sampler_noise: float = 0.5) -> tuple[list, dict, Any]:
    """GRPOTrainer.update's gradients (captured before each optimizer step) against TRL's _compute_loss
    backward over the same micro-batches, at the same weights: unequal prompt lengths, two micro-batches,
    two updates per rollout (the second off-policy, with clipping). ``ours_kw`` / ``trl_kw``: each side's
    config keys beyond the common ones. ``is_correction`` = (mode, clip min, clip max): the sampler's
    log-probs are moved off the trainer's (Gaussian noise of sd ``sampler_noise`` per token, as a vLLM
    sampler's would be) and both sides correct for it, ours through the loss settings a separate sampler
    gets (the transformers engine is the policy itself, so its config does not ask for it), TRL's as with
    use_vllm. -> (relative errors per update, our metrics, the TRL trainer)"""
    from accelerate import Accelerator
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.build import assemble
    from rlreason.config import GRPOConfig
    from rlreason.data import arith_dataset, prepare
    from rlreason.data.batching import right_pad
    from rlreason.loop.trainer import GRPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    common = dict(beta=BETA, num_iterations=2, num_generations=G, per_device_train_batch_size=MICRO,
                  gradient_accumulation_steps=MICRO_BATCHES, max_completion_length=MAX_LEN, learning_rate=5e-5,
                  scale_rewards="group", max_steps=1, seed=0)  # seed 0: the rollouts these cases were chosen on
    cfg = GRPOConfig(output_dir=str(tmp_path / "ours"), kl_estimator="k3", max_grad_norm=1e9, reward_num_workers=0,
                     eval_steps=0, save_steps=0, final_eval_size=0, log_completions_steps=0, progress=False,
                     **common, **LAYOUTS[layout], **ours_kw)
    train = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)
    torch.manual_seed(0)
    ours = GRPOTrainer(cfg, assemble(cfg, AutoModelForCausalLM.from_pretrained(tiny_path), tok, train, [_varied_reward],
                       accelerator=Accelerator(cpu=True)))
    ro = ours.collect()
    assert len({len(p) for p in ro.prompt_ids}) > 1  # unequal prompt lengths: left padding in TRL's layout
    assert ro.advantages.ne(0).any()
    if is_correction is not None:
        g = torch.Generator().manual_seed(3)
        for smp in ro.samples:  # the sampler's log-probs, off the trainer's
            noise = sampler_noise * torch.randn(len(smp.logprobs), generator=g)
            smp.logprobs = (torch.tensor(smp.logprobs) + noise).tolist()
        mode, lo, hi = is_correction
        ours.actor.loss_settings = dataclasses.replace(ours.actor.loss_settings, is_mode=mode, is_clip_min=lo,
                                                       is_clip_max=hi, is_weight_kl=False)
    m, captured = update_capturing_steps(ours, ro)
    assert len(captured) == 2

    eps_low, eps_high = cfg.clip_range()
    args = trl.GRPOConfig(output_dir=str(tmp_path / "trl"), epsilon=eps_low, epsilon_high=eps_high,
                          report_to=[], use_cpu=True, logging_steps=1, bf16=False,  # TRL: bf16 autocast by default
                          **common, **trl_kw)
    trainer = trl.GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_path),
                              reward_funcs=[lambda completions, **kw: [0.0] * len(completions)], args=args,
                              train_dataset=Dataset.from_dict({"prompt": ["1+1"] * 8}), processing_class=tok)
    trainer.current_gradient_accumulation_steps = MICRO_BATCHES
    if is_correction is not None:  # what TRL's use_vllm path reads in _compute_loss
        trainer.use_vllm, trainer.vllm_importance_sampling_correction = True, True
    model = trainer.model
    starts = range(0, len(ro.samples), MICRO)
    micro = [_trl_inputs(ro, range(i, i + MICRO), tok.pad_token_id) for i in starts]
    if cfg.mask_truncated_completions:  # as TRL's _generate_and_score_completions: truncated rows out of the mask
        assert 0 < sum(s.finish_reason == "length" for s in ro.samples) < len(ro.samples)
        for i, b in zip(starts, micro, strict=True):
            cut = torch.tensor([s.finish_reason == "length" for s in ro.samples[i:i + MICRO]])
            b["completion_mask"] = b["completion_mask"] * (~cut).unsqueeze(1).int()
    n_items = sum(b["completion_mask"].sum() for b in micro)
    with torch.no_grad():  # TRL's own old (the sampling weights) and reference log-probs
        for i, b in zip(starts, micro, strict=True):
            ids = torch.cat([b["prompt_ids"], b["completion_ids"]], 1)
            mask = torch.cat([b["prompt_mask"], b["completion_mask"]], 1)
            width = b["completion_ids"].shape[1]
            b["old_per_token_logps"] = trainer._get_per_token_logps_and_entropies(model, ids, mask, width)[0]
            b["ref_per_token_logps"] = trainer._get_per_token_logps_and_entropies(trainer.ref_model, ids, mask,
                                                                                   width)[0]
            b["num_items_in_batch"] = n_items
            if is_correction is not None:
                rows = [ro.samples[k].logprobs for k in range(i, i + MICRO)]
                b["sampling_per_token_logps"] = right_pad(rows, 0.0, dtype=torch.float32)[0]
                b["importance_sampling_ratio"] = _trl_is_ratio(b["old_per_token_logps"], b["sampling_per_token_logps"],
                                                               b["completion_mask"], *is_correction)
    model.train()
    errors = []
    sync = trainer.accelerator.gradient_state
    for weights, grads in captured:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(weights[n])
        model.zero_grad(set_to_none=True)
        for j, b in enumerate(micro):
            sync._set_sync_gradients(j == len(micro) - 1)  # the adaptive entropy controller steps at the last
            trainer._compute_loss(model, b).backward()
        sync._set_sync_gradients(True)
        theirs = torch.cat([p.grad.flatten() for _, p in model.named_parameters()])
        mine = torch.cat([grads[n].flatten() for n, _ in model.named_parameters()])
        assert theirs.norm() > 1e-4  # a gradient to compare (a case that masks every token proves nothing)
        errors.append(((mine - theirs).norm() / theirs.norm()).item())
    return errors, m, trainer


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(("preset", "trl_loss", "level"), UPDATE_CASES)
def test_update_gradients_equal_trl(tiny_path, tmp_path, preset, trl_loss, level, layout):
    """Every loss_type both projects had, in each log-prob pass layout, with the plain k3 KL term (beta 0.04,
    use_bias_correction_kl off on both sides); clip 0.2 / 0.28 (gspo: its paper's 3e-4 / 4e-4)."""
    clip = {} if preset == "gspo" else dict(epsilon=0.2, epsilon_high=0.28)
    errors, m, _ = _compare_with_trl(
        tiny_path, tmp_path, dict(loss_type=preset, use_bias_correction_kl=False, importance_sampling_level="token",
                                  **clip),
        dict(loss_type=trl_loss, importance_sampling_level=level, use_bias_correction_kl=False), layout)
    assert errors[0] <= ON_POLICY_RTOL and max(errors) <= GRAD_RTOL, (preset, layout, errors)
    # the second update is off-policy: its ratios left 1 (and, for gspo's tiny range, were clipped)
    assert m["ratio/max_abs_log"] > 1e-3


# Each new loss_type and each option, in one layout (packed, chunked: the default), with the KL term at TRL's
# default (beta 0.04, use_bias_correction_kl on: the ratio-weighted k3). name -> (our keys, TRL's keys, the
# sampler correction or None); the SHARED keys of ours go to TRL too.
TS = dict(importance_sampling_level="token")
OPTION_CASES: dict[str, tuple[dict, dict, tuple | None]] = {
    "cispo": ({"loss_type": "cispo", "epsilon_high": 2.0, **TS}, {"loss_type": "cispo"}, None),
    "sapo": ({"loss_type": "sapo", **TS}, {"loss_type": "sapo"}, None),
    "luspo": ({"loss_type": "luspo", "importance_sampling_level": "sequence"}, {"loss_type": "luspo"}, None),
    "vespo": ({"loss_type": "vespo", **TS}, {"loss_type": "vespo"}, None),
    "grpo_no_bias_correction_kl": ({"loss_type": "grpo", "use_bias_correction_kl": False, **TS},
                                   {"loss_type": "grpo"}, None),
    "temperature_0.7": ({"loss_type": "dapo", "temperature": 0.7, **TS}, {"loss_type": "dapo"}, None),
    "is_token_truncate": ({"loss_type": "dapo", **TS}, {"loss_type": "dapo"}, ("token_truncate", 0.5, 2.0)),
    "is_token_mask": ({"loss_type": "grpo", **TS}, {"loss_type": "grpo"}, ("token_mask", 0.5, 2.0)),
    "is_sequence_truncate": ({"loss_type": "dapo", **TS}, {"loss_type": "dapo"}, ("sequence_truncate", 0.5, 2.0)),
    "is_sequence_mask": ({"loss_type": "grpo", **TS}, {"loss_type": "grpo"}, ("sequence_mask", None, 3.0)),
    # VESPO's phi(w) is ~0 far from w = 1 (a masked token floors w at 1e-8): a sampler 0.05 nats off, truncated
    "vespo_is_token_truncate": ({"loss_type": "vespo", **TS}, {"loss_type": "vespo"}, ("token_truncate", 0.95, 1.05)),
    "top_entropy_quantile": ({"loss_type": "dapo", "top_entropy_quantile": 0.2, **TS}, {"loss_type": "dapo"}, None),
    "mask_truncated": ({"loss_type": "grpo", "mask_truncated_completions": True, **TS}, {"loss_type": "grpo"}, None),
    "entropy_quantile_truncated": ({"loss_type": "dapo", "top_entropy_quantile": 0.2, "entropy_coef": 0.01,
                                    "mask_truncated_completions": True, **TS}, {"loss_type": "dapo"}, None),
    "entropy_coef_bnpo": ({"loss_type": "bnpo", "entropy_coef": 0.01, **TS}, {"loss_type": "bnpo"}, None),
    "adaptive_entropy": ({"loss_type": "dapo", "entropy_coef": 0.01, "use_adaptive_entropy": True,
                          "entropy_target": 100.0, **TS}, {"loss_type": "dapo"}, None),
    "delta": ({"loss_type": "grpo", "delta": 1.1, **TS}, {"loss_type": "grpo"}, None),
    "off_policy_mask": ({"loss_type": "dapo", "off_policy_mask_threshold": 1e-3, **TS}, {"loss_type": "dapo"}, None),
}
SHARED = ("temperature", "importance_sampling_level", "use_bias_correction_kl", "top_entropy_quantile",
          "mask_truncated_completions", "entropy_coef", "use_adaptive_entropy", "entropy_target", "delta",
          "off_policy_mask_threshold")


@pytest.mark.slow
@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_loss_options_gradients_equal_trl(tiny_path, tmp_path, case):
    ours_kw, trl_kw, correction = OPTION_CASES[case]
    trl_kw = {**trl_kw, **{k: v for k, v in ours_kw.items() if k in SHARED}}
    if correction is not None:
        trl_kw.update(vllm_importance_sampling_mode=correction[0], vllm_importance_sampling_clip_min=correction[1],
                      vllm_importance_sampling_clip_max=correction[2])
    errors, m, trainer = _compare_with_trl(tiny_path, tmp_path, ours_kw, trl_kw, "packed_chunked", correction,
                                           sampler_noise=0.05 if case.startswith("vespo") else 0.5)
    assert errors[0] <= ON_POLICY_RTOL and max(errors) <= GRAD_RTOL, (case, errors)
    assert m["ratio/max_abs_log"] > 1e-3
    if correction is not None:  # the correction engaged: some weights cut or masked, not all
        assert 0 < m["is_weight_capped_frac"] < 1, m
    if case == "adaptive_entropy":  # both controllers stepped twice, up (entropy below the target of 100)
        assert m["entropy_coef"] == pytest.approx(trainer.entropy_coef) == pytest.approx(0.02)
    if case == "delta":
        assert m["ratio/max_abs_log"] > math.log(1.1)

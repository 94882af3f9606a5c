"""Our loss against TRL's GRPOTrainer loss on identical inputs (same model, completions,
advantages, old and reference log-probs), for every loss_type both projects have; and the real
GRPOTrainer.update's gradients against TRL's _compute_loss backward."""

from __future__ import annotations

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
    loss_tok, _ = A.token_surrogate(logp, old, adv, eps, eps_high, mask=mask, level=p.ratio_level)
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
GRAD_RTOL = 3e-5


def _varied_reward(completions, **kw):
    import hashlib

    return [float(int(hashlib.md5(completion_text(c).encode()).hexdigest(), 16) % 3) for c in completions]


def _trl_inputs(ro, rows: range, pad_id: int) -> dict[str, torch.Tensor]:
    """TRL's micro-batch layout: left-padded prompts, right-padded completions."""
    from rlreason.data.batching import left_pad, right_pad

    p_ids, p_mask = left_pad([ro.prompt_ids[i] for i in rows], pad_id)
    c_ids, c_mask = right_pad([ro.samples[i].token_ids for i in rows], pad_id)
    return {"prompt_ids": p_ids, "prompt_mask": p_mask, "completion_ids": c_ids, "completion_mask": c_mask,
            "advantages": ro.advantages[rows.start:rows.stop].float()}


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(("preset", "trl_loss", "level"), UPDATE_CASES)
def test_update_gradients_equal_trl(tiny_path, tmp_path, preset, trl_loss, level, layout):
    """GRPOTrainer.update's gradients (captured before each optimizer step) against TRL's
    _compute_loss backward over the same micro-batches, at the same weights: unequal prompt
    lengths, two micro-batches, two updates per rollout (the second off-policy, with clipping),
    KL to the reference (k3, beta 0.04)."""
    from accelerate import Accelerator
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.build import assemble
    from rlreason.config import GRPOConfig
    from rlreason.data import arith_dataset, prepare
    from rlreason.loop.trainer import GRPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    cfg = GRPOConfig(output_dir=str(tmp_path / "ours"), loss_type=preset, beta=BETA, kl_estimator="k3",
                     num_iterations=2, num_generations=G, per_device_train_batch_size=MICRO,
                     gradient_accumulation_steps=MICRO_BATCHES, max_completion_length=MAX_LEN, learning_rate=5e-5,
                     max_grad_norm=1e9, reward_num_workers=0, eval_steps=0, save_steps=0, final_eval_size=0,
                     log_completions_steps=0, progress=False, **LAYOUTS[layout])
    train = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)
    torch.manual_seed(0)
    ours = GRPOTrainer(cfg, assemble(cfg, AutoModelForCausalLM.from_pretrained(tiny_path), tok, train, [_varied_reward],
                       accelerator=Accelerator(cpu=True)))
    ro = ours.collect()
    assert len({len(p) for p in ro.prompt_ids}) > 1  # unequal prompt lengths: left padding in TRL's layout
    assert ro.advantages.ne(0).any()
    policy = ours.acc.unwrap_model(ours.model)
    captured: list[tuple[dict, dict]] = []

    def grab(opt, args, kwargs) -> None:  # before each optimizer step: the weights and their gradients
        captured.append(({n: p.detach().clone() for n, p in policy.named_parameters()},
                         {n: p.grad.detach().clone() for n, p in policy.named_parameters()}))

    handle = ours.optimizer.optimizer.register_step_pre_hook(grab)
    try:
        m = ours.update(ro)
    finally:
        handle.remove()
        ours.close()
    assert len(captured) == 2

    eps_low, eps_high = cfg.clip_range()
    args = trl.GRPOConfig(output_dir=str(tmp_path / "trl"), loss_type=trl_loss, importance_sampling_level=level,
                          beta=BETA, epsilon=eps_low, epsilon_high=eps_high, num_iterations=2,
                          per_device_train_batch_size=MICRO, gradient_accumulation_steps=MICRO_BATCHES,
                          num_generations=G, max_completion_length=MAX_LEN, report_to=[], use_cpu=True,
                          logging_steps=1, bf16=False,
                          # TRL 1.16 multiplies the KL term by the (differentiable) ratio by default
                          # (DeepSeek-V3.2); rlreason's KL term is GRPO's plain k3
                          use_bias_correction_kl=False)
    trainer = trl.GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_path),
                              reward_funcs=[lambda completions, **kw: [0.0] * len(completions)], args=args,
                              train_dataset=Dataset.from_dict({"prompt": ["1+1"] * 8}), processing_class=tok)
    trainer.current_gradient_accumulation_steps = MICRO_BATCHES
    model = trainer.model
    micro = [_trl_inputs(ro, range(i, i + MICRO), tok.pad_token_id) for i in range(0, len(ro.samples), MICRO)]
    n_items = sum(b["completion_mask"].sum() for b in micro)
    with torch.no_grad():  # TRL's own old (the sampling weights) and reference log-probs
        for b in micro:
            ids = torch.cat([b["prompt_ids"], b["completion_ids"]], 1)
            mask = torch.cat([b["prompt_mask"], b["completion_mask"]], 1)
            width = b["completion_ids"].shape[1]
            b["old_per_token_logps"] = trainer._get_per_token_logps_and_entropies(model, ids, mask, width)[0]
            b["ref_per_token_logps"] = trainer._get_per_token_logps_and_entropies(trainer.ref_model, ids, mask,
                                                                                   width)[0]
            b["num_items_in_batch"] = n_items
    model.train()
    errors = []
    for weights, grads in captured:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(weights[n])
        model.zero_grad(set_to_none=True)
        for b in micro:
            trainer._compute_loss(model, b).backward()
        theirs = torch.cat([p.grad.flatten() for _, p in model.named_parameters()])
        mine = torch.cat([grads[n].flatten() for n, _ in model.named_parameters()])
        errors.append(((mine - theirs).norm() / theirs.norm()).item())
    assert max(errors) <= GRAD_RTOL, (preset, layout, errors)
    # the second update is off-policy: its ratios left 1 (and, for gspo's tiny range, were clipped)
    assert m["ratio/max_abs_log"] > 1e-3

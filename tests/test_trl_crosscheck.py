"""Our loss against TRL's GRPOTrainer loss on identical inputs (same model, completions,
advantages, old and reference log-probs), for every loss_type both projects have."""

from __future__ import annotations

import pytest
import torch

from rlreason import algorithms as A
from rlreason.logprobs import completion_logprobs, pack
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

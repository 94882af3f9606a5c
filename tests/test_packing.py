"""Prompt-group packing (rlreason/data/batching.py: pack_groups): the layout, and that packed log-probs, entropies,
gradients and whole updates equal the padded layout's."""

from __future__ import annotations

import pytest
import torch
from test_trainer import _varied_reward, make_trainer
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason.data.batching import pack, pack_groups
from rlreason.loop.logprobs import completion_logprobs
from rlreason.rollout.base import SamplingConfig
from rlreason.rollout.hf import HFEngine
from rlreason.tiny import prompt_text


def test_layout_of_one_group_split_over_two_rows():
    # group of 3 sharing prompt [1, 2]; completions of 2, 1 and 2 tokens; rows capped at 5 tokens
    b = pack_groups([[1, 2]] * 3, [[3, 4], [5], [6, 7]], pad_id=0, group_size=3, max_row_tokens=5)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5], [1, 2, 6, 7, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 2], [0, 1, 2, 3, 0]]
    # token 0 of each completion is predicted by the prompt's last token (position 1 of its row)
    assert b["src"].tolist() == [[1, 2], [1, 0], [5 + 1, 5 + 2]]
    assert b["completion_mask"].tolist() == [[1, 1], [1, 0], [1, 1]]
    m = b["attention_mask"][0, 0].int().tolist()
    assert m == [[1, 0, 0, 0, 0],
                 [1, 1, 0, 0, 0],
                 [1, 1, 1, 0, 0],
                 [1, 1, 1, 1, 0],
                 [1, 1, 0, 0, 1]]  # the second completion sees the prompt, not the first completion
    assert b["attention_mask"][1, 0, 4].int().tolist() == [0, 0, 0, 0, 1]  # padding sees only itself


def test_shared_rows_pack_whole_groups_and_never_attend_across_them():
    # groups of 1 (SFT examples): [1, 2 | 3, 4], [5 | 6], [7, 8, 9 | 10, 11]; rows of at most 7 tokens
    b = pack_groups([[1, 2], [5], [7, 8, 9]], [[3, 4], [6], [10, 11]], pad_id=0, group_size=1, max_row_tokens=7,
                    share_rows=True)
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 3, 4, 0]]
    # the second example's only token is predicted by its own prompt's last token, row position 4
    assert b["src"].tolist() == [[1, 2], [4, 0], [6 + 2, 6 + 3]]
    m = b["attention_mask"][0, 0].int().tolist()
    assert m[4] == [0, 0, 0, 0, 1, 0]  # the second prompt sees nothing of the first example
    assert m[5] == [0, 0, 0, 0, 1, 1]
    # without share_rows every group starts its own row
    assert pack_groups([[1, 2], [5], [7, 8, 9]], [[3, 4], [6], [10, 11]], 0, 1, 7)["input_ids"].shape[0] == 3


def test_groups_must_share_their_prompt():
    with pytest.raises(ValueError, match="share their prompt"):
        pack_groups([[1], [2]], [[3], [4]], 0, 2)
    with pytest.raises(ValueError, match="whole groups"):
        pack_groups([[1]] * 3, [[3]] * 3, 0, 2)


@pytest.fixture(scope="module")
def rollout(tiny_path):
    tok = AutoTokenizer.from_pretrained(tiny_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    # prompts of different lengths, so the padded layout left-pads and rows differ in width
    prompts = [tok(prompt_text(tok, q), add_special_tokens=False)["input_ids"] for q in ["12+345", "5+6", "123*45"]]
    torch.manual_seed(0)
    groups = HFEngine(model, tok).generate(prompts, 4, SamplingConfig(max_tokens=40, temperature=1.0))
    completions = [s.token_ids for g in groups for s in g]
    assert len({len(c) for c in completions}) > 1
    return model, tok, [p for p in prompts for _ in range(4)], completions


@pytest.mark.parametrize("chunk_size", [512, 7, 0])
@pytest.mark.parametrize("row_tokens,share", [(4096, False), (40, False), (4096, True), (60, True)])
def test_packed_logprobs_entropy_and_gradient_equal_padded(rollout, chunk_size, row_tokens, share):
    """one row per group; groups split over rows; and shared rows (all groups in one row, or
    several groups per row with some split)"""
    model, tok, prompts, completions = rollout
    padded = pack(prompts, completions, tok.pad_token_id)
    packed = pack_groups(prompts, completions, tok.pad_token_id, 4, max_row_tokens=row_tokens, share_rows=share)
    if row_tokens == 40:
        assert packed["input_ids"].shape[0] > 3
    if share and row_tokens == 4096:
        assert packed["input_ids"].shape[0] == 1  # the three groups in one row
    mask = padded["completion_mask"]
    assert torch.equal(mask, packed["completion_mask"])
    weights = torch.randn(mask.shape, generator=torch.Generator().manual_seed(0))
    out = {}
    for name, b in (("padded", padded), ("packed", packed)):
        model.zero_grad()
        logp, ent = completion_logprobs(model, b, temperature=0.9, with_entropy=True, entropy_grad=True,
                                        chunk_size=chunk_size)
        ((logp + 0.1 * ent) * weights * mask).sum().backward()
        out[name] = (logp, ent, [p.grad.clone() for p in model.parameters()])
    (lp_a, ent_a, g_a), (lp_b, ent_b, g_b) = out["padded"], out["packed"]
    m = mask.bool()
    torch.testing.assert_close(lp_b[m], lp_a[m], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ent_b[m], ent_a[m], atol=1e-4, rtol=1e-4)
    assert (lp_b[~m] == 0).all()
    for a, b in zip(g_a, g_b, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5 * (1 + a.abs().max().item()), rtol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo"])  # per-sequence, per-micro-batch, global token mean
def test_packed_update_equals_padded_update(tiny_path, tmp_path, loss_type):
    # two micro-batches of two groups each, so micro-batch boundaries and normalisers matter
    kw = dict(loss_type=loss_type, per_device_train_batch_size=8, gradient_accumulation_steps=2, beta=0.04,
              learning_rate=1e-3, pack_max_row_tokens=60)
    torch.manual_seed(0)
    tr = make_trainer(tiny_path, tmp_path, reward_funcs=[_varied_reward], **kw)
    ro = tr.collect()
    start = {k: v.clone() for k, v in tr.acc.unwrap_model(tr.model).state_dict().items()}
    opt = {k: v for k, v in tr.optimizer.state_dict().items()}
    model = tr.acc.unwrap_model(tr.model)
    metrics, grads = {}, {}
    step = tr.optimizer.step

    def record_then_step(*a, **k):  # the update's gradient, before Adam (which amplifies rounding)
        grads[tr.cfg.pack_prompt_groups] = {n: p.grad.clone() for n, p in model.named_parameters()}
        return step(*a, **k)

    tr.optimizer.step = record_then_step
    for packed in (False, True):
        tr.cfg.pack_prompt_groups = packed
        model.load_state_dict(start)
        tr.optimizer.load_state_dict(opt)
        if packed:
            assert "src" in tr.actor.micro_batches(ro)[0][1]
        metrics[packed] = tr.update(ro)
    tr.close()
    for k in ("loss", "entropy", "kl", "grad_norm"):
        assert metrics[True][k] == pytest.approx(metrics[False][k], rel=1e-4, abs=1e-6), k
    assert metrics[False]["grad_norm"] > 0
    for k, g in grads[False].items():
        torch.testing.assert_close(grads[True][k], g, atol=1e-5 * (1 + g.abs().max().item()), rtol=1e-3)

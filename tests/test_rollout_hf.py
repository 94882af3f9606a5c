"""The transformers rollout engine: one prefill per prompt, greedy == model.generate,
sampler log-probs equal the trainer's log-probs."""

from __future__ import annotations

import pytest
import torch
from _logprobs import trainer_logprobs

from rlreason.rollout.base import RolloutEngine, SamplingConfig
from rlreason.rollout.hf import HFEngine, left_pad, sampled_logprobs
from rlreason.tiny import prompt_text

QUESTIONS = ["3+4", "47+38-19", "5-9+12-1", "80-7", "1+2+3+4"]


def _prompts(tok):
    return [tok(prompt_text(tok, q), add_special_tokens=False)["input_ids"] for q in QUESTIONS]


def test_engine_satisfies_protocol(tiny_model):
    model, tok = tiny_model
    assert isinstance(HFEngine(model, tok), RolloutEngine)


def test_greedy_equals_plain_generate(tiny_model):
    model, tok = tiny_model
    prompts = _prompts(tok)
    eng = HFEngine(model, tok, max_batch_prompts=2)  # also exercises chunking
    out = eng.generate(prompts, 2, SamplingConfig(max_tokens=48, temperature=0.0))
    ids, mask = left_pad(prompts, tok.pad_token_id)
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=48, do_sample=False,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[:, ids.shape[1]:]
    for group, row in zip(out, ref.tolist(), strict=True):
        if tok.eos_token_id in row:
            row = row[:row.index(tok.eos_token_id) + 1]
        assert len(group) == 2
        for s in group:
            assert s.token_ids == row
            assert s.finish_reason == ("stop" if row[-1] == tok.eos_token_id else "length")
            assert s.text == tok.decode(row, skip_special_tokens=True)


def test_prompt_is_prefilled_once_per_group(tiny_model):
    model, tok = tiny_model
    prompts = _prompts(tok)
    calls = []
    handle = model.model.register_forward_pre_hook(
        lambda mod, args, kwargs: calls.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        HFEngine(model, tok).generate(prompts, 4, SamplingConfig(max_tokens=8, temperature=1.0))
    finally:
        handle.remove()
    width = max(map(len, prompts))
    # first call: every prompt once (not 4 times), all but its last token
    assert calls[0] == (len(prompts), width - 1)
    # then only new tokens: the last prompt token, then one token per step, for all 4 * 5 samples
    assert all(c == (4 * len(prompts), 1) for c in calls[1:])
    processed = sum(b * t for b, t in calls)
    assert processed < 4 * len(prompts) * width  # fewer tokens than repeating the prompts 4 times


@pytest.mark.parametrize("chunk_size", [None, 16])  # the full-logits and the chunked log-prob pass
def test_sampling_logprobs_match_trainer_logprobs(tiny_model, chunk_size):
    model, tok = tiny_model
    prompts = _prompts(tok)
    torch.manual_seed(0)
    groups = HFEngine(model, tok).generate(prompts, 3, SamplingConfig(max_tokens=40, temperature=1.0))
    flat, logp = trainer_logprobs(model, prompts, groups, tok.pad_token_id, chunk_size=chunk_size)
    assert len({tuple(s.token_ids) for s in flat}) > len(prompts)  # sampling actually varies
    for i, s in enumerate(flat):
        n = len(s.token_ids)
        assert len(s.logprobs) == n
        assert torch.allclose(logp[i, :n], torch.tensor(s.logprobs), atol=1e-4), i


def test_length_finish_reason(tiny_model):
    model, tok = tiny_model
    out = HFEngine(model, tok).generate(_prompts(tok)[:2], 1, SamplingConfig(max_tokens=3, temperature=0.0))
    for (s,) in out:
        assert s.finish_reason == "length" and len(s.token_ids) == 3


def test_sampled_logprobs_equal_log_softmax_of_stacked_scores():
    g = torch.Generator().manual_seed(0)
    N, T, V = 3, 6, 50
    scores = [torch.randn(N, V, generator=g) * 4 for _ in range(T)]
    for s in scores[::2]:  # top-k / top-p leave -inf outside the kept set
        s[:, 10:] = float("-inf")
    tokens = torch.randint(0, 10, (N, T), generator=g)
    ref = torch.stack(scores, 1).log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    out = sampled_logprobs(tuple(scores), tokens)
    assert out.dtype == torch.float32 and out.shape == (N, T)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    half = sampled_logprobs([s.bfloat16() for s in scores], tokens)  # upcast before the logsumexp
    ref_half = torch.stack([s.bfloat16().float() for s in scores], 1).log_softmax(-1).gather(
        -1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(half, ref_half, atol=1e-6, rtol=1e-6)

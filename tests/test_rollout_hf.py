"""The transformers rollout engine: one prefill per prompt, greedy == model.generate,
sampler log-probs equal the trainer's log-probs."""

from __future__ import annotations

import warnings

import pytest
import torch
from _logprobs import trainer_logprobs

from rlreason.data.batching import left_pad
from rlreason.rollout.base import RolloutEngine, SamplingConfig, check_generate_args, request_seeds
from rlreason.rollout.hf import HFEngine, decode
from rlreason.tiny import prompt_text

QUESTIONS = ["3+4", "47+38-19", "5-9+12-1", "80-7", "1+2+3+4"]


def _prompts(tok):
    return [tok(prompt_text(tok, q), add_special_tokens=False)["input_ids"] for q in QUESTIONS]


def test_engine_satisfies_protocol(tiny_model):
    model, tok = tiny_model
    assert isinstance(HFEngine(model, tok), RolloutEngine)


def test_every_engine_takes_the_protocols_seeds():
    """RolloutEngine.generate declares seeds=; every engine takes it with the same signature."""
    import inspect

    from rlreason.rollout.vllm import VLLMEngine
    from rlreason.rollout.vllm_server import VLLMServerEngine

    want = inspect.signature(RolloutEngine.generate)
    assert want.parameters["seeds"].default is None
    for engine in (HFEngine, VLLMEngine, VLLMServerEngine):
        got = inspect.signature(engine.generate)
        assert list(got.parameters) == list(want.parameters), engine.__name__
        assert got.parameters["seeds"].default is None and got.parameters["seeds"].annotation == "Sequence[int] | None"


def test_request_seeds_are_the_callers_or_a_reproducible_stream():
    """The vLLM engines' one seeding rule (rollout.base.request_seeds)."""
    assert request_seeds([3, 2**31 + 5], 2, engine_seed=0, call=0) == [3, 5]
    drawn = request_seeds(None, 4, engine_seed=7, call=2)
    assert drawn == request_seeds(None, 4, engine_seed=7, call=2) and all(0 <= s < 2**31 for s in drawn)
    assert drawn != request_seeds(None, 4, engine_seed=7, call=3) != request_seeds(None, 4, engine_seed=8, call=2)
    with pytest.raises(ValueError, match="2 seeds for 1 prompts"):
        check_generate_args([[1]], [1, 2])
    with pytest.raises(ValueError, match="empty prompt"):
        check_generate_args([[1], []], None)


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
    # first call: every prompt once (not 4 times); its last logits give the first tokens
    assert calls[0] == (len(prompts), width)
    # then only new tokens, one per step, for at most all 4 * 5 samples (fewer as rows
    # finish: the batch never grows)
    assert calls[1] == (4 * len(prompts), 1)
    assert all(c[1] == 1 for c in calls[1:])
    assert all(a[0] >= b[0] for a, b in zip(calls[1:-1], calls[2:], strict=True))
    assert len(calls) == 8  # the prefill and 7 steps for 8 tokens
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


def _reference_generate(model, tok, prompts, max_tokens, stop):
    """transformers' greedy generate, per prompt row, cut after the first stop id."""
    ids, mask = left_pad(prompts, tok.pad_token_id)
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_tokens, do_sample=False,
                         pad_token_id=tok.pad_token_id, eos_token_id=stop)[:, ids.shape[1]:].tolist()
    out = []
    for row in ref:
        end = next((j for j, t in enumerate(row) if t in stop), None)
        out.append(row if end is None else row[:end + 1])
    return out


@pytest.mark.parametrize("extra_stop", [False, True])
def test_decode_loop_greedy_equals_generate_with_groups(tiny_model, extra_stop):
    """Greedy, n=3, prompts of different lengths whose completions end at different steps (so
    rows leave the batch mid-loop): the same tokens as generate, token for token, and the
    log-probs of the model's own distribution."""
    model, tok = tiny_model
    prompts = _prompts(tok)
    assert len(set(map(len, prompts))) > 1
    # an extra stop id that ends the multi-step completions mid-way (";" separates the steps)
    stop_id = tok.convert_tokens_to_ids(";") if extra_stop else None
    stop = [tok.eos_token_id] + ([stop_id] if extra_stop else [])
    sampling = SamplingConfig(max_tokens=48, temperature=0.0, stop_token_ids=(stop_id,) if extra_stop else ())
    out = HFEngine(model, tok).generate(prompts, 3, sampling)
    ref = _reference_generate(model, tok, prompts, 48, stop)
    assert len({len(r) for r in ref}) > 1  # rows finish at different steps
    if extra_stop:
        assert {r[-1] for r in ref} == {stop_id, tok.eos_token_id}
    for prompt, group, row in zip(prompts, out, ref, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([prompt + row])).logits[0, len(prompt) - 1:-1]
        expect = logits.log_softmax(-1).gather(-1, torch.tensor(row)[:, None]).squeeze(-1)
        for s in group:
            assert s.token_ids == row
            assert s.finish_reason == ("stop" if row[-1] in stop else "length")
            torch.testing.assert_close(torch.tensor(s.logprobs), expect, atol=1e-4, rtol=0)


def _processed_reference(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The sampling distribution's log-probs, written independently of the engine: temperature,
    keep the top_k largest (and ties), then the most likely tokens until their mass reaches
    top_p (a token stays if the tokens more likely than it hold less than top_p). [T, V] -> [T, V]"""
    z = logits.double() / temperature
    if top_k:
        kth = z.sort(-1, descending=True).values[:, top_k - 1:top_k]
        z = torch.where(z >= kth, z, torch.tensor(float("-inf"), dtype=z.dtype))
    out = torch.full_like(z, float("-inf"))
    for t in range(z.shape[0]):
        p = z[t].softmax(-1)
        order = p.argsort(descending=True)
        before = 0.0
        for i in order.tolist():
            if before >= top_p or p[i] == 0:
                break
            out[t, i] = z[t, i]
            before += p[i].item()
    return out.log_softmax(-1)


@pytest.mark.parametrize(("temperature", "top_p", "top_k"), [(0.7, 0.9, 6), (1.5, 1.0, 3), (1.2, 0.8, 0)])
def test_sampled_logprobs_equal_full_forward_recompute(tiny_model, temperature, top_p, top_k):
    """Every returned log-prob is the sampled token's log-prob under the processed distribution
    (temperature, top-k, top-p) recomputed from one forward over prompt + completion, and every
    sampled token is inside the kept set. The 2nd case is mostly cut by top-k, the 3rd by top-p."""
    model, tok = tiny_model
    prompts = _prompts(tok)
    sampling = SamplingConfig(max_tokens=40, temperature=temperature, top_p=top_p, top_k=top_k)
    torch.manual_seed(1)
    groups = HFEngine(model, tok).generate(prompts, 4, sampling)
    checked = 0
    for prompt, group in zip(prompts, groups, strict=True):
        for s in group:
            with torch.no_grad():
                logits = model(torch.tensor([prompt + s.token_ids])).logits[0, len(prompt) - 1:-1]
            ref = _processed_reference(logits, temperature, top_k, top_p)
            ref = ref.gather(-1, torch.tensor(s.token_ids)[:, None]).squeeze(-1)
            assert torch.isfinite(ref).all()  # never a token that top-k/top-p removed
            torch.testing.assert_close(torch.tensor(s.logprobs, dtype=torch.float64), ref, atol=1e-4, rtol=0)
            checked += len(s.token_ids)
    assert checked > 100
    assert len({tuple(s.token_ids) for g in groups for s in g}) > len(prompts)  # sampling varies


def test_rows_end_at_their_stop_token(tiny_model):
    """With a frequent extra stop id some rows stop early and some run to max_tokens: a
    finished row has no tokens after its stop token (pad in decode's buffer, log-prob 0)."""
    model, tok = tiny_model
    prompts = _prompts(tok)
    stop_id = tok.convert_tokens_to_ids(";")  # ends multi-step completions early, not the others
    stop = [tok.eos_token_id, stop_id]
    sampling = SamplingConfig(max_tokens=12, temperature=1.0, stop_token_ids=(stop_id,))
    torch.manual_seed(0)
    tokens, logps, lengths = decode(model, prompts, 4, sampling, stop, tok.pad_token_id)
    assert tokens.shape == logps.shape == (4 * len(prompts), 12)
    reasons = set()
    for row, lp, n in zip(tokens.tolist(), logps, lengths.tolist(), strict=True):
        assert 1 <= n <= 12
        assert not any(t in stop for t in row[:n - 1])  # nothing stopped before the end
        if n < 12:
            assert row[n - 1] in stop
            assert row[n:] == [tok.pad_token_id] * (12 - n) and (lp[n:] == 0).all()
        reasons.add("stop" if row[n - 1] in stop else "length")
        assert (lp[:n] <= 0).all() and torch.isfinite(lp[:n]).all()
    assert lengths.min() < 12 and (lengths == 12).any()  # both kinds of rows occur
    assert reasons == {"stop", "length"}
    torch.manual_seed(0)
    for group in HFEngine(model, tok).generate(prompts, 4, sampling):
        for s in group:
            assert len(s.logprobs) == len(s.token_ids)
            assert (s.finish_reason == "stop") == (s.token_ids[-1] in stop)
            assert s.finish_reason == "stop" or len(s.token_ids) == 12


def test_seeded_groups_do_not_depend_on_the_batch(tiny_model):
    model, tok = tiny_model
    prompts = _prompts(tok)
    eng = HFEngine(model, tok)
    sampling = SamplingConfig(max_tokens=24, temperature=1.0)
    torch.manual_seed(123)
    full = eng.generate(prompts, 3, sampling, seeds=[10, 11, 12, 13, 14])
    torch.manual_seed(456)  # the caller's RNG state does not matter either
    part = eng.generate([prompts[3], prompts[0]], 3, sampling, seeds=[13, 10])
    for a, b in ((full[3], part[0]), (full[0], part[1])):
        assert [s.token_ids for s in a] == [s.token_ids for s in b]
        assert [s.logprobs for s in a] == [s.logprobs for s in b]
    assert any(len({tuple(s.token_ids) for s in g}) > 1 for g in full)  # a group's samples still differ


def test_batched_seeds_draw_what_each_prompt_draws_alone(tiny_model):
    """batch_seeds (async_rollouts): seeded prompts share decode loops, each row drawing from its
    prompt's generator in the order a decode of the prompt alone draws: the same samples (up to
    the rounding of batched matmuls, which flips no token here), deterministic, and torch's global
    stream untouched (the rollout thread must not disturb the trainer's)."""
    model, tok = tiny_model
    prompts = _prompts(tok)
    sampling = SamplingConfig(max_tokens=24, temperature=1.0)
    alone = HFEngine(model, tok).generate(prompts, 3, sampling, seeds=[10, 11, 12, 13, 14])
    torch.manual_seed(5)
    state = torch.get_rng_state()
    batched = HFEngine(model, tok, max_batch_prompts=3, batch_seeds=True).generate(prompts, 3, sampling,
                                                                                  seeds=[10, 11, 12, 13, 14])
    assert torch.equal(torch.get_rng_state(), state)
    for a, b in zip(alone, batched, strict=True):
        assert [s.token_ids for s in a] == [s.token_ids for s in b]
        for x, y in zip(a, b, strict=True):
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-4)  # batched matmuls: ~1e-5 apart


def test_first_token_frequencies_match_the_tempered_softmax(tiny_model):
    """8000 draws of the first token after the most uncertain prefix of a completion: the
    counts of the 5 likeliest tokens and of the rest match the softmax of logits / temperature
    (chi-square, 5 degrees of freedom, below 30: p ~ 2e-5 by chance), while sampling at twice
    or half the temperature would give an expected chi-square over ten times that."""
    model, tok = tiny_model
    prompt = _prompts(tok)[1]
    with torch.no_grad():  # the greedy completion's most uncertain position
        row = _reference_generate(model, tok, [prompt], 30, [tok.eos_token_id])[0]
        logits = model(torch.tensor([prompt + row])).logits[0, len(prompt) - 1:]
    j = int(logits.softmax(-1).mul(logits.log_softmax(-1)).sum(-1).argmin())  # max entropy
    prefix, logit = prompt + row[:j], logits[j]
    temperature, n = 0.8, 8000
    expect = (logit / temperature).softmax(-1)
    top = expect.topk(5).indices

    def cells(p: torch.Tensor) -> torch.Tensor:  # the 5 likeliest tokens' mass, then the rest
        return torch.cat([p[top], 1 - p[top].sum(0, keepdim=True)])

    torch.manual_seed(0)
    (group,) = HFEngine(model, tok).generate([prefix], n, SamplingConfig(max_tokens=1, temperature=temperature))
    freq = cells(torch.bincount(torch.tensor([s.token_ids[0] for s in group]), minlength=logit.numel()) / n)
    chi2 = n * ((freq - cells(expect)) ** 2 / cells(expect)).sum()
    assert chi2 < 30, chi2
    # a sampler at half or twice the temperature (the power depends on the model's logits here:
    # 1.0 gave 217, 0.6 gave 145 with one build or another; 2x off either way is what it must see)
    for wrong in (1.6, 0.4):
        assert n * ((cells((logit / wrong).softmax(-1)) - cells(expect)) ** 2 / cells(expect)).sum() > 300
    # and each sample's log-prob is that of its token
    lp = expect.log()
    assert all(abs(s.logprobs[0] - lp[s.token_ids[0]].item()) < 1e-4 for s in group)


def test_peft_wrapped_model_decodes_with_the_current_cache_kwarg(tiny_model):
    """A peft wrapper's forward only has **kwargs: the cache and logits_to_keep kwargs are named
    from the wrapped model (no deprecated ``past_key_values`` per step), and a zero-initialised
    adapter decodes greedily exactly as the base model."""
    peft = pytest.importorskip("peft")
    model, tok = tiny_model
    prompts = _prompts(tok)
    ref = [[s.token_ids for s in g] for g in HFEngine(model, tok).generate(prompts, 2, SamplingConfig(
        max_tokens=40, temperature=0.0))]
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        out = HFEngine(wrapped, tok).generate(prompts, 2, SamplingConfig(max_tokens=40, temperature=0.0))
    assert [[s.token_ids for s in g] for g in out] == ref

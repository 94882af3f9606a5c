"""TRL 1.16's min_p, repetition_penalty and generation_kwargs: the transformers engine samples what
transformers' own ``generate`` samples with the same settings, and bad values stop the run at start-up."""

from __future__ import annotations

import pytest
import torch

from rlreason.config import ConfigError, from_dict
from rlreason.rollout.base import SamplingConfig
from rlreason.rollout.hf import HFEngine, process_logits
from rlreason.tiny import prompt_text

QUESTIONS = ["3+4", "47+38-19", "5-9+12-1"]


def _prompts(tok):
    return [tok(prompt_text(tok, q), add_special_tokens=False)["input_ids"] for q in QUESTIONS]


def _generate(model, tok, prompt, max_tokens, **kw):
    """transformers' generate on one prompt (no padding), the completion cut after eos."""
    ids = torch.tensor([prompt])
    row = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, top_k=0, top_p=1.0,
                         **kw)[0, len(prompt):].tolist()
    return row[:row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row


@pytest.mark.parametrize("do_sample", [False, True])
def test_repetition_penalty_samples_the_tokens_generate_samples(tiny_model, do_sample):
    """Greedy, and sampling made deterministic by min_p = 1 (only the most likely token stays), so the
    token ids can be compared one to one: with repetition_penalty 1.5 the engine's completions are
    generate's, token for token, and differ from those without the penalty."""
    model, tok = tiny_model
    sampled = {"temperature": 0.7, "min_p": 1.0} if do_sample else {"temperature": 0.0}
    eng = HFEngine(model, tok)
    changed = 0
    for prompt in _prompts(tok):
        (group,) = eng.generate([prompt], 2, SamplingConfig(max_tokens=40, repetition_penalty=1.5, **sampled))
        want = _generate(model, tok, prompt, 40, do_sample=do_sample, repetition_penalty=1.5,
                         **({"temperature": 0.7, "min_p": 1.0} if do_sample else {}))
        assert [s.token_ids for s in group] == [want, want]
        (plain,) = eng.generate([prompt], 1, SamplingConfig(max_tokens=40, **sampled))
        changed += plain[0].token_ids != want
    assert changed > 0  # the penalty reached the samples


def test_processed_distribution_equals_generates_scores(tiny_model):
    """At every position of a sequence generate sampled (temperature 0.8, top_p 0.95, min_p 0.2,
    repetition_penalty 1.3), the engine's processed logits equal generate's processed scores: the
    same tokens cut (-inf), the same values on the rest. So the engine samples from generate's
    distribution and its log-probs (log-softmax of these) are those of the distribution sampled."""
    model, tok = tiny_model
    settings = SamplingConfig(max_tokens=30, temperature=0.8, top_p=0.95, min_p=0.2, repetition_penalty=1.3)
    torch.manual_seed(0)
    for prompt in _prompts(tok):
        ids = torch.tensor([prompt])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=30, do_sample=True,
                             temperature=0.8, top_p=0.95, top_k=0, min_p=0.2, repetition_penalty=1.3,
                             output_scores=True, return_dict_in_generate=True, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        seq = out.sequences[0]
        with torch.no_grad():
            logits = model(seq[None]).logits[0].float()
        cut_somewhere = False
        for t, want in enumerate(out.scores):
            pos = len(prompt) + t - 1  # the logits that predict token len(prompt) + t
            seen = torch.zeros(1, logits.shape[-1], dtype=torch.bool)
            seen[0, seq[:pos + 1]] = True
            got = process_logits(logits[pos:pos + 1], settings, seen)
            assert torch.equal(torch.isinf(got), torch.isinf(want))
            finite = ~torch.isinf(want)
            torch.testing.assert_close(got[finite], want[finite], rtol=1e-4, atol=1e-4)
            cut_somewhere |= bool(torch.isinf(want).any())
        assert cut_somewhere


def test_engine_logprobs_are_of_the_processed_distribution(tiny_model):
    """Sample.logprobs under min_p and repetition_penalty: the log-softmax of the processed logits at
    the sampled token (vLLM's processed_logprobs), recomputed here from a full forward."""
    model, tok = tiny_model
    settings = SamplingConfig(max_tokens=20, temperature=0.9, min_p=0.1, repetition_penalty=1.4)
    prompt = _prompts(tok)[1]
    torch.manual_seed(1)
    (group,) = HFEngine(model, tok).generate([prompt], 3, settings)
    for s in group:
        seq = torch.tensor(prompt + s.token_ids)
        with torch.no_grad():
            logits = model(seq[None]).logits[0].float()
        for t, (token, lp) in enumerate(zip(s.token_ids, s.logprobs, strict=True)):
            pos = len(prompt) + t - 1
            seen = torch.zeros(1, logits.shape[-1], dtype=torch.bool)
            seen[0, seq[:pos + 1]] = True
            want = process_logits(logits[pos:pos + 1], settings, seen).log_softmax(-1)[0, token].item()
            assert lp == pytest.approx(want, abs=1e-4)


BASE = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "num_generations": 4,
        "max_completion_length": 16, "learning_rate": 1e-5, "max_steps": 2}


@pytest.mark.parametrize("key,value,match", [
    ("min_p", 1.5, "config key 'min_p': must be in \\[0, 1\\]"),
    ("min_p", -0.1, "config key 'min_p'"),
    ("repetition_penalty", 0.0, "config key 'repetition_penalty': must be a finite number > 0"),
    ("repetition_penalty", -1.0, "config key 'repetition_penalty'"),
    ("generation_kwargs", {"num_beams": 2}, "config key 'generation_kwargs.num_beams'"),
    ("generation_kwargs", {"seed": 3}, "config key 'generation_kwargs.seed'"),
    ("generation_kwargs", {"min_p": 2.0}, "config key 'min_p'"),
])
def test_bad_generation_settings_are_refused_naming_the_key(key, value, match):
    with pytest.raises(ConfigError, match=match):
        from_dict({**BASE, key: value})


def test_generation_kwargs_override_the_named_keys_and_trl_defaults_load():
    cfg = from_dict({**BASE, "temperature": 1.0, "generation_kwargs": {"temperature": 0.6, "min_p": 0.05,
                                                                       "max_new_tokens": 24}})
    assert (cfg.temperature, cfg.min_p, cfg.max_completion_length, cfg.generation_kwargs) == (0.6, 0.05, 24, None)
    # a vLLM engine gets what is left as SamplingParams settings
    cfg = from_dict({**BASE, "use_vllm": True, "generation_kwargs": {"presence_penalty": 0.5, "top_k": 5}})
    assert cfg.top_k == 5 and cfg.sampling_extra() == (("presence_penalty", 0.5),)
    # TRL 1.16's defaults for these keys load (a full TRL config dump carries them)
    cfg = from_dict({**BASE, "min_p": None, "repetition_penalty": 1.0, "generation_kwargs": None})
    assert cfg.min_p is None and cfg.repetition_penalty == 1.0

"""What a vLLM server samples from: every request sets each sampling parameter a server would
otherwise fill from the model's generation_config.json (a stock ``vllm serve`` runs with
``--generation-config auto``), so the sampler draws from exactly the distribution the trainer's
log-probs describe. Against the fake server of test_rollout_server_retry.py (no vLLM needed);
the rule below is vLLM's ``CompletionRequest.to_sampling_params``: a value the request leaves
out (or null) comes from the server's defaults, else from vLLM's neutral ones."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rlreason.rollout.base import SamplingConfig

sys.path.insert(0, str(Path(__file__).parent))
from test_rollout_server_retry import _engine, server  # noqa: E402, F401  (server: the fixture)

VLLM_NEUTRAL = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
                "presence_penalty": 0.0, "frequency_penalty": 0.0}
# a model's generation_config.json as a stock server applies it (--generation-config auto), or a
# server's --override-generation-config: every parameter vLLM reads from there, none neutral
MODEL_DEFAULTS = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "min_p": 0.05, "repetition_penalty": 1.05,
                  "presence_penalty": 0.5, "frequency_penalty": 0.5}


def sampled_with(body: dict) -> dict:
    """The sampling parameters a server with MODEL_DEFAULTS uses for a request ``body``."""
    return {k: body[k] if body.get(k) is not None else MODEL_DEFAULTS.get(k, VLLM_NEUTRAL[k]) for k in VLLM_NEUTRAL}


@pytest.mark.parametrize(("sampling", "expected"), [
    (SamplingConfig(max_tokens=8, temperature=1.0), {}),  # the training default
    (SamplingConfig(max_tokens=8, temperature=0.6, top_p=0.9, top_k=5), {"temperature": 0.6, "top_p": 0.9,
                                                                         "top_k": 5}),
    (SamplingConfig(max_tokens=8, temperature=0.0), {"temperature": 0.0}),  # greedy (evaluation)
    # TRL's min_p, repetition_penalty and generation_kwargs (SamplingConfig.extra, sent last)
    (SamplingConfig(max_tokens=8, temperature=0.9, min_p=0.1, repetition_penalty=1.3,
                    extra=(("presence_penalty", 0.4), ("top_k", 7))),
     {"temperature": 0.9, "min_p": 0.1, "repetition_penalty": 1.3, "presence_penalty": 0.4, "top_k": 7}),
    (SamplingConfig(max_tokens=8, temperature=0.0, repetition_penalty=1.3),  # the penalty changes the argmax
     {"temperature": 0.0, "repetition_penalty": 1.3}),
])
def test_every_sampling_parameter_is_sent_so_server_defaults_never_apply(server, sampling, expected):  # noqa: F811
    engine = _engine(server)
    engine.generate([[1, 2]], 2, sampling, seeds=[3])
    (body,) = [b for _, p, b in server.requests if p == "v1/completions"]
    # exactly what the trainer asked for, and neutral otherwise: no repetition penalty, no min_p
    assert sampled_with(body) == {**VLLM_NEUTRAL, **expected}
    assert body["max_tokens"] == 8  # (vLLM's max_new_tokens default applies only without it)

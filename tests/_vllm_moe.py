"""Worker for test_vllm.py's MoE test, in its own process (a second in-process vLLM engine
would share the module's). Starts vLLM on an MoE checkpoint folder, generates, compares with
the transformers engine and the trainer's log-probs, and tries an in-memory weight sync (which
rlreason refuses for MoE layers). Prints one JSON line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from _logprobs import trainer_logprobs  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from rlreason.rollout.base import SamplingConfig  # noqa: E402
from rlreason.rollout.hf import HFEngine  # noqa: E402
from rlreason.rollout.vllm import VLLMEngine  # noqa: E402
from rlreason.tiny import prompt_text  # noqa: E402

QUESTIONS = ("3+4", "47+38", "12+30+5", "8+61", "25+25+9", "70+13")


def main(path: str) -> None:
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    prompts = [tok(prompt_text(tok, q), add_special_tokens=False)["input_ids"] for q in QUESTIONS]
    engine = VLLMEngine(path, tok, seed=0)
    greedy = SamplingConfig(max_tokens=40, temperature=0.0)
    ours, theirs = engine.generate(prompts, 1, greedy), HFEngine(model, tok).generate(prompts, 1, greedy)
    groups = engine.generate(prompts, 4, SamplingConfig(max_tokens=40, temperature=1.0))
    flat, logp = trainer_logprobs(model, prompts, groups, tok.pad_token_id)
    diff = max(float((torch.tensor(s.logprobs) - logp[i, :len(s.token_ids)]).abs().max()) for i, s in enumerate(flat))
    try:
        engine.load_weights(model.named_parameters())
        refused = ""
    except NotImplementedError as e:
        refused = str(e)
    engine.close()
    print(json.dumps({"arch": type(model).__name__, "samples": len(flat),
                      "greedy_equal": sum(a[0].token_ids == b[0].token_ids for a, b in zip(ours, theirs, strict=True)),
                      "greedy_n": len(prompts), "max_sampled_logprob_diff": diff, "sync_refused": refused}))


if __name__ == "__main__":
    main(sys.argv[1])

"""What the tool-calling tiny model (``tiny-tools``) does before RL: how often it calls the calculator,
and how often it is right when it calls and when it computes in its head.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tools_warmup.py [--model PATH] [--problems 200] [--n 8]

Held-out problems (rlreason.data.tasks.mul), ``--n`` samples each at temperature 1 and one greedy
answer each. A two-turn rollout written out here on the transformers engine (the first turn; where it
called the tool, the tool's result as the chat template renders it and a second turn), so that it
checks the warm-up alone, independently of the trainer's rollout loop. What a teacher that calls
with probability p should leave: a sampled call rate near p, most calls right, in-head answers wrong,
no greedy call. Measured on tiny-tools (p 0.4): docs/tools.md, "The demo".
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason import tiny
from rlreason.data.tasks import mul
from rlreason.rewards.math import AccuracyReward
from rlreason.rollout.base import SamplingConfig
from rlreason.rollout.hf import HFEngine


def two_turns(engine: HFEngine, tokenizer, problems: list[mul.Problem], n: int, temperature: float,
              max_tokens: int = 40) -> list[dict]:
    """One record per sample: whether it called the tool, its final text, whether that is right."""
    tools = tiny.tool_schemas()
    sampling = SamplingConfig(max_tokens=max_tokens, temperature=temperature)
    prompts = [tokenizer.apply_chat_template(mul.prompt(p), tools=tools, add_generation_prompt=True,
                                             tokenize=False) for p in problems]
    prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompts]
    first = engine.generate(prompt_ids, n, sampling)
    records, second_ids, second_at = [], [], []
    for i, (p, group) in enumerate(zip(problems, first, strict=True)):
        for s in group:
            try:
                msg = tokenizer.parse_response(s.token_ids, prefix="")
            except ValueError:  # a malformed call (bad JSON) is no call, as in TRL
                msg = {"role": "assistant", "content": s.text}
            calls = msg.get("tool_calls") or []
            if not all(isinstance(c.get("function"), dict) and isinstance(c["function"].get("name"), str)
                       and isinstance(c["function"].get("arguments"), dict) for c in calls):
                calls = []  # a call without a name or arguments is malformed: no call, as in TRL
            rec = {"question": p.question, "gold": str(p.answer), "called": bool(calls), "text": s.text}
            records.append(rec)
            if not calls:
                continue
            fn = calls[0]["function"]
            try:  # a sampled call may name another tool or pass other arguments: its error is the result
                if fn["name"] != mul.TOOL_NAME:
                    raise ValueError(f"unknown tool {fn['name']!r}")
                result = str(mul.multiply(**fn["arguments"]))
            except (TypeError, ValueError) as e:
                result = f"error: {e}"
            completion = [{"role": "assistant", "content": "", "tool_calls": calls},
                          {"role": "tool", "name": mul.TOOL_NAME, "content": result},
                          {"role": "assistant", "content": ""}]
            segs = tiny.exchange_segments(tokenizer, mul.prompt(p), completion, tools)
            suffix = tokenizer(segs[2][0], add_special_tokens=False)["input_ids"]
            second_ids.append(prompt_ids[i] + s.token_ids + suffix)
            second_at.append(len(records) - 1)
    if second_ids:
        for at, (s,) in zip(second_at, engine.generate(second_ids, 1, sampling), strict=True):
            records[at]["text"] = s.text
    score = AccuracyReward()
    for r in records:
        r["right"] = score.score(r["text"], r["gold"]) == 1.0
    return records


def summary(records: list[dict]) -> dict:
    called = [r for r in records if r["called"]]
    head = [r for r in records if not r["called"]]
    return {"samples": len(records), "call_rate": len(called) / len(records),
            "accuracy": sum(r["right"] for r in records) / len(records),
            "accuracy_when_calling": sum(r["right"] for r in called) / len(called) if called else None,
            "accuracy_in_head": sum(r["right"] for r in head) / len(head) if head else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a model folder (default: build or reuse tiny-tools)")
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    path = args.model or tiny.ensure(tiny.TINY_TOOLS)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    engine = HFEngine(model, tokenizer)
    problems = mul.generate(args.problems, seed=1234, split="heldout")
    t0 = time.time()
    out = {"model": str(path),
           "sampled": summary(two_turns(engine, tokenizer, problems, args.n, temperature=1.0)),
           "greedy": summary(two_turns(engine, tokenizer, problems, 1, temperature=0.0)),
           "seconds": None}
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

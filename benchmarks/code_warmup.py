"""What the code-writing tiny model (``tiny-code``, or a trained one) writes: which of the teacher's
programs, and how often it passes the hidden tests in the sandbox.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/code_warmup.py [--model PATH] [--problems 200] [--n 8]

Held-out problems of the code task (rlreason.data.tasks.code: the ones the demo's eval holds out),
``--n`` samples each at temperature 1 and one greedy answer each, generated on the transformers engine
here (independently of the trainer's loop). Each program is sorted by the teacher's form it copies
(``line``: right, ``table``, ``intercept``; ``other``: none of them, e.g. a miscopied value; ``no code``:
no python block) and scored by the real ``code_tests`` reward (bubblewrap) on the hidden asserts. What a
teacher right with probability p should leave: about p of the samples right, and greedy decoding
writing its likeliest form, the table. Measured on tiny-code: docs/code.md, "A code demo".
"""

from __future__ import annotations

import argparse
import collections
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason import tiny
from rlreason.data.tasks import code
from rlreason.rewards.code import code_tests, extract_code
from rlreason.rollout.base import SamplingConfig
from rlreason.rollout.hf import HFEngine

FORMS = (code.RIGHT, *code.WRONG_FORMS)


def form_of(program: str, problem: code.Problem) -> str:
    """The teacher's form ``program`` is, character for character; else "other" (or "no code")."""
    if not program:
        return "no code"
    return next((f for f in FORMS if program == code.program(problem, f)), "other")


def sample(engine: HFEngine, tokenizer, problems: list[code.Problem], n: int, temperature: float) -> dict:
    """Form shares and pass rate (code_tests, binary) of ``n`` completions per problem."""
    prompt_ids = [tokenizer(tiny.prompt_text(tokenizer, p.question), add_special_tokens=False)["input_ids"]
                  for p in problems]
    groups = engine.generate(prompt_ids, n, SamplingConfig(max_tokens=48, temperature=temperature))
    texts = [s.text for group in groups for s in group]
    rows = [p for p in problems for _ in range(n)]
    passed = code_tests(prompts=["p"] * len(texts), completions=texts, test_list=[code.tests(p) for p in rows],
                        mode="binary")
    forms = collections.Counter(form_of(extract_code(t), p) for t, p in zip(texts, rows, strict=True))
    return {"samples": len(texts), "pass_rate": sum(passed) / len(passed),
            "forms": {f: forms[f] / len(texts) for f in (*FORMS, "other", "no code")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a model folder (default: build or reuse tiny-code)")
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    path = args.model or tiny.ensure(tiny.TINY_CODE)
    tokenizer = AutoTokenizer.from_pretrained(path)
    engine = HFEngine(AutoModelForCausalLM.from_pretrained(path).eval(), tokenizer)
    problems = code.split()["heldout"][:args.problems]
    t0 = time.time()
    out = {"model": str(path), "problems": len(problems),
           "sampled": sample(engine, tokenizer, problems, args.n, temperature=1.0),
           "greedy": sample(engine, tokenizer, problems, 1, temperature=0.0)}
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

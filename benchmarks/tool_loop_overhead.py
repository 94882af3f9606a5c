"""The multi-turn loop's own cost (rlreason/rollout/tools/loop.py): parsing each turn
(``parse_assistant``), rendering the tool answers' suffix (``tool_suffix_ids``: two chat-template
renderings) and the bookkeeping, per rollout and tool round, with an engine that answers at once
and tools that answer at once, on the embedded tiny model's tokenizer with a Qwen2.5-style tool
template. Generation and the tools themselves cost on top of it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tool_loop_overhead.py --rollouts 64 --rounds 3

Prints microseconds per rollout-round (best of ``--reps``) and the two parts measured alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlreason.rollout.base import Sample, SamplingConfig  # noqa: E402
from rlreason.rollout.tools.loop import generate_with_tools  # noqa: E402
from rlreason.rollout.tools.parse import parse_assistant, tool_suffix_ids  # noqa: E402
from rlreason.rollout.tools.results import EpisodeStart, ToolResult  # noqa: E402

TEMPLATE = (  # Qwen2.5's tool format with a short tools block (as tests/test_tool_loop.py)
    "{% if tools %}{{ '<|im_start|>system\\n# Tools\\n<tools>' }}"
    "{% for t in tools %}{{ '\\n' + (t | tojson) }}{% endfor %}{{ '\\n</tools><|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'assistant' %}{{ '<|im_start|>assistant\\n' + message.content }}"
    "{% for call in message.tool_calls or [] %}{% if message.content or not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<tool_call>\\n{\"name\": \"' + call.function.name + '\", \"arguments\": ' + (call.function.arguments | tojson)"
    " + '}\\n</tool_call>' }}{% endfor %}{{ '<|im_end|>\\n' }}"
    "{% elif message.role == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{ '<|im_start|>user' }}{% endif %}"
    "{{ '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% else %}{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SCHEMA = {"type": "function", "function": {"name": "mul", "description": "Multiply two integers.", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
CALL = '<tool_call>\n{"name": "mul", "arguments": {"a": 12, "b": 13}}\n</tool_call><|im_end|>'


@dataclass
class InstantEngine:
    """Every turn calls the tool again: the loop runs ``--rounds`` rounds for every rollout."""

    ids: list[int]

    def generate(self, prompts, n, sampling, seeds=None):
        return [[Sample(list(self.ids), "", [-1.0] * len(self.ids)) for _ in range(n)] for _ in prompts]

    def load_weights(self, named_tensors) -> None:
        pass

    def close(self) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rollouts", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from rlreason.tiny import ensure

    tok = AutoTokenizer.from_pretrained(ensure(log=lambda *a: None))
    tok.chat_template = TEMPLATE
    ids = tok(CALL, add_special_tokens=False)["input_ids"]
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 12 times 13?"}], tools=[SCHEMA],
                                     add_generation_prompt=True, tokenize=True, return_dict=False)
    starts = [EpisodeStart(None, [SCHEMA]) for _ in range(args.rollouts)]

    def call_tools(requests):
        return [[ToolResult("mul", "156", False) for _ in calls] for _, calls in requests]

    best = float("inf")
    for _ in range(args.reps):
        t = time.perf_counter()
        generate_with_tools(InstantEngine(ids), tok, [prompt] * (args.rollouts // 4), 4,
                            SamplingConfig(max_tokens=4096), None, starts, call_tools, args.rounds, 1 << 20)
        best = min(best, time.perf_counter() - t)
    per = best / (args.rollouts * args.rounds) * 1e6
    print(f"loop: {per:.0f} us per rollout-round ({args.rollouts} rollouts x {args.rounds} rounds, "
          f"best of {args.reps})")
    answer = [{"role": "tool", "name": "mul", "content": "156"}]
    for name, fn in (("parse_assistant", lambda: parse_assistant(tok, ids, prompt, [SCHEMA])),
                     ("tool_suffix_ids", lambda: tool_suffix_ids(tok, answer))):
        fn()
        t = time.perf_counter()
        for _ in range(300):
            fn()
        print(f"{name}: {(time.perf_counter() - t) / 300 * 1e6:.0f} us per call")


if __name__ == "__main__":
    main()

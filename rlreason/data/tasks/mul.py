"""The embedded multiplication task: a product too hard to compute in the head, and a calculator.

A problem is ``a*b`` with ``a`` and ``b`` of a few digits each (by default both 3-digit, from 317,
so the product has 6 digits). The embedded tiny model cannot multiply such numbers itself, but it can copy: call the
``multiply`` tool and copy its result into ``<answer>``. The exchange in TRL's conversational
form (the model's turns and the tool's)::

    assistant: <tool_call>{"name": "multiply", "arguments": {"a": 123, "b": 456}}</tool_call>
    tool:      56088
    assistant: <answer>56088</answer>

Splits are decided by a hash of the question (``arith.split_of``: about 1 in 4 held out), so train
and held-out problems are disjoint whatever seeds either side uses.

Warm-up traces come from a *sometimes-calling teacher* (``teacher``): with probability ``p_tool``
it calls the tool as above; otherwise it "computes in its head" by rounding both factors to tens
and writing the rounded product, ``<think>123*456~120*460</think><answer>55200</answer>`` -- wrong
unless both factors are multiples of ten. A policy trained by imitation calls the tool on about
``p_tool`` of its samples; RL on the final answer alone can teach it to call every time.

The tool lives here, with the task, because the warm-up and the RL run must offer the model the
same tool: its name, signature and docstring make the schema the chat template renders, so one
definition is what the tiny model is warmed up on and what a recipe names
(``tools: ["rlreason.data.tasks.mul:multiply"]``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from rlreason.data.tasks.arith import SPLITS, split_of

TOOL_NAME = "multiply"


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.

    Returns:
        The product a * b.
    """
    # int(): a model may write "123" for 123; a string would otherwise be repeated b times by str * int
    return int(a) * int(b)


@dataclass(frozen=True)
class MulDifficulty:
    """The factors' ranges (inclusive). By default 3-digit numbers from 317, so that every product has
    6 digits (317 * 317 = 100489): the tool's answer then always has the same length, and the 0.8M
    tiny model copies it by position. With factors from 100 (5- and 6-digit products, 1 in 6 of 5) a
    warm-up (p_tool 0.3, 800 steps of 32) copied the product right 48% of the time, greedily, and
    nearly never a 5-digit one (benchmarks/tools_warmup.py)."""

    min_a: int = 317
    max_a: int = 999
    min_b: int = 317
    max_b: int = 999

    def __post_init__(self) -> None:
        for side in ("a", "b"):
            lo, hi = getattr(self, f"min_{side}"), getattr(self, f"max_{side}")
            if not 0 <= lo <= hi:
                raise ValueError(f"need 0 <= min_{side} <= max_{side}, got {lo}, {hi}")


@dataclass(frozen=True)
class Problem:
    a: int
    b: int
    question: str = field(init=False)
    answer: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "question", f"{self.a}*{self.b}")
        object.__setattr__(self, "answer", self.a * self.b)


def generate(n: int, seed: int, split: str = "train", difficulty: MulDifficulty = MulDifficulty(),
             unique: bool = True) -> list[Problem]:
    """``n`` problems of ``split``, reproducible from ``seed``; ``unique`` drops repeats, and a request
    larger than the split's problem space fails loudly rather than looping forever."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"mul:{seed}:{split}")
    seen: set[str] = set()
    out: list[Problem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise ValueError(f"could not draw {n} distinct {split} problems at {difficulty}; ask for fewer")
        p = Problem(rng.randint(difficulty.min_a, difficulty.max_a), rng.randint(difficulty.min_b, difficulty.max_b))
        if split_of(p.question) != split or (unique and p.question in seen):
            continue
        seen.add(p.question)
        out.append(p)
    return out


def tool_call(problem: Problem) -> dict:
    """The assistant's call of the calculator for ``problem``, as transformers parses one."""
    return {"type": "function", "function": {"name": TOOL_NAME, "arguments": {"a": problem.a, "b": problem.b}}}


def call_text(problem: Problem) -> str:
    """The call as the model writes it (Hermes/Qwen format), the JSON as the chat template's ``tojson``
    writes it (json.dumps' default separators)."""
    fn = tool_call(problem)["function"]
    return f"<tool_call>{json.dumps({'name': fn['name'], 'arguments': fn['arguments']})}</tool_call>"


def in_head(problem: Problem) -> tuple[str, int]:
    """The sloppy in-head computation: both factors rounded to tens (halves up), their product as
    the answer. Right only when both factors are multiples of ten."""
    ra, rb = (problem.a + 5) // 10 * 10, (problem.b + 5) // 10 * 10
    return f"<think>{problem.a}*{problem.b}~{ra}*{rb}</think><answer>{ra * rb}</answer>", ra * rb


def teacher(problem: Problem, p_tool: float, rng: random.Random) -> list[dict]:
    """The warm-up teacher's completion of ``problem`` (TRL's conversational completion: assistant
    and tool messages): a calculator call with probability ``p_tool``, else the in-head guess."""
    if not 0.0 <= p_tool <= 1.0:
        raise ValueError(f"p_tool must be in [0, 1], got {p_tool}")
    if rng.random() < p_tool:
        return [{"role": "assistant", "content": "", "tool_calls": [tool_call(problem)]},
                {"role": "tool", "name": TOOL_NAME, "content": str(multiply(problem.a, problem.b))},
                {"role": "assistant", "content": f"<answer>{problem.answer}</answer>"}]
    return [{"role": "assistant", "content": in_head(problem)[0]}]


def prompt(problem: Problem) -> list[dict]:
    """The conversational prompt: the question as the user's message (the chat template adds the
    tool list when tools are given)."""
    return [{"role": "user", "content": problem.question}]


def to_records(problems: list[Problem]) -> list[dict]:
    """Rows for a ``datasets.Dataset``: the conversational prompt and the gold answer as text."""
    return [{"prompt": prompt(p), "answer": str(p.answer)} for p in problems]

"""Countdown's reward, as TinyZero scores its Countdown task: reach ``target`` with every number of
``nums`` used exactly once and + - * / (and parentheses).

    1.0  the last <answer>...</answer> holds an expression that uses each number of ``nums`` exactly
         once (no other number) and equals ``target`` (exactly: the arithmetic is done in fractions)
    0.1  an <answer> is there but its expression is not that (wrong value, a number reused, missing or
         not given, an operator other than + - * /, a division by zero, not an expression): the
         format's partial credit, TinyZero's ``format_score``
    0.0  no <answer>...</answer> at all

The expression is never run: its syntax tree is walked (``ast``), and only integers, + - * / and a
leading minus are evaluated; anything else (``**``, names, calls, decimals) is refused at once, so
no answer can make the reward slow or unsafe. A TRL-signature reward: the dataset's ``target`` and
``nums`` columns arrive as lists, one entry per completion.

    reward_funcs: [docs/examples/countdown/countdown_reward.py:countdown]   # a training config
    python -m rlreason.eval --model M --suite-file docs/examples/countdown/countdown.yaml --suites countdown
"""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter
from fractions import Fraction

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
FORMAT_SCORE = 0.1
# Longer answers are not expressions of a few numbers; the cap bounds the parse's time and depth.
MAX_EXPRESSION_CHARS = 200
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def evaluate(node: ast.AST) -> tuple[Fraction, list[int]]:
    """(value, the integers it uses) of an expression of integers, + - * / and unary minus.
    ValueError for anything else; ZeroDivisionError for a division by zero."""
    if isinstance(node, ast.Constant) and type(node.value) is int:  # not bool, not float
        return Fraction(node.value), [node.value]
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        (left, used_left), (right, used_right) = evaluate(node.left), evaluate(node.right)
        return OPERATORS[type(node.op)](left, right), used_left + used_right
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value, used = evaluate(node.operand)
        return -value, used
    raise ValueError(f"not allowed in a Countdown answer: {ast.dump(node)[:60]}")


def score(text: str, nums: list[int], target: int) -> float:
    """One completion's reward (module docstring)."""
    found = ANSWER.findall(text)
    if not found:
        return 0.0
    expression = found[-1].strip()
    if len(expression) > MAX_EXPRESSION_CHARS:
        return FORMAT_SCORE
    try:
        value, used = evaluate(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, MemoryError):
        return FORMAT_SCORE
    if Counter(used) != Counter(nums):  # each number exactly once, no other
        return FORMAT_SCORE
    return 1.0 if value == target else FORMAT_SCORE


def countdown(prompts: list, completions: list, target: list, nums: list, **kwargs) -> list[float]:
    """The Countdown reward of each completion (a string, or TRL's conversational message list)."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [score(text, list(n), int(t)) for text, n, t in zip(texts, nums, target, strict=True)]

"""The embedded multiplication task (rlreason.data.tasks.mul): problems, splits, the calculator tool,
the sometimes-calling teacher."""

from __future__ import annotations

import random

import pytest
from transformers.utils import get_json_schema

from rlreason.data.tasks import mul
from rlreason.rewards.math import AccuracyReward


def test_problems_are_seeded_and_sized_as_asked():
    a = mul.generate(300, seed=3)
    assert [p.question for p in a] == [p.question for p in mul.generate(300, seed=3)]
    assert [p.question for p in a] != [p.question for p in mul.generate(300, seed=4)]
    assert len({p.question for p in a}) == 300
    for p in a:
        x, y = (int(s) for s in p.question.split("*"))
        assert (x, y) == (p.a, p.b) and p.answer == x * y
        assert 317 <= x <= 999 and 317 <= y <= 999 and 100_000 <= p.answer <= 999_999
    two = mul.generate(200, seed=0, difficulty=mul.MulDifficulty(min_b=10, max_b=99))
    assert all(10 <= p.b <= 99 for p in two)


def test_train_and_heldout_are_disjoint_and_heldout_is_about_a_quarter():
    train = {p.question for p in mul.generate(3000, seed=0, split="train")}
    held = {p.question for p in mul.generate(1000, seed=0, split="heldout")}
    assert not train & held
    # whatever the seed: the split is a property of the question
    assert not {p.question for p in mul.generate(1000, seed=7, split="train")} & held
    # 4,000 fresh draws, no split filter: about 1 in 4 land in heldout (binomial sd ~27)
    rng = random.Random(5)
    draws = [f"{rng.randint(317, 999)}*{rng.randint(317, 999)}" for _ in range(4000)]
    n_held = sum(mul.split_of(q) == "heldout" for q in draws)
    assert 850 < n_held < 1150


def test_bad_requests_are_refused():
    with pytest.raises(ValueError, match="split"):
        mul.generate(1, seed=0, split="test")
    with pytest.raises(ValueError, match="min_a"):
        mul.MulDifficulty(min_a=300, max_a=200)
    with pytest.raises(ValueError, match="distinct"):  # 1-digit x 1-digit: 100 questions in all
        mul.generate(500, seed=0, difficulty=mul.MulDifficulty(0, 9, 0, 9))
    with pytest.raises(ValueError, match="p_tool"):
        mul.teacher(mul.Problem(123, 456), 1.5, random.Random(0))


def test_the_calculator_is_a_tool_transformers_can_describe():
    assert mul.multiply(123, 456) == 56088
    assert mul.multiply("12", 3) == 36  # a model's quoted number is still a number
    with pytest.raises(ValueError):
        mul.multiply("twelve", 3)
    schema = get_json_schema(mul.multiply)["function"]
    assert schema["name"] == "multiply"
    assert schema["parameters"]["properties"] == {"a": {"type": "integer", "description": "The first factor."},
                                                  "b": {"type": "integer", "description": "The second factor."}}


def test_teacher_calls_with_probability_p_and_guesses_otherwise():
    p = mul.Problem(123, 456)
    call = mul.teacher(p, 1.0, random.Random(0))
    assert call == [
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "multiply", "arguments": {"a": 123, "b": 456}}}]},
        {"role": "tool", "name": "multiply", "content": "56088"},
        {"role": "assistant", "content": "<answer>56088</answer>"},
    ]
    # in the head: both factors to tens, halves up: 120 * 460 = 55200, 130 * 460 = 59800
    assert mul.teacher(p, 0.0, random.Random(0)) == [
        {"role": "assistant", "content": "<think>123*456~120*460</think><answer>55200</answer>"}]
    assert mul.in_head(mul.Problem(125, 455)) == ("<think>125*455~130*460</think><answer>59800</answer>", 59800)
    assert mul.call_text(p) == '<tool_call>{"name": "multiply", "arguments": {"a": 123, "b": 456}}</tool_call>'
    rng = random.Random(1)
    problems = mul.generate(2000, seed=0)
    traces = [mul.teacher(q, 0.3, rng) for q in problems]
    calls = sum(len(t) == 3 for t in traces)
    assert 540 < calls < 660  # 2000 x 0.3 = 600, binomial sd ~20
    score = AccuracyReward()
    head = [(t, q) for t, q in zip(traces, problems, strict=True) if len(t) == 1]
    right = sum(score([mul.prompt(q)], [t], answer=[str(q.answer)])[0] for t, q in head)
    assert right / len(head) < 0.03  # right only when both factors end in 0 (1%)
    assert all(score([mul.prompt(q)], [t], answer=[str(q.answer)]) == [1.0]
               for t, q in zip(traces, problems, strict=True) if len(t) == 3)


def test_records_are_conversational_with_a_gold_the_accuracy_reward_reads():
    (row,) = mul.to_records([mul.Problem(321, 654)])
    assert row == {"prompt": [{"role": "user", "content": "321*654"}], "answer": "209934"}
    score = AccuracyReward()
    completions = [[{"role": "assistant", "content": "<answer>209934</answer>"}],
                   [{"role": "assistant", "content": "<answer>209930</answer>"}]]
    assert score([row["prompt"]] * 2, completions, answer=[row["answer"]] * 2) == [1.0, 0.0]

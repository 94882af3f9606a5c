from __future__ import annotations

import random

import pytest

from rlreason.data.tasks import arith


def test_generate_is_deterministic_and_seed_dependent():
    a = [p.question for p in arith.generate(200, seed=3)]
    b = [p.question for p in arith.generate(200, seed=3)]
    c = [p.question for p in arith.generate(200, seed=4)]
    assert a == b
    assert a != c
    assert len(set(a)) == 200  # unique by default


def test_splits_are_disjoint_across_seeds():
    train = {p.question for s in range(3) for p in arith.generate(2000, seed=s, split="train")}
    held = {p.question for s in range(3) for p in arith.generate(1000, seed=s, split="heldout")}
    assert train and held
    assert not train & held
    assert all(arith.split_of(q) == "heldout" for q in held)


def test_answer_is_left_to_right_value():
    p = arith.Problem((47, 38, 19), ("+", "-"))
    assert p.question == "47+38-19"
    assert p.answer == 66
    assert arith.trace(p) == ("<think>47+38=85;85-19=66</think><answer>66</answer>", 66)


@pytest.mark.parametrize(("a", "op", "b", "slipped"), [
    (47, "+", 38, 75),    # carry from the units dropped
    (85, "-", 19, 76),    # borrow dropped
    (19, "-", 85, -76),   # same magnitudes, negative result
    (-82, "+", 7, -85),   # |-82| - 7 with a borrow
    (95, "+", 7, 92),     # 102 without its carry into the tens
    (12, "+", 13, None),  # no carry, nothing to slip
    (5, "-", 8, None),    # 8 - 5 has no borrow
])
def test_carry_slip(a, op, b, slipped):
    assert arith.carry_slip(a, op, b) == slipped


def test_sloppy_trace_is_consistent_and_wrong():
    p = arith.Problem((47, 38, 19), ("+", "-"))
    text, value = arith.trace(p, slip_rate=1.0, rng=random.Random(0))
    # 47+38 -> 75 (carry dropped); 75-19 = 56, whose borrow is dropped too -> 66
    assert text == "<think>47+38=75;75-19=66</think><answer>66</answer>"
    assert value == 66
    q = arith.Problem((47, 38), ("+",))
    assert arith.trace(q, 1.0, random.Random(0))[1] == 75 != q.answer


def test_slip_rate_needs_rng_and_difficulty_validates():
    with pytest.raises(ValueError, match="rng"):
        arith.trace(arith.Problem((1, 2), ("+",)), slip_rate=0.5)
    with pytest.raises(ValueError, match="min_terms"):
        arith.Difficulty(min_terms=1)
    with pytest.raises(ValueError, match="ops"):
        arith.Difficulty(ops="*")


def test_difficulty_bounds_respected():
    d = arith.Difficulty(min_terms=3, max_terms=3, min_digits=2, max_digits=2, ops="+")
    for p in arith.generate(100, seed=0, difficulty=d):
        assert len(p.terms) == 3 and all(10 <= t <= 99 for t in p.terms) and set(p.ops) == {"+"}


def test_too_many_unique_problems_fails_loudly():
    d = arith.Difficulty(min_terms=2, max_terms=2, min_digits=1, max_digits=1, ops="+")
    with pytest.raises(ValueError, match="distinct"):
        arith.generate(500, seed=0, difficulty=d)  # only 100 such problems exist

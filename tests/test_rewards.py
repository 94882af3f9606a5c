"""Unit tests for rlreason.rewards: answer extraction and parsing, the built-in rewards,
resolving reward specs, and the in-process runner."""

from __future__ import annotations

import functools
import logging
import math
import os.path
import sys
import warnings
from fractions import Fraction

import pytest
import torch

from rlreason.rewards import (
    BUILTIN,
    WARNINGS,
    RewardImportError,
    RewardOutput,
    RewardSpecError,
    accuracy_reward,
    completion_text,
    extract_answer,
    format_reward,
    parse_gold,
    parse_number,
    resolve,
    reward_name,
    score,
    tag_count_reward,
)

# ---------------------------------------------------------------------------------------------
# extract_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the answer is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),  # nested braces
        ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),  # two levels of nesting
        ("first \\boxed{3}, then \\boxed{4}", "4"),  # last box wins
        ("\\fbox{ 12 }", "12"),  # fbox, content stripped
        ("\\boxed {7}", "7"),  # space before the brace
        ("\\boxed{5} and a truncated \\boxed{6", "5"),  # unclosed box ignored
        ("<answer>1</answer> wait <answer> 2 </answer>", "2"),  # last answer tag wins
        ("<answer>\n-3\n</answer>", "-3"),  # multi-line content
        ("<answer>8</answer> \\boxed{9}", "8"),  # answer tags beat boxes
        ("<answer>the value is \\boxed{10}</answer>", "10"),  # box inside the answer tag
        ("Natalia sold 48+24 = 72 clips.\n#### 72", "72"),  # GSM8K
        ("#### 1\n#### 1,234\nthanks", "1,234"),  # last ####, rest of its line only
    ],
)
def test_extract_answer(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{}",  # empty box
        "\\boxed{  }",  # blank box
        "<answer>5</answer><answer> </answer>",  # the last answer is empty: no fallback to the first
        "<answer></answer> \\boxed{3}",  # answer tags take priority even when empty
        "####   ",  # empty GSM8K answer
        "the answer is 42",  # no marker at all
        "<answer>42",  # truncated answer tag
        "",
    ],
)
def test_extract_answer_none(text: str) -> None:
    assert extract_answer(text) is None


# ---------------------------------------------------------------------------------------------
# parse_number and parse_gold


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,234", Fraction(1234)),
        ("-12,345,678", Fraction(-12345678)),
        ("007", Fraction(7)),
        ("+5", Fraction(5)),
        ("-3.50", Fraction(-7, 2)),
        (".25", Fraction(1, 4)),
        ("1,234.5", Fraction(2469, 2)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("\\dfrac{6}{8}", Fraction(3, 4)),
        ("-\\frac{3}{4}", Fraction(-3, 4)),
        ("\\frac{-3}{4}", Fraction(-3, 4)),
        ("3/4", Fraction(3, 4)),
        ("10 / 4", Fraction(5, 2)),
        ("$42$", Fraction(42)),
        ("  $ 9 $  ", Fraction(9)),
        ("0", Fraction(0)),
    ],
)
def test_parse_number(text: str, expected: Fraction) -> None:
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "abc", "12abc", "1,23", "12,34,567", "1.2.3", "3/0", "\\frac{1}{0}", "1e5", "x=3", "\\sqrt{2}", "1_000", "٣"],
)
def test_parse_number_rejects_garbage(text: str) -> None:
    assert parse_number(text) is None


@pytest.mark.parametrize(
    ("gold", "expected"),
    [
        (5, Fraction(5)),
        (0.1, Fraction(1, 10)),  # what was written, not the binary float
        (Fraction(2, 3), Fraction(2, 3)),
        ("72", Fraction(72)),
        ("She sold 48/2 = 24 clips.\n#### 72", Fraction(72)),  # full GSM8K solution
        ("so \\boxed{\\frac{1}{2}}", Fraction(1, 2)),  # MATH-style solution
        ("\\frac{1}{", None),  # malformed (x^2 is a valid symbolic gold since the sympy verifier)
        (True, None),
        (float("nan"), None),
        (None, None),
    ],
)
def test_parse_gold(gold: object, expected: Fraction | None) -> None:
    # parse_gold returns a parsed answer (None if unparseable); .number is a plain number's value.
    parsed = parse_gold(gold)
    assert (parsed if expected is None else parsed.number) == expected


# ---------------------------------------------------------------------------------------------
# completion_text


def test_completion_text_forms() -> None:
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi"
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "b"
    assert completion_text({"role": "assistant", "content": "one"}) == "one"
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "x"}, {"type": "image"}, {"text": "y"}]}]
    assert completion_text(parts) == "xy"
    assert completion_text([]) == ""
    with pytest.raises(TypeError, match="int"):
        completion_text(3)


# ---------------------------------------------------------------------------------------------
# accuracy_reward


def test_accuracy_reward_scores_exact_values() -> None:
    completions = [
        "<think>2+3</think><answer>5</answer>",  # right
        "<answer>6</answer>",  # wrong
        "I think it is five",  # nothing extracted
        "\\boxed{\\frac{10}{2}}",  # right, other form
        "<answer>five</answer>",  # extracted but unparseable
        "<answer>0.5</answer>",  # right
        "#### 1,000",  # right, separators
    ]
    answers = ["5", "5", "5", "5.0", "5", "1/2", 1000]
    assert accuracy_reward([""] * 7, completions, answer=answers) == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0]


def test_accuracy_reward_conversational_completions() -> None:
    completions = [
        [{"role": "assistant", "content": "<answer>12</answer>"}],
        [{"role": "assistant", "content": "<answer>13</answer>"}],
    ]
    prompts = [[{"role": "user", "content": "7+5?"}]] * 2
    assert accuracy_reward(prompts, completions, answer=["12", "12"]) == [1.0, 0.0]


def test_accuracy_reward_unparseable_gold_is_none_counted_and_warned_once() -> None:
    gold = "\\frac{an unparseable gold}{for this test only"  # malformed LaTeX (plain text is a valid text gold)
    before = WARNINGS["unparseable_gold"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # so only the reward's own once-per-gold rule limits them
        first = accuracy_reward(["p", "p"], [f"<answer>{gold}</answer>", "<answer>1</answer>"], answer=[gold, gold])
        second = accuracy_reward(["p"], ["<answer>2</answer>"], answer=[gold])
    # Never 1.0, even for a completion that repeats the gold verbatim.
    assert first == [None, None]
    assert second == [None]
    assert WARNINGS["unparseable_gold"] == before + 3
    assert len([w for w in caught if gold in str(w.message)]) == 1


def test_accuracy_reward_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        accuracy_reward(["p", "p"], ["a", "b"], answer=["1"])


# ---------------------------------------------------------------------------------------------
# format_reward and tag_count_reward


@pytest.mark.parametrize(
    "text",
    [
        "<think>3+4=7</think><answer>7</answer>",
        "<think>\nstep\n</think>\n\n<answer>\n7\n</answer>",  # whitespace between and inside
        "<think></think><answer>7</answer>",  # empty thinking is allowed
    ],
)
def test_format_reward_accepts(text: str) -> None:
    assert format_reward(["p"], [text]) == [1.0]


@pytest.mark.parametrize(
    "text",
    [
        "Sure! <think>a</think><answer>7</answer>",  # text before
        "<think>a</think><answer>7</answer> done",  # text after
        "<think>a</think><answer>7</answer>\n",  # even whitespace after
        " <think>a</think><answer>7</answer>",  # or before
        "<answer>7</answer>",  # no thinking
        "<think>a</think>",  # no answer
        "<think>a</think><answer> \n </answer>",  # blank answer
        "<answer>7</answer><think>a</think>",  # wrong order
        "<think>a</think><answer>7</answer><answer>8</answer>",  # two answers
        "<think>a<think>b</think><answer>7</answer>",  # nested think
        "<think>a</think>x<answer>7</answer>",  # text between
        "",
    ],
)
def test_format_reward_rejects(text: str) -> None:
    assert format_reward(["p"], [text]) == [0.0]


def test_format_reward_conversational() -> None:
    good = [{"role": "assistant", "content": "<think>t</think><answer>1</answer>"}]
    bad = [{"role": "assistant", "content": "1"}]
    assert format_reward(["p", "p"], [good, bad]) == [1.0, 0.0]


def test_tag_count_reward() -> None:
    completions = [
        "<think>a</think><answer>1</answer>",  # all four once
        "<answer>1</answer>",  # two of four
        "<think>a<think>b</think><answer>1</answer>",  # <think> twice: three of four
        "no tags",
        "</answer><answer></think><think>",  # order is not checked
    ]
    assert tag_count_reward(["p"] * 5, completions) == [1.0, 0.5, 0.75, 0.0, 1.0]


# ---------------------------------------------------------------------------------------------
# registry


def test_builtin_names_resolve() -> None:
    assert set(BUILTIN) == {"accuracy", "format", "tag_count"}
    assert resolve("accuracy") is accuracy_reward
    assert resolve("think_answer_format") is format_reward
    assert resolve("think_answer_tags") is tag_count_reward
    assert reward_name(resolve("format")) == "format_reward"  # open-r1's (issue 17)


def test_resolve_callable_is_returned_unchanged() -> None:
    def mine(prompts: list, completions: list, **kwargs: object) -> list[float]:
        return [0.0] * len(completions)

    assert resolve(mine) is mine


def test_resolve_module_function() -> None:
    fn = resolve("os.path:basename")
    assert fn is os.path.basename
    assert fn("/a/b.txt") == "b.txt"


def test_resolve_file_function(tmp_path) -> None:
    a = tmp_path / "a" / "my_rewards.py"
    b = tmp_path / "b" / "my_rewards.py"  # same file name: must not clash with a's module
    for path, value in ((a, 1.0), (b, 2.0)):
        path.parent.mkdir()
        path.write_text(
            "def length_reward(prompts, completions, **kwargs):\n"
            f"    return [{value}] * len(completions)\n"
            "class Scorer:\n"
            "    @staticmethod\n"
            "    def run(prompts, completions, **kwargs):\n"
            "        return [len(c) for c in completions]\n"
        )
    fa = resolve(f"{a}:length_reward")
    fb = resolve(f"{b}:length_reward")
    assert fa(prompts=["p"], completions=["xyz"]) == [1.0]
    assert fb(prompts=["p"], completions=["xyz"]) == [2.0]
    assert fa.__module__ != fb.__module__
    assert resolve(f"{a}:Scorer.run")(prompts=["p"], completions=["xyz"]) == [3]


def test_resolve_unknown_builtin_lists_known_names() -> None:
    with pytest.raises(RewardSpecError) as info:
        resolve("acuracy")
    message = str(info.value)
    assert "'acuracy'" in message
    assert "accuracy" in message.replace("'acuracy'", "") and "format" in message and "tag_count" in message
    assert isinstance(info.value, ValueError)


def test_resolve_missing_module() -> None:
    spec = "no_such_module_for_rlreason_tests:fn"
    with pytest.raises(RewardImportError, match=spec) as info:
        resolve(spec)
    assert isinstance(info.value, ImportError)
    assert isinstance(info.value, ValueError)
    assert "not found" in str(info.value)


def test_resolve_module_that_fails_to_import(tmp_path, monkeypatch) -> None:
    (tmp_path / "rlreason_test_broken_mod.py").write_text("import no_such_dependency_for_rlreason_tests\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = "rlreason_test_broken_mod:fn"
    with pytest.raises(RewardImportError, match=spec) as info:
        resolve(spec)
    # Not reported as "module not found": the module exists, its dependency does not.
    assert "importing module" in str(info.value)
    assert "no_such_dependency_for_rlreason_tests" in str(info.value)


def test_resolve_missing_file(tmp_path) -> None:
    spec = f"{tmp_path / 'absent.py'}:fn"
    with pytest.raises(RewardImportError) as info:
        resolve(spec)
    assert spec in str(info.value)
    assert "not found" in str(info.value)


def test_resolve_file_that_raises_is_not_left_in_sys_modules(tmp_path) -> None:
    path = tmp_path / "explodes.py"
    path.write_text("raise RuntimeError('boom at import')\n")
    modules_before = set(sys.modules)
    with pytest.raises(RewardImportError, match="boom at import") as info:
        resolve(f"{path}:fn")
    assert str(path) in str(info.value)
    assert not [m for m in set(sys.modules) - modules_before if "explodes" in m]


def test_resolve_missing_attribute(tmp_path) -> None:
    with pytest.raises(RewardSpecError, match="os.path:no_such_fn") as info:
        resolve("os.path:no_such_fn")
    assert "no attribute 'no_such_fn'" in str(info.value)
    path = tmp_path / "r.py"
    path.write_text("x = 1\n")
    with pytest.raises(RewardSpecError, match="no attribute 'missing'") as info:
        resolve(f"{path}:missing")
    assert f"{path}:missing" in str(info.value)


def test_resolve_not_callable() -> None:
    with pytest.raises(RewardSpecError, match="not callable") as info:
        resolve("os:sep")
    assert "'os:sep'" in str(info.value)


@pytest.mark.parametrize("spec", ["os.path:", ":basename", 42])
def test_resolve_malformed_spec(spec: object) -> None:
    with pytest.raises(RewardSpecError) as info:
        resolve(spec)  # type: ignore[arg-type]
    assert repr(spec) in str(info.value)


def test_reward_name() -> None:
    class Scorer:
        def __call__(self, prompts: list, completions: list, **kwargs: object) -> list[float]:
            return [0.0] * len(completions)

    assert reward_name(accuracy_reward) == "accuracy_reward"
    assert reward_name(Scorer()) == "Scorer"
    assert reward_name(functools.partial(format_reward, prompts=[])) == "think_answer_format_reward"
    assert reward_name(lambda **kw: []) == "<lambda>"


# ---------------------------------------------------------------------------------------------
# runner


def _const(values: list, name: str = "const"):
    """A reward returning ``values`` whatever it is given, named ``name``."""

    def reward(prompts: list, completions: list, **kwargs: object) -> list:
        return list(values)

    reward.__name__ = name
    return reward


def _assert_close(tensor: torch.Tensor, expected: list[float]) -> None:
    assert tensor.dtype == torch.float64  # sums of rewards up to float32's limit stay finite
    assert tensor.shape == (len(expected),)
    got = tensor.tolist()
    for g, e in zip(got, expected, strict=True):
        assert (math.isnan(g) and math.isnan(e)) or g == pytest.approx(e), (got, expected)


NAN = math.nan
PROMPTS4 = ["p"] * 4
COMPLETIONS4 = ["a", "b", "c", "d"]


def test_score_weighted_sum_leaves_out_none() -> None:
    f = _const([1.0, None, 0.5, None], "f")
    g = _const([0, 2, None, None], "g")
    out = score([f, g], [2.0, 0.5], PROMPTS4, COMPLETIONS4, {})
    assert isinstance(out, RewardOutput)
    _assert_close(out.total, [2.0, 1.0, 1.0, 0.0])  # last: all None -> 0.0
    _assert_close(out.per_func["f"], [1.0, NAN, 0.5, NAN])
    _assert_close(out.per_func["g"], [0.0, 2.0, NAN, NAN])
    assert out.failures == {"f": 0, "g": 0}


def test_score_default_weights_and_bools() -> None:
    out = score([_const([True, 1, 0.25, False], "f"), _const([1, 1, 1, 1], "g")], None, PROMPTS4, COMPLETIONS4, {})
    _assert_close(out.total, [2.0, 2.0, 1.25, 1.0])


def test_score_weights_length_mismatch() -> None:
    with pytest.raises(ValueError, match="2 reward functions but 1 reward weights"):
        score([_const([1] * 4), _const([1] * 4)], [1.0], PROMPTS4, COMPLETIONS4, {})


def test_score_passes_columns_as_keywords() -> None:
    seen: dict = {}

    def spy(prompts: list, completions: list, answer: list, level: list, **kwargs: object) -> list[float]:
        seen.update(prompts=prompts, completions=completions, answer=answer, level=level, extra=kwargs)
        return [1.0] * len(completions)

    score([spy], None, ["p1", "p2"], ["c1", "c2"], {"answer": ["1", "2"], "level": [3, 4]})
    # TRL's loggers, as every reward call passes them (rewards/_call.py call_reward)
    assert callable(seen["extra"].pop("log_extra")) and callable(seen["extra"].pop("log_metric"))
    assert seen == {
        "prompts": ["p1", "p2"],
        "completions": ["c1", "c2"],
        "answer": ["1", "2"],
        "level": [3, 4],
        "extra": {},
    }


def test_score_reward_mutating_inputs_does_not_affect_others() -> None:
    def vandal(prompts: list, completions: list, **kwargs: object) -> list[float]:
        completions.clear()
        return [0.0, 0.0]

    def count(prompts: list, completions: list, **kwargs: object) -> list[float]:
        return [float(len(completions))] * 2

    out = score([vandal, count], None, ["p", "p"], ["a", "b"], {})
    _assert_close(out.per_func["count"], [2.0, 2.0])


def test_score_raising_reward_is_isolated(caplog) -> None:
    def broken(prompts: list, completions: list, **kwargs: object) -> list[float]:
        raise ZeroDivisionError("divided by nothing")

    ok = _const([1.0, 0.0, 1.0, 0.0], "ok")
    with caplog.at_level(logging.WARNING, logger="rlreason.rewards"):
        out = score([broken, ok], [1.0, 3.0], PROMPTS4, COMPLETIONS4, {})
    _assert_close(out.total, [3.0, 0.0, 3.0, 0.0])
    _assert_close(out.per_func["broken"], [NAN] * 4)
    assert out.failures == {"broken": 4, "ok": 0}
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'broken'" in m and "divided by nothing" in m for m in messages), messages


def test_score_wrong_length_is_a_failure(caplog) -> None:
    short = _const([1.0, 1.0], "short")
    with caplog.at_level(logging.WARNING, logger="rlreason.rewards"):
        out = score([short, _const([0.5] * 4, "ok")], None, PROMPTS4, COMPLETIONS4, {})
    assert out.failures == {"short": 4, "ok": 0}
    _assert_close(out.per_func["short"], [NAN] * 4)
    _assert_close(out.total, [0.5] * 4)
    assert any(
        "'short'" in r.getMessage() and "returned 2" in r.getMessage() and "expected length 4" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize("result", [1.0, "1111", {"a": 1}, None, torch.tensor(1.0)])
def test_score_wrong_type_is_a_failure(result: object) -> None:
    out = score([lambda **kw: result], None, PROMPTS4, COMPLETIONS4, {})
    assert out.failures == {"<lambda>": 4}
    _assert_close(out.total, [0.0] * 4)


def test_score_invalid_values_fail_per_completion() -> None:
    out = score([_const([NAN, math.inf, "1", 0.75], "f")], None, PROMPTS4, COMPLETIONS4, {})
    assert out.failures == {"f": 3}
    _assert_close(out.per_func["f"], [NAN, NAN, NAN, 0.75])
    _assert_close(out.total, [0.0, 0.0, 0.0, 0.75])


def test_score_accepts_tensor_results() -> None:
    out = score([lambda **kw: torch.tensor([1.0, 0.0, 0.5, 2.0])], None, PROMPTS4, COMPLETIONS4, {})
    _assert_close(out.total, [1.0, 0.0, 0.5, 2.0])
    assert out.failures == {"<lambda>": 0}


def test_score_duplicate_names_get_suffixes() -> None:
    f1, f2, f3 = _const([1] * 4, "f"), _const([2] * 4, "f"), _const([3] * 4, "f")
    out = score([f1, f2, f3, _const([4] * 4, "f_2")], None, PROMPTS4, COMPLETIONS4, {})
    assert list(out.per_func) == ["f", "f_2", "f_3", "f_2_2"]
    _assert_close(out.per_func["f_3"], [3.0] * 4)
    assert list(out.failures) == ["f", "f_2", "f_3", "f_2_2"]


def test_score_rejects_inconsistent_inputs() -> None:
    f = _const([1] * 4)
    with pytest.raises(ValueError, match="4 completions but 3 prompts"):
        score([f], None, ["p"] * 3, COMPLETIONS4, {})
    with pytest.raises(ValueError, match="'answer' has 2 values for 4 completions"):
        score([f], None, PROMPTS4, COMPLETIONS4, {"answer": ["1", "2"]})
    with pytest.raises(ValueError, match="'completions'"):
        score([f], None, PROMPTS4, COMPLETIONS4, {"completions": COMPLETIONS4})


def test_score_no_functions_gives_zeros() -> None:
    out = score([], None, PROMPTS4, COMPLETIONS4, {})
    _assert_close(out.total, [0.0] * 4)
    assert out.per_func == {} and out.failures == {}


def test_score_with_builtins_end_to_end() -> None:
    completions = [
        "<think>2+2=4</think><answer>4</answer>",  # right, well formed
        "<think>2+2=5</think><answer>5</answer>",  # wrong, well formed
        "it's 4",  # neither
    ]
    funcs = [resolve("accuracy"), resolve("think_answer_format")]
    out = score(funcs, [1.0, 0.5], ["2+2?"] * 3, completions, {"answer": ["4", "4", "4"]})
    _assert_close(out.per_func["accuracy_reward"], [1.0, 0.0, 0.0])
    _assert_close(out.per_func["think_answer_format_reward"], [1.0, 1.0, 0.0])
    _assert_close(out.total, [1.5, 0.5, 0.0])

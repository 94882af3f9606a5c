"""Tests for the configurable rewards (format, length, repetition), the plug-in API
(``build_rewards``, ``check_signature``), TRL compatibility, the docs example, and the
preflight check (``python -m rlreason.rewards check``)."""

from __future__ import annotations

import functools
import io
import json
import math
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from rlreason.rewards import (
    REWARDS,
    CosineLengthReward,
    FormatReward,
    RepetitionPenaltyReward,
    RewardSignatureError,
    RewardSpecError,
    SoftOverlongReward,
    TagCountReward,
    accuracy_reward,
    build_rewards,
    check_signature,
    format_lenient_reward,
    format_reward,
    resolve,
    reward_name,
    tag_count_reward,
)
from rlreason.rewards import preflight as pf
from rlreason.rewards.__main__ import main as rewards_main

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EXAMPLE = REPO / "docs" / "examples" / "my_rewards.py"
DOC = REPO / "docs" / "rewards.md"


def chars(n: int) -> str:
    return "x" * n


def scaled_len(prompts: list, completions: list, scale: float = 1.0, **kwargs: object) -> list[float]:
    """A module-level function reward with a keyword argument (module level, so it pickles)."""
    return [scale * len(c) for c in completions]


# ---------------------------------------------------------------------------------------------
# format rewards


@pytest.mark.parametrize(
    ("text", "strict", "lenient"),
    [
        ("<think>a</think><answer>7</answer>", 1.0, 1.0),
        ("<think>\na\n</think>\n<answer>\n7\n</answer>", 1.0, 1.0),  # newlines inside and between
        ("Sure! <think>a</think><answer>7</answer>", 0.0, 1.0),  # text before
        ("<think>a</think><answer>7</answer>\n", 0.0, 1.0),  # trailing newline
        ("<think>a</think> so: <answer>7</answer> done", 0.0, 1.0),  # text between and after
        ("<answer>7</answer><think>a</think>", 0.0, 0.0),  # wrong order
        ("<think>a</think><answer>7</answer><answer>8</answer>", 0.0, 0.0),  # two answers
        ("<think>a</think><answer>  </answer>", 0.0, 0.0),  # blank answer
        ("<think>a</think> 7", 0.0, 0.0),  # no answer block
        ("", 0.0, 0.0),
    ],
)
def test_format_strict_and_lenient(text: str, strict: float, lenient: float) -> None:
    assert format_reward(prompts=["p"], completions=[text]) == [strict]
    assert format_lenient_reward(prompts=["p"], completions=[text]) == [lenient]
    assert FormatReward(strict=False)(prompts=["p"], completions=[[{"role": "assistant", "content": text}]]) == [
        lenient
    ]


def test_format_names_and_validation() -> None:
    assert reward_name(format_reward) == "think_answer_format_reward"
    assert reward_name(format_lenient_reward) == "format_lenient_reward"
    assert reward_name(tag_count_reward) == "think_answer_tags_reward"
    assert REWARDS["think_answer_format"] is format_reward and REWARDS["format_lenient"] is format_lenient_reward
    assert REWARDS["think_answer_tags"] is tag_count_reward
    # open-r1's names mean open-r1's rewards (issue 17)
    assert reward_name(REWARDS["format"]) == "format_reward" and reward_name(REWARDS["tag_count"]) == "tag_count_reward"
    with pytest.raises(TypeError, match="strict"):
        FormatReward(strict="yes")  # type: ignore[arg-type]


def test_tag_count_instance() -> None:
    texts = ["<think>a</think><answer>1</answer>", "<answer>1</answer>", "<think><think></think>", "none"]
    assert TagCountReward()(prompts=["p"] * 4, completions=texts) == [1.0, 0.5, 0.25, 0.0]


# ---------------------------------------------------------------------------------------------
# soft overlong (DAPO eq. 13)


@pytest.mark.parametrize(
    ("length", "expected"),
    [(0, 0.0), (6, 0.0), (7, -0.25), (8, -0.5), (9, -0.75), (10, -1.0), (11, -1.0), (50, -1.0)],
)
def test_soft_overlong_values_in_characters(length: int, expected: float) -> None:
    # L_max = 10, L_cache = 4: no penalty up to 6, then (6 - |y|) / 4, then -1 beyond 10.
    reward = SoftOverlongReward(max_length=10, cache=4, unit="chars")
    assert reward(prompts=["p"], completions=[chars(length)]) == [pytest.approx(expected)]


def test_soft_overlong_prefers_token_counts() -> None:
    reward = SoftOverlongReward(max_length=10, cache=4)
    texts = ["x", "x", "x"]
    # completion_ids (what TRL passes) win over the text's 1 character.
    assert reward(prompts=["p"] * 3, completions=texts, completion_ids=[[1] * 6, [1] * 8, [1] * 12]) == [
        0.0,
        -0.5,
        -1.0,
    ]
    assert reward(prompts=["p"], completions=["x"], completion_lengths=[9]) == [pytest.approx(-0.75)]
    # unit="chars" ignores the token ids.
    assert SoftOverlongReward(10, 4, unit="chars")(prompts=["p"], completions=["x"], completion_ids=[[1] * 12]) == [0.0]


class WordTokenizer:
    """A stand-in tokenizer: one token per whitespace-separated word."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [0] * len(text.split()) + ([99] if add_special_tokens else [])


def test_soft_overlong_with_tokenizer_counts_tokens_without_specials() -> None:
    reward = SoftOverlongReward(max_length=10, cache=4, tokenizer=WordTokenizer())
    seven_words = " ".join(["word"] * 7)  # 34 characters but 7 tokens
    assert reward(prompts=["p"], completions=[seven_words]) == [pytest.approx(-0.25)]


def test_soft_overlong_character_fallback_warns_once_and_tokens_mode_refuses() -> None:
    reward = SoftOverlongReward(max_length=10, cache=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert reward(prompts=["p"], completions=[chars(8)]) == [-0.5]
        assert reward(prompts=["p"], completions=[chars(8)]) == [-0.5]
    assert len([w for w in caught if "characters" in str(w.message)]) == 1
    with pytest.raises(ValueError, match="unit='tokens'"):
        SoftOverlongReward(10, 4, unit="tokens")(prompts=["p"], completions=["x"])
    with pytest.raises(ValueError, match="1 completions but 2 completion_ids"):
        reward(prompts=["p"], completions=["x"], completion_ids=[[1], [2]])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_length": 0, "cache": 1}, ValueError, "max_length must be >= 1"),
        ({"max_length": 10, "cache": 0}, ValueError, "cache must be >= 1"),
        ({"max_length": 10, "cache": 11}, ValueError, "must not exceed max_length"),
        ({"max_length": True, "cache": 1}, TypeError, "max_length must be an integer"),
        ({"max_length": 10.5, "cache": 1}, TypeError, "max_length must be an integer"),
        ({"max_length": 10, "cache": 4, "unit": "words"}, ValueError, "unit must be one of"),
        ({"max_length": 10, "cache": 4, "tokenizer": object()}, TypeError, "encode"),
        ({"max_length": 10, "cache": 4, "unit": "chars", "tokenizer": WordTokenizer()}, ValueError, "ignore"),
    ],
)
def test_soft_overlong_validation(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        SoftOverlongReward(**kwargs)


# ---------------------------------------------------------------------------------------------
# cosine length scaling (Yeo et al. 2025)


def fixed_accuracy(values: list):
    def accuracy(prompts: list, completions: list, **kwargs: object) -> list:
        return list(values)

    return accuracy


@pytest.mark.parametrize(
    ("length", "correct", "expected"),
    [
        (0, True, 1.0),
        (25, True, 0.5 + 0.25 * (1 + math.cos(math.pi / 4))),  # 0.92678
        (50, True, 0.75),
        (100, True, 0.5),
        (250, True, 0.5),  # clamped at max_length
        (0, False, -1.0),
        (50, False, -0.75),
        (100, False, -0.5),
    ],
)
def test_cosine_values(length: int, correct: bool, expected: float) -> None:
    reward = CosineLengthReward(max_length=100, accuracy=fixed_accuracy([1.0 if correct else 0.0]), unit="chars")
    assert reward(prompts=["p"], completions=[chars(length)]) == [pytest.approx(expected)]


def test_cosine_exceed_and_none_and_custom_values() -> None:
    reward = CosineLengthReward(
        max_length=100, correct_start=2, correct_end=1, wrong_start=-10, wrong_end=0, exceed=-10,
        accuracy=fixed_accuracy([1.0, 1.0, 0.0, None]), unit="chars",
    )  # fmt: skip
    out = reward(prompts=["p"] * 4, completions=[chars(99), chars(100), chars(0), chars(10)])
    assert out[0] == pytest.approx(1 + 0.5 * (1 + math.cos(math.pi * 0.99)))  # just under: no exceed
    assert out[1:] == [-10.0, -10.0, None]  # at max_length: exceed; wrong at 0: -10; no correctness: None


def test_cosine_default_accuracy_reads_the_answer_column() -> None:
    reward = CosineLengthReward(max_length=1000)
    completions = ["<answer>5</answer>", "<answer>6</answer>"]
    lengths = [[0] * 500, [0] * 500]  # halfway: correct 0.75, wrong -0.75
    out = reward(prompts=["p", "p"], completions=completions, answer=["5", "5"], completion_ids=lengths)
    assert out == [pytest.approx(0.75), pytest.approx(-0.75)]
    (by_name,), _ = build_rewards([{"name": "cosine_length", "kwargs": {"max_length": 1000, "accuracy": "accuracy"}}])
    assert by_name.accuracy is accuracy_reward
    with pytest.raises(TypeError, match="spec string"):  # in Python the function itself: no registry below it
        CosineLengthReward(max_length=1000, accuracy="accuracy")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_length": 0}, ValueError, "max_length must be >= 1"),
        ({"max_length": 10, "correct_start": "high"}, TypeError, "correct_start must be a finite number"),
        ({"max_length": 10, "wrong_end": math.nan}, TypeError, "wrong_end must be a finite number"),
        ({"max_length": 10, "exceed": math.inf}, TypeError, "exceed"),
        ({"max_length": 10, "accuracy": 5}, TypeError, "accuracy must be a reward function"),
        ({"max_length": 10, "accuracy": "accuracy"}, TypeError, "spec string"),  # in Python: the function
    ],
)
def test_cosine_validation(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        CosineLengthReward(**kwargs)


def test_a_length_rewards_accuracy_named_in_a_config_is_resolved_by_the_registry() -> None:
    with pytest.raises(RewardSpecError, match="unknown reward 'no_such_reward'"):
        build_rewards([{"name": "cosine_length", "kwargs": {"max_length": 10, "accuracy": "no_such_reward"}}])


# ---------------------------------------------------------------------------------------------
# repetition penalty (open-r1)


@pytest.mark.parametrize(
    ("text", "ngram_size", "expected"),
    [
        ("a b a b a b", 2, -0.6),  # 5 bigrams, 2 distinct: (1 - 2/5) * -1
        ("A b a B", 2, -1 / 3),  # lower-cased: ab, ba, ab
        ("the cat sat on the mat", 2, 0.0),  # no repeated bigram
        ("go go go go", 1, -0.75),  # unigrams: 4 total, 1 distinct
        ("one", 3, 0.0),  # fewer words than n
        ("", 3, 0.0),
    ],
)
def test_repetition_values(text: str, ngram_size: int, expected: float) -> None:
    reward = RepetitionPenaltyReward(ngram_size=ngram_size, max_penalty=-1.0)
    assert reward(prompts=["p"], completions=[text]) == [pytest.approx(expected)]


def test_repetition_scales_with_max_penalty() -> None:
    assert RepetitionPenaltyReward(2, -0.5)(prompts=["p"], completions=["a b a b a b"]) == [pytest.approx(-0.3)]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"ngram_size": 0}, ValueError, "ngram_size must be >= 1"),
        ({"max_penalty": 0.5}, ValueError, "must be <= 0"),
        ({"max_penalty": "x"}, TypeError, "max_penalty must be a finite number"),
    ],
)
def test_repetition_validation(kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        RepetitionPenaltyReward(**kwargs)


# ---------------------------------------------------------------------------------------------
# every built-in: pickling and TRL's calling convention

BUILTIN_KWARGS = {"soft_overlong": {"max_length": 8, "cache": 4}, "cosine_length": {"max_length": 40},
                  "get_soft_overlong_punishment": {"max_completion_len": 8, "soft_punish_cache": 4}}
TRL_COMPLETIONS = [
    [{"role": "assistant", "content": "<think>2+3</think><answer>5</answer>"}],
    [{"role": "assistant", "content": "the the the the the the answer is 6"}],
]


def _built(name: str):
    (fn,), _ = build_rewards([{"name": name, "kwargs": BUILTIN_KWARGS.get(name, {})}])
    return fn


def _trl_call(fn):
    # Exactly how TRL's GRPOTrainer calls a reward function: keywords, chat completions,
    # completion_ids, every dataset column, and trainer_state.
    return fn(
        prompts=[[{"role": "user", "content": "2+3?"}]] * 2,
        completions=TRL_COMPLETIONS,
        completion_ids=[[1] * 3, [1] * 7],
        answer=["5", "5"],
        solution=["5", "5"],  # TRL's accuracy rewards' column
        level=[1, 1],
        trainer_state=object(),
    )


@pytest.mark.parametrize("name", sorted(REWARDS))
def test_builtin_pickles_and_scores_the_same(name: str) -> None:
    fn = _built(name)
    clone = pickle.loads(pickle.dumps(fn))
    assert reward_name(clone) == reward_name(fn)
    assert _trl_call(clone) == _trl_call(fn)


def test_builtins_accept_trls_calling_convention() -> None:
    got = {name: _trl_call(_built(name)) for name in sorted(REWARDS)}
    assert got["accuracy"] == [1.0, 0.0]
    assert got["think_answer_format"] == [1.0, 0.0]
    assert got["format_lenient"] == [1.0, 0.0]
    assert got["think_answer_tags"] == [1.0, 0.0]
    assert got["format"] == [0.0, 0.0] and got["tag_count"] == [0.0, 0.0]  # open-r1's need the newlines
    assert got["soft_overlong"] == [0.0, pytest.approx(-0.75)]  # token counts 3 and 7 (L_max 8, cache 4)
    c = math.cos(math.pi * 3 / 40)
    assert got["cosine_length"] == [
        pytest.approx(0.5 + 0.25 * (1 + c)),
        pytest.approx(-0.5 - 0.25 * (1 + math.cos(math.pi * 7 / 40))),
    ]
    # 9 words, 7 trigrams: "the the the" x4 + 3 others -> 4 distinct: (1 - 4/7) * -1
    assert got["repetition_penalty"] == [0.0, pytest.approx(-3 / 7)]
    # TRL's names score as trl.rewards' functions (tests/test_trl_rewards.py compares them on more cases)
    trl_rewards = pytest.importorskip("trl.rewards")
    for name in ("accuracy_reward", "reasoning_accuracy_reward", "think_format_reward"):
        assert got[name] == getattr(trl_rewards, name)(completions=TRL_COMPLETIONS, solution=["5", "5"]), name
    assert got["get_soft_overlong_punishment"] == got["soft_overlong"]


def test_partial_pickles_and_keeps_its_name() -> None:
    (fn,), _ = build_rewards([{"name": scaled_len, "kwargs": {"scale": 2.0}}])
    assert isinstance(fn, functools.partial)
    assert fn.__name__ == "scaled_len"  # TRL logs reward_func.__name__ directly
    clone = pickle.loads(pickle.dumps(fn))
    assert clone(prompts=["p"], completions=["abc"]) == [6.0]
    assert clone.__name__ == "scaled_len"


def trl_reward_len(completions, **kwargs):
    return [-abs(20 - len(c)) for c in completions]


def test_trl_docs_reward_works_unchanged(tmp_path: Path) -> None:
    # Verbatim from TRL's docs; loaded as a file, the way a user would name it in a config.
    path = tmp_path / "trl_rewards.py"
    path.write_text("def reward_len(completions, **kwargs):\n    return [-abs(20 - len(c)) for c in completions]\n")
    funcs, weights = build_rewards([f"{path}:reward_len", trl_reward_len], columns={"answer"})
    assert weights == [1.0, 1.0]
    for fn in funcs:
        assert fn(prompts=["p", "p"], completions=[chars(20), chars(25)], answer=["1", "2"]) == [0, -5]
    assert reward_name(funcs[0]) == "reward_len"


# ---------------------------------------------------------------------------------------------
# build_rewards: happy paths


def test_build_rewards_names_dicts_and_weights() -> None:
    funcs, weights = build_rewards(
        ["accuracy", {"name": "soft_overlong", "weight": 0.5, "kwargs": {"max_length": 64, "cache": 16}},
         "think_answer_format"]
    )
    assert funcs[0] is accuracy_reward and funcs[2] is format_reward
    assert isinstance(funcs[1], SoftOverlongReward) and (funcs[1].max_length, funcs[1].cache) == (64, 16)
    assert reward_name(funcs[1]) == "soft_overlong_reward"
    assert weights == [1.0, 0.5, 1.0]
    _, weights = build_rewards(["accuracy", "format"], [2, 0.25])
    assert weights == [2.0, 0.25]
    (rep,), _ = build_rewards(["repetition_penalty"])  # a class with defaults: instantiated bare
    assert isinstance(rep, RepetitionPenaltyReward) and rep.ngram_size == 3


def test_build_rewards_module_class_and_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rlreason_test_plugin_mod.py").write_text(
        "class Bonus:\n"
        "    def __init__(self, amount):\n"
        "        self.amount = amount\n"
        "    def __call__(self, prompts, completions, **kwargs):\n"
        "        return [self.amount for _ in completions]\n"
        "def plain(prompts, completions, answer, bonus=0.0, **kwargs):\n"
        "    return [float(a == c) + bonus for c, a in zip(completions, answer)]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    funcs, _ = build_rewards(
        [
            {"name": "rlreason_test_plugin_mod:Bonus", "kwargs": {"amount": 3.0}},
            {"name": "rlreason_test_plugin_mod:plain", "kwargs": {"bonus": 0.5}},
            "rlreason_test_plugin_mod:plain",
        ],
        columns={"answer", "level"},
    )
    assert type(funcs[0]).__name__ == "Bonus" and reward_name(funcs[0]) == "Bonus"
    assert funcs[0](prompts=["p"], completions=["x"]) == [3.0]
    assert reward_name(funcs[1]) == "plain" and reward_name(funcs[2]) == "plain"
    assert funcs[1](prompts=["p", "p"], completions=["1", "2"], answer=["1", "1"], level=[1, 1]) == [1.5, 0.5]


# ---------------------------------------------------------------------------------------------
# build_rewards: errors


def test_build_rewards_unknown_name_lists_builtins() -> None:
    with pytest.raises(RewardSpecError) as info:
        build_rewards(["accuracy", "soft_overlog"])
    message = str(info.value)
    assert message.startswith("reward_funcs[1]: ")
    assert "did you mean 'soft_overlong'" in message
    for name in REWARDS:
        assert name in message


@pytest.mark.parametrize(
    ("entries", "weights", "match"),
    [
        ([{"name": "soft_overlong"}], None, r"reward_funcs\[0\].*missing a required argument: 'max_length'"),
        ([{"name": "soft_overlong", "kwargs": {"max_length": 8, "cache": 9}}], None, "must not exceed max_length"),
        (
            [{"name": "soft_overlong", "kwargs": {"max_len": 8, "cache": 4}}],
            None,
            "no parameter named 'max_len' \\(did you mean 'max_length'\\?\\)",
        ),
        ([{"name": scaled_len, "kwargs": {"scal": 2}}], None, "no parameter named 'scal'.*scale"),
        ([{"name": "think_answer_format", "kwargs": {"strictt": False}}], None,
         "no parameter named 'strictt'.*'strict'"),
        ([{"name": "format", "max_length": 8}], None, "unknown key.*'max_length'.*under 'kwargs'"),
        ([{"weight": 1.0}], None, "has no 'name'"),
        ([{"name": "format", "kwargs": [1]}], None, "'kwargs' must be a mapping"),
        ([{"name": "format", "weight": 2.0}], [1.0], "not both|use one or the other"),
        (["format", "accuracy"], [1.0], "one weight per reward_funcs entry"),
        (["format"], [math.nan], r"reward_weights\[0\] must be a finite number"),
        ([{"name": "format", "weight": True}], None, "weight must be a finite number"),
        ([], None, "non-empty list"),
        ([42], None, "spec string or a mapping"),
    ],
)
def test_build_rewards_errors(entries: list, weights: list | None, match: str) -> None:
    with pytest.raises(RewardSpecError, match=match):
        build_rewards(entries, weights)


def test_build_rewards_rejects_a_bad_signature() -> None:
    def not_a_reward(x: int) -> int:
        return x

    with pytest.raises(RewardSignatureError, match=r"reward_funcs\[0\].*'not_a_reward'.*keyword argument 'prompts'"):
        build_rewards([not_a_reward])


def test_build_rewards_missing_column_names_it(tmp_path: Path) -> None:
    path = tmp_path / "r.py"
    path.write_text("def needs_gold(prompts, completions, gold, **kwargs):\n    return [0.0] * len(completions)\n")
    with pytest.raises(RewardSignatureError, match="needs the column 'gold'.*columns are: answer, level"):
        build_rewards([f"{path}:needs_gold"], columns={"answer", "level"})
    (fn,), _ = build_rewards([f"{path}:needs_gold"])  # without known columns, nothing to check against
    assert reward_name(fn) == "needs_gold"


# ---------------------------------------------------------------------------------------------
# check_signature


def test_check_signature_cases() -> None:
    def exact(prompts, completions, answer):
        return []

    def no_completions(prompts, answer):
        return []

    def positional_only(prompts, completions, /, **kwargs):
        return []

    check_signature(exact, {"answer"})  # every column named: fine without **kwargs
    check_signature(trl_reward_len, {"answer", "level"})
    check_signature(format_reward, None)
    with pytest.raises(RewardSignatureError, match="no \\*\\*kwargs.*'level'"):
        check_signature(exact, {"answer", "level"})
    with pytest.raises(RewardSignatureError, match="needs the column 'answer'"):
        check_signature(exact, {"level"})
    with pytest.raises(RewardSignatureError, match="keyword argument 'completions'"):
        check_signature(no_completions, None)
    with pytest.raises(RewardSignatureError, match="'prompts' is positional-only"):
        check_signature(positional_only, None)


def test_resolve_instantiates_a_configurable_builtin_or_explains() -> None:
    assert isinstance(resolve("repetition_penalty"), RepetitionPenaltyReward)
    with pytest.raises(RewardSpecError, match="'soft_overlong'.*max_length"):
        resolve("soft_overlong")


# ---------------------------------------------------------------------------------------------
# the docs example


def test_docs_example_through_build_rewards() -> None:
    funcs, weights = build_rewards(
        [
            f"{EXAMPLE}:integer_answer",
            {"name": f"{EXAMPLE}:ThinkingBudget", "weight": 0.5, "kwargs": {"max_words": 3}},
        ],
        columns={"answer"},
    )
    assert [reward_name(f) for f in funcs] == ["integer_answer", "thinking_budget"]
    assert weights == [1.0, 0.5]
    completions = [
        "<think>one two</think><answer>42</answer>",  # integer answer, short thinking
        "<think>one two three four</think><answer>42.0</answer>",  # not a bare integer; long thinking
        [{"role": "assistant", "content": "<think>x</think><answer>7</answer>"}],  # chat; gold not an integer
    ]
    answers = ["42", "42", "3/4"]
    assert funcs[0](prompts=["p"] * 3, completions=completions, answer=answers) == [1.0, 0.0, None]
    assert funcs[1](prompts=["p"] * 3, completions=completions, answer=answers) == [0.0, -1.0, 0.0]
    with pytest.raises(RewardSpecError, match="max_words must be a positive integer"):
        build_rewards([{"name": f"{EXAMPLE}:ThinkingBudget", "kwargs": {"max_words": 0}}])


def test_docs_page_embeds_the_example_and_lists_every_builtin() -> None:
    doc = DOC.read_text()
    block = re.search(r"<!-- example: docs/examples/my_rewards.py -->\n```python\n(.*?)```", doc, re.DOTALL)
    assert block is not None
    assert block.group(1) == EXAMPLE.read_text()
    assert "## The math verifier" in doc  # the verifier's conventions are on the same page
    for name in REWARDS:
        assert f"| `{name}` | `{reward_name(_built(name))}` |" in doc


# ---------------------------------------------------------------------------------------------
# preflight


def shared_file(name: str) -> Path:
    path = SHARED_DATA / "benchmarks" / name
    if not path.is_file():
        pytest.skip(f"shared benchmark data not found: {path}")
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = rewards_main(["check", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_preflight_math500() -> None:
    path = shared_file("math500.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    report = pf.run_check(str(path), solution_column="solution", answer_column="answer")
    assert report.rows == len(rows) == 500
    assert sum(report.counts().values()) == 500
    assert sum(report.distribution().values()) == 500
    # Rows any verifier must pass: an integer gold that the solution boxes verbatim.
    easy = {
        i
        for i, r in enumerate(rows)
        if re.fullmatch(r"\d+", r["answer"]) and f"\\boxed{{{r['answer']}}}" in r["solution"]
    }
    assert len(easy) > 150
    assert {r.index for r in report.results if r.status == "ok"} >= easy
    assert report.passed == (len(report.bad) / 500 <= 0.01)


def test_preflight_math500_exit_codes(capsys: pytest.CaptureFixture) -> None:
    path = str(shared_file("math500.jsonl"))
    code, out, _ = run_cli(["--dataset", path, "--limit", "40", "--max-bad", "1.0", "--format", "json"], capsys)
    summary = json.loads(out)
    assert code == 0 and summary["rows"] == 40 and summary["passed"] is True
    code, out, _ = run_cli(["--dataset", path, "--limit", "40", "--max-bad", "0", "--format", "plain"], capsys)
    assert code == (1 if summary["bad"] else 0)
    assert ("FAIL" if summary["bad"] else "OK") in out


def test_preflight_gsm8k(capsys: pytest.CaptureFixture) -> None:
    path = str(shared_file("gsm8k_test.jsonl"))
    code, out, _ = run_cli(["--dataset", path, "--answer-column", "answer", "--gold-format", "gsm8k",
                            "--format", "plain"], capsys)  # fmt: skip
    assert code == 0
    assert "solution column 'answer'" in out
    assert "OK: 0 of 1319 rows bad" in out
    assert "reward distribution: 1.0: 1319" in out


BROKEN_ROWS = [
    {"problem": "2+2?", "solution": "So \\boxed{4}.", "answer": "4"},  # 0 ok
    {"problem": "half?", "solution": "It is \\boxed{0.5}.", "answer": "1/2"},  # 1 read differently
    {"problem": "a?", "solution": "\\boxed{3}", "answer": ""},  # 2 missing gold
    {"problem": "b?", "solution": "\\boxed{3}", "answer": "\\frac{"},  # 3 unreadable gold
    {"problem": "c?", "solution": "\\boxed{4}", "answer": "5"},  # 4 mismatch
    {"problem": "d?", "solution": "the answer is four", "answer": "4"},  # 5 no answer in the solution
]


@pytest.fixture()
def broken_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "broken.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in BROKEN_ROWS))
    return path


def test_preflight_broken_dataset_fails_and_names_rows(broken_jsonl: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run_cli(["--dataset", str(broken_jsonl), "--format", "json"], capsys)
    assert code == 1
    report = json.loads(out)
    status = {row["index"]: row["status"] for row in report["flagged"]}
    assert 0 not in status  # the good row is not flagged
    assert status[1] == "read_differently"
    assert status[2] == "missing_gold"
    assert status[3] in ("unparseable_gold", "mismatch")  # bad either way: which depends on the verifier
    assert status[4] == "mismatch"
    assert status[5] == "no_answer"
    assert report["bad"] == 4 and report["passed"] is False
    code, out, _ = run_cli(["--dataset", str(broken_jsonl), "--format", "plain"], capsys)
    assert code == 1
    for index in (2, 3, 4, 5):
        assert f"row {index}: " in out
    assert "FAIL: 4 of 6 rows bad (66.67%)" in out
    code, _, _ = run_cli(["--dataset", str(broken_jsonl), "--max-bad", "0.7", "--format", "plain"], capsys)
    assert code == 0


def test_preflight_reward_errors_are_rows_not_crashes(broken_jsonl: Path, tmp_path: Path) -> None:
    path = tmp_path / "fragile.py"
    path.write_text(
        "def fragile(prompts, completions, answer, **kwargs):\n"
        "    if '5' in answer:\n"
        "        raise RuntimeError('cannot score 5')\n"
        "    return [1.0] * len(completions)\n"
    )
    report = pf.run_check(str(broken_jsonl), reward=f"{path}:fragile", max_bad=0.5)
    status = {r.index: r.status for r in report.results}
    assert status[4] == "error" and "cannot score 5" in report.results[4].detail
    # The rest of the chunk was still scored (1.0 by this reward, so row 3's bad gold reads as a note).
    assert status[0] == "ok" and status[3] == "read_differently" and report.results[3].score == 1.0
    assert report.reward == "fragile"


def test_preflight_usage_errors_exit_2(broken_jsonl: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["--dataset", str(broken_jsonl), "--answer-column", "gold"], capsys)
    assert code == 2 and "answer column 'gold' not found" in err and "problem" in err
    code, _, err = run_cli(["--dataset", str(broken_jsonl), "--reward", "acuracy"], capsys)
    assert code == 2 and "unknown reward 'acuracy'" in err
    code, _, err = run_cli(["--dataset", str(broken_jsonl.with_name("absent.jsonl"))], capsys)
    assert code == 2 and "not found" in err
    code, _, err = run_cli(["--dataset", str(broken_jsonl), "--limit", "0"], capsys)
    assert code == 2 and "limit must be >= 1" in err


def test_preflight_gold_formats() -> None:
    assert pf.gold_text("Work.\n#### 1,234\n", "gsm8k") == ("1,234", "")
    assert pf.gold_text("no marker", "gsm8k") == (None, "no '####' line")
    assert pf.gold_text("so \\boxed{\\frac{1}{2}}", "extract") == ("\\frac{1}{2}", "")
    assert pf.gold_text(7, "plain") == ("7", "")
    assert pf.gold_text("  ", "plain") == (None, "gold is empty")


def test_preflight_rich_output(broken_jsonl: Path, capsys: pytest.CaptureFixture) -> None:
    pf.render_rich(pf.run_check(str(broken_jsonl)), show=5)
    out = capsys.readouterr().out
    assert "missing_gold (1 rows)" in out and "FAIL: 4 of 6 rows bad" in out


def test_preflight_as_a_module_command(broken_jsonl: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "rlreason.rewards", "check", "--dataset", str(broken_jsonl), "--format", "plain"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "row 4: gold 5" in proc.stdout


def test_preflight_output_to_a_stream(broken_jsonl: Path) -> None:
    # run_cli writes plain text to any stream (auto: not a terminal), e.g. a log file.
    args = type("Args", (), {"dataset": str(broken_jsonl), "solution_column": None, "answer_column": "answer",
                             "split": "train", "limit": 2, "reward": "accuracy", "gold_format": "plain",
                             "max_bad": 0.01, "format": "auto", "show": 20})()  # fmt: skip
    buffer = io.StringIO()
    assert pf.run_cli(args, buffer) == 0
    assert "OK: 0 of 2 rows bad" in buffer.getvalue()


def test_builtin_format_instance_is_reconfigured_by_kwargs() -> None:
    (lenient,), _ = build_rewards([{"name": "think_answer_format", "kwargs": {"strict": False}}])
    text = "Sure! <think>a</think> <answer>1</answer> done"
    assert lenient(prompts=["q"], completions=[text]) == [1.0]
    (strict,), _ = build_rewards(["think_answer_format"])
    assert strict(prompts=["q"], completions=[text]) == [0.0]


def test_builtin_accuracy_is_configurable_per_dataset_from_the_config() -> None:
    # {name: accuracy, kwargs: {...}} configures a new AccuracyReward, not call arguments
    (fn,), _ = build_rewards([{"name": "accuracy", "kwargs": {"fallback": "last_number"}}])
    assert reward_name(fn) == "accuracy_reward"
    assert fn(prompts=["q"], completions=["so it is 42"], answer=["42"]) == [1.0]
    (plain,), _ = build_rewards(["accuracy"])
    assert plain(prompts=["q"], completions=["so it is 42"], answer=["42"]) == [0.0]  # no fallback by default
    with pytest.raises(RewardSpecError, match="fallbak.*did you mean 'fallback'"):
        build_rewards([{"name": "accuracy", "kwargs": {"fallbak": "last_number"}}])


# ---------------------------------------------------------------------------------------------
# issue 17: factories configured with kwargs, as in TRL and open-r1


def test_a_factory_with_kwargs_is_called_and_its_reward_used() -> None:
    (fn,), _ = build_rewards([{"name": "trl.rewards:get_soft_overlong_punishment",
                               "kwargs": {"max_completion_len": 10, "soft_punish_cache": 4}}],
                             columns={"completion_ids", "answer"})
    # TRL's soft overlong punishment: 0 up to max - cache tokens, then linear down to -1 at max
    got = fn(prompts=["p"] * 3, completions=["a"] * 3, completion_ids=[[1] * 6, [1] * 8, [1] * 12])
    assert got == [0.0, -0.5, -1.0]
    (fn,), _ = build_rewards([{"name": "trl.rewards:get_repetition_penalty_reward", "kwargs": {"ngram_size": 2}}])
    assert callable(fn)
    with pytest.raises(RewardSpecError, match="no parameter named 'max_len'.*max_completion_len"):
        build_rewards([{"name": "trl.rewards:get_soft_overlong_punishment", "kwargs": {"max_len": 10}}])
    with pytest.raises(RewardSpecError, match="missing a required argument.*under 'kwargs'"):
        build_rewards(["trl.rewards:get_soft_overlong_punishment"])


def test_open_r1_names_score_as_open_r1_does() -> None:
    # open-r1's format wants each tag on its own line; its tag_count counts the tags with their newlines
    r1 = [[{"role": "assistant", "content": "<think>\n2+2=4\n</think>\n<answer>\n4\n</answer>"}],
          [{"role": "assistant", "content": "<think>2+2=4</think><answer>4</answer>"}],
          [{"role": "assistant", "content": "<think>\nx\n</think>\n<answer>\n4\n</answer>\nmore\ntext"}],
          [{"role": "assistant", "content": " <think>\nx\n</think>\n<answer>\n4\n</answer>"}]]
    (fmt, tags), _ = build_rewards(["format", "tag_count"])
    assert fmt(prompts=[None] * 4, completions=r1) == [1.0, 0.0, 1.0, 0.0]  # MULTILINE "$", anchored start
    assert tags(prompts=[None] * 4, completions=r1) == [1.0, 0.0, 1.0, 1.0]
    (own,), _ = build_rewards(["think_answer_format"])
    assert own(prompts=[None] * 4, completions=r1)[1] == 1.0  # the inline form keeps its own name


def test_a_reward_may_name_trls_trainer_arguments() -> None:
    def trl_reward(prompts, completions, trainer_state, log_metric, answer):
        return [0.0] * len(completions)

    check_signature(trl_reward, {"answer"})  # trainer_state / log_metric are passed, not columns


def test_open_r1_cosine_takes_open_r1s_arguments() -> None:
    # open-r1: correct goes max_value_correct -> min_value_correct over max_len characters
    (cos,), _ = build_rewards([{"name": "cosine", "kwargs": {"max_len": 100, "min_value_correct": 0.25}}],
                              columns={"solution"})
    right = [[{"role": "assistant", "content": "<answer>4</answer>" + " " * n}] for n in (0, 82, 200)]
    wrong = [[{"role": "assistant", "content": "<answer>5</answer>"}]]
    got = cos(prompts=[None] * 4, completions=right + wrong, solution=["4"] * 4)
    t = 18 / 100
    assert got[0] == pytest.approx(0.25 + 0.5 * 0.75 * (1 + math.cos(math.pi * t)))
    assert got[1] == pytest.approx(0.25 + 0.5 * 0.75 * (1 + math.cos(math.pi * 1.0)))  # 100 chars: the end value
    assert got[2] == pytest.approx(0.25) and got[3] == pytest.approx(-0.5 + 0.5 * -0.5 * (1 + math.cos(math.pi * t)))
    with pytest.raises(RewardSpecError, match="no parameter named 'max_length'"):
        build_rewards([{"name": "cosine", "kwargs": {"max_length": 100}}])

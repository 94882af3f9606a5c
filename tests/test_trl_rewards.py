"""TRL's built-in reward names (`trl grpo --reward_funcs ...`) score what TRL's own functions score:
each name, resolved by rlreason's registry, against trl.rewards' function on the same completions,
conversational (as TRL passes them) and standard (strings, which TRL's functions do not take: the
string is the message content)."""

from __future__ import annotations

import pickle

import pytest

from rlreason.rewards import build_rewards, resolve
from rlreason.rewards.registry import reward_name

trl_rewards = pytest.importorskip("trl.rewards")
pytest.importorskip("math_verify")

# (completion text, gold solution)
CASES = [
    (r"The answer is \boxed{\frac{1}{3}}", r"\frac{1}{3}"),
    (r"The answer is \boxed{\frac{1}{2}}", r"\frac{1}{3}"),
    (r"<think>1/3 it is</think> so \boxed{0.5}", r"\frac{1}{2}"),
    (r"<think>x</think>\boxed{2}", "$2$"),
    (r"<think>reasoning \boxed{7}</think> final: \boxed{8}", "8"),
    (r"<think>unfinished \boxed{8}", "8"),
    ("no latex answer at all: 42", "42"),
    (r"$x = 3$ and then \boxed{3}", "3"),
    (r"\boxed{3}", "not a parseable gold {{"),
    (r"<think>x</think>\boxed{3}", "not a parseable gold {{"),
    (r"<think>a</think><think>b</think>\boxed{1}", "1"),
    ("<think>\nmulti\nline\n</think>\n\\boxed{10}", "10"),
    (r" <think>leading space</think>\boxed{1}", "1"),
    (r"\boxed{100\%}", "100"),
    ("", "1"),
]
TEXTS = [t for t, _ in CASES]
GOLDS = [g for _, g in CASES]
CONVERSATIONAL = [[{"role": "assistant", "content": t}] for t in TEXTS]
PROMPTS = ["p"] * len(CASES)


@pytest.mark.parametrize("name", ["accuracy_reward", "reasoning_accuracy_reward"])
def test_trls_accuracy_names_score_as_trl(name):
    ours, theirs = resolve(name), getattr(trl_rewards, name)
    want = theirs(completions=CONVERSATIONAL, solution=GOLDS)
    assert want.count(None) >= 1 and 0.0 in want and 1.0 in want  # the cases reach every outcome
    assert ours(prompts=PROMPTS, completions=CONVERSATIONAL, solution=GOLDS) == want
    assert ours(prompts=PROMPTS, completions=TEXTS, solution=GOLDS) == want
    assert reward_name(ours) == name  # the metric key TRL logs


def test_reasoning_delimiters_as_trl():
    kw = {"solution": GOLDS, "reasoning_delimiters": ["final:", "</think>"]}
    want = trl_rewards.reasoning_accuracy_reward(completions=CONVERSATIONAL, **kw)
    assert resolve("reasoning_accuracy_reward")(prompts=PROMPTS, completions=TEXTS, **kw) == want


def test_think_format_reward_scores_as_trl():
    want = trl_rewards.think_format_reward(completions=CONVERSATIONAL)
    assert 0.0 in want and 1.0 in want
    ours = resolve("think_format_reward")
    assert ours(prompts=PROMPTS, completions=CONVERSATIONAL) == want
    assert ours(prompts=PROMPTS, completions=TEXTS) == want


def test_soft_overlong_punishment_as_trl_grpo_configures_it():
    # `trl grpo`'s registry: get_soft_overlong_punishment(max_completion_len=1280, soft_punish_cache=256)
    theirs = trl_rewards.get_soft_overlong_punishment(max_completion_len=1280, soft_punish_cache=256)
    ids = [[1] * n for n in (0, 1, 1024, 1025, 1100, 1279, 1280, 1281, 5000)]
    texts = ["x"] * len(ids)
    (ours,), _ = build_rewards(["get_soft_overlong_punishment"])
    want = theirs(completion_ids=ids)
    assert want[0] == 0.0 and want[-1] == -1.0 and -1.0 < want[4] < 0.0
    assert ours(prompts=texts, completions=texts, completion_ids=ids) == want
    assert reward_name(ours) == theirs.__name__
    # TRL's argument names as kwargs
    (small,), _ = build_rewards([{"name": "get_soft_overlong_punishment",
                                  "kwargs": {"max_completion_len": 10, "soft_punish_cache": 4}}])
    ids = [[1] * n for n in range(13)]
    assert small(prompts=PROMPTS[:1] * 13, completions=["x"] * 13, completion_ids=ids) == \
        trl_rewards.get_soft_overlong_punishment(10, 4)(completion_ids=ids)


def test_trl_names_load_through_the_config_and_pickle_for_the_reward_workers():
    from rlreason.config import parse_args

    cfg = parse_args(["--reward_funcs", "accuracy_reward", "think_format_reward", "get_soft_overlong_punishment"])
    funcs, weights = build_rewards(cfg.reward_funcs, columns={"solution"})
    assert [reward_name(f) for f in funcs] == ["accuracy_reward", "think_format_reward",
                                                "soft_overlong_punishment_reward"]
    for f in funcs:
        assert pickle.loads(pickle.dumps(f))(prompts=PROMPTS[:1], completions=TEXTS[:1], solution=GOLDS[:1],
                                              completion_ids=[[1]]) == f(prompts=PROMPTS[:1], completions=TEXTS[:1],
                                                                         solution=GOLDS[:1], completion_ids=[[1]])
    with pytest.raises(ValueError, match="solution"):  # TRL's accuracy_reward needs the solution column
        build_rewards(["accuracy_reward"], columns={"answer"})


def test_dotted_import_paths_resolve_as_trl_grpo_does(tmp_path, monkeypatch):
    pkg = tmp_path / "my_lib"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "rewards.py").write_text("def custom_reward(completions, **kw):\n"
                                    "    return [float(len(c)) for c in completions]\n")
    monkeypatch.chdir(tmp_path)  # TRL imports it with the working directory on sys.path
    fn = resolve("my_lib.rewards.custom_reward")
    assert fn(prompts=["p", "q"], completions=["ab", "abc"]) == [2.0, 3.0]
    assert resolve("my_lib.rewards:custom_reward") is fn  # rlreason's colon form names the same function
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        resolve("my_lib.rewards.nope")
    with pytest.raises(ValueError, match="module 'no_such_lib' not found"):
        resolve("no_such_lib.fn")

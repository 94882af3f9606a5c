"""Evaluation protocols (issue 34): the named ones (open-r1's sampling reaching the real engine, the
budget capped at the model's context), YAML protocols and the flags' precedence, lighteval's math
prompt, and a suite whose data is missing refused in one line before the model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import datasets
import pytest
from transformers import AutoConfig, AutoTokenizer

from rlreason.eval import cli, fetch
from rlreason.eval.core import EvalProtocol
from rlreason.eval.protocols import PROTOCOLS, resolve_protocol
from rlreason.eval.render import fit_budget, render
from rlreason.eval.suites import get_suite, load_problems


class Recorder:
    """The real engine, every generate call's (prompts, n, sampling) recorded."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def generate(self, prompts, n, sampling, seeds=None):
        self.calls.append((prompts, n, sampling))
        return self.engine.generate(prompts, n, sampling)

    def __getattr__(self, name):
        return getattr(self.engine, name)


@pytest.fixture()
def recorded(monkeypatch):
    """``cli.build_engine`` wrapped: the transformers engine runs, its calls are kept in ``seen``."""
    seen: list[Recorder] = []
    real = cli.build_engine

    def build(*args, **kwargs):
        engine, tokenizer = real(*args, **kwargs)
        seen.append(Recorder(engine))
        return seen[-1], tokenizer

    monkeypatch.setattr(cli, "build_engine", build)
    return seen


def _main(argv: list[str]) -> dict:
    return cli.main([*argv, "--reward_num_workers", "1"])


def test_lighteval_math_template_renders_lightevals_prompt(tiny_path):
    # Typed from lighteval 0.13.0's lighteval/tasks/tasks/aime.py MATH_PROMPT_TEMPLATE (two spaces after
    # "clearly."), the problem after a blank line; the box as the model must read it, single braces.
    expected = ("Solve the following math problem efficiently and clearly.  The last line of your response should "
                "be of the following format: 'Therefore, the final answer is: $\\boxed{ANSWER}$. I hope it is "
                "correct' (without quotes) where ANSWER is just the final number or expression that solves the "
                "problem. Think step by step before answering.\n\nWhat is $1+1$?")
    tok = AutoTokenizer.from_pretrained(tiny_path)
    suite = get_suite("math500")
    problem = {"row": {"problem": "What is $1+1$?"}}
    template = EvalProtocol(template="lighteval_math").template_for(suite)
    assert render(problem, suite, template, tok, "off") == expected
    # through the chat template, as open-r1 runs it: the same text is the user message, with no system prompt
    chat = render(problem, suite, template, tok, "on")
    assert chat == tok.apply_chat_template([{"role": "user", "content": expected}], tokenize=False,
                                           add_generation_prompt=True)


def test_named_protocols_hold_their_sources_settings():
    r1 = resolve_protocol("open-r1")
    assert {k: r1[k] for k in ("temperature", "top_p", "top_k", "max_tokens", "n", "template", "chat_template")} == \
        {"temperature": 0.6, "top_p": 0.95, "top_k": 0, "max_tokens": 32768, "n": 1, "template": "lighteval_math",
         "chat_template": "on"}
    assert "system_prompt" not in r1 and "ks" not in r1  # no system prompt (the template has none); ks 1 and n
    greedy = resolve_protocol("greedy")
    assert (greedy["n"], greedy["temperature"], greedy["max_tokens"]) == (1, 0.0, 1024) and "template" not in greedy
    assert set(resolve_protocol("default")) == {"name", "description"}  # sets nothing: today's defaults
    with pytest.raises(ValueError, match="--protocol 'open-r2': no such protocol; the named ones are "
                                         "default, greedy, open-r1"):
        resolve_protocol("open-r2")


def _protocol(*flags: str) -> EvalProtocol:
    return cli.build_protocol(cli.parse_args(["--model", "x", *flags]))


def test_default_protocol_is_todays_cli_and_flags_override_a_protocol():
    # today's rule, written out: greedy 1024 tokens for n=1; temperature 0.6, top_p 0.95 for n>1; ks 1 and n
    assert _protocol() == EvalProtocol(extra=_protocol().extra)
    four = _protocol("--n", "4")
    assert (four.temperature, four.top_p, four.top_k, four.max_tokens, four.ks, four.seed, four.chat_template) == \
        (0.6, 0.95, 0, 1024, (1, 4), 0, "auto")
    assert four.name == "default"
    r1 = _protocol("--protocol", "open-r1", "--n", "64", "--max-tokens", "4096", "--temperature", "0.6")
    assert (r1.name, r1.n, r1.ks, r1.max_tokens, r1.temperature, r1.top_p) == ("open-r1", 64, (1, 64), 4096, 0.6, 0.95)
    # the fields the flags changed, with the protocol's value they replaced (--temperature 0.6 changed nothing)
    assert r1.extra["overridden_by_flags"] == {"n": 1, "max_tokens": 32768}
    greedy = _protocol("--protocol", "greedy", "--template", "boxed")
    assert (greedy.temperature, greedy.top_p, greedy.template) == (0.0, 1.0, "boxed")


def test_open_r1_reaches_the_engine_with_the_budget_capped_at_the_context(tiny_path, recorded, capsys):
    """Issue 34's acceptance: --protocol open-r1 reproduces open-r1's sampling settings on the real
    transformers engine; 32768 new tokens do not fit the tiny model's context, so each call's budget is
    the context (from the model's config) minus its longest prompt."""
    results = _main(["--model", str(tiny_path), "--protocol", "open-r1", "--suites", "arith", "--limit", "4",
                     "--n", "2", "--template", "arith"])
    context = AutoConfig.from_pretrained(tiny_path).max_position_embeddings
    [engine] = recorded
    assert engine.calls
    for prompts, n, sampling in engine.calls:
        longest = max(len(p) for p in prompts)
        assert (sampling.temperature, sampling.top_p, sampling.top_k, n) == (0.6, 0.95, 0, 2)
        assert sampling.max_tokens == min(32768, context - longest) < 32768
    protocol = results["config"]["protocol"]
    assert (protocol["name"], protocol["max_tokens"], protocol["chat_template"]) == ("open-r1", 32768, "on")
    suite = results["config"]["suites"]["arith"]
    assert suite["max_tokens_effective"] == engine.calls[0][2].max_tokens and suite["context_length"] == context
    err = capsys.readouterr().err
    assert f"arith: max_tokens 32768 capped at {suite['max_tokens_effective']} (the model's context is {context}" in err


def test_a_yaml_protocol_is_applied_and_recorded_and_flags_override_it(tiny_path, tmp_path, recorded):
    path = tmp_path / "short_r1.yaml"
    path.write_text("based_on: open-r1\ndescription: open-r1, 3 samples, 24 tokens\nn: 3\nmax_tokens: 24\n"
                    "template: arith\nseed: 7\n")
    results = _main(["--model", str(tiny_path), "--protocol", str(path), "--suites", "arith", "--limit", "3",
                     "--temperature", "0.9"])
    [engine] = recorded
    [(prompts, n, sampling)] = engine.calls
    assert (n, sampling.max_tokens, sampling.temperature, sampling.top_p, len(prompts)) == (3, 24, 0.9, 0.95, 3)
    protocol = results["config"]["protocol"]
    assert (protocol["name"], protocol["seed"], tuple(protocol["ks"]), protocol["template"]) == \
        ("short_r1", 7, (1, 3), "arith")
    assert protocol["extra"]["overridden_by_flags"] == {"temperature": 0.6}
    assert protocol["extra"]["based_on"] == "open-r1" and protocol["extra"]["file"] == str(path.resolve())
    assert results["config"]["suites"]["arith"]["max_tokens_effective"] == 24  # fits: not capped


@pytest.mark.parametrize(("text", "message"), [
    ("temprature: 0.6\n", "unknown key 'temprature'; the keys are n, temperature"),
    ("temperature: -1\n", "key 'temperature': temperature must be >= 0, got -1"),
    ("n: two\n", "key 'n' must be a whole number, got 'two'"),
    ("ks: [1, 0]\n", "key 'ks' must be a list of whole numbers >= 1, got [1, 0]"),
    ("template: lighteval\n", "key 'template': unknown prompt template 'lighteval'"),
    ("based_on: open-r2\n", "key 'based_on': 'open-r2' is not a named protocol"),
    ("- n: 2\n", "expected a mapping of protocol settings, got list"),
    ("n: [2\n", "not valid YAML"),
])
def test_a_bad_yaml_protocol_is_one_error_line_naming_the_file_and_the_key(tmp_path, capsys, monkeypatch, text,
                                                                             message):
    monkeypatch.setattr(cli, "resolve_model", lambda m: pytest.fail("the model was resolved"))
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as stop:
        cli.main(["--model", "tiny", "--protocol", str(path), "--suites", "arith"])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: --protocol {path}: ") and message in err and err.count("\n") == 1, err


def test_fit_budget():
    assert fit_budget(32768, [10, 30], 192) == (162, [])
    assert fit_budget(100, [10, 30], 192) == (100, [])
    assert fit_budget(32768, [10, 30], None) == (32768, [])
    assert fit_budget(5000, [10, 192, 3, 200], 192) == (182, [1, 3])  # the longest prompt that fits sets it
    assert fit_budget(64, [192, 300], 192) == (64, [0, 1])


def test_a_prompt_as_long_as_the_context_is_not_generated_and_scored_wrong(tiny_path, tmp_path, recorded, capsys):
    long = "1+2+" * 60 + "3"
    (tmp_path / "long.jsonl").write_text(json.dumps({"problem": long, "answer": "123"}) + "\n"
                                         + json.dumps({"problem": "1+1", "answer": "2"}) + "\n")
    (tmp_path / "suites.yaml").write_text("suites:\n  - name: long\n    local_path: long.jsonl\n")
    results = _main(["--model", str(tiny_path), "--suite-file", str(tmp_path / "suites.yaml"), "--suites", "long",
                     "--template", "plain", "--max-tokens", "500"])
    tok = AutoTokenizer.from_pretrained(tiny_path)

    def length(text):
        return len(tok(tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                               add_generation_prompt=True), add_special_tokens=False)["input_ids"])

    assert length(long) > 192 > length("1+1")
    [engine] = recorded
    [(prompts, n, sampling)] = engine.calls  # only the problem that fits was generated
    assert [len(p) for p in prompts] == [length("1+1")] and sampling.max_tokens == 192 - length("1+1")
    first, second = results["problems"]["long"]
    assert (first["completions"], first["correct"], first["truncated"], first["lengths"]) == ([""], [False], [True],
                                                                                              [0])
    assert second["completions"][0] != ""
    config = results["config"]["suites"]["long"]
    assert (config["prompts_too_long"], config["longest_prompt_tokens"], config["max_tokens"]) == \
        ([0], length(long), 500)
    assert results["suites"]["long"]["problems"] == 2  # it still counts: wrong
    assert (f"long: max_tokens 500 capped at {192 - length('1+1')} (the model's context is 192 tokens, the longest "
            f"prompt that fits {length('1+1')}); 1 prompts as long as the context (the longest {length(long)} "
            f"tokens) not generated, scored wrong") in capsys.readouterr().err.splitlines()


def test_missing_suite_data_is_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLREASON_BENCHMARKS", str(tmp_path))
    loaded = []
    monkeypatch.setattr(cli, "resolve_model", lambda m: loaded.append(m) or pytest.fail("the model was resolved"))
    with pytest.raises(SystemExit) as stop:
        cli.main(["--model", "tiny", "--suites", "arith,math500", "--limit", "5", "--no-hub"])
    assert stop.value.code == 1 and loaded == []
    assert capsys.readouterr().err == (
        f"error: suite 'math500': its data file {tmp_path}/math500.jsonl is missing (--no-hub: the hub was not "
        f"tried); to supply it, set RLREASON_BENCHMARKS to a folder holding math500.jsonl, or write it once from the "
        f"hub with: python -m rlreason.eval.fetch math500\n")


def test_missing_suite_data_offline_is_one_line_without_a_traceback(tmp_path):
    """The issue's reproduction, as a user runs it: offline (HF_HUB_OFFLINE=1 fails at once), no --no-hub."""
    env = {**os.environ, "RLREASON_BENCHMARKS": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "rlreason.eval", "--model", "tiny", "--suites", "math500",
                           "--limit", "5"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith(f"error: suite 'math500': its data file {tmp_path}/math500.jsonl is missing; "
                                  f"loading hub dataset 'HuggingFaceH4/MATH-500' failed (")
    assert done.stderr.endswith("python -m rlreason.eval.fetch math500\n")


def test_the_trainer_refuses_an_eval_suite_without_data(tmp_path, monkeypatch):
    from rlreason import build
    from rlreason.config import ConfigError, GRPOConfig

    def offline(*args, **kwargs):  # the hub cannot be reached from the tests
        raise ConnectionError("Couldn't reach 'HuggingFaceH4/MATH-500' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setenv("RLREASON_BENCHMARKS", str(tmp_path))
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ConfigError, match=r"^config key 'eval_suites': suite 'math500': its data file "
                                          rf"{tmp_path}/math500\.jsonl is missing; loading hub dataset .* failed "
                                          r"\(ConnectionError: .*python -m rlreason\.eval\.fetch math500$"):
        build.check_eval_settings(GRPOConfig(eval_suites=["arith", "math500"]))


def test_fetch_writes_the_file_the_suite_reads(tmp_path, monkeypatch, capsys):
    """``python -m rlreason.eval.fetch``'s writing path on a real (small) Dataset standing in for the hub's."""
    rows = [{"problem": "What is $\\frac{1}{2}+\\frac{1}{2}$?", "solution": "It is $\\boxed{1}$.", "answer": "1",
             "subject": "Algebra", "level": 1, "unique_id": "test/algebra/1.json", "extra": "not read"},
            {"problem": "Été: 2+3?", "solution": "$\\boxed{5}$", "answer": "5", "subject": "Prealgebra", "level": 2,
             "unique_id": "test/prealgebra/2.json", "extra": "x"}]
    asked = []

    def hub(*args, **kwargs):
        asked.append((args, kwargs))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", hub)
    [path] = fetch.main(["math500", "--to", str(tmp_path / "bench")])
    assert asked == [(("HuggingFaceH4/MATH-500", None), {"split": "test"})]
    assert path == tmp_path / "bench" / "math500.jsonl"
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines == [{k: r[k] for k in ("problem", "answer", "solution", "subject", "level", "unique_id")}
                     for r in rows]
    assert not list(path.parent.glob(".*tmp"))
    monkeypatch.setenv("RLREASON_BENCHMARKS", str(tmp_path / "bench"))
    problems = load_problems(get_suite("math500"), allow_hub=False)
    assert [(p["id"], p["gold"], p["subject"], p["level"]) for p in problems] == \
        [("test/algebra/1.json", "1", "Algebra", 1), ("test/prealgebra/2.json", "5", "Prealgebra", 2)]
    assert f"evaluate with RLREASON_BENCHMARKS={tmp_path / 'bench'}" in capsys.readouterr().err


def test_every_named_protocol_builds():
    for name in PROTOCOLS:
        assert _protocol("--protocol", name).name == name

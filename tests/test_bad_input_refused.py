"""Bad input refused before any training, in one line naming what to fix (issue 29, items 5, 6, 7
and 11): the built-in accuracy reward's golds, read by the reward's own parser; every prompt;
config and data files that are not UTF-8 or not YAML; config values no run can use; dataset
columns named like reward arguments; and the eval CLI's model and suites. The data checks run
through ``rlreason.build.load_data`` / ``dataset_rewards``, what a recipe runs at start-up."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from _configs import demo_config
from transformers import AutoConfig, AutoTokenizer

from rlreason import build
from rlreason.config import ConfigError, GRPOConfig, parse_args
from rlreason.data import load_dataset_any
from rlreason.eval import cli
from rlreason.rewards import accuracy_reward

ROOT = Path(__file__).resolve().parents[1]


def _rows(n: int, **overrides: dict[int, object]) -> list[dict]:
    """``n`` good rows; ``overrides[column][i]`` replaces row i's value of ``column``."""
    rows = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i), "level": i % 3} for i in range(n)]
    for column, values in overrides.items():
        for i, value in values.items():
            rows[i][column] = value
    return rows


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def tokenizer(tiny_path):
    return AutoTokenizer.from_pretrained(tiny_path)


def _load(tokenizer, data: str, **cfg):
    """What a recipe's start-up does with the data: load, check, prepare; the rewards against it."""
    config = GRPOConfig(dataset_name=data, **cfg)
    train, _ = build.load_data(config, tokenizer)
    return build.dataset_rewards(config, train)


def _named_rows(message: str) -> set[int]:
    """The row numbers an error lists ("at rows 3, 7 and 2 more" -> {3, 7})."""
    return {int(n) for part in re.findall(r"at rows? ([\d, ]+)", message) for n in re.findall(r"\d+", part)}


# --------------------------------------------------------------------------- item 5: golds


@pytest.mark.parametrize(("gold", "kind"), [("", "empty"), ("   ", "empty"), (None, "empty"),
                                            ("\\frac{", "unparseable"), ({"x": 1}, "neither text nor a number"),
                                            (True, "neither text nor a number"), ([1, 2], "neither text nor a number")])
def test_accuracy_golds_blank_unparseable_or_not_text_are_refused_naming_column_file_and_rows(
        tokenizer, tmp_path, gold, kind):
    data = _jsonl(tmp_path / "train.jsonl", _rows(20, answer=dict.fromkeys(range(20), gold)))
    with pytest.raises(ValueError) as e:
        _load(tokenizer, data)
    msg = str(e.value)
    assert f"gold column 'answer' of data file {data!r}" in msg and "'accuracy_reward' cannot read 20 of 20" in msg
    assert f"20 {kind}, at rows 0, 1, 2, 3, 4 and 15 more" in msg and "\n" not in msg


def test_the_gold_check_reads_golds_with_the_rewards_own_parser(tokenizer, tmp_path):
    golds = ["3", "\\frac{", "\\frac{1}{2}", "x^2 + 1", "1,000", "\\sqrt{", "(1, 2]", "#### 72", "the answer is 5",
             "\\boxed{", "2.50", "{1, 2}", "see the book", "\\left(", "-7"]
    data = _jsonl(tmp_path / "train.jsonl", _rows(len(golds), answer=dict(enumerate(golds))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "cannot parse gold answer ...": the point here
        unread = {i for i, g in enumerate(golds)
                  if accuracy_reward(prompts=["p"], completions=["<answer>0</answer>"], answer=[g])[0] is None}
    assert unread and len(unread) < len(golds)  # some of each: the check must tell them apart
    with pytest.raises(ValueError, match="more than config key 'max_bad_gold_fraction'") as e:
        _load(tokenizer, data)
    assert _named_rows(str(e.value)) == unread


def test_a_few_bad_golds_warn_naming_them_and_more_than_max_bad_gold_fraction_are_refused(tokenizer, tmp_path, caplog):
    few = _jsonl(tmp_path / "few.jsonl", _rows(200, answer={150: "\\frac{"}))
    with caplog.at_level(logging.WARNING, logger="rlreason.data"):
        _load(tokenizer, few)  # 0.5% <= 1%: trains, the row named
    assert f"data file {few!r}" in caplog.text and "1 unparseable, at row 150" in caplog.text
    many = _jsonl(tmp_path / "many.jsonl", _rows(20, answer={3: "\\frac{", 7: ""}))
    with pytest.raises(ValueError, match=r"cannot read 2 of 20 golds \(1 unparseable, at row 3 .*1 empty, at row 7.*"
                                         r"that is 10.0% of the rows, more than config key 'max_bad_gold_fraction'"):
        _load(tokenizer, many)
    _load(tokenizer, many, max_bad_gold_fraction=0.1)
    with pytest.raises(ConfigError, match="config key 'max_bad_gold_fraction'"):
        GRPOConfig(max_bad_gold_fraction=1.5)


def test_the_gold_check_follows_gold_column_and_names_rows_as_in_the_file_through_a_filter(tokenizer, tmp_path):
    rows = _rows(12, answer={9: "\\frac{"})
    for i, row in enumerate(rows):
        row["final"] = "" if i in (1, 7) else str(2 * i)
    data = _jsonl(tmp_path / "train.jsonl", rows)
    reward = [{"name": "accuracy", "kwargs": {"gold_column": "final"}}]
    # level 1 is rows 1, 4, 7, 10: the filtered data's rows 0 and 2 are the file's 1 and 7
    with pytest.raises(ValueError, match=r"gold column 'final'.*cannot read 2 of 4 golds \(2 empty, at rows 1, 7;"):
        _load(tokenizer, data, reward_funcs=reward, dataset_filter={"level": [1]})
    _load(tokenizer, data, reward_funcs=reward, dataset_filter={"level": [0, 2]})  # row 9's 'answer' is not read


# --------------------------------------------------------------------------- item 6: prompts


@pytest.mark.parametrize("chat", [False, True])
@pytest.mark.parametrize(("prompt", "kind"), [("", "empty"), ("  \n", "empty"), (None, "null")])
def test_an_empty_or_null_prompt_is_refused_naming_the_file_and_row(tokenizer, tmp_path, prompt, kind, chat):
    data = _jsonl(tmp_path / "train.jsonl", _rows(20, prompt={13: prompt}))
    with pytest.raises(ValueError) as e:
        _load(tokenizer, data, use_chat_template=chat)
    assert str(e.value).startswith(f"prompt column 'prompt' of data file {data!r}: 1 of 20 prompts cannot be used "
                                   f"(1 {kind}, at row 13; rows count from 0)")


def test_a_recipe_with_an_empty_prompt_exits_1_with_one_line_before_training(tmp_path):
    data = _jsonl(tmp_path / "train.jsonl", _rows(20, prompt={13: ""}))
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, str(ROOT / "recipes" / "grpo_math.py"), "--dataset_name", data,
                          "--use_chat_template", "false", "--output_dir", str(out), "--max_steps", "2",
                          "--progress", "false"], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 1, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: prompt column 'prompt' of data file {data!r}") and "row 13" in lines[-1]
    assert "Traceback" not in res.stderr and not (out / "checkpoints").exists()


# --------------------------------------------------------------------------- item 7: files, values, columns


def test_a_config_file_that_is_not_utf8_or_not_yaml_is_named_with_its_line(tmp_path):
    cases = {"latin1.yaml": (b"max_steps: 2\n# caf\xe9\n", r"line 2: byte 0xe9 is not UTF-8 text"),
             "flow.yaml": (b"max_steps: 2\nlearning_rate: [1e-5\nseed: 3\n",
                           r"is not valid YAML: line 3, column 5: .*flow sequence at line 2"),
             "indent.yaml": (b"max_steps: 2\n  seed: 1\n", r"is not valid YAML: line 2, column 7: mapping values")}
    for name, (text, error) in cases.items():
        (tmp_path / name).write_bytes(text)
        with pytest.raises(ConfigError, match=f"config file {re.escape(str(tmp_path / name))}.*{error}"):
            parse_args(["--config", str(tmp_path / name)])
    with pytest.raises(ConfigError, match="config key 'reward_funcs' on the command line: cannot read '\\[accuracy'"):
        parse_args(["--reward_funcs", "[accuracy"])


def test_a_data_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    jsonl = tmp_path / "latin1.jsonl"
    jsonl.write_bytes(b'{"prompt": "a", "answer": "1"}\n{"prompt": "Wh\xe4t", "answer": "2"}\n')
    csv = tmp_path / "latin1.csv"
    csv.write_bytes(b"prompt,answer\nWh\xe4t is 1+1,2\n")
    for path in (jsonl, csv):
        with pytest.raises(ValueError, match=f"data file {re.escape(repr(str(path)))}, line 2: byte 0xe4 is not UTF-8"):
            load_dataset_any(str(path))


@pytest.mark.parametrize(("key", "value"), [("num_train_epochs", float("inf")), ("seed", 2**32),
                                            ("seed", 10**20), ("num_threads", -3), ("num_threads", 0)])
def test_values_no_run_can_use_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        GRPOConfig(**{key: value})
    with pytest.raises(ConfigError, match=f"config key '{key}'"):  # as YAML writes it on the command line
        parse_args([f"--{key}", ".inf" if value == float("inf") else str(value)])


def test_a_misspelt_or_never_logged_metric_for_best_model_is_refused():
    with pytest.raises(ConfigError, match="'metric_for_best_model'.*did you mean 'eval/accuracy'"):
        build.check_eval_settings(GRPOConfig(metric_for_best_model="eval/acuracy"))
    with pytest.raises(ConfigError, match="'metric_for_best_model'.*held-out metric.*suite/math500/pass@1"):
        build.check_eval_settings(GRPOConfig(dataset_name="data.jsonl", eval_suites=["math500"],
                                             metric_for_best_model="eval/accuracy"))
    with pytest.raises(ConfigError, match="'metric_for_best_model'.*evaluates nothing"):
        build.check_eval_settings(GRPOConfig(dataset_name="data.jsonl", metric_for_best_model="eval/accuracy"))
    with pytest.raises(ConfigError, match="'metric_for_best_model'.*did you mean 'suite/math500/pass@1'"):
        build.check_eval_settings(GRPOConfig(eval_suites=["math500"], metric_for_best_model="suite/math500/pass1"))
    with pytest.raises(ConfigError, match="config key 'eval_suites': unknown suite 'math5000'"):
        build.check_eval_settings(GRPOConfig(eval_suites=["math5000"]))
    for metric in ("eval/accuracy", "suite/math500/pass@1", None):
        build.check_eval_settings(GRPOConfig(eval_suites=["math500"], metric_for_best_model=metric))


def test_lengths_beyond_the_models_positions_are_refused_naming_the_key_and_the_limit(tiny_path):
    positions = AutoConfig.from_pretrained(tiny_path)
    assert positions.max_position_embeddings == 192
    with pytest.raises(ConfigError, match=r"config key 'max_prompt_length': 100000 .*max_position_embeddings \(192"):
        build.check_positions(demo_config(max_prompt_length=100000), positions, str(tiny_path))
    with pytest.raises(ConfigError, match=r"'max_prompt_length' \+ 'max_completion_length': 128 \+ 100 = 228 .*"
                                          r"max_position_embeddings \(192.*max_completion_length: 64"):
        build.check_positions(demo_config(max_completion_length=100), positions, str(tiny_path))
    with pytest.raises(ConfigError, match=r"'max_prompt_length' \+ 'eval_max_tokens': 128 \+ 65 = 193"):
        build.check_positions(demo_config(eval_max_tokens=65), positions, str(tiny_path))
    build.check_positions(demo_config(), positions, str(tiny_path))  # 128 + 64 = 192 fits
    # no prompt limit (TRL's default, max_prompt_length None): the completion alone is checked
    with pytest.raises(ConfigError, match=r"config key 'max_completion_length': 512 tokens is beyond the model's "
                                          r"max_position_embeddings \(192"):
        build.check_positions(GRPOConfig(max_completion_length=512), positions, str(tiny_path))
    build.check_positions(GRPOConfig(max_completion_length=192), positions, str(tiny_path))


@pytest.mark.parametrize("column", ["completions", "trainer_state", "prompts", "completion_ids", "log_metric"])
def test_dataset_columns_named_like_reward_arguments_are_refused(tokenizer, tmp_path, column):
    rows = _rows(8)
    for row in rows:
        row[column] = "x"
    data = _jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(ValueError, match=f"data file {re.escape(repr(data))}: column '{column}' has the name of an "
                                         f"argument every reward receives.*column_map"):
        _load(tokenizer, data)
    _load(tokenizer, data, column_map={column: f"{column}_column"})


# --------------------------------------------------------------------------- item 11: the eval CLI


def _eval_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--limit", "2", "--max-tokens", "4", "--reward_num_workers", "0"])
    assert e.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_the_eval_cli_names_a_missing_model_an_unknown_suite_and_a_folder_without_tokenizer(tiny_path, tmp_path,
                                                                                              capsys):
    missing = tmp_path / "runs" / "x" / "final_model"
    assert _eval_error(["--model", str(missing), "--suites", "arith"], capsys) == (
        f"error: --model {str(missing)!r}: no such folder; give the model folder of a run (its final_model/) or a "
        f"hub id")
    # the suites are checked first: no model is looked for
    assert _eval_error(["--model", str(missing), "--suites", "arith,math5000"], capsys).startswith(
        "error: --suites: unknown suite 'math5000'; known: ")
    no_tokenizer = _without_tokenizer(tiny_path, tmp_path)
    assert _eval_error(["--model", str(no_tokenizer), "--suites", "arith"], capsys).startswith(
        f"error: --model {str(no_tokenizer)!r}: the folder has no tokenizer (tokenizer.json, ")


def _without_tokenizer(tiny_path: Path, tmp_path: Path) -> Path:
    """The tiny model's folder without its tokenizer files (transformers then builds one that reads nothing)."""
    folder = tmp_path / "no_tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_path / name, folder / name)
    return folder


def test_training_refuses_a_model_folder_without_tokenizer_too(tiny_path, tmp_path):
    folder = _without_tokenizer(tiny_path, tmp_path)
    with pytest.raises(ValueError, match=f"config key 'model_name_or_path' \\({re.escape(str(folder))}\\): the folder "
                                         f"has no tokenizer"):
        build.load_tokenizer(GRPOConfig(model_name_or_path=str(folder)), None)

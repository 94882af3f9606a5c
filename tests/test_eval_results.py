"""The eval CLI's results files in lighteval's layout and schema (issue 34, items 1 and 5).

One run of the CLI on the embedded model (the arith suite, sampled, and a ``--data`` task scored by a
reward from a file) writes the files; the tests check them against lighteval 0.13.0's schema written
out here from its own dataclasses and writer (``logging/info_loggers.py``, ``logging/evaluation_tracker.py``,
``tasks/requests.py`` ``Doc``, ``models/model_output.py`` ``ModelResponse``), with the "all" row and
every stderr recomputed here from the per-task values and the per-sample details. Where a Python with
lighteval is at hand (``RLREASON_LIGHTEVAL_PYTHON``, or the repository's ``.venv-lighteval``), lighteval's
own reader loads the same files in a subprocess.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rlreason.eval import cli, report
from rlreason.eval.report import read_results, read_samples, results_model_name, write_results

pytestmark = pytest.mark.xdist_group("eval_results")

# lighteval 0.13.0's schema, copied from its dataclasses (field names, in declaration order).
GENERAL_CONFIG_FIELDS = ("lighteval_sha", "num_fewshot_seeds", "max_samples", "job_id", "start_time", "end_time",
                         "total_evaluation_time_secondes", "model_config", "model_name")
RESULTS_KEYS = ("config_general", "results", "versions", "config_tasks", "summary_tasks", "summary_general")
DETAIL_FIELDS = ("doc", "metric", "model_response")  # DetailsLogger.Detail, columns sorted as save() sorts them
DOC_FIELDS = ("query", "choices", "gold_index", "instruction", "images", "specific", "unconditioned_query",
              "original_query", "id", "task_name", "fewshot_samples", "sampling_methods", "fewshot_sorting_class",
              "generation_size", "stop_sequences", "use_logits", "num_samples", "generation_grammar")
MODEL_RESPONSE_FIELDS = ("input", "input_tokens", "text", "output_tokens", "text_post_processed", "reasonings",
                         "logprobs", "argmax_logits_eq_gold", "logits", "unconditioned_logprobs",
                         "truncated_tokens_count", "padded_tokens_count")
GENERATION_PARAMETERS = {"temperature", "top_p", "top_k", "max_new_tokens", "seed"}  # lighteval's names
DATE_ID = re.compile(r"^\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{6}(_\d+)?$")  # datetime.now().isoformat(), ':' -> '-'

# The task's reward gives each problem its row's weight (None: "does not apply"), whatever the model
# writes: per-problem values known in advance. Correct = the first reward >= 1.0.
WEIGHT = textwrap.dedent('''
    def weight(prompts, completions, w, **kwargs):
        return w
''')
ROWS = [{"prompt": "1+1", "w": 1.0}, {"prompt": "2+2", "w": 0.5}, {"prompt": "3+3", "w": 0.0},
        {"prompt": "4+4", "w": None}]


@pytest.fixture(scope="module")
def run(tiny_path, tmp_path_factory):
    """The CLI's run: (its --out folder, the internal results main() returned)."""
    tmp = tmp_path_factory.mktemp("eval_results")
    (tmp / "weights.py").write_text(WEIGHT)
    data = tmp / "weights.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp / "out"
    results = cli.main(["--model", str(tiny_path), "--suites", "arith", "--limit", "6", "--n", "2", "--max-tokens",
                        "32", "--data", str(data), "--reward", f"{tmp / 'weights.py'}:weight", "--out", str(out),
                        "--reward_num_workers", "1"])
    return out, results


def _only_results_file(out: Path) -> Path:
    [path] = (out / "results").glob("*/results_*.json")
    return path


def test_the_run_is_written_in_lightevals_layout(run, tiny_path):
    out, results = run
    path = _only_results_file(out)
    model = tiny_path.name
    date_id = path.stem.removeprefix("results_")
    assert path.parent == out / "results" / model and DATE_ID.match(date_id)
    folder = out / "details" / model / date_id
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{kind}_rlreason|{suite}|0_{date_id}.{ext}" for suite in ("weights", "arith")
        for kind, ext in (("details", "parquet"), ("samples", "jsonl")))
    doc = read_results(out)
    assert doc == json.loads(path.read_text()) == read_results(path)
    assert doc["rlreason"]["suites"] == json.loads(json.dumps(results["suites"]))  # the internal metrics, whole
    assert doc["rlreason"]["config"]["protocol"]["n"] == 2 and doc["rlreason"]["config"]["model"] == str(tiny_path)
    assert "## " + date_id in (out / "results.md").read_text()


def test_results_follow_lightevals_schema(run, tiny_path):
    out, results = run
    doc = read_results(out)
    assert tuple(doc)[:len(RESULTS_KEYS)] == RESULTS_KEYS and set(doc) == {*RESULTS_KEYS, "rlreason"}
    general = doc["config_general"]
    assert set(GENERAL_CONFIG_FIELDS) <= set(general)
    assert general["model_name"] == tiny_path.name and general["max_samples"] == 6 and general["num_fewshot_seeds"] == 1
    seconds = general["end_time"] - general["start_time"]
    assert float(general["total_evaluation_time_secondes"]) == pytest.approx(seconds) and seconds > 0
    params = general["model_config"]["generation_parameters"]
    assert set(params) == GENERATION_PARAMETERS
    assert (params["temperature"], params["top_p"], params["max_new_tokens"]) == (0.6, 0.95, 32)
    assert general["package_versions"]["torch"] and general["protocol"]["max_tokens"] == 32

    tasks = {"rlreason|weights|0", "rlreason|arith|0"}
    assert set(doc["results"]) == tasks | {"all"} and set(doc["versions"]) == tasks
    assert set(doc["config_tasks"]) == set(doc["summary_tasks"]) == tasks
    for task, row in doc["results"].items():
        assert all(type(v) is float for v in row.values()), task  # lighteval prints each with %.4f
        for metric in row:
            if metric.endswith("_stderr"):
                assert metric.removesuffix("_stderr") in row, (task, metric)  # a stderr beside its metric
    arith, internal = doc["results"]["rlreason|arith|0"], results["suites"]["arith"]
    assert {"pass@k:k=1&n=2", "pass@k:k=2&n=2", "maj@k:k=1&n=2", "maj@k:k=2&n=2", "format_rate", "answer_rate",
            "truncation_rate", "mean_length"} <= set(arith)
    for ours, theirs in (("pass@1", "pass@k:k=1&n=2"), ("pass@2", "pass@k:k=2&n=2"), ("maj@2", "maj@k:k=2&n=2"),
                         ("format_rate", "format_rate"), ("truncation_rate", "truncation_rate")):
        assert arith[theirs] == internal[ours], ours
    assert not any(k.endswith("ci95") or k in ("problems", "n_samples") for k in arith)  # means only

    # the "all" row, recomputed: each metric (stderr ones too) averaged over the tasks that have it
    per_task = [row for task, row in doc["results"].items() if task != "all"]
    expected = {m: statistics.fmean(row[m] for row in per_task if m in row) for row in per_task for m in row}
    assert doc["results"]["all"] == pytest.approx(expected)
    assert doc["results"]["all"]["mean_reward"] == doc["results"]["rlreason|weights|0"]["mean_reward"]

    config = doc["config_tasks"]["rlreason|arith|0"]
    assert (config["effective_num_docs"], config["generation_size"], config["num_samples"]) == (6, 32, [2])
    assert config["suite"] == ["rlreason"] and config["template"]["name"] == "arith"
    assert {m["metric_name"] for m in config["metrics"]} == {k for k in arith if not k.endswith("_stderr")}
    assert doc["config_tasks"]["rlreason|weights|0"]["original_num_docs"] == 4  # all rows ran: the whole file
    assert all(len(s["hashes"]["hash_examples"]) == 16 for s in doc["summary_tasks"].values())


def test_details_rows_are_lightevals_details(run):
    """Each parquet row is lighteval's Detail (doc, model_response, metric) with exactly Doc's and
    ModelResponse's fields; the per-problem metrics, recomputed from the record, give the results'
    values as their mean and the results' stderr (sample std / sqrt(problems), lighteval's mean_stderr)."""
    out, results = run
    doc = read_results(out)
    [folder] = (out / "details").glob("*/*")
    for suite in ("arith", "weights"):
        table = pq.read_table(next(folder.glob(f"details_rlreason|{suite}|0_*.parquet")))
        assert table.column_names == list(DETAIL_FIELDS)
        rows = table.to_pylist()
        records = results["problems"][suite]
        assert len(rows) == len(records) == doc["config_tasks"][f"rlreason|{suite}|0"]["effective_num_docs"]
        for row, record in zip(rows, records, strict=True):
            assert tuple(row["doc"]) == DOC_FIELDS and tuple(row["model_response"]) == MODEL_RESPONSE_FIELDS
            assert row["doc"]["query"] == row["model_response"]["input"] == record["prompt"]
            assert row["model_response"]["text"] == record["completions"]
            assert row["doc"]["task_name"] == f"rlreason|{suite}|0" and row["doc"]["num_samples"] == 2
            assert row["doc"]["specific"]["correct"] == record["correct"]
            correct = record["correct"]
            assert row["metric"]["pass@k:k=1&n=2"] == sum(correct) / 2
            assert row["metric"]["pass@k:k=2&n=2"] == float(any(correct))
        results_row = doc["results"][f"rlreason|{suite}|0"]
        for metric, value in results_row.items():
            if metric.endswith("_stderr"):
                continue
            values = [r["metric"][metric] for r in rows]
            if None in values:
                assert f"{metric}_stderr" not in results_row, metric
                continue
            assert value == pytest.approx(statistics.fmean(values)), metric
            assert results_row[f"{metric}_stderr"] == pytest.approx(statistics.stdev(values) / math.sqrt(len(values)))
        if suite == "arith":
            assert [r["doc"]["specific"]["answers"] for r in rows] == [r["answers"] for r in records]
            assert [r["doc"]["choices"] for r in rows] == [[str(r["gold"])] for r in records]
            assert all(r["doc"]["gold_index"] == 0 for r in rows)


def test_a_task_scored_by_its_reward_has_the_numbers_worked_out_by_hand(run):
    """Rewards per problem [1, 1], [.5, .5], [0, 0], [None, None]: pass@1 per problem 1, 0, 0, 0 -> 0.25 with
    stderr stdev([1,0,0,0]) / 2 = 0.25; mean_reward over the scored samples 3 / 6 = 0.5, with no stderr (the
    fourth problem has no reward, so the suite value is not a mean over problems)."""
    out, _ = run
    row = read_results(out)["results"]["rlreason|weights|0"]
    assert row["pass@k:k=1&n=2"] == 0.25 and row["pass@k:k=1&n=2_stderr"] == pytest.approx(0.25)
    assert row["mean_reward"] == 0.5 and "mean_reward_stderr" not in row
    assert row["reward/weight"] == 0.5
    samples = read_samples(out, "weights")
    assert [s["rewards"]["weight"] for s in samples] == [[1.0, 1.0], [0.5, 0.5], [0.0, 0.0], [None, None]]


def test_read_samples_gives_the_runs_records(run):
    out, results = run
    expected = json.loads(json.dumps(results["problems"], default=str))
    assert read_samples(out, "arith") == expected["arith"]
    assert read_samples(out) == expected["weights"] + expected["arith"]  # in the order the suites ran
    assert all(set(r["maj"]) == {"maj@1", "maj@2"} for r in read_samples(out, "arith"))
    assert read_samples(_only_results_file(out)) == read_samples(out)  # a results file names its run too


def test_results_md_keeps_both_tables(run):
    out, results = run
    text = (out / "results.md").read_text()
    doc = read_results(out)
    assert report.markdown_table(results["suites"]) in text
    printed = _table_values(text.split("lighteval's table:")[1])
    assert printed == {(t, m): round(v, 4) for t, row in doc["results"].items() for m, v in row.items()
                       if not m.endswith("_stderr")}


def _table_values(table: str) -> dict[tuple[str, str], float]:
    """(task with '|' as ':', metric) -> value of a Task | Version | Metric | Value | ± | Stderr table
    (a blank task cell continues the task above), task names back to their '|' form."""
    values, task = {}, None
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip()[1:-1].split("|")]
        task = cells[0] or task
        values[(task.replace(":", "|"), cells[2])] = float(cells[3])
    return values


def test_runs_never_overwrite_each_other(run, tmp_path, monkeypatch):
    """Two writes in a row get two date_ids; a clash with files already there (the clock forced to one
    instant) takes the next free suffix; results.md is only appended to."""
    _, results = run
    out = tmp_path / "out"
    first = write_results(results, out, model_name="m")
    text = first["results"].read_text()
    second = write_results(results, out, model_name="m")
    assert first["date_id"] != second["date_id"] and first["results"].read_text() == text

    class Frozen:
        @staticmethod
        def now():
            from datetime import datetime

            return datetime(2030, 1, 2, 3, 4, 5, 678901)

    monkeypatch.setattr(report, "datetime", Frozen)
    fixed = "2030-01-02T03-04-05.678901"
    (out / "results" / "m" / f"results_{fixed}.json").write_text("an earlier run's\n")  # its details went missing
    (out / "details" / "m" / f"{fixed}_1").mkdir(parents=True)  # another's, results not written yet
    before = (out / "results.md").read_text()
    third = write_results(results, out, model_name="m")
    assert third["date_id"] == f"{fixed}_2" and third["results"].name == f"results_{fixed}_2.json"
    assert (out / "results" / "m" / f"results_{fixed}.json").read_text() == "an earlier run's\n"
    assert not any((out / "details" / "m" / f"{fixed}_1").iterdir())
    fourth = write_results(results, out, model_name="m")
    assert fourth["date_id"] == f"{fixed}_3"
    after = (out / "results.md").read_text()
    assert after.startswith(before) and after.count("\n## ") + after.startswith("## ") == 4
    assert read_results(out)["config_general"]["end_time"] == json.loads(fourth["results"].read_text())[
        "config_general"]["end_time"]  # the folder's newest is the last written


def test_compare_reads_new_files_folders_and_old_results_json(run, tmp_path, capsys):
    out, results = run
    old = tmp_path / "old"
    old.mkdir()
    legacy = {"config": {"protocol": {"n": 1, "temperature": 0.0}}, "suites": {"arith": {**results["suites"]["arith"],
                                                                                       "pass@1": 0.0}}}
    (old / "results.json").write_text(json.dumps(legacy))
    cli.main(["--compare", str(old), str(out)])
    printed = capsys.readouterr().out
    differs = next(line for line in printed.splitlines() if line.startswith("protocol differs: "))
    assert f"B = {_only_results_file(out)}" in printed and "n: 1 vs 2" in differs.split("; ")
    assert f"| arith | pass@1 | 0.000 | {report._fmt(results['suites']['arith']['pass@1'])} |" in printed
    assert "| weights | mean_reward | - | 0.500 | - |" in printed
    cli.main(["--compare", str(_only_results_file(out)), str(out)])
    assert "| arith | pass@1 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--compare", str(tmp_path / "nothing"), str(out)])
    assert stopped.value.code == 1 and capsys.readouterr().err == (
        f"error: {tmp_path / 'nothing'}: no results file (results/<model>/results_<date_id>.json) there\n")


def test_details_keep_one_column_type_whatever_the_records_hold(tmp_path):
    """Arrow gives a column one type: golds that are a number in one row and a string in the next,
    levels that are ints or None, empty lists, rewards that are None, a task's columns and a tool
    exchange's messages of any shape all go into one parquet per suite, and come back as written
    (numbers and open-ended values as JSON text)."""
    common = {"lengths": [3, 4], "truncated": [False, True], "score_failures": 0}
    answer = [{"suite": "mix", "index": 0, "id": 0, "subject": None, "level": 3, "prompt": "p0", "gold": 27.0,
               "completions": ["a", "b"], "answers": [None, "27"], "correct": [False, True], "formatted": [False, True],
               "gold_unparseable": False, "maj": {"maj@2": 0.0}, **common,
               "messages": [[{"role": "assistant", "content": "x",
                              "tool_calls": [{"name": "f", "arguments": {"a": 1}}]}], []],
               "tool_calls": [1, 0], "tool_failures": [0, 0]},
              {"suite": "mix", "index": 1, "id": "x/1", "subject": "Algebra", "level": None, "prompt": "p1",
               "gold": "\\frac12", "completions": ["", "c"], "answers": [None, None], "correct": [False, False],
               "formatted": [False, False], "gold_unparseable": True, "maj": {"maj@2": 0.0}, **common,
               "messages": [[], [{"role": "tool", "content": "2"}]], "tool_calls": [0, 1], "tool_failures": [0, 1]}]
    code = [{"suite": "code", "index": i, "id": f"HumanEval/{i}", "prompt": "def f():", "style": "completion",
             "completions": ["  return 1", ""], "programs": ["def f():  return 1", "def f():"],
             "statuses": ["ok", "error"], "stderr": ["", "Traceback"], "correct": [True, False],
             "formatted": [True, True], **common} for i in range(2)]
    task = [{"suite": "task", "index": 0, "id": 0, "prompt": "q", "columns": {"nums": [1, 2], "answer": 3},
             "completions": ["a", "b"], "rewards": {"f": [None, 0.5]}, "correct": [False, False],
             "failed": [True, False], **common},
            {"suite": "task", "index": 1, "id": 1, "prompt": "r", "columns": {"nums": [], "answer": "x"},
             "completions": ["c", "d"], "rewards": {"f": [1.0, 1.0]}, "correct": [True, True],
             "failed": [False, False], **common}]
    results = {"config": {"protocol": {"n": 2, "max_tokens": 4}, "suites": {}},
               "suites": {"mix": {"problems": 2, "n_samples": 2, "pass@1": 0.25, "maj@2": 0.0},
                          "code": {"problems": 2, "n_samples": 2, "pass@1": 0.5},
                          "task": {"problems": 2, "n_samples": 2, "pass@1": 0.5, "mean_reward": 2.5 / 3}},
               "problems": {"mix": answer, "code": code, "task": task}}
    paths = write_results(results, tmp_path, model_name="m")
    mix, coded, tasked = (pq.read_table(paths["details"][s]).to_pylist() for s in ("mix", "code", "task"))
    assert [r["doc"]["specific"]["gold"] for r in mix] == ["27.0", "\\frac12"]
    assert [r["doc"]["choices"] for r in mix] == [["27.0"], ["\\frac12"]]
    assert [r["doc"]["specific"]["level"] for r in mix] == ["3", None]
    assert [r["doc"]["id"] for r in mix] == ["0", "x/1"]
    assert [[json.loads(m) for m in r["doc"]["specific"]["messages"]] for r in mix] == [a["messages"] for a in answer]
    assert [r["metric"]["maj@k:k=2&n=2"] for r in mix] == [0.0, 0.0]
    assert [r["doc"]["specific"]["statuses"] for r in coded] == [["ok", "error"]] * 2
    assert all(r["doc"]["choices"] == [] and r["doc"]["gold_index"] == [] for r in coded)
    assert [r["doc"]["specific"]["rewards"] for r in tasked] == [[[None, 0.5]], [[1.0, 1.0]]]
    assert [json.loads(r["doc"]["specific"]["columns"]) for r in tasked] == [t["columns"] for t in task]
    assert [r["doc"]["choices"] for r in tasked] == [["3"], ["x"]]  # the task's answer column, as text
    assert [r["metric"]["mean_reward"] for r in tasked] == [0.5, 1.0]
    row = read_results(tmp_path)["results"]["rlreason|task|0"]
    # 2.5 / 3 over the scored samples, not the mean 0.75 of the problems' means: a stderr over problems is not its own
    assert row["mean_reward"] == 2.5 / 3 and "mean_reward_stderr" not in row
    assert row["pass@k:k=1&n=2_stderr"] == pytest.approx(0.5)  # per problem 0 and 1: stdev 0.7071 / sqrt 2
    assert read_samples(tmp_path, "task") == task


@pytest.mark.parametrize(("model", "name"), [("Qwen/Qwen2.5-Math-1.5B", "Qwen/Qwen2.5-Math-1.5B"), ("tiny", "tiny"),
                                             ("org/we ird:name", "org/we_ird_name"), ("../x", "_/x")])
def test_results_model_name(model, name):
    assert results_model_name(model) == name


def test_results_model_name_of_a_local_folder(tmp_path):
    (tmp_path / "run" / "final_model").mkdir(parents=True)
    assert results_model_name(str(tmp_path / "run" / "final_model")) == "final_model"


# --------------------------------------------------------------------------- lighteval's own reader

# What lighteval's pipeline does with a details folder (Pipeline._load_responses_from_details): its
# EvaluationTracker loads the details datasets of a date_id, each row becomes a ModelResponse (and here a
# Doc too); and the results go through make_results_table as lighteval prints them (generate_final_dict
# writes '|' as ':').
READER = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    from lighteval.logging.evaluation_tracker import EvaluationTracker
    from lighteval.models.model_output import ModelResponse
    from lighteval.tasks.requests import Doc
    from lighteval.utils.utils import make_results_table

    out_dir, results_file = sys.argv[1], Path(sys.argv[2])
    doc = json.loads(results_file.read_text())
    tracker = EvaluationTracker(output_dir=out_dir)
    tracker.general_config_logger.model_name = doc["config_general"]["model_name"]
    tasks = [t for t in doc["results"] if t != "all"]
    loaded = tracker.load_details_datasets(results_file.stem.removeprefix("results_"),
                                           ["|".join(t.split("|")[:-1]) for t in tasks])
    report = {"tasks": {}}
    for task, dataset in loaded.items():
        responses = [ModelResponse(**row["model_response"]) for row in dataset]
        docs = [Doc(**row["doc"]) for row in dataset]
        report["tasks"][task] = {"text": [r.final_text for r in responses], "query": [d.query for d in docs],
                                 "golds": [d.get_golds() for d in docs], "metric": [row["metric"] for row in dataset]}
    final = {k: {name.replace("|", ":"): v for name, v in doc[k].items()} for k in ("results", "versions")}
    report["table"] = make_results_table(final)
    print(json.dumps(report))
''')


def lighteval_python() -> str | None:
    """A Python with lighteval: ``$RLREASON_LIGHTEVAL_PYTHON``, else the repository's ``.venv-lighteval``
    (scripts/setup_lighteval.sh where the lead's branch has it), else None."""
    given = os.environ.get("RLREASON_LIGHTEVAL_PYTHON")
    if given:
        return given
    local = Path(__file__).resolve().parents[1] / ".venv-lighteval" / "bin" / "python"
    return str(local) if local.exists() else None


def test_lightevals_own_reader_loads_the_files(run, tmp_path):
    python = lighteval_python()
    if python is None:
        pytest.skip("no Python with lighteval (RLREASON_LIGHTEVAL_PYTHON, or .venv-lighteval)")
    check = subprocess.run([python, "-c", "import lighteval.logging.evaluation_tracker"], capture_output=True,
                           text=True)
    if check.returncode != 0:
        message = f"{python} cannot import lighteval: {check.stderr.strip().splitlines()[-1:]}"
        if os.environ.get("CI") == "1" and os.environ.get("RLREASON_LIGHTEVAL_PYTHON"):
            pytest.fail(message)  # CI asked for the check: a broken environment is a failure, not a skip
        pytest.skip(message)
    out, results = run
    results_file = _only_results_file(out)
    script = tmp_path / "read_with_lighteval.py"
    script.write_text(READER)
    done = subprocess.run([python, str(script), str(out), str(results_file)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    read = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(read["tasks"]) == {"rlreason|arith|0", "rlreason|weights|0"}
    for suite in ("arith", "weights"):
        got, records = read["tasks"][f"rlreason|{suite}|0"], results["problems"][suite]
        assert got["text"] == [r["completions"] for r in records]
        assert got["query"] == [r["prompt"] for r in records]
        assert [m["pass@k:k=1&n=2"] for m in got["metric"]] == [sum(r["correct"]) / 2 for r in records]
    assert read["tasks"]["rlreason|arith|0"]["golds"] == [[str(r["gold"])] for r in results["problems"]["arith"]]
    doc = read_results(out)
    assert _table_values(read["table"]) == pytest.approx(
        {(t, m): round(v, 4) for t, row in doc["results"].items() for m, v in row.items() if not m.endswith("_stderr")})

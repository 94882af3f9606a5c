"""What a run leaves behind: accelerate trackers (tensorboard), the best checkpoint kept beside
the newest, and the static HTML report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets
import pytest
from _configs import demo_config
from accelerate import Accelerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason.build import assemble
from rlreason.data import arith_dataset, prepare
from rlreason.eval.suites import arith_suite
from rlreason.loop.trainer import GRPOTrainer
from rlreason.rewards import accuracy_reward, format_reward
from rlreason.run.checkpoint import checkpoint_dirs, read_state

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import SMALL  # noqa: E402


def run(tiny_path, out: Path, **overrides) -> tuple[GRPOTrainer, dict]:
    cfg = demo_config(output_dir=str(out), **{**SMALL, "learning_rate": 1e-4, **overrides})
    tok = AutoTokenizer.from_pretrained(tiny_path)
    train = prepare(arith_dataset(256, 0, "train"), tokenizer=tok)
    evals = list(prepare(datasets.Dataset.from_list(arith_suite(40)), tokenizer=tok))
    tr = GRPOTrainer(cfg, assemble(cfg, AutoModelForCausalLM.from_pretrained(tiny_path), tok, train, [accuracy_reward],
                     eval_rows=evals, eval_accuracy_fn=accuracy_reward, eval_format_fn=format_reward,
                     accelerator=Accelerator(cpu=True, log_with=cfg.report_to or None, project_dir=str(out))))
    return tr, tr.train()


def test_best_checkpoint_is_kept_beside_the_newest_and_the_report_is_written(tiny_path, tmp_path):
    out = tmp_path / "run"
    tr, summary = run(tiny_path, out, max_steps=4, save_steps=1, eval_steps=1, eval_size=40, final_eval_size=40,
                      save_total_limit=1, metric_for_best_model="eval/accuracy", log_completions_steps=2)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r and r["step"] > 0}
    assert sorted(evals) == [1, 2, 3, 4]
    best_step = max(sorted(evals), key=lambda s: evals[s])  # first of the ties, as the rotation keeps
    kept = [read_state(c)["step"] for c in checkpoint_dirs(out)]
    assert kept == sorted({best_step, 4})
    for c in checkpoint_dirs(out):
        st = read_state(c)
        assert st["metrics"]["eval/accuracy"] == evals[st["step"]]
        assert st["config"]["output_dir"] == str(out) and "heldout_before" in st
    html = (out / "report.html").read_text()
    assert (out / "plot.png").stat().st_size > 10_000
    assert "Summary" in html and "metric_for_best_model" in html and "Sampled completions" in html
    first = json.loads((out / "completions.jsonl").read_text().splitlines()[0])
    assert "<h3>step 1</h3>" in html and "<h3>step 4</h3>" in html
    assert first["completion"].replace("<", "&lt;").replace(">", "&gt;") in html  # escaped, not rendered


def test_report_to_tensorboard_logs_the_metrics(tiny_path, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    run(tiny_path, out, max_steps=2, report_to=["tensorboard"], save_steps=0)
    events = list(out.rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "reward/mean" in tags and "loss" in tags
    assert [e.step for e in acc.Scalars("reward/mean")] == [1, 2]

"""A rollback: resuming from an older checkpoint while the run has later ones makes those a dead
branch, set aside (rlreason/run/checkpoint.py ``set_aside_newer``). In-process trainers on the tiny model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from _configs import demo_config
from accelerate import Accelerator
from test_async_rollouts import SMALL, _varied_reward
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason.build import assemble
from rlreason.data import arith_dataset, prepare
from rlreason.loop.trainer import GRPOTrainer
from rlreason.run.checkpoint import resolve_resume


def _trainer(tiny_path, out: Path, **overrides) -> GRPOTrainer:
    cfg = demo_config(output_dir=str(out), **{**SMALL, **overrides})
    tok = AutoTokenizer.from_pretrained(tiny_path)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    train = prepare(arith_dataset(64, 0, "train"), tokenizer=tok)
    return GRPOTrainer(cfg, assemble(cfg, model, tok, train, [_varied_reward], accelerator=Accelerator(cpu=True)))


def _steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def test_a_resume_from_an_older_checkpoint_sets_the_later_ones_aside_and_auto_continues_the_new_branch(
        tiny_path, tmp_path, caplog):
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    first = _trainer(tiny_path, out, max_steps=4, save_steps=2, save_total_limit=2)
    first.train()
    first.save_final(out / "final_model")  # the first branch's end
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-0000002", "step-0000004"]
    assert _steps(out / "metrics.jsonl") == [1, 2, 3, 4]

    # Back to step 2, keeping one checkpoint: before, rotation kept the dead branch's step 4 and
    # deleted each new checkpoint as it was written, and auto resumed step 4.
    with caplog.at_level(logging.WARNING, logger="rlreason.run.checkpoint"):
        branch = _trainer(tiny_path, out, max_steps=3, save_steps=1, save_total_limit=1,
                          resume_from_checkpoint=str(ckpts / "step-0000002"))
    (aside,) = ckpts.glob("abandoned-*")
    (record,) = [r for r in caplog.records if "dead branch" in r.getMessage()]
    assert "step-0000004" in record.getMessage() and str(aside) in record.getMessage()
    assert sorted(p.name for p in aside.iterdir()) == ["completions.jsonl", "final_model", "metrics.jsonl",
                                                       "step-0000004"]
    assert _steps(aside / "metrics.jsonl") == [1, 2, 3, 4]  # the dead branch's log, as it was
    assert not (out / "final_model").exists()
    assert _steps(out / "metrics.jsonl") == [1, 2]  # cut to the branch
    branch.train()
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.startswith("abandoned-")) == ["step-0000003"]
    assert resolve_resume(out, "auto") == ckpts / "step-0000003"

    resumed = _trainer(tiny_path, out, max_steps=4, save_steps=1, save_total_limit=1, resume_from_checkpoint="auto")
    assert resumed.run_dir.resume == ckpts / "step-0000003"
    resumed.train()
    assert _steps(out / "metrics.jsonl") == [1, 2, 3, 4]  # one branch: no step twice
    assert sorted(p.name for p in ckpts.iterdir()) == [aside.name, "step-0000004"]
    assert sorted(p.name for p in aside.iterdir()) == ["completions.jsonl", "final_model", "metrics.jsonl",
                                                       "step-0000004"]  # auto left it alone

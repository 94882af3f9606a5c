"""Every shipped recipe config is a valid config, says what it assumes, and is consistent with
the code: its keys exist, its suites are registered, its batch divides into groups, and the
files its header points to exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlreason.config import DistillConfig, parse_args
from rlreason.eval.suites import SUITES

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*.yaml"))
GPU_CONFIGS = [p for p in CONFIGS if "tiny" not in p.name]  # the tiny_* and *_tiny ones run on a laptop CPU


def _parse(path: Path):
    """recipes/distill.py's configs have its extra keys (DistillConfig), the others are GRPO's."""
    if path.name.startswith("distill_"):
        return parse_args(["--config", str(path)], cls=DistillConfig)
    return parse_args(["--config", str(path)])


def test_the_recipe_set_is_there():
    names = {p.name for p in CONFIGS}
    assert {"tiny_cpu.yaml", "tiny_moe_cpu.yaml", "qwen2.5-math-1.5b_r1zero.yaml", "qwen2.5-math-7b_zero3.yaml",
            "qwen2.5-1.5b-instruct_lora_24gb.yaml", "distill_offline_tiny.yaml", "distill_onpolicy_tiny.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_validates(path):
    cfg = _parse(path)  # unknown keys, wrong types and bad values raise here
    assert cfg.completions_per_step % cfg.num_generations == 0
    assert all(s in SUITES for s in cfg.eval_suites), cfg.eval_suites
    if cfg.metric_for_best_model:
        assert cfg.metric_for_best_model.startswith(("suite/", "eval/"))
        if cfg.metric_for_best_model.startswith("suite/"):
            assert cfg.metric_for_best_model.split("/")[1] in cfg.eval_suites


@pytest.mark.parametrize("path", GPU_CONFIGS, ids=lambda p: p.name)
def test_config_header_states_hardware_time_and_target(path):
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    for field in ("hardware:", "launch:", "wall time:", "target:"):
        assert f"# {field}" in header, f"{path.name} header lacks '{field}'"
    for ref in re.findall(r"recipes/[\w./-]+\.(?:yaml|py)", header):  # every file the launch line names
        assert (ROOT / ref).exists(), f"{path.name} points to missing {ref}"
    cfg = parse_args(["--config", str(path)])
    if "deepspeed" in header:  # the trainer refuses accumulation under DeepSpeed
        assert cfg.gradient_accumulation_steps == 1
    assert re.search(r"\d+\.\d", header.split("# target:")[1]), "the target names a published number"

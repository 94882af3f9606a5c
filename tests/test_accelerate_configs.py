"""recipes/accelerate/*.yaml: every file loads with accelerate's own config classes, names only
keys that ``accelerate launch`` knows, and says when to use it; the CPU one really starts two
processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from _launch import accelerate_launch, assert_clean_exit, run
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import launch_command_parser
from accelerate.utils import DistributedType

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))
EXPECTED = {
    "multi_gpu.yaml": DistributedType.MULTI_GPU,
    "cpu_2proc.yaml": DistributedType.MULTI_GPU,  # with use_cpu: gloo
    "deepspeed_zero2.yaml": DistributedType.DEEPSPEED,
    "deepspeed_zero3.yaml": DistributedType.DEEPSPEED,
    "fsdp.yaml": DistributedType.FSDP,
}


def test_the_expected_configs_exist():
    assert sorted(p.name for p in CONFIGS) == sorted(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_with_accelerate(path):
    cfg = load_config_from_file(str(path))  # raises on keys accelerate does not know
    assert isinstance(cfg, ClusterConfig)
    assert cfg.distributed_type == EXPECTED[path.name]
    assert cfg.num_processes >= 2 and cfg.num_machines == 1
    # Nested plugin keys are copied onto launch's arguments without a check: a misspelt one
    # would be silently ignored, so each must be a `accelerate launch` option.
    options = {a.dest for a in launch_command_parser()._actions}
    for key in [*cfg.deepspeed_config, *cfg.fsdp_config]:
        assert key in options, f"{path.name}: {key} is not an accelerate launch option"
    if cfg.distributed_type == DistributedType.FSDP:
        assert cfg.fsdp_config["fsdp_version"] == 2
    if cfg.distributed_type == DistributedType.DEEPSPEED:
        assert cfg.deepspeed_config["zero_stage"] in (2, 3)
        assert cfg.deepspeed_config["gradient_accumulation_steps"] == 1  # see the trainer's DeepSpeed guard


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_starts_with_a_comment_saying_when_to_use_it(path):
    text = path.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert text.startswith("#") and len(header) >= 2
    assert "accelerate launch" in text
    assert isinstance(yaml.safe_load(text), dict)


@pytest.mark.slow
def test_cpu_config_starts_two_gloo_processes(tiny_path, tmp_path):
    out = tmp_path / "gather.json"
    res = run([*accelerate_launch(ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"),
               "gather", "--model", str(tiny_path), "--out", str(out)])
    assert_clean_exit(res)
    r = json.loads(out.read_text())
    assert r["world"] == 2 and r["same_names"] and r["max_abs_diff"] == 0.0


def test_make_demo_launch_prints_no_defaults_warning(tmp_path):
    # issue 17: `make demo` began with accelerate's "`--num_processes` was set to a value of `0`" warning
    import re
    import sys

    flags = re.search(r"^LAUNCH_FLAGS := (.*)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert flags and "$(LAUNCH_FLAGS) recipes/grpo_math.py" in (ROOT / "Makefile").read_text()
    script = tmp_path / "hello.py"
    script.write_text("print('hello')\n")
    res = run([sys.executable, "-m", "accelerate.commands.launch", *flags.group(1).split(), str(script)], timeout=120)
    assert res.returncode == 0 and "hello" in res.stdout, res.stderr
    assert "were not passed" not in res.stderr and "set to a value of" not in res.stderr, res.stderr

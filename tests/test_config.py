from __future__ import annotations

from pathlib import Path

import pytest

from rlreason.config import ConfigError, GRPOConfig, from_dict, parse_args, parse_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_default_recipe_config_loads():
    cfg = parse_args([], default_config=ROOT / "recipes" / "configs" / "tiny_cpu.yaml")
    assert cfg.model_name_or_path == "tiny"
    assert cfg.completions_per_step % cfg.num_generations == 0


def test_unknown_key_is_named_with_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'learning_rat'.*did you mean 'learning_rate'"):
        from_dict({"learning_rat": 1e-5})


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="'num_generations'"):
        from_dict({"num_generations": "eight"})
    with pytest.raises(ConfigError, match="'reward_funcs'"):
        from_dict({"reward_funcs": {"a": 1}})


def test_yaml_scientific_notation_string_becomes_float():
    # PyYAML reads "1e-5" (no dot) as a string
    assert from_dict({"learning_rate": "1e-5"}).learning_rate == 1e-5


def test_validation_errors_name_keys():
    with pytest.raises(ConfigError, match="'loss_type'"):
        GRPOConfig(loss_type="ppo")
    with pytest.raises(ConfigError, match="multiple of num_generations"):
        GRPOConfig(per_device_train_batch_size=5, gradient_accumulation_steps=1, num_generations=4)
    with pytest.raises(ConfigError, match="'reward_weights'"):
        GRPOConfig(reward_funcs=["accuracy", "format"], reward_weights=[1.0])
    with pytest.raises(ConfigError, match="'num_generations'"):
        GRPOConfig(num_generations=1)
    with pytest.raises(ConfigError, match="'logprob_chunk_size'"):
        GRPOConfig(logprob_chunk_size=-1)
    assert from_dict({"logprob_chunk_size": None}).logprob_chunk_size is None  # None (or 0): full logits


def test_overrides_forms_and_precedence(tmp_path):
    assert parse_overrides(["--beta", "0.1", "--max-steps=5", "seed=3", "--reward_funcs", "[accuracy, format]"]) == {
        "beta": 0.1, "max_steps": 5, "seed": 3, "reward_funcs": ["accuracy", "format"]}
    f = tmp_path / "c.yaml"
    f.write_text("max_steps: 7\nbeta: 0.0\n")
    cfg = parse_args(["--config", str(f), "--beta", "0.05"])
    assert (cfg.max_steps, cfg.beta) == (7, 0.05)


def test_missing_value_and_missing_file():
    with pytest.raises(ConfigError, match="'beta'"):
        parse_overrides(["--beta"])
    with pytest.raises(ConfigError, match="not found"):
        parse_args(["--config", "/nonexistent/x.yaml"])

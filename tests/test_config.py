from __future__ import annotations

from pathlib import Path

import pytest

from rlreason.config import ConfigError, GRPOConfig, from_dict, parse_args, parse_overrides

ROOT = Path(__file__).resolve().parents[1]
TINY_CPU = ROOT / "recipes" / "configs" / "tiny_cpu.yaml"


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


def test_choice_keys_have_one_source_and_clear_errors():
    """Keys with a fixed set of values are Literal types (the algorithm's from rlreason.algorithms),
    checked by from_dict and by the constructor with the same message: the key, every allowed value."""
    from typing import get_args

    from rlreason import algorithms as A
    from rlreason.config import DistillConfig, _choices, _field_types

    types_ = _field_types(DistillConfig)
    for key, literal in [("loss_type", A.LossType), ("advantage_estimator", A.AdvantageEstimator),
                         ("scale_rewards", A.AdvantageScale), ("importance_sampling_level", A.RatioLevel),
                         ("kl_estimator", A.KLKind)]:
        assert _choices(types_[key]) == get_args(literal), key
    assert set(A.PRESETS) == set(get_args(A.LossType))
    keys = [k for k, tp in types_.items() if _choices(tp)]
    assert {"optim", "vllm_mode", "vllm_weight_transfer", "distill_mode", "distill_selection"} < set(keys)
    base = {"teacher_model_name_or_path": "tiny"}
    for key in keys:
        allowed = _choices(types_[key])
        message = rf"config key '{key}': must be one of \({', '.join(map(repr, allowed))}\), got 'nope'"
        with pytest.raises(ConfigError, match=message):
            from_dict({**base, key: "nope"}, DistillConfig)
        with pytest.raises(ConfigError, match=message):
            DistillConfig(**base, **{key: "nope"})
        for value in allowed:
            assert getattr(from_dict({**base, key: value}, DistillConfig), key) == value
    assert GRPOConfig(scale_rewards=None).scale_rewards == "group"  # null (older configs): TRL's default


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


def test_scale_rewards_is_refused_with_an_estimator_that_ignores_it():
    """rloo's advantages are never scaled and reinforce_pp's always by the batch std: an explicit
    scale_rewards was silently ignored with them. (Before: accepted, no effect.) TRL's default, group, is
    accepted (a TRL config dump has it) and ignored."""
    for est in ("rloo", "reinforce_pp"):
        for scale in ("batch", "none"):
            with pytest.raises(ConfigError, match=rf"config key 'scale_rewards': applies to advantage_estimator "
                                                  rf"'grpo' only, and advantage_estimator is '{est}'"):
                GRPOConfig(advantage_estimator=est, scale_rewards=scale)
        assert GRPOConfig(advantage_estimator=est, scale_rewards="group").to_dict()["scale_rewards"] == "group"
        # the default recipe config pins no scale_rewards to clash with another estimator
        assert parse_args(["--advantage_estimator", est], default_config=TINY_CPU).advantage_estimator == est
    assert GRPOConfig(advantage_estimator="grpo", scale_rewards="batch").scale_rewards == "batch"


def test_the_saved_scale_rewards_is_resolved_and_older_runs_resume_as_the_same_run():
    from rlreason.run.resume import config_changes

    cfg = parse_args([], default_config=TINY_CPU)
    saved = cfg.to_dict()
    assert cfg.scale_rewards == saved["scale_rewards"] == "group"  # the demo's own choice (and TRL's default)
    assert config_changes({**saved, "scale_rewards": None}, cfg) == {}  # saved before to_dict resolved it
    assert config_changes({**saved, "scale_rewards": "batch"}, cfg) == {"scale_rewards": ("batch", "group")}
    rloo = parse_args(["--advantage_estimator", "rloo"], default_config=TINY_CPU)
    assert config_changes({**rloo.to_dict(), "scale_rewards": "group"}, rloo) == {}  # ignored then, refused now


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


# ------------------------------------------------------------------ issue 17: moving over from TRL / open-r1

# Shaped like open-r1's recipes/Qwen2.5-1.5B-Instruct/grpo/config_demo.yaml (paths changed).
OPEN_R1_DEMO = """
model_name_or_path: tiny
model_revision: main
torch_dtype: bfloat16
attn_implementation: flash_attention_2
dataset_name: data.jsonl
dataset_prompt_column: problem
system_prompt: "You are a helpful AI Assistant. Respond as <think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>"
bf16: true
use_vllm: false
do_eval: false
gradient_accumulation_steps: 4
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: false
hub_model_id: Qwen2.5-1.5B-Open-R1-GRPO
hub_strategy: every_save
learning_rate: 2.0e-05
log_completions: true
log_level: info
logging_first_step: true
logging_steps: 1
logging_strategy: steps
lr_scheduler_type: cosine
max_prompt_length: 512
max_completion_length: 1024
max_steps: -1
num_generations: 16
num_train_epochs: 1
output_dir: data/Qwen2.5-1.5B-Open-R1-GRPO
overwrite_output_dir: true
per_device_eval_batch_size: 16
per_device_train_batch_size: 16
push_to_hub: true
reward_funcs:
- accuracy
- format
- tag_count
reward_weights:
- 1.0
- 1.0
- 1.0
report_to:
- wandb
save_strategy: "epoch"
save_total_limit: 1
seed: 42
temperature: 0.7
warmup_ratio: 0.1
scale_rewards: false
"""


def test_an_open_r1_demo_config_loads_with_one_warning_per_reason(tmp_path, caplog):
    import logging

    path = tmp_path / "config_demo.yaml"
    path.write_text(OPEN_R1_DEMO)
    with caplog.at_level(logging.WARNING, logger="rlreason.config"):
        cfg = parse_args(["--config", str(path)])
    assert cfg.prompt_column == "problem"  # renamed
    assert (cfg.max_steps, cfg.num_train_epochs, cfg.warmup_ratio) == (-1, 1.0, 0.1)
    assert cfg.scale_rewards == "none"  # TRL's boolean form
    notes = [r.getMessage() for r in caplog.records]
    assert any("'dataset_prompt_column' is read as 'prompt_column'" in n for n in notes)
    assert any("'push_to_hub'" in n and "hub" in n for n in notes)
    assert any("'bf16'" in n and "accelerate" in n for n in notes)
    assert len(notes) <= 8  # grouped by reason, not one line per key


def test_every_unknown_or_unsupported_key_is_named_in_one_message():
    values = {"num_generation": 4, "torch_dtyp": "bfloat16", "cosine_max_len": 1000, "deepspeed": "z.json",
              "learning_rate": "fast", "deepspeed_config": None}
    with pytest.raises(ConfigError) as e:
        from_dict(values)
    msg = str(e.value)
    assert msg.startswith("6 problems in the config")
    assert "unknown config key 'num_generation' (did you mean 'num_generations'?)" in msg
    assert "unknown config key 'torch_dtyp'" in msg and "did you mean 'loss_type'" not in msg  # no misleading hint
    assert "'cosine_max_len' is not supported: configure the reward in its entry" in msg
    # a key rlreason cannot honour is refused at a value that would train differently, naming the key and why
    assert "'deepspeed': 'z.json' is not supported, only None, False or empty: give DeepSpeed to accelerate" in msg
    assert "unknown config key 'deepspeed_config'" in msg
    assert "config key 'learning_rate'" in msg
    with pytest.raises(ConfigError, match="both are given"):
        from_dict({"dataset_prompt_column": "q", "prompt_column": "p"})
    # a full TRL dump holds both names of an aliased key, with one value: accepted
    assert not from_dict({"activation_checkpointing": False, "gradient_checkpointing": False}).gradient_checkpointing


def test_a_command_line_text_with_a_hash_is_kept_whole():
    # found by the end-to-end test: --system_prompt "Answer with #### N." became "Answer with"
    assert parse_overrides(["--system_prompt", "Answer with #### N.", "--seed", "3"]) == {
        "system_prompt": "Answer with #### N.", "seed": 3}


def test_trl_value_forms_and_scheduler_keys_are_accepted():
    cfg = from_dict({"scale_rewards": True, "optim": "adamw_torch_fused", "report_to": "none",
                     "lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": 0.1},
                     "chat_template": "{{ messages }}"})
    assert (cfg.scale_rewards, cfg.optim, cfg.report_to) == ("group", "adamw_torch_fused", [])
    assert cfg.lr_scheduler_kwargs == {"min_lr_rate": 0.1} and cfg.chat_template == "{{ messages }}"


def test_the_migration_doc_shows_the_tables_in_code():
    from rlreason.config.trl import markdown_tables

    doc = (Path(__file__).resolve().parents[1] / "docs" / "migrating_from_trl.md").read_text()
    assert markdown_tables() in doc

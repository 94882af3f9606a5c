"""A TRL 1.16 user's whole config moves over: every field of ``trl.GRPOConfig`` (transformers'
``TrainingArguments`` included) is honoured, renamed, read, ignored with a reason, or accepted at
TRL's default and refused otherwise (rlreason/config/trl.py), and TRL's own dump of its default
config loads unchanged, with TRL's values."""

from __future__ import annotations

import dataclasses
import logging
import warnings

import pytest
import yaml

from rlreason.config import ConfigError, GRPOConfig, from_dict, load_yaml, parse_args
from rlreason.config import trl as T

trl = pytest.importorskip("trl")

# Keys being implemented in other branches: still refused (or unknown) here, so the whole dump is an
# expected failure until they are merged. Empty since issue 31's branches were merged (A, R, L, C);
# test_pending_keys_are_still_refused fails for a key that already loads, so the list cannot go stale.
PENDING: set[str] = set()
# Defaults another branch is changing to TRL's (compared by test_defaults_are_trls_or_listed_with_why).
PENDING_DEFAULTS: set[str] = set()


def _trl_config(**kwargs) -> trl.GRPOConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return trl.GRPOConfig(use_cpu=True, bf16=False, **kwargs)


def _dump(tmp_path) -> dict:
    """TRL's own dump of its default config, through a YAML file as a user would keep it."""
    path = tmp_path / "trl.yaml"
    path.write_text(yaml.safe_dump(_trl_config(output_dir=str(tmp_path / "out")).to_dict()))
    return load_yaml(path)


def _script_defaults() -> dict:
    """`trl grpo`'s other arguments (its script's and the model's) at their defaults."""
    from trl.scripts.grpo import GRPOScriptArguments

    return {k: v for cls in (GRPOScriptArguments, trl.ModelConfig) for k, v in vars(cls()).items()}


TRL_FIELDS = [f.name for f in dataclasses.fields(trl.GRPOConfig)]
SCRIPT_FIELDS = [k for k in _script_defaults() if k not in TRL_FIELDS]
OURS = {f.name for f in dataclasses.fields(GRPOConfig)}
TABLES = {"RENAMED": T.RENAMED, "IGNORED": T.IGNORED, "TRANSLATED": T.TRANSLATED,
          "ONLY_AT_DEFAULT": T.ONLY_AT_DEFAULT, "UNSUPPORTED": T.UNSUPPORTED}


def test_every_trl_field_is_in_exactly_one_category():
    assert len(TRL_FIELDS) > 150  # TrainingArguments' fields are there too
    for key in TRL_FIELDS + SCRIPT_FIELDS:
        where = (["rlreason's GRPOConfig"] if key in OURS else []) + [n for n, t in TABLES.items() if key in t]
        if key in PENDING:
            assert where in ([], ["UNSUPPORTED"]), (key, where)
        else:
            assert len(where) == 1 and where != ["UNSUPPORTED"], (key, where)
    # the tables hold no key twice (rlreason's keys are accepted before any table is read)
    for name, table in TABLES.items():
        assert not set(table) & OURS, (name, set(table) & OURS)
        for other, table2 in TABLES.items():
            assert name == other or not set(table) & set(table2), (name, other, set(table) & set(table2))


def test_pending_keys_are_still_refused():
    defaults = _trl_config(output_dir="x").to_dict()
    for key in sorted(PENDING):
        assert key in TRL_FIELDS and key not in OURS, key
        with pytest.raises(ConfigError, match=f"'{key}'"):
            from_dict({key: defaults[key]})


def test_trl_default_dump_loads_with_trls_values(tmp_path, caplog):
    dump = _dump(tmp_path)
    values = {k: v for k, v in dump.items() if k not in PENDING}
    with caplog.at_level(logging.WARNING, logger="rlreason.config"):
        cfg = from_dict(values)
    for key, value in values.items():
        if key in OURS and key not in PENDING_DEFAULTS:
            forms = T.VALUE_FORMS.get(key, {})
            assert getattr(cfg, key) == (forms.get(value, value) if isinstance(value, str | bool) else value), key
    assert cfg.gradient_checkpointing and cfg.max_prompt_length is None and cfg.max_steps == -1
    # ignored keys are named in the warning, with why
    assert "'push_to_hub'" in caplog.text and "'accelerator_config'" in caplog.text
    # and through the recipes' command line parser, the file as --config
    path = tmp_path / "ours.yaml"
    path.write_text(yaml.safe_dump(values))
    assert parse_args(["--config", str(path)]).to_dict() == cfg.to_dict()
    # `trl grpo`'s script and model arguments at their defaults load too
    script = {k: v for k, v in _script_defaults().items() if k not in ("model_name_or_path", "dataset_name",
                                                                        "reward_funcs")}  # None: nothing to train
    assert from_dict({**values, **script}).lora_target_modules is None


@pytest.mark.xfail(bool(PENDING), reason="keys still implemented in other branches of issue 31 (PENDING)",
                   strict=True, raises=ConfigError)
def test_the_whole_trl_default_dump_loads(tmp_path):
    from_dict(_dump(tmp_path))


def test_defaults_are_trls_or_listed_with_why():
    ours = GRPOConfig()
    theirs = {**_script_defaults(), **vars(_trl_config())}  # TRL's GRPOConfig, then `trl grpo`'s other arguments
    differ = {k for k in TRL_FIELDS + SCRIPT_FIELDS if k in OURS and getattr(ours, k) != theirs[k]}
    assert differ - PENDING_DEFAULTS == set(T.DEFAULTS_DIFFER)
    for key, (trl_default, our_default, why) in T.DEFAULTS_DIFFER.items():
        assert (trl_default, our_default) == (theirs[key], getattr(ours, key)) and why, key


def test_keys_whose_meaning_differs_are_trls_and_ours_at_the_same_default():
    """MEANING_DIFFERS lists keys that load unchanged (same name, same default) but mean something else:
    a key renamed, refused or with another default belongs in the other tables, not here."""
    ours, theirs = GRPOConfig(), _trl_config()
    assert T.MEANING_DIFFERS
    for key, why in T.MEANING_DIFFERS.items():
        assert key in OURS and key in TRL_FIELDS and why, key
        assert getattr(ours, key) == getattr(theirs, key), key


def _other_value(default):
    """A value that is not ``default`` (nor a form of it)."""
    if isinstance(default, bool):
        return not default
    if isinstance(default, int | float):
        return default * 10 + 1
    return "something-else"


def test_a_key_rlreason_cannot_honour_loads_at_trls_default_and_is_refused_otherwise():
    defaults = {**_script_defaults(), **_trl_config(output_dir="x").to_dict()}
    for key, (_, why) in T.ONLY_AT_DEFAULT.items():
        default = defaults.get(key)
        assert T.accepted(key, default), key
        from_dict({key: default})
        bad = _other_value(default)
        with pytest.raises(ConfigError, match=rf"'{key}': {bad!r} is not supported, only .*: {why[:20]}"):
            from_dict({key: bad})
    # a form of the default that trains the same: YAML's string "1e-8", fsdp's empty string
    from_dict({"adam_epsilon": "1e-8", "fsdp": "", "deepspeed": None, "chat_template_kwargs": {}})
    with pytest.raises(ConfigError, match="'adam_epsilon'"):
        from_dict({"adam_epsilon": 1e-6})
    assert not T.accepted("shuffle_dataset", 1)  # True is not 1


def test_eval_strategy_means_what_it_means_in_trl():
    assert from_dict({}).eval_steps is None  # TRL: eval_strategy "no"; rlreason evaluates before and after only
    assert from_dict({"eval_strategy": "steps"}).eval_steps == 10  # TRL: eval_steps = logging_steps
    assert from_dict({"eval_strategy": "steps", "logging_steps": 3}).eval_steps == 3
    assert from_dict({"eval_strategy": "steps", "eval_steps": 7, "logging_steps": 3}).eval_steps == 7
    assert from_dict({"eval_strategy": "no", "eval_steps": 7}).eval_steps == 7
    with pytest.raises(ConfigError, match="'eval_strategy': 'epoch' is not supported"):
        from_dict({"eval_strategy": "epoch"})


def test_trls_none_defaults_mean_what_they_mean_in_trl(tmp_path):
    from rlreason.run.checkpoint import _to_keep

    # greater_is_better unset: transformers' rule, from the metric's name
    for metric in ("eval/accuracy", "eval/loss", None):
        assert GRPOConfig(metric_for_best_model=metric).greater_is_better == \
            _trl_config(metric_for_best_model=metric).greater_is_better, metric
    # save_total_limit unset keeps every checkpoint, as 0 did
    ckpts = [tmp_path / f"step-{i}" for i in range(5)]
    assert _to_keep(ckpts, None, None) == _to_keep(ckpts, 0, None) == set(ckpts)
    assert _to_keep(ckpts, 2, ckpts[0]) == {ckpts[0], ckpts[3], ckpts[4]}

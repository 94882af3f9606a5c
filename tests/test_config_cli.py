"""The recipes' command line reads what TRL's does: the same argv through transformers'
HfArgumentParser (TrlParser's base) on TRL 1.16's dataclasses and through rlreason's parse_args
gives the same values."""

from __future__ import annotations

import warnings

import pytest

from rlreason.config import ConfigError, parse_args, parse_overrides

trl = pytest.importorskip("trl")


def _trl_parse(argv: list[str]) -> dict:
    """What `trl grpo <argv>` reads: GRPOConfig, ModelConfig and GRPOScriptArguments' values."""
    from transformers import HfArgumentParser
    from trl.scripts.grpo import GRPOScriptArguments

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = HfArgumentParser((trl.GRPOConfig, trl.ModelConfig, GRPOScriptArguments)).parse_args_into_dataclasses(
            ["--output_dir", "x", "--use_cpu", *argv])
    return {k: v for obj in parsed for k, v in vars(obj).items()}


CASES = [
    # bare bool flags, bool words, --no_ complements
    ["--use_peft"],
    ["--use_peft", "true"],
    ["--use_peft", "False"],
    ["--use_peft", "yes", "--trust_remote_code", "1"],
    ["--no_gradient_checkpointing"],
    ["--gradient_checkpointing", "--mask_truncated_completions"],
    ["--use_vllm", "--vllm_mode", "server"],
    # space-separated lists
    ["--use_peft", "--lora_target_modules", "q_proj", "v_proj", "--lora_r", "8"],
    ["--reward_funcs", "accuracy", "format", "--reward_weights", "1.0", "0.5"],
    ["--report_to", "none", "--seed", "3"],
    ["--lora_modules_to_save", "lm_head"],
    # --key=value, numbers as TRL types them
    ["--learning_rate=3e-6", "--max_steps", "5", "--beta", "0.04", "--num_generations=4"],
    ["--max_steps", "-1", "--epsilon_high", "0.28", "--temperature", "0.7"],
]


@pytest.mark.parametrize("argv", CASES, ids=[" ".join(c) for c in CASES])
def test_the_command_line_reads_what_trls_parser_reads(argv):
    theirs = _trl_parse(argv)
    ours = parse_args(argv).to_dict()
    given = {a[2:].split("=")[0].removeprefix("no_") for a in argv if a.startswith("--")}
    for key in given:
        want = theirs[key]
        if key == "report_to":  # TRL keeps ["none"] in its args and reports to nothing; rlreason writes []
            want = [] if want in (["none"], "none") else want
        assert ours[key] == want, (key, ours[key], want)


def test_config_file_then_overrides_which_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1.0e-5\nuse_peft: true\nlora_target_modules: all-linear\nbeta: 0.1\n")
    cfg = parse_args(["--config", str(path), "--no_use_peft", "--lora_target_modules", "q_proj", "k_proj",
                      "--beta=0.2"])
    assert (cfg.learning_rate, cfg.use_peft, cfg.lora_target_modules, cfg.beta) == (1e-5, False, ["q_proj", "k_proj"],
                                                                                  0.2)
    assert parse_args([f"--config={path}"]).use_peft  # --config=path too


def test_bad_command_lines_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"unknown config key 'lerning_rate' \(did you mean 'learning_rate'\?\)"):
        parse_args(["--lerning_rate", "1e-6"])
    with pytest.raises(ConfigError, match=r"unknown config key 'conf'"):  # not an abbreviation of --config
        parse_args(["--conf", "x.yaml"])
    with pytest.raises(ConfigError, match="'learning_rate' given on the command line without a value"):
        parse_overrides(["--learning_rate", "--beta", "0.1"])
    with pytest.raises(ConfigError, match="'learning_rate' takes one value on the command line, got 2: 1e-6 2e-6"):
        parse_overrides(["--learning_rate", "1e-6", "2e-6"])
    with pytest.raises(ConfigError, match="config key 'use_peft'"):
        parse_args(["--use_peft", "maybe"])


def test_trls_own_keys_on_the_command_line():
    # an ignored TRL bool as a bare flag is read (and ignored with a warning); one rlreason cannot honour
    # is refused when set away from TRL's default
    assert not parse_args(["--push_to_hub", "--bf16"]).use_peft
    with pytest.raises(ConfigError, match="'full_determinism': True is not supported"):
        parse_args(["--full_determinism"])
    # `trl grpo`'s script arguments: the split is renamed, the reward model joins reward_funcs
    cfg = parse_args(["--dataset_train_split", "test", "--reward_funcs", "accuracy", "format",
                      "--reward_model_name_or_path", "my/reward-model"])
    assert cfg.dataset_split == "test" and cfg.reward_funcs == ["my/reward-model", "accuracy", "format"]  # TRL's order
    assert parse_args(["--reward_model_name_or_path", "rm"]).reward_funcs == ["rm"]  # as TRL: the model alone

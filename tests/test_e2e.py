"""End to end on the tiny model: the real command, real generation, real updates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]

CRASHY = '''
def crashy_reward(prompts, completions, answer, **kw):
    if any(int(a) % 2 for a in answer):
        raise RuntimeError("boom: odd answer")  # a reward bug must not kill the run
    return [0.0 for _ in completions]
'''


def _launch(args: list[str], env_extra: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    # as `make demo` launches: --quiet, or accelerate >= 1.16 repeats a failed run's stderr in its traceback
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--num_processes", "1", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "recipes" / "grpo_math.py"), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.mark.slow
def test_short_run_trains_and_writes_everything(tiny_path, tmp_path):
    reward_file = tmp_path / "my_rewards.py"
    reward_file.write_text(CRASHY)
    out = tmp_path / "run"
    res = _launch([
        "--model_name_or_path", str(tiny_path), "--output_dir", str(out), "--max_steps", "4",
        "--num_generations", "4", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2",
        "--max_completion_length", "40", "--learning_rate", "1e-3", "--final_eval_size", "20",
        "--eval_size", "10", "--eval_steps", "2", "--save_steps", "2", "--log_completions_steps", "2",
        "--reward_funcs", f"[accuracy, format, {reward_file}:crashy_reward]", "--reward_weights", "[1.0, 0.5, 1.0]",
        "--beta", "0.04", "--num_iterations", "2",
    ], {})
    assert res.returncode == 0, res.stderr[-3000:]

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "reward/mean" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for key in ("rewards/accuracy_reward/mean", "rewards/format_reward/mean", "frac_zero_std_groups",
                "completion/mean_length", "completion/truncated_frac", "clip_frac", "kl", "entropy", "grad_norm",
                "lr", "time/generation_s", "time/scoring_s", "time/training_s", "perf/samples_per_s",
                "perf/tokens_per_s", "accuracy"):
        assert key in train[0], key
    # the crashing reward was counted, per completion of every prompt with an odd answer (the
    # runner retries a failed chunk one completion at a time), and training went on
    fails = [r["rewards/crashy_reward/failures"] for r in train]
    assert sum(fails) > 0 and all(f % 4 == 0 for f in fails), fails
    # two updates per rollout with a KL term: the ratio moves off 1 and the KL off 0
    assert any(r["kl"] > 0 for r in train[1:])
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 2, 4]
    assert evals[0]["eval/n"] == 20 and evals[1]["eval/n"] == 10

    completions = [json.loads(x) for x in (out / "completions.jsonl").read_text().splitlines()]
    assert {c["step"] for c in completions} == {1, 2, 4}
    assert all({"prompt", "completion", "reward", "advantage"} <= c.keys() for c in completions)

    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and 0 <= summary["heldout_after"] <= 1
    assert "max_steps: 4" in (out / "config.yaml").read_text()
    # the default loss_type dapo's clip range, resolved from its paper (none was set)
    assert "epsilon: 0.2\nepsilon_high: 0.28\n" in (out / "config.yaml").read_text()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert (out / "checkpoints" / "step-0000004" / "trainer_state.json").exists()

    # the final model is a loadable HF model whose weights moved
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = AutoModelForCausalLM.from_pretrained(out / "final_model")
    AutoTokenizer.from_pretrained(out / "final_model")
    before = load_file(tiny_path / "model.safetensors")
    after = final.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2
    assert "held-out greedy accuracy" in res.stderr


@pytest.mark.slow
def test_bad_reward_name_fails_fast_with_its_name(tiny_path, tmp_path):
    res = _launch(["--model_name_or_path", str(tiny_path), "--output_dir", str(tmp_path / "r"),
                   "--reward_funcs", "[accuracy, no_such_reward]"],
                  {}, timeout=120)
    assert res.returncode != 0
    assert "no_such_reward" in res.stderr


@pytest.mark.slow
def test_unknown_config_key_fails_fast(tmp_path):
    res = _launch(["--output_dir", str(tmp_path / "r"), "--num_generation", "4"], {}, timeout=120)
    assert res.returncode != 0
    assert "unknown config key 'num_generation'" in res.stderr


@pytest.mark.slow
def test_runs_on_a_local_jsonl_dataset_with_column_mapping(tiny_path, tmp_path):
    gsm8k = ROOT.parent / "shared" / "data" / "benchmarks" / "gsm8k_test.jsonl"
    if not gsm8k.exists():
        pytest.skip("shared benchmark data not present")
    out = tmp_path / "run"
    res = _launch([
        "--model_name_or_path", str(tiny_path), "--output_dir", str(out), "--dataset_name", str(gsm8k),
        "--prompt_column", "question", "--system_prompt", "Answer with #### N.",
        "--max_prompt_length", "120", "--max_completion_length", "24", "--max_steps", "2",
        "--num_generations", "4", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
        "--save_steps", "0",
    ], {})
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # no held-out suite for a custom dataset: no eval rows
    # the GSM8K 'answer' column (a rationale ending in '#### N') reached the reward as the gold:
    # a parseable gold scores 0 or 1, never None, so the accuracy mean is a number
    assert all(r["rewards/accuracy_reward/mean"] is not None for r in rows)
    comp = [json.loads(x) for x in (out / "completions.jsonl").read_text().splitlines()]
    assert comp and all(c["reward/accuracy_reward"] in (0.0, 1.0) for c in comp)
    # rewards see what TRL gives them: the messages the chat template rendered, system prompt first
    assert comp[0]["prompt"][0] == {"role": "system", "content": "Answer with #### N."}
    assert comp[0]["prompt"][1]["role"] == "user"


@pytest.mark.slow
def test_use_vllm_without_vllm_installed_is_a_clear_error(tiny_path, tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: tests/test_vllm.py covers it")
    res = _launch(["--model_name_or_path", str(tiny_path), "--output_dir", str(tmp_path / "r"), "--use_vllm", "true"],
                  {}, timeout=180)
    assert res.returncode != 0
    assert "config key 'rollout_engine' (TRL's 'use_vllm'): vLLM is not installed" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr  # one line, no traceback


@pytest.mark.slow
def test_periodic_benchmark_suite_eval_during_training(tiny_path, tmp_path):
    out = tmp_path / "run"
    res = _launch([
        "--model_name_or_path", str(tiny_path), "--output_dir", str(out), "--max_steps", "2", "--eval_steps", "1",
        "--eval_suites", "[arith]", "--eval_suites_limit", "30", "--final_eval_size", "30", "--eval_size", "30",
        "--num_generations", "4", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
        "--save_steps", "0",
    ], {})
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    suite_rows = [r for r in rows if "suite/arith/pass@1" in r]
    assert [r["step"] for r in suite_rows] == [0, 1, 2]  # before, periodic, after
    # the suite harness and the trainer's held-out eval score the same 30 arith problems alike
    for r in suite_rows:
        if "eval/accuracy" in r:
            assert r["suite/arith/pass@1"] == pytest.approx(r["eval/accuracy"])
    summary = json.loads((out / "summary.json").read_text())
    assert "suite/arith/pass@1" in summary["suites_after"]


# ------------------------------------------------------------------ issue 17: an open-r1 / TRL user moves over

# Reward functions written to open-r1's and TRL's documented conventions (conversational
# completions read as completion[0]["content"], columns by name, trainer_state and log_metric
# from TRL), not to rlreason's.
MIGRATED_REWARDS = '''
import re


def answer_match(completions, solution, **kwargs):
    """open-r1 style accuracy: the <answer> block against the solution column; None without a gold."""
    contents = [completion[0]["content"] for completion in completions]
    out = []
    for content, sol in zip(contents, solution):
        if not str(sol).strip():
            out.append(None)
            continue
        found = re.findall(r"<answer>(.*?)</answer>", content, re.DOTALL)
        out.append(1.0 if found and found[-1].strip() == str(sol).strip() else 0.0)
    return out


def tags_present(completions, **kwargs):
    """open-r1 style: a quarter point per tag."""
    contents = [completion[0]["content"] for completion in completions]
    return [0.25 * sum(c.count(t) == 1 for t in ("<think>", "</think>", "<answer>", "</answer>")) for c in contents]


def has_system_message(prompts, completions, **kwargs):
    """TRL style: conversational prompts are message lists, the system message first."""
    return [1.0 if p[0]["role"] == "system" and p[-1]["role"] == "user" else 0.0 for p in prompts]


def batch_size(completions, trainer_state, log_metric, **kwargs):
    """TRL style: sees the whole batch, the trainer's state, and logs a metric."""
    log_metric("seen_step", float(trainer_state.global_step))
    return [float(len(completions))] * len(completions)


def stripped_length(completions, **kwargs):
    """A plain-text reward handed chat completions: .strip() on a list raises AttributeError."""
    return [float(len(c.strip())) for c in completions]
'''


def _open_r1_yaml(tmp_path: Path, tiny_path: Path, data: Path, prompt_column: str, rewards: list[str],
                  **extra) -> Path:
    """A config shaped like open-r1's recipes/Qwen2.5-1.5B-Instruct/grpo/config_demo.yaml, with
    the model, the dataset and the sizes changed for the tiny model."""
    import yaml

    cfg = {
        "model_name_or_path": str(tiny_path), "model_revision": "main", "torch_dtype": "bfloat16",
        "attn_implementation": "sdpa", "dataset_name": str(data), "dataset_prompt_column": prompt_column,
        "system_prompt": "You are a helpful assistant. Think in <think></think>, answer in <answer></answer>.",
        "bf16": True, "use_vllm": False, "do_eval": False, "gradient_accumulation_steps": 2,
        "gradient_checkpointing": False, "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "hub_model_id": "Tiny-Open-R1-GRPO", "hub_strategy": "every_save", "learning_rate": 1.0e-05,
        "log_completions": True, "log_level": "info", "logging_first_step": True, "logging_steps": 1,
        "logging_strategy": "steps", "lr_scheduler_type": "cosine", "max_prompt_length": 128,
        "max_completion_length": 32, "max_steps": -1, "num_generations": 4, "num_train_epochs": 1,
        "output_dir": str(tmp_path / "run"), "overwrite_output_dir": True, "per_device_eval_batch_size": 8,
        "per_device_train_batch_size": 8, "push_to_hub": False, "report_to": "none",
        "reward_funcs": rewards, "reward_weights": [1.0] * len(rewards), "save_strategy": "epoch",
        "save_total_limit": 1, "seed": 42, "temperature": 0.7, "warmup_ratio": 0.1, "scale_rewards": True,
        "log_completions_steps": 1, "progress": False, **extra,
    }
    path = tmp_path / "config_demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _arith_rows(n: int) -> list[dict]:
    from rlreason.data import arith_dataset

    return [{"problem": r["prompt"], "solution": r["answer"]} for r in arith_dataset(n, 3, "train")]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["plain_with_system_prompt", "conversational"])
def test_open_r1_config_and_rewards_run_unchanged(tiny_path, tmp_path, form):
    (tmp_path / "r1_rewards.py").write_text(MIGRATED_REWARDS)
    rows = _arith_rows(8)
    if form == "conversational":
        rows = [{"prompt": [{"role": "user", "content": r["problem"]}], "solution": r["solution"]} for r in rows]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rewards = [f"{tmp_path}/r1_rewards.py:{f}" for f in ("answer_match", "tags_present", "has_system_message",
                                                         "batch_size")]
    config = _open_r1_yaml(tmp_path, tiny_path, data, "problem" if form != "conversational" else "prompt", rewards)
    res = _launch(["--config", str(config)], {})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    assert "ignored 'bf16', 'torch_dtype'" in res.stderr and "'dataset_prompt_column' is read as" in res.stderr

    out = tmp_path / "run"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # max_steps -1: one epoch of 8 prompts, 4 per step
    for r in rows:
        for name in ("answer_match", "tags_present", "has_system_message", "batch_size"):
            assert r[f"rewards/{name}/failures"] == 0 and r[f"rewards/{name}/none_frac"] == 0, (name, r)
        assert r["rewards/has_system_message/mean"] == 1.0  # prompts arrive as messages, system first
        assert r["rewards/batch_size/mean"] == 16.0  # one call with the whole batch, as in TRL
        assert r["reward/no_signal_frac"] == 0.0
    assert [r["seen_step"] for r in rows] == [0.0, 1.0]  # trainer_state.global_step, via log_metric
    assert any(r["rewards/tags_present/mean"] > 0 for r in rows)  # real scores, not all zero
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reward_failures"] == {"answer_match": 0, "tags_present": 0, "has_system_message": 0,
                                          "batch_size": 0}
    logged = json.loads((out / "completions.jsonl").read_text().splitlines()[0])
    assert logged["prompt"][0]["role"] == "system"


@pytest.mark.slow
def test_a_broken_reward_fails_the_run_loudly(tiny_path, tmp_path):
    (tmp_path / "r1_rewards.py").write_text(MIGRATED_REWARDS)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _arith_rows(8)))
    rewards = [f"{tmp_path}/r1_rewards.py:{f}" for f in ("answer_match", "stripped_length")]
    config = _open_r1_yaml(tmp_path, tiny_path, data, "problem", rewards, max_steps=6)
    res = _launch(["--config", str(config)], {})
    assert res.returncode != 0
    err = " ".join(res.stderr.split())
    # it never worked: the run stops after its first step (before: after max_failed_reward_steps)
    assert "error: reward 'stripped_length' failed on every completion and has not scored a single one" in err, \
        err[-3000:]
    assert "AttributeError" in err
    assert err.count("'list' object has no attribute 'strip'") <= 3  # the exception shown once, not every step
    assert "step 1: reward 'stripped_length' scored no value on every completion" in err
    assert (tmp_path / "run" / "checkpoints" / "step-0000001").is_dir()  # stopped with its checkpoint
    assert not (tmp_path / "run" / "final_model").exists()


@pytest.mark.slow
def test_start_up_errors_are_one_clean_line(tiny_path, tmp_path):
    # every problem of the config in one message; a missing dataset: one line; no traceback of ours
    res = _launch(["--output_dir", str(tmp_path / "r"), "--num_generation", "4", "--torch_dtyp", "bf16",
                   "--neftune_noise_alpha", "5"], {}, timeout=120)
    assert res.returncode != 0
    ours = res.stderr.split("Traceback")[0]  # what follows is accelerate's own report of the exit code
    assert "error: 3 problems in the config" in ours and "'neftune_noise_alpha': 5 is not supported" in ours
    assert 'File "' not in ours
    res = _launch(["--model_name_or_path", str(tiny_path), "--output_dir", str(tmp_path / "r2"),
                   "--dataset_name", str(tmp_path / "missing.jsonl")], {}, timeout=120)
    ours = res.stderr.split("Traceback")[0]
    assert res.returncode != 0 and "error: dataset path not found" in ours and 'File "' not in ours

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
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(ROOT / "recipes" / "grpo_math.py"), *args]
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
    assert "Answer with #### N." not in comp[0]["prompt"]  # the raw question is what rewards see


@pytest.mark.slow
def test_use_vllm_without_vllm_installed_is_a_clear_error(tiny_path, tmp_path):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: tests/test_vllm.py covers it")
    res = _launch(["--model_name_or_path", str(tiny_path), "--output_dir", str(tmp_path / "r"), "--use_vllm", "true"],
                  {}, timeout=180)
    assert res.returncode != 0
    assert "config key 'use_vllm': vLLM is not installed" in res.stderr


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

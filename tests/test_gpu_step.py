"""benchmarks/gpu_step.py stays runnable: one GRPO step of a tiny random model on CPU, with
consistent accounting (the GPU run itself is recorded in docs/benchmarks.md when a GPU is
available)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_step  # noqa: E402


def test_gpu_step_smoke_on_cpu(tmp_path):
    res = gpu_step.main(["--size", "tiny", "--steps", "2", "--warmup", "0", "--prompts", "2", "--num-generations", "4",
                         "--prompt-len", "8", "--completion-len", "16", "--micro-batch", "4",
                         "--out", str(tmp_path / "r.json")])
    assert res["steps"] == 2 and res["parameters"] == 107_072
    samples = 2 * 4
    assert abs(res["samples_per_s"] * res["step_s"] - samples) < 1e-6 * samples
    # every sample has its 8 prompt tokens and between 1 and 16 completion tokens in the update
    trained_per_step = res["trained_tokens_per_s"] * res["training_s"]
    assert samples * (8 + 1) <= trained_per_step + 1e-6 <= samples * (8 + 16) + 1e-3
    assert res["train_tflops"] > 0 and res["mfu"] is None  # no peak FLOP/s known for a CPU
    assert (tmp_path / "r.json").exists()

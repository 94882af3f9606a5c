"""The embedded demo's settings, for tests that build a config and train with it.

rlreason's defaults are TRL 1.16's (8 completions of up to 512 tokens per step, gradient
checkpointing, a linear decay over num_train_epochs, metrics every 10 steps, seed 42): right for a
GPU run, many times slower for a test on the tiny model, and not what the tests were written
against. The demo's own choices live in recipes/configs/tiny_cpu.yaml; ``demo_config`` starts
from them, so a test says only what it changes. A test that checks a default builds
``GRPOConfig()`` itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlreason.config import GRPOConfig, load_yaml

TINY_CPU = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "tiny_cpu.yaml"
# every key of the demo's YAML but where it writes (a test gives its own output_dir) and its clip range:
# DAPO's clip-higher (0.2 / 0.28) is the demo run's choice for loss_type dapo, and the tests that change
# loss_type expect its defaults (TRL's 0.2 / 0.2, GSPO's 3e-4 / 4e-4), as a config without the keys gets
DEMO: dict[str, Any] = {k: v for k, v in load_yaml(TINY_CPU).items()
                        if k not in ("output_dir", "epsilon", "epsilon_high")}


def demo_config(cls: type[GRPOConfig] = GRPOConfig, **overrides: Any) -> GRPOConfig:
    """``cls`` with tiny_cpu.yaml's values, then ``overrides``."""
    return cls(**{**DEMO, **overrides})

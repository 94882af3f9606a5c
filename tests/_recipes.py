"""The recipes' runs through the package: tests never import recipes/ (they are scripts). Each
recipe is `parse_args(default_config=...)` then `rlreason.run.grpo` / `rlreason.run.distill`; the
scripts themselves are run as processes in test_e2e.py, test_resume.py and test_launcher_signals.py."""

from __future__ import annotations

from pathlib import Path

from rlreason import run
from rlreason.config import DistillConfig, parse_args

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"


def grpo(argv: list[str]) -> dict:
    """`recipes/grpo_math.py <argv>`, in this process."""
    return run.grpo(parse_args(argv, default_config=CONFIGS / "tiny_cpu.yaml"))


def distill(argv: list[str]) -> dict:
    """`recipes/distill.py <argv>`, in this process."""
    return run.distill(parse_args(argv, default_config=CONFIGS / "distill_onpolicy_tiny.yaml", cls=DistillConfig))

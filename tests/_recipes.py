"""The recipes' runs in this process. Tests never import recipes/ (they are scripts, and nothing
imports a recipe): each is loaded from its file with ``runpy`` and its ``main(cfg)`` called with
``parse_args(argv, default_config=...)``, what the script does under ``__main__``; the scripts
themselves are run as processes in test_e2e.py, test_resume.py and test_launcher_signals.py."""

from __future__ import annotations

import runpy
from pathlib import Path

from rlreason.config import DistillConfig, parse_args

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CONFIGS = RECIPES / "configs"


def recipe(name: str) -> dict:
    """The functions of ``recipes/<name>.py`` (its ``__main__`` block not run)."""
    return runpy.run_path(str(RECIPES / f"{name}.py"), run_name=f"recipe_{name}")


def grpo(argv: list[str]) -> dict:
    """`recipes/grpo_math.py <argv>`, in this process."""
    return recipe("grpo_math")["main"](parse_args(argv, default_config=CONFIGS / "tiny_cpu.yaml"))


def distill(argv: list[str]) -> dict:
    """`recipes/distill.py <argv>`, in this process."""
    cfg = parse_args(argv, default_config=CONFIGS / "distill_onpolicy_tiny.yaml", cls=DistillConfig)
    return recipe("distill")["main"](cfg)

"""rlreason: GRPO-style reinforcement learning from rule-checkable rewards."""

import os

# OpenMP threads that wait for work sleep instead of spinning (torch's CPU ops run on OpenMP). A
# spinning thread on a core another program needs slows both down by 10-20x (a 2-thread tiny-model
# build next to one busy loop: 20.8x); a sleeping one costs nothing measurable alone
# (docs/benchmarks.md, "A busy laptop"). It takes effect only if set before torch is imported, so
# here; a value already in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["GRPOConfig", "GRPOTrainer"]


def __getattr__(name: str) -> type:  # lazy: `import rlreason` stays cheap (no torch)
    """TRL's names, ``from rlreason import GRPOConfig, GRPOTrainer``, imported on first use."""
    if name == "GRPOConfig":
        from rlreason.config import GRPOConfig

        return GRPOConfig
    if name == "GRPOTrainer":
        from rlreason.api import GRPOTrainer

        return GRPOTrainer
    raise AttributeError(f"module 'rlreason' has no attribute {name!r}")

"""The random-weight model's reward for benchmarks run through the recipe (benchmarks/async_rollouts.py):
0, 1 or 2 from a hash of each completion's text, as ``varied_reward`` in benchmarks/vs_trl.py (a
random model is never right, so with the accuracy reward every group would be flat)."""

from __future__ import annotations

import hashlib

from rlreason.rewards import completion_text


def varied_reward(completions, **kwargs) -> list[float]:
    return [float(int(hashlib.md5(completion_text(c).encode()).hexdigest(), 16) % 3) for c in completions]

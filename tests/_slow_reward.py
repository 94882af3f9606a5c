"""The built-in accuracy reward, slowed down: each call sleeps $RLREASON_TEST_REWARD_SLEEP seconds
(default 8) before scoring, so that every step of a run takes at least that long, as a real GPU
step does (tests/test_preemption.py). Same name, same scores as the built-in one."""

from __future__ import annotations

import os
import time

from rlreason.rewards import accuracy_reward as _accuracy


def accuracy_reward(prompts: list, completions: list, answer: list, **kwargs) -> list[float | None]:
    time.sleep(float(os.environ.get("RLREASON_TEST_REWARD_SLEEP", "8")))
    return _accuracy(prompts, completions, answer=answer, **kwargs)

"""The built-in accuracy reward, with a hook for tests that must signal a run while a batch is
being scored (tests/test_resume.py): when the file named by $RLREASON_TEST_ARM exists, the
first call to see it removes it, creates ``<that name>.scoring`` and sleeps 3 s before scoring.
Without the file it is the built-in reward, same name and same scores."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rlreason.rewards import accuracy_reward as _accuracy


def accuracy_reward(prompts: list, completions: list, answer: list, **kwargs) -> list[float | None]:
    arm = os.environ.get("RLREASON_TEST_ARM")
    if arm:
        try:
            os.unlink(arm)
        except FileNotFoundError:
            pass
        else:
            Path(arm + ".scoring").touch()
            time.sleep(3.0)
    return _accuracy(prompts, completions, answer=answer, **kwargs)

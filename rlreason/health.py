"""The reward side's health over a run: a reward that scores nothing stops the run, loudly.

A reward that raises, hangs or returns None on a completion scores it None (the runner counts
it; rlreason/rewards/runner.py). One bad completion is noise; a reward that scores *no*
completion for ``max_failed_reward_steps`` steps in a row means the run trains on nothing (or on
the other rewards only): it stops with :class:`RewardFailureError`, after a checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable

import rich.markup


class RewardFailureError(RuntimeError):
    """A reward gave no score (failed or None) on any completion for several steps in a row:
    the run would train on nothing, so it stops (with a checkpoint)."""


class RewardHealth:
    """Per reward: steps in a row with no score, completions failed over the run, latest error."""

    def __init__(self, max_failed_steps: int, log: Callable[[str], None] = print) -> None:
        self.max_failed_steps = max_failed_steps
        self.log = log
        self.streak: dict[str, int] = {}  # reward -> steps in a row it scored no completion
        self.errors: dict[str, str] = {}  # reward -> its latest failure, shown when the run stops
        self.failures_total: dict[str, int] = {}  # reward -> completions it failed on, whole run

    def record(self, step: int, metrics: dict[str, float]) -> None:
        """Count a step's ``rewards/<name>/none_frac`` and ``/failures`` (global, reduced over
        processes); print the first step's failures, and any reward's first dead step."""
        names = [k[len("rewards/"):-len("/none_frac")] for k in metrics
                 if k.startswith("rewards/") and k.endswith("/none_frac")]
        for name in names:
            failed = int(metrics.get(f"rewards/{name}/failures", 0))
            self.failures_total[name] = self.failures_total.get(name, 0) + failed
            dead = metrics[f"rewards/{name}/none_frac"] >= 1.0
            self.streak[name] = self.streak.get(name, 0) + 1 if dead else 0
            if (dead and self.streak[name] == 1) or (failed and step == 1):
                why = self.errors.get(name, "returned None")
                scope = "every completion" if dead else f"{failed} completions"
                self.log(f"[yellow]step {step}: reward {name!r} scored no value on {scope}: {rich.markup.escape(why)}")

    def dead(self) -> list[str]:
        """Rewards that scored no completion for ``max_failed_steps`` steps in a row."""
        return [n for n, k in self.streak.items() if k >= self.max_failed_steps]

    def failure(self, checkpoint: object) -> RewardFailureError:
        """The error that stops the run for the first dead reward (its checkpoint named)."""
        name = self.dead()[0]
        return RewardFailureError(
            f"reward {name!r} scored no completion (every one failed or was None) in {self.streak[name]} steps in a "
            f"row, so the run stopped rather than train on nothing (checkpoint: {checkpoint}). Its error: "
            f"{self.errors.get(name, 'returned None')}. Fix the reward, or raise 'max_failed_reward_steps'")

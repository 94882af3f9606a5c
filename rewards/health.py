"""The reward side's health over a run: never train on nothing, and say why, loudly.

Two things a reward can give instead of a score, kept apart (../shared/ARCHITECTURE.md):

- **None**, on purpose: "does not apply" (a math reward on a code sample, TRL's multi-task example
  where a task is absent from a batch). Left out of the weighted sum, never held against the reward.
- **A failure**: it raised, hung, crashed or returned an invalid value (rlreason/rewards/runner.py).
  The completion's total is unknown and it is not trained on.

When the run stops (:class:`RewardFailureError`, after a checkpoint):

- a reward that failed on every completion of a step and has **never scored a value** since the run
  began (it never worked: a wrong column, a bug): after that first step. (Before: it stopped only
  after ``max_failed_reward_steps`` steps, and a 2-step run exited 0 with a "final model".)
- a reward that worked before and then scored no value, failing, for ``max_failed_reward_steps``
  steps in a row. A step where it returned only None neither counts nor resets.
- no completion of the step had any known total (every reward None or failed) for
  ``max_failed_reward_steps`` steps in a row: there is nothing to train on.
"""

from __future__ import annotations

from collections.abc import Callable

import rich.markup


class RewardFailureError(RuntimeError):
    """The rewards give nothing to train on (a reward that never worked, one that stopped scoring,
    or no score at all for several steps): the run stops, with a checkpoint."""


class RewardHealth:
    """Per reward: whether it ever scored, steps in a row it failed on everything, completions
    failed over the run, latest error; and steps in a row with no known total at all."""

    def __init__(self, max_failed_steps: int, log: Callable[[str], None] = print) -> None:
        self.max_failed_steps = max_failed_steps
        self.log = log
        self.streak: dict[str, int] = {}  # reward -> steps in a row it failed with no value at all
        self.scored: dict[str, bool] = {}  # reward -> it scored a value (not None, not failed) since the run began
        self.errors: dict[str, str] = {}  # reward -> its latest failure, shown when the run stops
        self.failures_total: dict[str, int] = {}  # reward -> completions it failed on, whole run
        self.no_signal_streak = 0  # steps in a row where no completion had a known total
        self._why: str | None = None  # why the run must stop, set by record()

    def record(self, step: int, metrics: dict[str, float]) -> None:
        """Count a step's ``rewards/<name>/none_frac`` (no value: None or failed) and ``/failures``
        (global, reduced over processes), and ``reward/no_signal_frac``; print the first step's
        failures and any reward's first step without a value."""
        names = [k[len("rewards/"):-len("/none_frac")] for k in metrics
                 if k.startswith("rewards/") and k.endswith("/none_frac")]
        for name in names:
            failed = int(metrics.get(f"rewards/{name}/failures", 0))
            self.failures_total[name] = self.failures_total.get(name, 0) + failed
            valueless = metrics[f"rewards/{name}/none_frac"] >= 1.0
            why = self.errors.get(name, "returned None")
            if not valueless:
                self.scored[name], self.streak[name] = True, 0
            elif failed:  # failed, and not a single value
                self.streak[name] = self.streak.get(name, 0) + 1
                if not self.scored.get(name, False) and self._why is None:
                    self._why = (f"reward {name!r} failed on every completion and has not scored a single one since "
                                 f"the run began, so it does not work. Its error: {why}")
                elif self.streak[name] >= self.max_failed_steps and self._why is None:
                    self._why = (f"reward {name!r} scored no completion (every one failed) in {self.streak[name]} "
                                 f"steps in a row. Its error: {why}")
            if valueless or (failed and step == 1):
                scope = "every completion" if valueless else f"{failed} completions"
                kind = f"failed on {failed} of them" if failed else "returned None (does not apply)"
                self.log(f"[yellow]step {step}: reward {name!r} scored no value on {scope}: {kind}"
                         + (f": {rich.markup.escape(why)}" if failed else ""))
        no_signal = metrics.get("reward/no_signal_frac", 0.0) >= 1.0
        self.no_signal_streak = self.no_signal_streak + 1 if no_signal else 0
        if self.no_signal_streak >= self.max_failed_steps and self._why is None:
            self._why = (f"no completion had a reward (every reward returned None or failed) in "
                         f"{self.no_signal_streak} steps in a row: there is nothing to train on")

    def dead(self) -> bool:
        """Whether the rewards give nothing to train on: the run must stop (``failure``)."""
        return self._why is not None

    def failure(self, checkpoint: object) -> RewardFailureError:
        """The error that stops the run (its checkpoint named)."""
        return RewardFailureError(f"{self._why}. The run stopped rather than train on nothing (checkpoint: "
                                  f"{checkpoint}). Fix the reward (or its dataset column), or raise "
                                  f"'max_failed_reward_steps'")

    def state_dict(self) -> dict:
        """Its part of a checkpoint (rlreason.run.checkpoint.Stateful): a reward's steps in a row without a
        score, and whether it ever scored, survive a resume (``max_failed_reward_steps``)."""
        return {"reward_health": {"streak": self.streak, "failures_total": self.failures_total, "scored": self.scored,
                                  "no_signal_streak": self.no_signal_streak}}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("reward_health", {})
        self.streak = dict(saved.get("streak", {}))
        self.failures_total = dict(saved.get("failures_total", {}))
        # a checkpoint from before this was kept: a reward it names had run, give it the benefit of the doubt
        self.scored = dict(saved.get("scored", dict.fromkeys(self.failures_total, True)))
        self.no_signal_streak = int(saved.get("no_signal_streak", 0))

"""What a recipe puts around the trainer: stop signals, the run lock and the engine released
whatever happens, then the final model, summary.json and the summary lines.

    with clean_exit(), stopping.handle_stop_signals():
        with starting(cfg):                 # a stop while building exits at once: nothing trained
            trainer = GRPOTrainer(cfg, ...) # the parts from the builders (rlreason/build/)
        try:
            with training(trainer):         # the engine closed when training ends
                summary = trainer.train()
            finish(trainer, summary, out)   # final model, summary.json
        finally:
            lock.release(cfg.output_dir)

``clean_exit`` turns the errors that say what to fix into one line and exit status 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from rlreason.config import ConfigError, GRPOConfig
from rlreason.rewards import RewardSpecError
from rlreason.rewards.health import RewardFailureError
from rlreason.rollout import factory
from rlreason.run import lock, stopping
from rlreason.run.checkpoint import DiskFullError
from rlreason.run.host import exit_with_launcher

# Errors that say what to fix, run as a script: one line on stderr and exit code 1, no traceback
# (RLREASON_TRACEBACK=1 shows it). Always for these; for the errors of building the run's parts
# (a path, a column, a value: ValueError, OSError, ImportError) until training starts: after
# that an unexpected error keeps its traceback (it is a bug to report, not a setting).
CLEAN_ERRORS = (ConfigError, RewardSpecError, RewardFailureError, FloatingPointError, DiskFullError)
STARTUP_ERRORS = (ValueError, OSError, ImportError)
_training = {"started": False}


class StoppedBeforeTraining(Exception):
    """A stop signal arrived while the run was being built: nothing trained, nothing to save."""


@contextlib.contextmanager
def clean_exit() -> Iterator[None]:
    try:
        yield
    except Exception as e:
        if os.environ.get("RLREASON_TRACEBACK") or not (
                isinstance(e, CLEAN_ERRORS) or (isinstance(e, STARTUP_ERRORS) and not _training["started"])):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


@contextlib.contextmanager
def starting(cfg: GRPOConfig) -> Iterator[None]:
    """While the run is built: a stop signal exits at once (one process; with several, the trainer
    stops them together at a step boundary), the launcher tied to this process (a SIGTERM to
    ``accelerate launch`` reaches it). A stop here raises ``StoppedBeforeTraining``, the lock released."""
    try:
        with stopping.stop_at_once(enabled=int(os.environ.get("WORLD_SIZE", "1")) == 1):
            exit_with_launcher()
            yield
    except stopping.Stopped as e:
        lock.release(cfg.output_dir)
        print(f"{e}: stopped before training started; nothing trained, nothing to save", file=sys.stderr)
        raise StoppedBeforeTraining(str(e)) from None
    _training["started"] = True



@contextlib.contextmanager
def training(trainer: Any) -> Iterator[None]:
    """Around ``trainer.train()``: the rollout engine's workers and connections closed when training
    ends, whatever happens."""
    try:
        yield
    finally:
        factory.close(trainer.engine)


def finish(trainer: Any, summary: dict[str, Any], out: Path) -> dict[str, Any]:
    """Final model, summary.json and the summary lines; then a clean exit of the process group."""
    acc = trainer.acc
    if not summary["interrupted"]:  # a stopped run's state is in its checkpoint; it has no final model yet
        trainer.save_final(out / "final_model")
    if acc.is_main_process:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print_summary(summary, out)
    acc.end_training()
    # Tear down the process group accelerate created (a clean exit under torchrun / accelerate
    # launch); a colocated vLLM owns its own single-process group and cleans it up itself.
    if acc.num_processes > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return summary


def print_summary(s: dict[str, Any], out: Path) -> None:
    lines = [f"steps {s['steps']} in {s['train_time_s']:.0f}s ({s['samples_per_s']:.1f} samples/s); "
             f"total {s['total_time_s']:.0f}s"]
    if "heldout_before" in s:
        lines.append(
            f"held-out greedy accuracy ({s['heldout_n']} problems): {s['heldout_before']:.3f} -> "
            f"{s['heldout_after']:.3f}  (gain {100 * s['gain']:+.1f} points, 95% CI "
            f"[{100 * s['gain_ci95'][0]:+.1f}, {100 * s['gain_ci95'][1]:+.1f}])")
    if s.get("interrupted"):
        lines.append(f"stopped early at step {s['steps']} (checkpoint saved): rerun with "
                     f"--resume_from_checkpoint auto to continue")
    lines.append(f"outputs in {out}/: report.html metrics.jsonl completions.jsonl plot.png summary.json config.yaml "
                 f"checkpoints/" + ("" if s.get("interrupted") else " final_model/"))
    print("\n".join(lines), file=sys.stderr)

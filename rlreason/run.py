"""A run from start to finish, what a recipe calls: build -> train -> finish.

    cfg = parse_args(argv, default_config=...)
    summary = run.grpo(cfg)          # or run.distill(cfg)

Around the trainer: stop signals from the first line (a stop while building exits at once,
nothing trained; later the trainer checkpoints at the next step boundary), the run lock and the
rollout engine released whatever happens, the launcher tied to this process (a SIGTERM to
``accelerate launch`` reaches it), and at the end the final model, summary.json and the summary
lines. ``clean_exit`` turns the errors that say what to fix into one line and exit status 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from rlreason import lock, stopping
from rlreason.build import build, close_engine
from rlreason.checkpoint import DiskFullError
from rlreason.config import ConfigError, DistillConfig, GRPOConfig
from rlreason.health import RewardFailureError
from rlreason.host import exit_with_launcher
from rlreason.rewards import RewardSpecError
from rlreason.trainer import GRPOTrainer

# Errors that say what to fix, run as a script: one line on stderr and exit code 1, no traceback
# (RLREASON_TRACEBACK=1 shows it). Always for these; for the errors of building the run's parts
# (a path, a column, a value: ValueError, OSError, ImportError) until training starts: after
# that an unexpected error keeps its traceback (it is a bug to report, not a setting).
CLEAN_ERRORS = (ConfigError, RewardSpecError, RewardFailureError, FloatingPointError, DiskFullError)
STARTUP_ERRORS = (ValueError, OSError, ImportError)
_training = {"started": False}


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


def grpo(cfg: GRPOConfig) -> dict[str, Any]:
    """GRPO; with ``teacher_model_name_or_path`` set, on-policy distillation from that teacher."""
    return _run(cfg, lambda: (GRPOTrainer(cfg, build(cfg)), {}))


def distill(cfg: DistillConfig) -> dict[str, Any]:
    """``distill_mode: offline``: sample the teacher into a verified dataset, fine-tune the student
    on it (rlreason/distill_offline.py); ``on_policy``: GRPO's loop with the teacher's advantages."""
    if cfg.distill_mode != "offline":
        return grpo(cfg)
    from rlreason.distill_offline import build_sft

    return _run(cfg, lambda: build_sft(cfg))


def _run(cfg: GRPOConfig, make: Callable[[], tuple[GRPOTrainer, dict[str, Any]]]) -> dict[str, Any]:
    """``make()`` -> (trainer, what to add to its summary); train; finish."""
    # From the first line on, SIGTERM / Ctrl-C stop the run cleanly (rlreason/stopping.py): at once
    # while it builds (nothing trained yet), at the next step boundary with a checkpoint later.
    with stopping.handle_stop_signals():
        try:
            with stopping.stop_at_once(enabled=int(os.environ.get("WORLD_SIZE", "1")) == 1):
                exit_with_launcher()  # a SIGTERM to `accelerate launch` reaches this process
                trainer, extra = make()
        except stopping.Stopped as e:
            lock.release(cfg.output_dir)
            print(f"{e}: stopped before training started; nothing trained, nothing to save", file=sys.stderr)
            return {"interrupted": True, "steps": None}
        _training["started"] = True
        try:
            try:
                summary = trainer.train()
            finally:
                close_engine(trainer.engine)
            summary.update({k: v for k, v in extra.items() if k != "extra_time_s"})
            summary["total_time_s"] += extra.get("extra_time_s", 0.0)
            return finish(trainer, summary, Path(cfg.output_dir))
        finally:
            lock.release(cfg.output_dir)


def finish(trainer: GRPOTrainer, summary: dict[str, Any], out: Path) -> dict[str, Any]:
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

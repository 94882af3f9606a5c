"""The run's first parts: the accelerator and the checked output folder (locked, a resume's
checkpoint verified); what can fail cheaply fails here, before any model loads."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
import yaml
from accelerate import Accelerator

from rlreason.config import ConfigError, GRPOConfig
from rlreason.data.tasks import EMBEDDED_TASKS
from rlreason.eval.core import HELDOUT_METRICS, suite_metric_names
from rlreason.eval.suites import SUITES, check_data
from rlreason.loop.parts import RunDir
from rlreason.rewards import build_rewards
from rlreason.rewards.model import is_model_spec, is_reward_model
from rlreason.run import lock
from rlreason.run.checkpoint import (
    RUN_LOGS,
    check_output_dir,
    read_state,
    resolve_resume,
    set_aside_newer,
    truncate_jsonl,
)
from rlreason.run.host import capped_threads
from rlreason.run.resume import change_record, check_config_changes


def start(cfg: GRPOConfig, rewards: list | None = None) -> tuple[Accelerator, RunDir]:
    """The accelerator and the checked output folder, locked for this run; and the reward names
    resolved (``rewards``: a Python caller's, in place of the config's ``reward_funcs``): what can
    fail cheaply fails before any model loads (reward models load later, once: ``dataset_rewards``)."""
    acc = make_accelerator(cfg)
    if acc.is_main_process:  # one run per folder, before anything is written or deleted there
        lock.acquire(cfg.output_dir)
    run_dir = open_run_dir(cfg, acc)
    entries = cfg.reward_funcs if rewards is None else rewards
    # a bad reward name fails now, before any model loads
    if entries:  # none: an environment's get_reward may be the reward (build.tools.check_reward_source)
        build_rewards([_unloaded if _is_model_entry(e) else e for e in entries], cfg.reward_weights)
    if cfg.eval_reward_funcs:  # the held-out scorer's too
        build_rewards(cfg.eval_reward_funcs)
    check_eval_settings(cfg)
    return acc, run_dir


def _is_model_entry(entry: Any) -> bool:
    spec = entry.get("name") if isinstance(entry, dict) else entry
    return is_reward_model(spec) or is_model_spec(spec)


def _unloaded(prompts: list, completions: list, **columns: Any) -> list[float]:
    """Stands for a reward model while the names are checked (it is loaded once, later)."""
    return [0.0] * len(completions)


def check_eval_settings(cfg: GRPOConfig) -> None:
    """Every name in ``eval_suites`` is a suite and ``metric_for_best_model`` a metric this run logs
    (the held-out ``eval/...`` ones with the embedded task, which alone has held-out problems, and
    ``suite/<name>/<metric>`` for the suites): otherwise a suite fails at the first evaluation and a
    misspelt metric never picks a best checkpoint, in silence."""
    unknown = [name for name in cfg.eval_suites if name not in SUITES]
    if unknown:
        raise ConfigError(f"config key 'eval_suites': unknown suite {unknown[0]!r}; the suites are {', '.join(SUITES)}")
    rewarded = [name for name in cfg.eval_suites if SUITES[name].scoring == "reward"]
    if rewarded:  # its rewards need a runner of their own; the held-out eval is that runner for a run
        raise ConfigError(f"config key 'eval_suites': suite {rewarded[0]!r} is scored by reward functions (scoring: "
                          f"reward), which the periodic suite evaluation does not run: evaluate its file during "
                          f"training with eval_dataset and eval_reward_funcs, or after it with python -m rlreason.eval")
    for name in cfg.eval_suites:  # the data is here or on the hub, else the eval CLI's line: the file expected, how
        try:
            check_data(SUITES[name])
        except FileNotFoundError as e:
            raise ConfigError(f"config key 'eval_suites': {e}") from None
    coded = [name for name in cfg.eval_suites if SUITES[name].scoring == "code"]
    if coded:  # a code suite runs its programs in the sandbox: without it the run would fail at its first eval
        from rlreason.rewards.sandbox import SandboxUnavailable, check_available

        try:
            check_available()
        except SandboxUnavailable as e:
            raise ConfigError(f"config key 'eval_suites': suite {coded[0]!r} runs its programs in the sandbox: {e}") \
                from None
    metric = cfg.metric_for_best_model
    if not metric:
        return
    heldout = cfg.dataset_name in EMBEDDED_TASKS or cfg.eval_holdout_size > 0 or bool(cfg.eval_dataset)
    known = [*(HELDOUT_METRICS if heldout else ()), *suite_metric_names(cfg.eval_suites)]
    if metric in known:
        return
    if not known:
        why = ("this run evaluates nothing to pick a best checkpoint by (no held-out problems: set eval_holdout_size "
               "or eval_dataset for a dataset of your own; and eval_suites is empty): add either, or unset it")
    elif metric in HELDOUT_METRICS:
        why = (f"{metric!r} is a held-out metric, and this run has no held-out problems (set eval_holdout_size to "
               f"hold rows of your dataset out, or eval_dataset): or name one of the suites' metrics "
               f"({', '.join(known[:3])}, ...)")
    else:
        close = difflib.get_close_matches(metric, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        why = f"this run logs no metric {metric!r}; {hint}its metrics: {', '.join(known[:3])}, ..."
    raise ConfigError(f"config key 'metric_for_best_model': {why}")


def make_accelerator(cfg: GRPOConfig) -> Accelerator:
    """The one Accelerator of the run, with this process's thread count and quiet libraries."""
    datasets.disable_progress_bars()  # one progress bar: the training one
    transformers.utils.logging.disable_progress_bar()
    # never more threads than usable cores (rlreason.run.host); unset: torch's default (OMP_NUM_THREADS or the cores)
    torch.set_num_threads(capped_threads(cfg.num_threads or torch.get_num_threads()))
    return Accelerator(log_with=cfg.report_to or None, project_dir=cfg.output_dir)


def open_run_dir(cfg: GRPOConfig, acc: Accelerator) -> RunDir:
    """Check the output folder before anything is loaded or written: another run's checkpoints
    there are refused (or, with ``overwrite_output_dir``, deleted); a resume's checkpoint is
    verified and the settings it may not change are compared; later checkpoints than the resumed
    one are set aside as a dead branch (``set_aside_newer``); what was logged after the resumed
    checkpoint is dropped; the resolved config is written."""
    out = Path(cfg.output_dir)
    check_output_dir(out, cfg.resume_from_checkpoint, cfg.overwrite_output_dir, delete=acc.is_main_process)
    run_dir = RunDir(out, resolve_resume(out, cfg.resume_from_checkpoint))
    if run_dir.resume is not None:
        saved = read_state(run_dir.resume)
        changes = check_config_changes(saved.get("config", {}), cfg, str(run_dir.resume))
        run_dir.config_changes = saved.get("config_changes", []) + change_record(changes, saved["step"])
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.resume_from_checkpoint:  # with "auto" and no checkpoint yet a fresh start: what the dead run logged goes
            done = read_state(run_dir.resume)["step"] if run_dir.resume is not None else -1
            if run_dir.resume is not None:  # later checkpoints (an older one named, or damaged ones): a dead branch
                set_aside_newer(out, done)
            for name in RUN_LOGS:
                truncate_jsonl(out / name, done)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    acc.wait_for_everyone()
    return run_dir

"""Small builders: config -> one part of a run each. A recipe calls them in order
(recipes/grpo_math.py); each fails on a wrong setting before the expensive steps after it.

    run_dir.start          accelerator, output folder checked and locked, reward names resolved
    models.load_policy     tokenizer and policy (LoRA, quantization); models.load_teacher
    data.load_data         prompts (checked), held-out rows; data.dataset_rewards: rewards vs columns
    engine.separate_engine the vLLM engine (rollout_engine), before the policy is prepared
    training.assemble      reward runners, reference, optimizer, scheduler, default engine, logger
                           -> ``Parts`` (rlreason/loop/parts.py), what ``GRPOTrainer`` receives

``grpo.build(cfg, given)`` calls them in that order (what recipes/grpo_math.py and TRL's Python API,
rlreason.api.GRPOTrainer, run), with a Python caller's objects (``grpo.Given``: model, tokenizer,
datasets, rewards) in place of what the config names. ``assemble(cfg, model, tokenizer, train,
reward_funcs, ...)`` also serves callers that bring their own model and data (tests, benchmarks).
"""

from rlreason.build.data import dataset_rewards, load_data
from rlreason.build.engine import separate_engine, training_engine
from rlreason.build.models import check_positions, load_policy, load_teacher, load_tokenizer
from rlreason.build.run_dir import check_eval_settings, make_accelerator, open_run_dir, start
from rlreason.build.scoring import reward_runner, scoring_settings
from rlreason.build.training import assemble, setting_warnings
from rlreason.loop.parts import Parts, RunDir

__all__ = [
    "Parts",
    "RunDir",
    "assemble",
    "check_eval_settings",
    "check_positions",
    "dataset_rewards",
    "load_data",
    "load_policy",
    "load_teacher",
    "load_tokenizer",
    "make_accelerator",
    "open_run_dir",
    "reward_runner",
    "scoring_settings",
    "separate_engine",
    "setting_warnings",
    "start",
    "training_engine",
]

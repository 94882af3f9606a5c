"""A GRPO run, built and finished: what recipes/grpo_math.py runs and what ``rlreason.GRPOTrainer``
(TRL's Python API, rlreason/api.py) runs, one path for both.

    build(cfg, given)        every part, in the order that fails a wrong setting before the expensive steps
    start_trainer(cfg, given) the loop's trainer around them (a stop signal meanwhile: StoppedBeforeTraining)
    train_and_finish(trainer) train, then the final model, summary.json and the report

``Given`` holds what a Python caller brings in place of what the config names: the model object
(or a tokenizer, a peft config), the datasets, the reward functions and reward models. Left
empty, everything comes from the config, as in the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch

from rlreason.build.data import check_heldout_columns, dataset_rewards, dataset_source, load_data
from rlreason.build.engine import separate_engine
from rlreason.build.models import load_policy, load_teacher
from rlreason.build.run_dir import start
from rlreason.build.scoring import heldout_rewards
from rlreason.build.tools import check_reward_source, check_tool_data, resolve_tools, tool_executor
from rlreason.build.training import assemble
from rlreason.config import GRPOConfig
from rlreason.loop.parts import Parts
from rlreason.loop.trainer import GRPOTrainer
from rlreason.rollout import factory
from rlreason.run import finish, lock


@dataclass
class Given:
    """A Python caller's objects, each in place of what the config would load (None: the config's)."""

    model: torch.nn.Module | None = None  # a causal LM, a PEFT model included
    tokenizer: Any = None  # TRL's processing_class
    peft_config: Any = None  # a peft LoraConfig: a fresh adapter on the model
    train_dataset: datasets.Dataset | None = None
    eval_dataset: datasets.Dataset | None = None  # its rows are the held-out problems
    reward_funcs: list | None = None  # functions, reward names / specs, reward models (objects or paths)
    reward_processing_classes: list | None = None  # the reward models' tokenizers (None entries: their own)
    tools: list | None = None  # TRL's tools: functions the model may call
    environment_factory: Any = None  # TRL's: a callable returning an environment, or a dict of them
    rollout_func: Any = None  # TRL's rollout_func(prompts, trainer)


def build(cfg: GRPOConfig, given: Given | None = None) -> Parts:
    """Every part of the run, in the order that makes a wrong setting fail before the expensive steps."""
    g = given or Given()
    acc, run_dir = start(cfg, g.reward_funcs)  # accelerator; output folder checked and locked; reward names resolved
    tools = resolve_tools(cfg, g.tools, g.environment_factory, g.rollout_func)  # tool specs loaded, before the model
    model, tokenizer = load_policy(cfg, acc, g.model, g.tokenizer, g.peft_config)
    teacher, _ = load_teacher(cfg, acc, tokenizer)  # before the data: a tokenizer mismatch fails first
    # the prompts rendered and checked, the golds of the built-in accuracy reward too; the held-out rows
    train, eval_rows = load_data(cfg, tokenizer, g.train_dataset, g.eval_dataset, g.reward_funcs)
    check_tool_data(cfg, tools, train, tokenizer, dataset_source(cfg))  # conversational; the template renders tools
    # checked against the dataset's columns; reward models loaded and tried on the first row (none: an
    # environment's get_reward may be the only reward source, checked when the tool executor is built)
    entries = cfg.reward_funcs if g.reward_funcs is None else g.reward_funcs
    reward_funcs, reward_weights = dataset_rewards(cfg, train, g.reward_funcs, g.reward_processing_classes) \
        if entries else ([], [])
    eval_accuracy, eval_format = heldout_rewards(cfg, reward_funcs)  # the built-in accuracy, or your task's reward
    if cfg.eval_dataset or g.eval_dataset is not None:  # held-out rows of their own: their columns checked too
        check_heldout_columns(cfg, eval_rows, [fn for fn in (eval_accuracy, eval_format) if fn is not None])
    # its manager process forks before vLLM starts threads; its probe builds one of each environment, in a worker
    executor = tool_executor(cfg, tools)
    # With async_rollouts the held-out eval runs while the next training batch is generated on the rollout
    # thread, and an executor serves one batch of episodes at a time: the eval gets executor of its own.
    eval_executor = tool_executor(cfg, tools) if cfg.async_rollouts and executor is not None else None
    engine = None
    try:
        check_reward_source(reward_funcs, executor)  # reward_funcs, or an environment's get_reward (TRL's rule)
        engine = separate_engine(cfg, model, tokenizer, acc)  # vLLM, before the policy is prepared; else None
        return assemble(cfg, model, tokenizer, train, reward_funcs, reward_weights, eval_rows=eval_rows,
                        eval_accuracy_fn=eval_accuracy, eval_format_fn=eval_format, engine=engine,
                        accelerator=acc, teacher=teacher, run_dir=run_dir, tools=executor,
                        eval_tools=eval_executor, rollout_func=tools.rollout_func)
    except BaseException:  # a stop signal or an error: the engine's and executor's processes go with it
        factory.close(engine)
        for ex in (executor, eval_executor):
            if ex is not None:
                ex.close()
        raise


def start_trainer(cfg: GRPOConfig, given: Given | None = None) -> GRPOTrainer:
    """The loop's trainer around ``build``'s parts (a resume restores its checkpoint here). A stop
    signal while it builds exits at once: ``finish.StoppedBeforeTraining``, nothing trained."""
    with finish.starting(cfg):
        return GRPOTrainer(cfg, build(cfg, given))


def train_and_finish(trainer: GRPOTrainer) -> dict[str, Any]:
    """Train, then the final model (final_model/), summary.json and the summary lines; the engine
    closed and the output folder's lock released whatever happens. -> the run's summary
    (``interrupted`` when a stop signal ended it)."""
    cfg = trainer.cfg
    try:
        with finish.training(trainer):  # the engine's workers closed when training ends
            summary = trainer.train()
        return finish.finish(trainer, summary, Path(cfg.output_dir))  # final model, summary.json
    finally:
        lock.release(cfg.output_dir)

"""TRL's Python API: ``from rlreason import GRPOConfig, GRPOTrainer``, a TRL 1.16 notebook with only
the import changed.

    trainer = GRPOTrainer(model="tiny", reward_funcs=reward_len, args=GRPOConfig(output_dir="out"),
                          train_dataset=dataset)
    trainer.train()          # trains, then final_model/, summary.json, report.html, as the recipe

The constructor has TRL 1.16's signature and builds the run as ``recipes/grpo_math.py`` does,
through the same code (rlreason/build/grpo.py: ``build``, then the loop's trainer; ``train``:
``train_and_finish``), with the caller's objects in place of what the config names: the model
(an id, a path, "tiny", or a model object, PEFT included), the tokenizer (``processing_class``),
a peft config, the datasets, the rewards (one or a list: functions, reward names or
``"pkg.module:fn"`` specs, sequence-classification reward models as objects or paths), and the
tools (``tools``, ``environment_factory``, ``rollout_func``: TRL's rules, rlreason/build/tools.py;
docs/tools.md). What it cannot honour it refuses, saying why: ``optimizers`` and
``quantization_config`` (config keys do it).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import TrainerControl, TrainerState
from transformers.trainer_utils import TrainOutput

from rlreason.build.data import GIVEN_DATASET
from rlreason.build.grpo import Given, start_trainer, train_and_finish
from rlreason.build.tools import NO_REWARD_SOURCE, environment_prompts, spec_of, with_empty_prompts
from rlreason.config import GRPOConfig
from rlreason.rewards.model import is_reward_model, model_name
from rlreason.rewards.registry import reward_name
from rlreason.run import stopping


class GRPOTrainer:
    """TRL 1.16's ``GRPOTrainer`` over rlreason's run (see the module docstring).

    After construction the run is built: the output folder checked and locked, the model loaded,
    the prompts rendered and checked, the rewards checked against the dataset's columns (a reward
    model scored on the first row). ``train()`` runs it and writes what the recipe writes.
    ``callbacks``: transformers ``TrainerCallback`` objects, called at ``on_train_begin``,
    ``on_step_end`` and ``on_log`` (after each step, with its metrics), ``on_save`` (after each
    checkpoint) and ``on_train_end``, with a ``TrainerState`` (global_step, max_steps, log_history);
    the ``TrainerControl`` flags they set are not acted on (the run stops by max_steps or a signal).
    """

    def __init__(
        self,
        model: str | torch.nn.Module,
        reward_funcs: Any = None,
        args: GRPOConfig | None = None,
        train_dataset: datasets.Dataset | datasets.IterableDataset | None = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        reward_processing_classes: Any = None,
        callbacks: list[Any] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        quantization_config: Any = None,
        peft_config: Any = None,
        tools: list[Callable] | None = None,
        rollout_func: Callable | None = None,
        environment_factory: Any = None,
    ) -> None:
        if any(o is not None for o in optimizers):
            raise NotImplementedError("GRPOTrainer(optimizers=...): not supported; the optimizer and schedule come "
                                      "from GRPOConfig (optim, learning_rate, weight_decay, adam_beta1/2, "
                                      "lr_scheduler_type, warmup_steps / warmup_ratio)")
        if quantization_config is not None:
            raise NotImplementedError("GRPOTrainer(quantization_config=...): not supported; set GRPOConfig("
                                      "load_in_4bit=True, use_peft=True) for QLoRA")
        funcs = _as_list(reward_funcs)
        if not funcs and environment_factory is None:  # with one, its get_reward may be the reward (checked at build)
            raise ValueError(NO_REWARD_SOURCE)
        tokenizers = _as_list(reward_processing_classes)
        if tokenizers and len(tokenizers) != len(funcs):
            raise ValueError(f"GRPOTrainer: {len(tokenizers)} reward_processing_classes for {len(funcs)} reward_funcs; "
                             f"give one per reward (None for a reward function)")
        if not isinstance(model, str | torch.nn.Module):
            raise TypeError(f"GRPOTrainer: model must be a model id, a path or a model object, got "
                            f"{type(model).__name__}")
        if args is None:  # as TRL: "<model name>-GRPO"
            args = GRPOConfig(output_dir=f"{_model_id(model).split('/')[-1]}-GRPO")
        if not isinstance(args, GRPOConfig):
            raise TypeError(f"GRPOTrainer: args must be rlreason's GRPOConfig (from rlreason import GRPOConfig), got "
                            f"{type(args).__module__}.{type(args).__name__}")
        changes: dict[str, Any] = {
            "model_name_or_path": _model_id(model),
            "reward_funcs": [_entry_name(f) for f in funcs],  # what config.yaml records; the objects are used
        }
        if train_dataset is None and environment_factory is not None:  # TRL: the environment owns the data
            if isinstance(environment_factory, dict):
                raise ValueError("GRPOTrainer: a dict environment_factory (several environments) needs a train_dataset "
                                 "with an 'environment' column to route each example to its environment; give a "
                                 "dataset, or a single environment factory")
            train_dataset = environment_prompts(args)
        elif environment_factory is not None:  # TRL: a dataset may only route (an 'environment' column, no prompt)
            train_dataset = with_empty_prompts(_in_memory(train_dataset, "train_dataset"), args.prompt_column)
        if train_dataset is not None:
            changes["dataset_name"] = GIVEN_DATASET
        if tools:  # config.yaml records where they came from; the objects are used
            changes["tools"] = [spec_of(t) for t in tools]
        if environment_factory is not None:
            changes["environment_factory"] = {k: spec_of(v) for k, v in environment_factory.items()} \
                if isinstance(environment_factory, dict) else spec_of(environment_factory)
        if rollout_func is not None:
            changes["rollout_func"] = spec_of(rollout_func)
        if peft_config is not None:
            changes["use_peft"] = True
        self.args = dataclasses.replace(args, **changes)
        self.given = Given(model=model if isinstance(model, torch.nn.Module) else None, tokenizer=processing_class,
                           peft_config=peft_config, train_dataset=_in_memory(train_dataset, "train_dataset"),
                           eval_dataset=_eval_dataset(eval_dataset), reward_funcs=funcs,
                           reward_processing_classes=tokenizers or None,
                           tools=list(tools) if tools is not None else None,
                           environment_factory=environment_factory, rollout_func=rollout_func)
        # a TrainerCallback class is instantiated, as transformers' Trainer does
        self.callbacks = [cb() if isinstance(cb, type) else cb for cb in callbacks or []]
        for cb in self.callbacks:
            if not all(hasattr(cb, m) for m in ("on_train_begin", "on_step_end", "on_log", "on_save",
                                                 "on_train_end")):
                raise TypeError(f"GRPOTrainer: callback {cb!r} is not a transformers TrainerCallback")
        self._losses: list[float] = []
        self._trained = False
        with stopping.handle_stop_signals():  # a stop while it builds: StoppedBeforeTraining, nothing trained
            self.trainer = start_trainer(self.args, self.given)
        self.trainer.hooks.append(self._on_event)
        # after the build: max_steps -1 is resolved there (num_train_epochs over the prompts, TRL's rule)
        self.state = TrainerState(max_steps=self.args.max_steps, logging_steps=self.args.logging_steps,
                                  save_steps=self.args.save_steps, global_step=self.trainer.step)
        self.control = TrainerControl()

    # ------------------------------------------------------------------ TRL's attributes

    @property
    def model(self) -> torch.nn.Module:
        """The policy (unwrapped from accelerate's wrappers)."""
        return self.trainer.acc.unwrap_model(self.trainer.model)

    @property
    def processing_class(self) -> Any:
        return self.trainer.tokenizer

    @property
    def train_dataset(self) -> datasets.Dataset:
        """The prepared prompts (rendered, tokenized)."""
        return self.trainer.train_dataset

    @property
    def reward_funcs(self) -> list[Callable]:
        return self.trainer.rewards.funcs

    @property
    def accelerator(self) -> Any:
        return self.trainer.acc

    # ------------------------------------------------------------------ training

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> TrainOutput:
        """Train, then write the final model (final_model/), summary.json and report.html in
        ``output_dir``, as the recipe does. -> TRL's ``TrainOutput(global_step, training_loss,
        metrics)``; ``metrics`` holds the run's summary (held-out accuracy before/after, times)."""
        if kwargs:
            raise TypeError(f"GRPOTrainer.train(): unexpected argument(s) {sorted(kwargs)}")
        if resume_from_checkpoint not in (None, False) and resume_from_checkpoint != self.args.resume_from_checkpoint:
            raise ValueError("GRPOTrainer.train(resume_from_checkpoint=...): the run is built when the trainer is "
                             "made; set GRPOConfig(resume_from_checkpoint=<path or 'auto'>) instead")
        if self._trained:
            raise RuntimeError("GRPOTrainer.train() runs once (its output folder now holds the finished run); "
                               "make a new trainer to train again")
        self._trained = True
        self._call("on_train_begin")
        with stopping.handle_stop_signals():
            summary = train_and_finish(self.trainer)
        self._call("on_train_end")
        loss = sum(self._losses) / len(self._losses) if self._losses else math.nan
        # TRL's metric names next to the run's summary (held-out accuracy before / after, times)
        metrics = {**summary, "train_runtime": summary.get("train_time_s"), "train_loss": loss}
        return TrainOutput(global_step=self.trainer.step, training_loss=loss, metrics=metrics)

    def save_model(self, output_dir: str | None = None) -> None:
        """The policy (and tokenizer) in Hugging Face format in ``output_dir`` (default: the config's)."""
        self.trainer.save_final(Path(output_dir or self.args.output_dir))

    def _on_event(self, event: str, step: int, info: dict[str, Any]) -> None:
        """The loop's hook (rlreason.loop.trainer.GRPOTrainer.hooks) -> the callbacks' events."""
        self.state.global_step = step
        self.state.epoch = self.trainer.prompts.epoch(step)
        if event == "step":
            if "loss" in info and math.isfinite(info["loss"]):
                self._losses.append(float(info["loss"]))
            logs = {k: v for k, v in info.items() if isinstance(v, int | float)}
            self.state.log_history.append({**logs, "step": step})
            self._call("on_step_end")
            self._call("on_log", logs=logs)
        elif event == "save":
            self._call("on_save")

    def _call(self, event: str, **kwargs: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self.args, self.state, self.control, model=self.model,
                               processing_class=self.processing_class, **kwargs)


def _as_list(value: Any) -> list:
    """TRL's "one or a list": None -> [], a single object -> [it]."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _model_id(model: str | torch.nn.Module) -> str:
    """The model's id or path (what config.yaml records): the string, or the object's config path."""
    if isinstance(model, str):
        return model
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", "") or type(model).__name__


def _entry_name(entry: Any) -> Any:
    """How config.yaml records a reward_funcs entry: a spec or config entry as given, else a name."""
    if isinstance(entry, dict):  # {name, weight, kwargs}: the name recorded as text
        return {**entry, "name": _entry_name(entry.get("name"))}
    if isinstance(entry, str) or entry is None:
        return entry
    return model_name(entry) if is_reward_model(entry) else reward_name(entry)


def _in_memory(ds: Any, what: str) -> datasets.Dataset | None:
    """A ``datasets.Dataset`` (an IterableDataset is read whole: rlreason draws its own seeded order
    over the prompts), or None."""
    if ds is None or isinstance(ds, datasets.Dataset):
        return ds
    if isinstance(ds, datasets.IterableDataset):
        return datasets.Dataset.from_list(list(ds))
    raise TypeError(f"GRPOTrainer: {what} must be a datasets.Dataset or IterableDataset, got {type(ds).__name__}")


def _eval_dataset(ds: Any) -> datasets.Dataset | None:
    """TRL's eval_dataset: a dataset, or a dict of them (one entry here: its rows are the held-out problems)."""
    if isinstance(ds, dict):  # DatasetDict included
        if len(ds) != 1:
            raise NotImplementedError(f"GRPOTrainer(eval_dataset={{...}}): {len(ds)} eval datasets; rlreason "
                                      f"evaluates one held-out set: pass one dataset (or concatenate them)")
        (ds,) = ds.values()
    return _in_memory(ds, "eval_dataset")

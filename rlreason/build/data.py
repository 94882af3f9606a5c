"""Config -> data: the training prompts and held-out rows, checked (prompts, golds, column
names) before training; the reward functions checked against the columns."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets

from rlreason.config import GRPOConfig
from rlreason.data import (
    INTERNAL_COLUMNS,
    MUL_EVAL_SEED,
    arith_dataset,
    check_golds,
    embedded_chat,
    kept_rows,
    load_dataset_any,
    mul_dataset,
    prepare,
    rename_columns,
)
from rlreason.data.split import holdout_split
from rlreason.data.tasks import EMBEDDED_TASKS
from rlreason.data.tasks.arith import Difficulty
from rlreason.data.tasks.mul import MulDifficulty
from rlreason.eval.suites import arith_suite
from rlreason.rewards import build_rewards, parse_gold, reward_name
from rlreason.rewards.math import AccuracyReward
from rlreason.rewards.model import RewardModel, dry_run, is_model_spec
from rlreason.rewards.registry import RewardSignatureError, check_signature
from rlreason.rewards.runner import refuse_reserved_columns, reward_inputs

# ``dataset_name`` of a run whose dataset a Python caller gave (rlreason.api.GRPOTrainer's train_dataset)
GIVEN_DATASET = "<train_dataset>"


def load_data(cfg: GRPOConfig, tokenizer: Any, dataset: datasets.Dataset | None = None,
              eval_dataset: datasets.Dataset | None = None, rewards: list | None = None,
              ) -> tuple[datasets.Dataset, list[dict]]:
    """(training prompts, held-out rows): rendered and tokenized (rlreason.data.prepare). The
    embedded tasks (arith, mul) bring their own held-out problems; another dataset gives
    ``eval_holdout_size`` of its rows (rlreason.data.split: by a hash of the prompt), never trained on.

    A dataset's rows (those dataset_filter keeps) are checked first, each bad one named by its row
    in the file: every prompt (``check_prompts``), and every gold of the built-in accuracy reward,
    read by the reward's own parser (``check_golds``).

    ``dataset`` / ``eval_dataset`` / ``rewards``: a Python caller's (TRL's ``train_dataset`` /
    ``eval_dataset`` / ``reward_funcs``), in place of the config's; the eval rows are the held-out
    problems. The config's ``eval_dataset`` (``load_eval_dataset``) is the same: its rows, rendered as
    the training rows are, are the held-out problems."""
    embedded = dataset is None and cfg.dataset_name in EMBEDDED_TASKS
    common = dict(prompt_column=cfg.prompt_column, tokenizer=tokenizer, template=cfg.prompt_template,
                  use_chat_template=embedded_chat(cfg.use_chat_template, embedded),
                  system_prompt=cfg.system_prompt, max_prompt_length=cfg.max_prompt_length,
                  chat_template_kwargs=cfg.chat_template_kwargs)
    if dataset is None and cfg.dataset_name == GIVEN_DATASET:
        raise ValueError(f"config key 'dataset_name': {GIVEN_DATASET} stands for a train_dataset given from Python")
    if cfg.eval_dataset and eval_dataset is not None:
        raise ValueError("config key 'eval_dataset': an eval_dataset is given from Python too (GRPOTrainer("
                         "eval_dataset=...)); the held-out problems come from one of them")
    if not embedded:  # the caller's dataset is read as a loaded file is
        if cfg.eval_dataset:  # before the training rows are checked: a wrong path fails first, and cheaply
            eval_dataset = load_eval_dataset(cfg)
        raw = dataset if dataset is not None else load_dataset_any(cfg.dataset_name, cfg.dataset_split,
                                                                    name=cfg.dataset_config)
        rows = kept_rows(raw, cfg.dataset_filter)  # the file's row of each row kept
        data = rename_columns(raw.select(rows) if len(rows) < len(raw) else raw, cfg.column_map)
        source = dataset_source(cfg)
        for reward in accuracy_rewards(cfg, rewards):
            column = reward.gold_from(data.column_names)  # none: dataset_rewards names the missing column
            if column is not None:
                check_golds(data, column, reward.read_gold, source=source, rows=rows,
                            max_bad=cfg.max_bad_gold_fraction, reward=f"reward {reward_name(reward)!r}")
        held_idx: list[int] = []
        if cfg.eval_holdout_size and cfg.prompt_column in data.column_names:  # else prepare names the column
            if eval_dataset is not None:
                raise ValueError("config key 'eval_holdout_size': an eval_dataset is given too; the held-out "
                                 "problems come from one of them: set eval_holdout_size: 0, or drop eval_dataset")
            train_idx, held_idx = holdout_split(data[cfg.prompt_column], cfg.eval_holdout_size)
        if not held_idx:
            train = prepare(data, answer_column=None, source=source, rows=rows, **common)
            if eval_dataset is None:
                return train, []
            return train, list(prepare(rename_columns(eval_dataset, cfg.column_map), answer_column=None,
                                       source=eval_source(cfg), **common))
        train = prepare(data.select(train_idx), answer_column=None, source=source,
                        rows=[rows[i] for i in train_idx], **common)
        heldout = prepare(data.select(held_idx), answer_column=None, source=source,
                          rows=[rows[i] for i in held_idx], **common)
        return train, list(heldout)
    common["column_map"] = cfg.column_map
    n_eval = max(cfg.final_eval_size, cfg.eval_size)
    if cfg.dataset_name == "mul":
        try:
            mul_difficulty = MulDifficulty(**cfg.mul_difficulty)
        except (TypeError, ValueError) as e:
            raise ValueError(f"config key 'mul_difficulty': {e}") from e
        train = prepare(mul_dataset(cfg.mul_train_size, cfg.seed, "train", mul_difficulty), **common)
        return train, list(prepare(mul_dataset(n_eval, MUL_EVAL_SEED, "heldout", mul_difficulty), **common))
    try:
        difficulty = Difficulty(**cfg.arith_difficulty)
    except TypeError as e:
        raise ValueError(f"config key 'arith_difficulty': {e}") from e
    train = prepare(arith_dataset(cfg.arith_train_size, cfg.seed, "train", difficulty), **common)
    return train, list(prepare(datasets.Dataset.from_list(arith_suite(n_eval, difficulty)), **common))


def load_eval_dataset(cfg: GRPOConfig) -> datasets.Dataset:
    """The config's ``eval_dataset``, loaded as ``dataset_name`` is (``load_dataset_any``, with
    ``eval_dataset_split`` / ``eval_dataset_config``); an error names the key."""
    try:
        return load_dataset_any(cfg.eval_dataset, cfg.eval_dataset_split, name=cfg.eval_dataset_config)
    except (ValueError, OSError) as e:
        raise type(e)(f"config key 'eval_dataset': {e}") from None


def eval_source(cfg: GRPOConfig) -> str:
    """How errors name the held-out set given apart from the training data."""
    return f"eval_dataset {cfg.eval_dataset!r}" if cfg.eval_dataset else "eval_dataset"


def check_heldout_columns(cfg: GRPOConfig, eval_rows: list[dict], scorers: list[Callable]) -> None:
    """The held-out set given apart from the training data (``eval_dataset``) has the columns its
    scorers (``heldout_rewards``: ``eval_reward_funcs``, or the training reward) ask for, none named like
    an argument every reward receives: checked at start-up, as the training rewards are against the
    training data, instead of failing at the first evaluation."""
    if not eval_rows:
        return
    columns = set(eval_rows[0]) - {cfg.prompt_column, *INTERNAL_COLUMNS}
    source = eval_source(cfg)
    check_column_names(columns, source)
    for fn in scorers:
        try:
            check_signature(fn, columns | {"completion_ids"})
        except RewardSignatureError as e:
            key = "eval_reward_funcs" if cfg.eval_reward_funcs else "reward_funcs"
            raise ValueError(f"config key '{key}' scores {source}: {e}") from None


def dataset_source(cfg: GRPOConfig) -> str:
    """How errors name the configured dataset: "data file 'x.jsonl'", or "dataset 'org/name' (split ...)"."""
    if cfg.dataset_name == GIVEN_DATASET:
        return "train_dataset"
    if Path(cfg.dataset_name).expanduser().is_file():
        return f"data file {cfg.dataset_name!r}"
    return f"dataset {cfg.dataset_name!r} (split {cfg.dataset_split!r})"


def accuracy_rewards(cfg: GRPOConfig, entries: list | None = None) -> list[AccuracyReward]:
    """The built-in accuracy rewards among ``reward_funcs`` (named, or configured with kwargs such
    as gold_column), as configured (``entries``: a Python caller's, in place of the config's).
    Entries naming a file of the user's are not built here (that would run the file once more),
    nor reward models (loaded once, by ``dataset_rewards``): their golds are checked as any
    reward's (``dataset_rewards``)."""
    out = []
    for entry in cfg.reward_funcs if entries is None else entries:
        spec = entry.get("name") if isinstance(entry, dict) else entry
        if isinstance(spec, AccuracyReward):
            out.append(spec)
            continue
        if not isinstance(spec, str) or is_model_spec(spec) or (
                ":" in spec and any(c in spec.rsplit(":", 1)[0] for c in ("/", "\\", ".py"))):
            continue
        (fn,), _ = build_rewards([entry])
        while isinstance(fn, functools.partial):  # a chunk_size entry
            fn = fn.func
        if isinstance(fn, AccuracyReward):
            out.append(fn)
    return out


def dataset_rewards(cfg: GRPOConfig, train: datasets.Dataset, entries: list | None = None,
                    processing_classes: list | None = None) -> tuple[list[Callable], list[float]]:
    """The reward functions, checked against the dataset's columns (a reward asking for a missing
    column fails here, as does a column named like an argument every reward receives).
    ``entries`` / ``processing_classes``: a Python caller's reward functions and reward models'
    tokenizers (TRL's ``reward_funcs`` / ``reward_processing_classes``), in place of the config's
    ``reward_funcs``. Each reward model scores the first row once here (``dry_run``)."""
    own = set(train.column_names) - {cfg.prompt_column, *INTERNAL_COLUMNS}
    check_column_names(own, dataset_source(cfg) if cfg.dataset_name not in EMBEDDED_TASKS else "")
    columns = own | {"completion_ids"}
    funcs, weights = build_rewards(cfg.reward_funcs if entries is None else entries, cfg.reward_weights,
                                   columns=columns, processing_classes=processing_classes,
                                   trust_remote_code=cfg.trust_remote_code)
    if any(_takes(fn, "answer") for fn in funcs):  # a gold column that is all blank trains on nothing
        check_golds(train, "answer", parse=parse_gold, source=dataset_source(cfg))
    models = [fn for fn in funcs if isinstance(fn, RewardModel)]
    if models and len(train):  # the arguments the first step will pass, for the first row
        prompts, completions, _ = reward_inputs([train[0]], ["0"], [[0]], 1, cfg.prompt_column,
                                                skip=INTERNAL_COLUMNS, plain_text=cfg.rewards_plain_text)
        for model in models:
            dry_run(model, prompts, completions)
    return funcs, weights


def check_column_names(columns: set[str], source: str) -> None:
    """Refuse dataset columns named like the arguments every reward receives besides the columns
    (``prompts``, ``completions``, ``completion_ids``, TRL's ``trainer_state``, ``log_extra``,
    ``log_metric``): every reward call of the run would fail at step 1 (``completion_ids``: the
    column would be replaced by the token ids, in silence)."""
    refuse_reserved_columns(columns, source or "the dataset",
                            fix="rename it with column_map, e.g. column_map: {{{column}: {column}_column}}")


def _takes(fn: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False

"""Offline distillation's two halves: the teacher's verified answers as a dataset, then the
student fine-tuned on them (rlreason/loop/sft.py).

``sample_dataset`` has the teacher (``teacher_model_name_or_path``) answer
``distill_num_problems`` training problems ``distill_samples_per_problem`` times; the reward
functions keep the verified answers (``distill_selection``, ``distill_min_reward``,
``distill_max_per_problem``; rlreason/distill/teacher.py); the result is saved with its provenance
(``distill_dataset_path``, default ``output_dir/distill_data``) and reused by a later run with the
same settings (``dataset_settings``, ``reuse_dataset``); ``for_student`` puts it in the student's
token ids. recipes/distill.py wires the two halves. See docs/distillation.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from rich.progress import track

from rlreason.config import DistillConfig
from rlreason.data import embedded_chat, prepare
from rlreason.distill import teacher as distill
from rlreason.loop.experience import stream_seed
from rlreason.rewards import completion_text
from rlreason.rewards.runner import RewardRunner, unique_names
from rlreason.rollout.base import RolloutEngine, SamplingConfig


def teacher_sampling(cfg: DistillConfig) -> SamplingConfig:
    t = cfg.temperature if cfg.distill_temperature is None else cfg.distill_temperature
    return SamplingConfig(max_tokens=cfg.max_completion_length, temperature=t, top_p=cfg.top_p, top_k=cfg.top_k)


def dataset_settings(cfg: DistillConfig, teacher_tok: Any, reward_funcs: list[Callable],
                     reward_weights: list[float], n_problems: int) -> dict[str, Any]:
    """What makes a teacher dataset: a saved one is reused only when all of it is the same."""
    source = {"dataset_name": cfg.dataset_name, "split": cfg.dataset_split, "problems": n_problems,
              "order_seed": cfg.seed,
              **({"arith_train_size": cfg.arith_train_size} if cfg.dataset_name == "arith" else {})}
    return distill.dataset_settings(cfg.teacher_model_name_or_path, teacher_tok, teacher_sampling(cfg),
                                    cfg.distill_samples_per_problem, unique_names(reward_funcs), reward_weights,
                                    cfg.distill_selection, cfg.distill_min_reward, cfg.distill_max_per_problem,
                                    source, cfg.seed)


def reuse_dataset(path: Path, settings: dict[str, Any],
                  log: Callable[[str], None] = print) -> tuple[datasets.Dataset, dict[str, Any]] | None:
    """(dataset, provenance) saved at ``path`` with these ``settings``; None when there is none; an
    error when the one there was made with other settings."""
    if not path.exists():
        return None
    ds, prov = distill.load_dataset(path)
    if prov.get("settings") != settings:
        differ = sorted(k for k in settings if prov.get("settings", {}).get(k) != settings[k])
        raise ValueError(f"config key 'distill_dataset_path': {path} holds a dataset made with other settings "
                         f"({', '.join(differ)}); point distill_dataset_path elsewhere or delete it to resample")
    log(f"reusing the distillation dataset at {path} ({len(ds)} examples)")
    return ds, prov


def sample_dataset(cfg: DistillConfig, acc: Accelerator, path: Path, train: datasets.Dataset, engine: RolloutEngine,
                   runner: RewardRunner, settings: dict[str, Any],
                   log: Callable[[str], None] = print) -> tuple[datasets.Dataset, dict[str, Any], float]:
    """Rejection-sample the teacher (``engine``) on ``settings``' first problems of ``train`` (prompts
    in the teacher's template), scored by ``runner``, into a dataset saved at ``path``.
    -> (dataset, provenance, seconds spent sampling). Closes neither the engine nor the runner."""
    n = settings["source"]["problems"]
    sampling = teacher_sampling(cfg)
    t0 = time.perf_counter()
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed)).tolist()[:n]
    mine = [dict(train[i], problem_index=i) for i in order[acc.process_index::acc.num_processes]]
    chunk = max(cfg.generation_batch_prompts, 1)
    records: list[dict] = []
    stats = distill.RejectionStats()
    for i in track(range(0, len(mine), chunk), description="teacher sampling",
                   disable=not (acc.is_main_process and cfg.progress)):
        part = mine[i:i + chunk]
        recs, st = distill.rejection_sample(
            engine, part, cfg.distill_samples_per_problem, sampling, runner.score, cfg.distill_selection,
            cfg.distill_min_reward, cfg.distill_max_per_problem, cfg.prompt_column, skip_columns=("prompt_text",),
            # per problem: the answers do not depend on batching or the number of processes
            seeds=[stream_seed(cfg.seed, "distill", r["problem_index"]) for r in part])
        records.extend(recs)
        stats.add(st)
    if acc.num_processes > 1:  # every process's answers and counts
        records = gather_object(records)
        shards, stats = gather_object([stats]), distill.RejectionStats()
        for st in shards:
            stats.add(st)
    records.sort(key=lambda r: (r["problem_index"], r["sample_index"]))
    seconds = time.perf_counter() - t0
    prov = distill.make_provenance(settings, stats, seconds)
    ds = distill.build_dataset(records, prov)
    if acc.is_main_process:
        distill.save_dataset(ds, path)
        c = prov["counts"]
        log(f"teacher: {c['verified']}/{c['samples']} answers verified; kept {c['kept']} from {c['problems_kept']}/"
            f"{c['problems']} problems ({cfg.distill_selection}) in {seconds:.0f}s -> {path}")
    acc.wait_for_everyone()
    return ds, prov, seconds


def for_student(ds: datasets.Dataset, prov: dict[str, Any], cfg: DistillConfig, tokenizer: Any) -> datasets.Dataset:
    """The dataset in the student's token ids: as saved when the tokenizers are the same, else
    the prompts re-rendered with the student's template and the answers re-encoded (+ eos)."""
    if prov.get("settings", {}).get("tokenizer") == distill.tokenizer_fingerprint(tokenizer):
        return ds
    chat = embedded_chat(cfg.use_chat_template, cfg.dataset_name == "arith")
    ds = prepare(ds.remove_columns(["prompt_ids"]), prompt_column=cfg.prompt_column, tokenizer=tokenizer,
                 use_chat_template=chat, template=cfg.prompt_template, system_prompt=cfg.system_prompt,
                 max_prompt_length=cfg.max_prompt_length)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def encode(row: dict) -> dict:
        text = completion_text(row["completion"])
        return {"completion_ids": tokenizer(text, add_special_tokens=False)["input_ids"] + eos}

    return ds.map(encode)

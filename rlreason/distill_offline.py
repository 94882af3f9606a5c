"""Offline distillation's two halves: the teacher's verified answers as a dataset, then the
student fine-tuned on them (rlreason/sft.py).

``sample_dataset`` has the teacher (``teacher_model_name_or_path``) answer
``distill_num_problems`` training problems ``distill_samples_per_problem`` times; the reward
functions keep the verified answers (``distill_selection``, ``distill_min_reward``,
``distill_max_per_problem``; rlreason/distill.py); the result is saved with its provenance
(``distill_dataset_path``, default ``output_dir/distill_data``) and reused by a later run with the
same settings. ``build_sft`` builds the student's SFT run on it. See docs/distillation.md.
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

from rlreason import distill
from rlreason.build import (
    assemble,
    build_engine,
    close_engine,
    dataset_rewards,
    load_data,
    load_policy,
    load_teacher,
    load_tokenizer,
    reward_runner,
    start,
)
from rlreason.config import DistillConfig
from rlreason.data import prepare
from rlreason.experience import stream_seed
from rlreason.rewards import accuracy_reward, completion_text, format_reward
from rlreason.rewards.runner import unique_names
from rlreason.rollout.base import SamplingConfig
from rlreason.rollout.hf import HFEngine
from rlreason.sft import SFTTrainer


def build_sft(cfg: DistillConfig) -> tuple[SFTTrainer, dict[str, Any]]:
    """(the student's SFT trainer on the teacher's dataset, what to add to the run's summary)."""
    acc, run_dir = start(cfg)
    data_path = Path(cfg.distill_dataset_path or run_dir.path / "distill_data")
    ds, prov, sample_s = sample_dataset(cfg, acc, data_path, log=acc.print)
    model, tokenizer = load_policy(cfg, acc)
    train = for_student(ds, prov, cfg, tokenizer)
    _, eval_rows = load_data(cfg, tokenizer)
    parts = assemble(cfg, model, tokenizer, train, [], eval_rows=eval_rows, eval_accuracy_fn=accuracy_reward,
                     eval_format_fn=format_reward, accelerator=acc, run_dir=run_dir, keep_dropout=True)
    info = {"dataset": str(data_path), "examples": len(train), "teacher_sampling_s": sample_s,
            "counts": prov.get("counts", {})}
    return SFTTrainer(cfg, parts), {"distill": info, "extra_time_s": sample_s}


def teacher_sampling(cfg: DistillConfig) -> SamplingConfig:
    t = cfg.temperature if cfg.distill_temperature is None else cfg.distill_temperature
    return SamplingConfig(max_tokens=cfg.max_completion_length, temperature=t, top_p=cfg.top_p, top_k=cfg.top_k)


def sample_dataset(cfg: DistillConfig, acc: Accelerator, path: Path,
                   log: Callable[[str], None] = print) -> tuple[datasets.Dataset, dict[str, Any], float]:
    """Rejection-sample the teacher into a dataset at ``path`` (or reuse the one there, if it was
    made with the same settings). -> (dataset, provenance, seconds spent sampling)."""
    _, teacher_tok = load_tokenizer(cfg, acc, "teacher_model_name_or_path")
    train, _ = load_data(cfg, teacher_tok)  # prompts rendered with the teacher's own template
    reward_funcs, reward_weights = dataset_rewards(cfg, train)
    n = min(cfg.distill_num_problems, len(train))
    sampling = teacher_sampling(cfg)
    source = {"dataset_name": cfg.dataset_name, "split": cfg.dataset_split, "problems": n, "order_seed": cfg.seed,
              **({"arith_train_size": cfg.arith_train_size} if cfg.dataset_name == "arith" else {})}
    settings = distill.dataset_settings(cfg.teacher_model_name_or_path, teacher_tok, sampling,
                                        cfg.distill_samples_per_problem, unique_names(reward_funcs), reward_weights,
                                        cfg.distill_selection, cfg.distill_min_reward, cfg.distill_max_per_problem,
                                        source, cfg.seed)
    if path.exists():
        ds, prov = distill.load_dataset(path)
        if prov.get("settings") != settings:
            differ = sorted(k for k in settings if prov.get("settings", {}).get(k) != settings[k])
            raise ValueError(f"config key 'distill_dataset_path': {path} holds a dataset made with other settings "
                             f"({', '.join(differ)}); point distill_dataset_path elsewhere or delete it to resample")
        log(f"reusing the distillation dataset at {path} ({len(ds)} examples)")
        return ds, prov, 0.0
    t0 = time.perf_counter()
    teacher, _ = load_teacher(cfg, acc)
    engine = build_engine(cfg, teacher, teacher_tok, acc) or HFEngine(teacher.to(acc.device), teacher_tok,
                                                                     cfg.generation_batch_prompts)
    runner = reward_runner(cfg, reward_funcs, reward_weights)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed)).tolist()[:n]
    mine = [dict(train[i], problem_index=i) for i in order[acc.process_index::acc.num_processes]]
    chunk = max(cfg.generation_batch_prompts, 1)
    records: list[dict] = []
    stats = distill.RejectionStats()
    try:
        starts = range(0, len(mine), chunk)
        for i in track(starts, description="teacher sampling", disable=not (acc.is_main_process and cfg.progress)):
            part = mine[i:i + chunk]
            recs, st = distill.rejection_sample(
                engine, part, cfg.distill_samples_per_problem, sampling, runner.score, cfg.distill_selection,
                cfg.distill_min_reward, cfg.distill_max_per_problem, cfg.prompt_column, skip_columns=("prompt_text",),
                # per problem: the answers do not depend on batching or the number of processes
                seeds=[stream_seed(cfg.seed, "distill", r["problem_index"]) for r in part])
            records.extend(recs)
            stats.add(st)
    finally:
        runner.close()
        close_engine(engine)
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
    ds = prepare(ds.remove_columns(["prompt_ids"]), prompt_column=cfg.prompt_column,
                 tokenizer=tokenizer, use_chat_template=cfg.use_chat_template, template=cfg.prompt_template,
                 system_prompt=cfg.system_prompt, max_prompt_length=cfg.max_prompt_length)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []

    def encode(row: dict) -> dict:
        text = completion_text(row["completion"])
        return {"completion_ids": tokenizer(text, add_special_tokens=False)["input_ids"] + eos}

    return ds.map(encode)

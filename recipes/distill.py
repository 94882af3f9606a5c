"""Distil a stronger model into a smaller one: offline (rejection-sampled SFT) or on-policy.

    accelerate launch recipes/distill.py --config recipes/configs/distill_offline_tiny.yaml
    accelerate launch recipes/distill.py --config recipes/configs/distill_onpolicy_tiny.yaml

``distill_mode: offline``: the teacher (``teacher_model_name_or_path``) answers
``distill_num_problems`` training problems ``distill_samples_per_problem`` times; the reward
functions keep the verified answers (``distill_selection``: best_of_k, all_correct,
shortest_correct; ``distill_min_reward``; at most ``distill_max_per_problem`` per problem, equal
texts once); the result is saved with its provenance as a Hugging Face dataset
(``distill_dataset_path``, default ``output_dir/distill_data``; reused by a later run with the
same settings); then the student (``model_name_or_path``) is fine-tuned on it for
``max_steps`` steps (rlreason/sft.py).

``distill_mode: on_policy``: GRPO's loop where the teacher scores every token the student
samples and the per-token reverse KL is the advantage (``teacher_kl_coef``), optionally plus
the verifier's (``teacher_reward_weight``). Teacher and student must share a tokenizer.

Both evaluate the student on held-out problems before and after, and write what
recipes/grpo_math.py writes (metrics.jsonl, report.html, summary.json, final_model/, ...).
See docs/distillation.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from grpo_math import (
    build_engine,
    clean_exit,
    dataset_rewards,
    finish,
    load_data,
    load_policy,
    load_teacher,
    load_tokenizer,
    run,
    start,
    training_starts,
)
from rich.progress import track

from rlreason import distill
from rlreason.config import DistillConfig, parse_args
from rlreason.data import prepare
from rlreason.rewards import accuracy_reward, completion_text, format_reward
from rlreason.rewards.runner import RewardRunner, unique_names
from rlreason.rollout.base import SamplingConfig
from rlreason.rollout.hf import HFEngine
from rlreason.sft import SFTTrainer
from rlreason.trainer import stream_seed

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "distill_onpolicy_tiny.yaml"


def teacher_sampling(cfg: DistillConfig) -> SamplingConfig:
    t = cfg.temperature if cfg.distill_temperature is None else cfg.distill_temperature
    return SamplingConfig(max_tokens=cfg.max_completion_length, temperature=t, top_p=cfg.top_p, top_k=cfg.top_k)


def sample_dataset(cfg: DistillConfig, acc: Accelerator, path: Path, log=print):
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
    runner = RewardRunner(reward_funcs, reward_weights, num_workers=max(cfg.reward_num_workers, 1),
                          timeout_s=cfg.reward_timeout_s, memory_mb=cfg.reward_memory_mb,
                          in_process=cfg.reward_num_workers == 0)
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
        if hasattr(engine, "close"):
            engine.close()
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


def for_student(ds, prov: dict, cfg: DistillConfig, tokenizer):
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


def offline(cfg: DistillConfig) -> dict:
    acc, out = start(cfg)
    data_path = Path(cfg.distill_dataset_path or out / "distill_data")
    ds, prov, sample_s = sample_dataset(cfg, acc, data_path, log=acc.print)
    model, tokenizer = load_policy(cfg, acc)
    train = for_student(ds, prov, cfg, tokenizer)
    _, eval_rows = load_data(cfg, tokenizer)
    trainer = SFTTrainer(cfg, model, tokenizer, train, reward_funcs=[], eval_rows=eval_rows,
                         eval_accuracy_fn=accuracy_reward, eval_format_fn=format_reward, accelerator=acc)
    training_starts()
    summary = trainer.train()
    summary["distill"] = {"dataset": str(data_path), "examples": len(train), "teacher_sampling_s": sample_s,
                          "counts": prov.get("counts", {})}
    summary["total_time_s"] += sample_s
    return finish(acc, trainer, summary, out)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv, default_config=DEFAULT_CONFIG, cls=DistillConfig)
    return offline(cfg) if cfg.distill_mode == "offline" else run(cfg)


if __name__ == "__main__":
    with clean_exit():
        main()

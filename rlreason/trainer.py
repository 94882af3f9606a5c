"""The GRPO loop: rollouts -> rewards -> advantages -> updates -> sync -> log.

One step:
1. take this step's prompts (a seeded permutation, sharded across processes; each
   prompt's whole group is generated on one process, so group statistics are local);
2. sample ``num_generations`` completions per prompt with the rollout engine;
3. score them with the reward functions (weighted sum; a failing reward scores None);
4. turn rewards into group-relative advantages;
5. ``num_iterations`` optimizer steps on the clipped surrogate (+ beta * KL), each over the
   whole batch in micro-batches of ``per_device_train_batch_size`` completions;
6. hand the new weights to the engine (free when the engine shares the policy);
7. log metrics, evaluate on held-out problems, checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_scheduler

from rlreason import algorithms as A
from rlreason.checkpoint import save_checkpoint, save_model
from rlreason.config import GRPOConfig
from rlreason.eval.core import evaluate
from rlreason.eval.metrics import diff_interval, wilson_interval
from rlreason.rewards.registry import reward_name
from rlreason.rewards.runner import score
from rlreason.rollout.base import RolloutEngine, Sample, SamplingConfig
from rlreason.rollout.hf import HFEngine, positions_from_mask
from rlreason.tracking import RunLogger

# Columns the data pipeline adds; rewards get every other column.
INTERNAL_COLUMNS = ("prompt_text", "prompt_ids")


@dataclass
class Rollout:
    """One step's experience on this process. N = prompts * G completions."""

    prompt_ids: list[list[int]]  # [N] (each prompt repeated G times)
    samples: list[Sample]  # [N]
    rewards: torch.Tensor  # [N] weighted sum
    per_func: dict[str, torch.Tensor]  # name -> [N], NaN where None
    advantages: torch.Tensor  # [N]
    prompts: list[Any]  # [N] raw prompts, for logging
    metrics: dict[str, float]


def pack(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """[left-padded prompt | right-padded completion] rows for a log-prob pass.

    -> input_ids, attention_mask, position_ids: [N, P + T]; completion_mask: [N, T];
    plus "prompt_width" P. Positions skip the left padding, as in generation, so the
    trainer scores exactly the computation the sampler did.
    """
    p_w = max(map(len, prompt_ids))
    c_w = max(1, max(map(len, completion_ids)))
    n = len(prompt_ids)
    ids = torch.full((n, p_w + c_w), pad_id, dtype=torch.long)
    mask = torch.zeros((n, p_w + c_w), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        ids[i, p_w - len(p):p_w] = torch.tensor(p)
        mask[i, p_w - len(p):p_w] = 1
        if c:
            ids[i, p_w:p_w + len(c)] = torch.tensor(c)
            mask[i, p_w:p_w + len(c)] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "position_ids": positions_from_mask(mask),
        "completion_mask": mask[:, p_w:].clone(),
        "prompt_width": p_w,
    }


def completion_logprobs(model, batch: dict[str, torch.Tensor], temperature: float = 1.0,
                        with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of the completion tokens under ``model``.

    -> logp [N, T] (and entropy [N, T] without grad, if asked). Logits are divided by the
    sampling temperature so the ratio compares the distribution the tokens were drawn from.
    """
    p_w = batch["prompt_width"]
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], use_cache=False)
    logits = out.logits[:, p_w - 1:-1].float()  # position t predicts token t + 1
    if temperature != 1.0:
        logits = logits / temperature
    logp = A.selective_log_softmax(logits, batch["input_ids"][:, p_w:])
    ent = None
    if with_entropy:
        with torch.no_grad():
            ent = A.entropy_from_logits(logits.detach())
    return logp, ent


class GRPOTrainer:
    def __init__(
        self,
        cfg: GRPOConfig,
        model,
        tokenizer,
        train_dataset: datasets.Dataset,
        reward_funcs: list[Callable],
        eval_rows: list[dict] | None = None,
        eval_accuracy_fn: Callable | None = None,
        eval_format_fn: Callable | None = None,
        engine: RolloutEngine | None = None,
        accelerator: Accelerator | None = None,
    ) -> None:
        self.cfg = cfg
        self.acc = accelerator or Accelerator(log_with=cfg.report_to or None, project_dir=cfg.output_dir)
        set_seed(cfg.seed, device_specific=True)
        if "prompt_ids" not in train_dataset.column_names:
            raise ValueError("train_dataset needs a 'prompt_ids' column: build it with rlreason.data.prepare")
        self.tokenizer = tokenizer
        self.train_dataset = train_dataset
        self.reward_funcs = reward_funcs
        self.reward_names = [reward_name(f) for f in reward_funcs]
        self.eval_rows = eval_rows or []
        self.eval_accuracy_fn = eval_accuracy_fn
        self.eval_format_fn = eval_format_fn
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.ref_model = None
        if cfg.beta > 0:  # the reference is only needed (and only loaded) for the KL term
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                      betas=(cfg.adam_beta1, cfg.adam_beta2))
        scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=cfg.warmup_steps,
                                  num_training_steps=cfg.max_steps * cfg.num_iterations)
        self.model, self.optimizer, self.scheduler = self.acc.prepare(model, optimizer, scheduler)
        if self.ref_model is not None:
            self.ref_model = self.ref_model.to(self.acc.device)
        self.engine = engine or HFEngine(self.acc.unwrap_model(self.model), tokenizer, cfg.generation_batch_prompts)
        self.engine_shares_policy = isinstance(self.engine, HFEngine) and \
            self.engine.model is self.acc.unwrap_model(self.model)
        self.sampling = SamplingConfig(max_tokens=cfg.max_completion_length, temperature=cfg.temperature,
                                       top_p=cfg.top_p, top_k=cfg.top_k)
        self.eval_sampling = SamplingConfig(max_tokens=cfg.eval_max_tokens or cfg.max_completion_length,
                                            temperature=0.0)
        self.prompts_per_process = cfg.completions_per_step // cfg.num_generations
        self.step = 0
        self.nonfinite_skipped = 0
        self._perm: tuple[int, torch.Tensor] | None = None
        self.log = RunLogger(cfg.output_dir, cfg.max_steps, enabled=self.acc.is_main_process,
                             progress=cfg.progress, accelerator=self.acc)
        if cfg.report_to:
            self.acc.init_trackers("rlreason", config={k: v for k, v in cfg.to_dict().items()
                                                       if isinstance(v, int | float | str | bool)})

    # ------------------------------------------------------------------ data

    def prompt_rows(self, step: int) -> list[dict]:
        """This process's prompts for ``step``: a pure function of (seed, step), so a resumed
        run draws exactly the prompts the uninterrupted run would have."""
        n = len(self.train_dataset)
        world, rank = self.acc.num_processes, self.acc.process_index
        per_step = self.prompts_per_process * world
        rows = []
        for pos in range(step * per_step + rank * self.prompts_per_process,
                         step * per_step + (rank + 1) * self.prompts_per_process):
            epoch, idx = divmod(pos, n)
            rows.append(self.train_dataset[int(self._permutation(epoch)[idx])])
        return rows

    def _permutation(self, epoch: int) -> torch.Tensor:
        """The dataset order for ``epoch``, seeded by (seed, epoch); the current one is kept."""
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.train_dataset), generator=g))
        return self._perm[1]

    # ------------------------------------------------------------------ rollout

    def rollout(self, rows: list[dict]) -> Rollout:
        G = self.cfg.num_generations
        t0 = time.perf_counter()
        groups = self.engine.generate([r["prompt_ids"] for r in rows], G, self.sampling)
        t_gen = time.perf_counter() - t0
        samples = [s for g in groups for s in g]
        prompts = [r[self.cfg.prompt_column] for r in rows for _ in range(G)]
        conversational = bool(prompts) and isinstance(prompts[0], list)
        completions = [[{"role": "assistant", "content": s.text}] if conversational else s.text for s in samples]
        skip = {self.cfg.prompt_column, *INTERNAL_COLUMNS}
        columns = {k: [r[k] for r in rows for _ in range(G)] for k in rows[0] if k not in skip}
        t0 = time.perf_counter()
        out = score(self.reward_funcs, self.cfg.reward_weights, prompts, completions, columns)
        t_score = time.perf_counter() - t0
        rewards = out.total
        if self.cfg.scale_rewards == "batch" and self.acc.num_processes > 1:
            # batch std must be over the global batch: compute it from gathered rewards
            all_r = self.acc.gather(rewards.to(self.acc.device)).cpu()
            centered, m = A.group_advantages(rewards, G, "none")
            adv = centered / (all_r.std() + 1e-4)
        else:
            adv, m = A.group_advantages(rewards, G, self.cfg.scale_rewards)
        lengths = torch.tensor([len(s.token_ids) for s in samples], dtype=torch.float)
        metrics = {
            "reward/mean": rewards.mean().item(),
            "reward/std": rewards.std().item() if len(rewards) > 1 else 0.0,
            **m,
            "completion/mean_length": lengths.mean().item(),
            "completion/max_length": lengths.max().item(),
            "completion/truncated_frac": sum(s.finish_reason == "length" for s in samples) / len(samples),
            "time/generation_s": t_gen,
            "time/scoring_s": t_score,
        }
        for name, vals in out.per_func.items():
            ok = vals[~torch.isnan(vals)]
            metrics[f"rewards/{name}/mean"] = ok.mean().item() if len(ok) else float("nan")
            metrics[f"rewards/{name}/std"] = ok.std().item() if len(ok) > 1 else 0.0
            metrics[f"rewards/{name}/failures"] = float(out.failures.get(name, 0))
        return Rollout([r["prompt_ids"] for r in rows for _ in range(G)], samples, rewards, out.per_func, adv,
                       prompts, metrics)

    # ------------------------------------------------------------------ update

    def _micro_batches(self, ro: Rollout) -> list[tuple[slice, dict[str, torch.Tensor]]]:
        mb = self.cfg.per_device_train_batch_size
        out = []
        for i in range(0, len(ro.samples), mb):
            sl = slice(i, i + mb)
            batch = pack(ro.prompt_ids[sl], [s.token_ids for s in ro.samples[sl]], self.tokenizer.pad_token_id)
            out.append((sl, {k: v.to(self.acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}))
        return out

    @torch.no_grad()
    def _frozen_logprobs(self, model, batches) -> list[torch.Tensor]:
        return [completion_logprobs(model, b, self.cfg.temperature)[0] for _, b in batches]

    def update(self, ro: Rollout) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        batches = self._micro_batches(ro)
        adv = ro.advantages.to(self.acc.device)
        # Denominators over the whole batch, so micro-batching leaves the gradient unchanged.
        n_tokens = sum(b["completion_mask"].sum().item() for _, b in batches)
        denom = max(n_tokens, 1) if cfg.loss_type == "dapo" else len(ro.samples)
        mode = "token_mean" if cfg.loss_type == "dapo" else "seq_mean"
        # With one update per rollout the policy that sampled is the policy being trained:
        # old log-probs equal the current ones (detached), so no extra forward pass is spent.
        old = self._frozen_logprobs(self.model, batches) if cfg.num_iterations > 1 else None
        ref = self._frozen_logprobs(self.ref_model, batches) if self.ref_model is not None else None
        self.model.train()
        stats: dict[str, float] = {"clip_frac": 0.0, "entropy": 0.0, "kl": 0.0, "loss": 0.0}
        grad_norms, skipped = [], 0
        for _ in range(cfg.num_iterations):
            for j, (sl, b) in enumerate(batches):
                last = j == len(batches) - 1
                ctx = contextlib.nullcontext() if last else self.acc.no_sync(self.model)
                with ctx:
                    logp, ent = completion_logprobs(self.model, b, cfg.temperature, with_entropy=True)
                    mask = b["completion_mask"]
                    old_logp = old[j] if old is not None else logp.detach()
                    loss_tok, clipped = A.token_surrogate(logp, old_logp, adv[sl], cfg.epsilon,
                                                          cfg.epsilon_high or cfg.epsilon)
                    if ref is not None:
                        kl = A.kl_k3(logp, ref[j])
                        loss_tok = loss_tok + cfg.beta * kl
                        stats["kl"] += (kl.detach() * mask).sum().item()
                    loss = A.aggregate(loss_tok, mask, mode, denom=denom)
                    self.acc.backward(loss)
                stats["loss"] += loss.item()
                stats["clip_frac"] += (clipped & mask.bool()).sum().item()
                stats["entropy"] += (ent * mask).sum().item()
            grad_norm = self.acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            grad_norm = float(grad_norm)
            if math.isfinite(grad_norm) and math.isfinite(stats["loss"]):
                self.optimizer.step()
            else:  # a non-finite update would poison the weights: skip it and count it
                skipped += 1
                self.nonfinite_skipped += 1
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            grad_norms.append(grad_norm)
        k = cfg.num_iterations
        tok = max(n_tokens, 1) * k
        metrics = {
            "loss": stats["loss"] / k,
            "clip_frac": stats["clip_frac"] / tok,
            "entropy": stats["entropy"] / tok,
            "grad_norm": sum(grad_norms) / k,
            "lr": self.scheduler.get_last_lr()[0],
            "nonfinite_skipped": float(self.nonfinite_skipped),
            "time/training_s": time.perf_counter() - t0,
        }
        if ref is not None:
            metrics["kl"] = stats["kl"] / tok
        return metrics

    def sync_weights(self) -> None:
        """Give the engine the new policy; nothing to move when it generates with the policy itself."""
        if not self.engine_shares_policy:
            self.engine.load_weights(self.acc.unwrap_model(self.model).named_parameters())

    # ------------------------------------------------------------------ eval / loop

    def evaluate(self, n: int | None = None) -> dict[str, Any]:
        """Greedy accuracy on the held-out rows (the first ``n``), sharded across processes."""
        rows = self.eval_rows[:n] if n else self.eval_rows
        if not rows or self.eval_accuracy_fn is None:
            return {}
        mine = rows[self.acc.process_index::self.acc.num_processes]
        res = evaluate(self.engine, [r["prompt_ids"] for r in mine], [r[self.cfg.prompt_column] for r in mine],
                       [r["answer"] for r in mine], self.eval_accuracy_fn, self.eval_sampling, self.eval_format_fn)
        counts = torch.tensor([res["correct"], res["n"], res.get("format_rate", 0.0) * res["n"],
                               res["mean_length"] * res["n"], res["truncated_frac"] * res["n"]],
                              dtype=torch.float64, device=self.acc.device)
        counts = self.acc.reduce(counts, "sum") if self.acc.num_processes > 1 else counts
        correct, total, fmt, length, trunc = counts.tolist()
        lo, hi = wilson_interval(int(correct), int(total))
        return {"eval/accuracy": correct / total, "eval/accuracy_ci_low": lo, "eval/accuracy_ci_high": hi,
                "eval/correct": int(correct), "eval/n": int(total), "eval/format_rate": fmt / total,
                "eval/mean_length": length / total, "eval/truncated_frac": trunc / total,
                "eval/samples": res["samples"]}

    def _log_completions(self, ro: Rollout) -> None:
        G = self.cfg.num_generations
        rows = []
        for i in range(min(len(ro.samples), 2 * G)):  # the first two groups
            rows.append({"prompt": ro.prompts[i], "completion": ro.samples[i].text,
                         "reward": ro.rewards[i].item(), "advantage": ro.advantages[i].item(),
                         **{f"reward/{k}": (None if math.isnan(v[i].item()) else v[i].item())
                            for k, v in ro.per_func.items()},
                         "finish_reason": ro.samples[i].finish_reason})
        self.log.completions(self.step, rows)

    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.acc.is_main_process:
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        t_start = time.perf_counter()
        before = self.evaluate(cfg.final_eval_size)
        if before:
            self.log.log(0, {k: v for k, v in before.items() if k != "eval/samples"})
            self.log.advance(0, before)
            self.log.print(f"held-out accuracy before training: {before['eval/accuracy']:.3f} "
                           f"({before['eval/correct']}/{before['eval/n']})")
        samples_per_s = []
        t_train = time.perf_counter()
        while self.step < cfg.max_steps:
            t0 = time.perf_counter()
            ro = self.rollout(self.prompt_rows(self.step))
            metrics = dict(ro.metrics)
            metrics.update(self.update(ro))
            self.sync_weights()
            self.step += 1
            dt = time.perf_counter() - t0
            n_comp = len(ro.samples) * self.acc.num_processes
            n_tok = sum(len(s.token_ids) for s in ro.samples) * self.acc.num_processes
            metrics.update({"time/step_s": dt, "perf/samples_per_s": n_comp / dt, "perf/tokens_per_s": n_tok / dt})
            acc_name = next((n for n in ro.per_func if n.startswith("accuracy")), None)
            if acc_name is not None:  # the progress bar's "acc": the accuracy reward's batch mean
                metrics["accuracy"] = metrics[f"rewards/{acc_name}/mean"]
            metrics = self._reduce(metrics)
            samples_per_s.append(metrics["perf/samples_per_s"])
            if cfg.eval_steps and self.step % cfg.eval_steps == 0 and self.step < cfg.max_steps:
                ev = self.evaluate(cfg.eval_size)
                metrics.update({k: v for k, v in ev.items() if k != "eval/samples"})
            if self.step % cfg.logging_steps == 0 or self.step == cfg.max_steps:
                self.log.log(self.step, metrics)
            if cfg.log_completions_steps and (self.step == 1 or self.step % cfg.log_completions_steps == 0):
                self._log_completions(ro)
            self.log.advance(self.step, metrics)
            if cfg.save_steps and self.step % cfg.save_steps == 0 and self.step < cfg.max_steps:
                self.save(self.step)
        train_time = time.perf_counter() - t_train
        after = self.evaluate(cfg.final_eval_size)
        if after:
            self.log.log(self.step, {k: v for k, v in after.items() if k != "eval/samples"})
        self.save(self.step)
        self.log.close()
        summary = {"steps": self.step, "train_time_s": train_time, "total_time_s": time.perf_counter() - t_start,
                   "samples_per_s": sum(samples_per_s) / max(len(samples_per_s), 1),
                   "nonfinite_skipped": self.nonfinite_skipped}
        if before and after:
            lo, hi = diff_interval(before["eval/correct"], before["eval/n"], after["eval/correct"], after["eval/n"])
            summary.update({"heldout_before": before["eval/accuracy"], "heldout_after": after["eval/accuracy"],
                            "heldout_n": after["eval/n"], "gain": after["eval/accuracy"] - before["eval/accuracy"],
                            "gain_ci95": [lo, hi],
                            "before_ci95": [before["eval/accuracy_ci_low"], before["eval/accuracy_ci_high"]],
                            "after_ci95": [after["eval/accuracy_ci_low"], after["eval/accuracy_ci_high"]]})
        if cfg.report_to:
            self.acc.end_training()
        return summary

    def _reduce(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over processes (max for maxima)."""
        if self.acc.num_processes == 1:
            return metrics
        keys = sorted(k for k, v in metrics.items() if isinstance(v, int | float))
        vals = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=self.acc.device)
        gathered = self.acc.gather(vals.unsqueeze(0))  # [world, K]
        out = dict(metrics)
        for i, k in enumerate(keys):
            col = gathered[:, i]
            if k.startswith("perf/"):
                out[k] = col[0].item()  # already global (counted with num_processes)
            elif k.endswith("max_length"):
                out[k] = col.max().item()
            else:
                out[k] = col.nanmean().item()
        return out

    def save(self, step: int) -> Path:
        return save_checkpoint(self.acc, self.cfg.output_dir, step,
                               {"config": self.cfg.to_dict(), "nonfinite_skipped": self.nonfinite_skipped},
                               keep=self.cfg.save_total_limit)

    def save_final(self, out_dir: str | Path) -> Path:
        return save_model(self.acc, self.model, self.tokenizer, out_dir)

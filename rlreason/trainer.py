"""The GRPO loop: rollouts -> rewards -> advantages -> updates -> sync -> log.

One step:
1. take this step's prompts (a seeded permutation, sharded across processes; each
   prompt's whole group is generated on one process, so group statistics are local;
   statistics over the whole batch are computed on every process's data, see below);
2. sample ``num_generations`` completions per prompt with the rollout engine;
3. score them with the reward functions (weighted sum; a failing reward scores None; a
   completion with no applicable term has reward NaN: no signal, advantage 0; a reward that
   gives nothing for ``max_failed_reward_steps`` steps in a row stops the run);
4. turn rewards into group-relative advantages;
5. ``num_iterations`` optimizer steps on the clipped surrogate (+ beta * KL), each over the
   whole batch in micro-batches of ``per_device_train_batch_size`` completions;
6. hand the new weights to the engine (free when the engine shares the policy);
7. log metrics, evaluate on held-out problems, checkpoint.

With several processes (data parallel: DDP through accelerate), the batch of a step is the
union of the processes' shards, and the update equals the single-process update on that
batch (tests/test_distributed.py checks it in 2 processes): batch-level advantage
statistics gather every process's rewards; loss denominators that count the whole batch
(tokens, sequences) use global counts divided by the number of processes, because DDP
averages the processes' gradients; metrics are computed on the gathered samples or summed
over processes. A process whose shard is empty (dynamic sampling) still takes part in
every collective, with a zero-weight micro-batch, and every process runs as many micro-batches
as the one with the most (padding micro-batches of zero weight: a sharded policy's forwards are
collectives). The learning-rate schedule takes one step per optimizer step, whatever the number
of processes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import rich.markup
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from transformers import TrainerState, get_scheduler

from rlreason import algorithms as A
from rlreason import stopping
from rlreason.checkpoint import (
    check_output_dir,
    read_state,
    record_final_eval,
    resolve_resume,
    save_checkpoint,
    save_model,
    truncate_jsonl,
)
from rlreason.config import GRPOConfig
from rlreason.distributed import full_named_parameters, gather_varlen, reduce_sum
from rlreason.eval.core import EvalProtocol, evaluate, evaluate_suites, flat_metrics
from rlreason.eval.metrics import diff_interval, wilson_interval
from rlreason.logprobs import completion_logprobs, enable_gradient_checkpointing, pack
from rlreason.lora import is_peft_model, merged_named_parameters, save_merged
from rlreason.moe import ROUTER_CLASSES, RouterStats, RoutingCapture, aux_loss_coef, find_routers
from rlreason.optim import optimizer_class, optimizer_kwargs
from rlreason.packing import pack_groups, supports_packing
from rlreason.resume import apply_optimizer_changes, change_record, check_config_changes
from rlreason.rewards.runner import MESSAGES_COLUMN, RewardRunner, reward_inputs
from rlreason.rollout.base import RolloutEngine, Sample, SamplingConfig
from rlreason.rollout.hf import HFEngine
from rlreason.tracking import RunLogger, write_report

# Columns the data pipeline adds; rewards get every other column.
INTERNAL_COLUMNS = ("prompt_text", "prompt_ids", MESSAGES_COLUMN)


class RewardFailureError(RuntimeError):
    """A reward gave no score (failed or None) on any completion for several steps in a row:
    the run would train on nothing, so it stops (with a checkpoint)."""


@dataclass
class Rollout:
    """One step's experience on this process. N = prompts * G completions, groups adjacent."""

    prompt_ids: list[list[int]]  # [N] (each prompt repeated G times)
    samples: list[Sample]  # [N]
    rewards: torch.Tensor  # [N] weighted sum; NaN where no reward term applies (no signal)
    per_func: dict[str, torch.Tensor]  # name -> [N], NaN where None
    prompts: list[Any]  # [N] raw prompts, for logging
    group_size: int
    metrics: dict[str, float]
    advantages: torch.Tensor | None = None  # [N], set once the batch is final
    extra: dict[str, list] = dataclasses.field(default_factory=dict)  # rewards' log_extra columns, [N] each

    @property
    def num_groups(self) -> int:
        return len(self.samples) // self.group_size

    def informative_groups(self) -> list[int]:
        """Indices of groups whose rewards are not all equal (they carry a learning signal);
        NaN rewards (no applicable term) do not count."""
        return torch.nonzero(A.signal_groups(self.rewards, self.group_size)).flatten().tolist()

    def select(self, groups: list[int]) -> Rollout:
        """Only the given groups (in that order)."""
        G = self.group_size
        idx = [i * G + j for i in groups for j in range(G)]
        t = torch.tensor(idx, dtype=torch.long)
        return Rollout([self.prompt_ids[i] for i in idx], [self.samples[i] for i in idx], self.rewards[t],
                       {k: v[t] for k, v in self.per_func.items()}, [self.prompts[i] for i in idx], G, self.metrics,
                       None if self.advantages is None else self.advantages[t],
                       {k: [v[i] for i in idx] for k, v in self.extra.items()})

    def concat(self, other: Rollout) -> Rollout:
        return Rollout(self.prompt_ids + other.prompt_ids, self.samples + other.samples,
                       torch.cat([self.rewards, other.rewards]),
                       {k: torch.cat([v, other.per_func[k]]) for k, v in self.per_func.items()},
                       self.prompts + other.prompts, self.group_size, self.metrics, None,
                       {k: self.extra.get(k, [None] * len(self.samples))
                        + other.extra.get(k, [None] * len(other.samples)) for k in {*self.extra, *other.extra}})


def stream_seed(seed: int, stream: str, pos: int) -> int:
    """The sampling seed of the item at ``pos`` of a named stream (a run's prompts, the distillation
    teacher's problems): a function of (seed, stream, position) only, never of the process count
    or batching."""
    digest = hashlib.blake2b(f"{seed}:{stream}:{pos}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # < 2**63, as torch.manual_seed wants


def _input_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[rows, width] 1 where the model input holds a real token: the 2D attention mask of a
    padded batch; a prompt-group-packed batch's block mask is 4D, it carries "row_tokens"."""
    return batch["row_tokens"] if "row_tokens" in batch else batch["attention_mask"]


def disable_dropout(model: torch.nn.Module) -> int:
    """Switch every dropout of ``model`` off (``nn.Dropout`` modules, LoRA's included, and the
    attention dropout transformers' attention modules hold as a float); -> how many were on.

    Dropout in the log-prob passes is noise in the ratio pi_theta / pi_old: two passes over the
    same tokens with the same weights disagree, so a ratio that should be 1 is clipped at random
    (with num_iterations > 1), and the KL to the reference is not 0 when it should be. Eval mode
    would also switch it off but also switches off transformers' gradient checkpointing, so the
    probabilities are made 0 instead.
    """
    on = 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Dropout) and mod.p > 0:
            mod.p, on = 0.0, on + 1
        if isinstance(getattr(mod, "attention_dropout", None), float) and mod.attention_dropout > 0:
            mod.attention_dropout, on = 0.0, on + 1
    return on


def setting_warnings(cfg: GRPOConfig, separate_engine: bool) -> list[str]:
    """Settings that run but likely do not compute what was meant (docs/algorithms.md, "What each
    setting really computes"); the trainer warns about each at start-up."""
    out = []
    if cfg.beta > 0 and cfg.kl_estimator == "k1":
        out.append("kl_estimator k1 with beta > 0: as a loss term k1's gradient, grad log pi, has expectation 0 "
                   "under the policy's own samples, so the KL term adds noise and no pull towards the reference; "
                   "use k2 (gradient of KL(pi || ref)) or k3 (GRPO's; gradient of KL(ref || pi))")
    if separate_engine and cfg.weight_sync_steps > 1 and (cfg.top_p < 1 or cfg.top_k > 0):
        out.append("weight_sync_steps > 1 with top_p < 1 or top_k > 0: the stale sampler's log-probs (the "
                   "behaviour policy of the ratio) are of the truncated distribution, the policy's of the full "
                   "one, so lagging steps' ratios are off by the kept mass")
    return out


class GRPOTrainer:
    # whether several prompt groups may share a packed row (rlreason.packing); GRPO's groups are
    # long enough to fill rows, many short SFT examples are not (rlreason.sft)
    share_pack_rows = False
    # Dropout in training: off for GRPO (its ratios and KL compare passes, ``disable_dropout``); an
    # objective that compares no passes (rlreason.sft's NLL) may keep it as a regulariser.
    keep_dropout = False

    def __init__(
        self,
        cfg: GRPOConfig,
        model,
        tokenizer,
        train_dataset: datasets.Dataset,
        reward_funcs: list[Callable],
        reward_weights: list[float] | None = None,
        eval_rows: list[dict] | None = None,
        eval_accuracy_fn: Callable | None = None,
        eval_format_fn: Callable | None = None,
        engine: RolloutEngine | None = None,
        accelerator: Accelerator | None = None,
        teacher=None,
    ) -> None:
        """``teacher``: a causal LM sharing ``tokenizer`` for on-policy distillation (its per-token
        log-probs give the advantages, ``cfg.teacher_kl_coef``); None for plain GRPO."""
        self.cfg = cfg
        optim_cls = optimizer_class(cfg.optim)  # first: a missing bitsandbytes fails before any work
        self.acc = accelerator or Accelerator(log_with=cfg.report_to or None, project_dir=cfg.output_dir)
        set_seed(cfg.seed, device_specific=True)
        if "prompt_ids" not in train_dataset.column_names:
            raise ValueError("train_dataset needs a 'prompt_ids' column: build it with rlreason.data.prepare")
        self.tokenizer = tokenizer
        self.train_dataset = train_dataset
        self.reward_funcs = reward_funcs
        # Built first: the runner forks its manager process now, before this process holds
        # much memory or starts threads. A reward that hangs, crashes or blows memory there
        # costs only its completions (scored None, counted), never the run.
        self.rewards = RewardRunner(reward_funcs, reward_weights if reward_weights is not None else cfg.reward_weights,
                                    num_workers=max(cfg.reward_num_workers, 1), timeout_s=cfg.reward_timeout_s,
                                    memory_mb=cfg.reward_memory_mb, in_process=cfg.reward_num_workers == 0)
        self.eval_rows = eval_rows or []
        self.eval_accuracy_fn = eval_accuracy_fn
        self.eval_format_fn = eval_format_fn
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        if not self.keep_dropout:  # before the reference is copied from it
            disable_dropout(model)
        self.preset = A.PRESETS[cfg.loss_type]
        self.scale_rewards = cfg.scale_rewards or self.preset.scale_rewards
        self.ratio_level = cfg.importance_sampling_level or self.preset.ratio_level
        self.clip_range = cfg.clip_range()  # the preset's paper values unless the config sets epsilon
        self.ref_model = None
        self.ref_is_base_adapter = is_peft_model(model) and cfg.beta > 0
        if cfg.beta > 0 and not self.ref_is_base_adapter:
            # The reference is only needed (and only loaded) for the KL term. With LoRA it is the
            # policy with its adapter disabled: no second copy of the weights.
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        params = list(model.parameters())
        sharded = self.acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)
        optimizer = optim_cls(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                              betas=(cfg.adam_beta1, cfg.adam_beta2), **optimizer_kwargs(cfg.optim, params, sharded))
        if cfg.max_steps == -1:  # TRL's rule: the steps num_train_epochs passes over the prompts take
            per_step = cfg.completions_per_step // cfg.num_generations * self.acc.num_processes
            cfg.max_steps = max(1, math.ceil(cfg.num_train_epochs * len(train_dataset) / per_step))
        total_updates = cfg.max_steps * cfg.num_iterations
        # warmup_steps wins over warmup_ratio, as in transformers
        warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_updates)
        scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=warmup,
                                  num_training_steps=total_updates,
                                  scheduler_specific_kwargs=cfg.lr_scheduler_kwargs or None)
        self.model, self.optimizer, self.scheduler = self.acc.prepare(model, optimizer, scheduler)
        # One scheduler step per optimizer step, whatever the process count. accelerate's prepared
        # scheduler otherwise steps the real one num_processes times per call (it assumes each
        # process's dataloader batch adds to the global batch count), which ran the schedule N times
        # too fast on N processes (tests/test_distributed_math.py). It stays prepared, so the
        # checkpoint still holds its state.
        self.scheduler.step_with_optimizer = False
        # Mixture-of-experts policy: router metrics every step, optional load-balancing loss and
        # routing replay (rlreason/moe.py). Nothing of it runs for a dense model.
        self.routers = find_routers(self.acc.unwrap_model(self.model))
        if cfg.routing_replay and not self.routers:
            raise ValueError("config key 'routing_replay': the policy has no mixture-of-experts routers "
                             f"rlreason knows (it recognises {', '.join(sorted(ROUTER_CLASSES))})")
        self.router_aux_loss_coef = aux_loss_coef(self.acc.unwrap_model(self.model).config,
                                                  cfg.router_aux_loss_coef) if self.routers else 0.0
        if self.ref_model is not None:
            self.ref_model = self.ref_model.to(self.acc.device)
        if teacher is not None and not cfg.teacher_model_name_or_path:
            raise ValueError("a teacher model was given but config key 'teacher_model_name_or_path' is not set")
        self.teacher = None if teacher is None else teacher.to(self.acc.device).eval().requires_grad_(False)
        if self.teacher is not None and self.teacher.get_output_embeddings().weight.shape[0] < len(tokenizer):
            raise ValueError(f"config key 'teacher_model_name_or_path': the teacher's output layer has "
                             f"{self.teacher.get_output_embeddings().weight.shape[0]} rows but the tokenizer has "
                             f"{len(tokenizer)} tokens; teacher and student must share a tokenizer")
        self.packing_supported = supports_packing(self.acc.unwrap_model(self.model)) and (
            self.teacher is None or supports_packing(self.teacher))
        self.pack_row_tokens = cfg.pack_max_row_tokens or max(
            64, getattr(self.acc.unwrap_model(self.model).config.get_text_config(), "hidden_size", 1024))
        self.engine = engine or HFEngine(self.acc.unwrap_model(self.model), tokenizer, cfg.generation_batch_prompts)
        self.engine_shares_policy = isinstance(self.engine, HFEngine) and \
            self.engine.model is self.acc.unwrap_model(self.model)
        for msg in setting_warnings(cfg, not self.engine_shares_policy):
            warnings.warn(msg, stacklevel=2)
        self.sampling = SamplingConfig(max_tokens=cfg.max_completion_length, temperature=cfg.temperature,
                                       top_p=cfg.top_p, top_k=cfg.top_k)
        self.eval_sampling = SamplingConfig(max_tokens=cfg.eval_max_tokens or cfg.max_completion_length,
                                            temperature=0.0)
        self.prompts_per_process = cfg.completions_per_step // cfg.num_generations
        self.step = 0
        self.nonfinite_skipped = 0
        self.extra_prompts_drawn = 0  # dynamic sampling's own prompt stream position
        self._perm: tuple[int, torch.Tensor] | None = None
        # Estimators that normalise over the whole batch need every process's rewards (gathered
        # with their lengths, so dynamic sampling's unequal shards work too).
        self.global_advantages = cfg.advantage_estimator == "reinforce_pp" or (
            cfg.advantage_estimator == "grpo" and self.scale_rewards == "batch")
        if self.acc.distributed_type == DistributedType.DEEPSPEED and cfg.gradient_accumulation_steps > 1:
            # accelerate lets the DeepSpeed engine step after every backward unless it is told
            # about accumulation; the trainer accumulates its micro-batches itself.
            raise ValueError("with DeepSpeed set gradient_accumulation_steps: 1 (one micro-batch per optimizer step; "
                             "the trainer's own micro-batch accumulation does not drive DeepSpeed's yet)")
        # Before the logger opens its files: refuse to mix with another run's checkpoints, and on
        # resume drop what the interrupted run logged after its last checkpoint.
        self.resume_path = resolve_resume(cfg.output_dir, cfg.resume_from_checkpoint)  # verified
        check_output_dir(cfg.output_dir, cfg.resume_from_checkpoint, cfg.overwrite_output_dir,
                         delete=self.acc.is_main_process)
        self.config_changes: list[dict[str, Any]] = []  # allowed changes made on resumes, recorded in checkpoints
        if self.resume_path is not None:
            saved = read_state(self.resume_path)
            changes = check_config_changes(saved.get("config", {}), cfg, str(self.resume_path))
            self.config_changes = saved.get("config_changes", []) + change_record(changes, saved["step"])
        if self.acc.is_main_process and cfg.resume_from_checkpoint:
            # with "auto" and no checkpoint yet this is a fresh start: what the dead run logged goes
            done = read_state(self.resume_path)["step"] if self.resume_path is not None else -1
            for name in ("metrics.jsonl", "completions.jsonl"):
                truncate_jsonl(Path(cfg.output_dir) / name, done)
        self.acc.wait_for_everyone()
        self.nonfinite_streak = 0  # non-finite updates in a row
        self.dead_reward_streak: dict[str, int] = {}  # reward -> steps in a row it scored no completion
        self.reward_errors: dict[str, str] = {}  # reward -> its latest failure, shown when the run stops
        self.reward_failures_total: dict[str, int] = {}  # reward -> completions it failed on, whole run
        self.last_eval: dict[str, float] = {}  # the latest periodic eval, saved with checkpoints
        self.heldout_before: dict[str, Any] = {}
        self._saved_step: int | None = None  # the step of the newest checkpoint this run wrote or resumed from
        self.log = RunLogger(cfg.output_dir, cfg.max_steps, enabled=self.acc.is_main_process,
                             progress=cfg.progress, accelerator=self.acc)
        if cfg.report_to:
            self.acc.init_trackers("rlreason", config={k: v for k, v in cfg.to_dict().items()
                                                       if isinstance(v, int | float | str | bool)})

    # ------------------------------------------------------------------ data

    def prompt_positions(self, step: int) -> range:
        """This process's positions in the run's prompt stream at ``step``: the step's global
        batch is ``prompts_per_process * num_processes`` consecutive positions, and rank r
        takes the r-th slice, so the shards are disjoint and their union (in rank order) is
        what one process with the whole batch would draw."""
        per_step = self.prompts_per_process * self.acc.num_processes
        start = step * per_step + self.acc.process_index * self.prompts_per_process
        return range(start, start + self.prompts_per_process)

    def prompt_rows(self, step: int) -> list[dict]:
        """This process's prompts for ``step``: a pure function of (seed, step), so a resumed
        run draws exactly the prompts the uninterrupted run would have."""
        n = len(self.train_dataset)
        rows = []
        for pos in self.prompt_positions(step):
            epoch, idx = divmod(pos, n)
            rows.append(self.train_dataset[int(self._permutation(epoch)[idx])])
        return rows

    def prompt_seed(self, stream: str, pos: int) -> int:
        """The sampling seed of the prompt at ``pos`` of a prompt stream (``generation_seed_per_prompt``)."""
        return stream_seed(self.cfg.seed, stream, pos)

    def _permutation(self, epoch: int) -> torch.Tensor:
        """The dataset order for ``epoch``, seeded by (seed, epoch); the current one is kept."""
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.train_dataset), generator=g))
        return self._perm[1]

    def extra_prompt_rows(self, k: int) -> list[dict]:
        """``k`` more prompts for dynamic sampling, from a stream of their own (a different
        seeded order, offset by rank), so refills never take the prompts of later steps."""
        n = len(self.train_dataset)
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + 7_919 * (self.acc.process_index + 1))
        order = torch.randperm(n, generator=g)
        rows = [self.train_dataset[int(order[(self.extra_prompts_drawn + i) % n])] for i in range(k)]
        self.extra_prompts_drawn += k
        return rows

    def _seeds(self, stream: str, positions: range) -> list[int] | None:
        if not self.cfg.generation_seed_per_prompt:
            return None
        return [self.prompt_seed(stream, p) for p in positions]

    # ------------------------------------------------------------------ rollout

    def rollout(self, rows: list[dict], seeds: list[int] | None = None) -> Rollout:
        """Generate and score ``rows`` on this process (no communication: with dynamic sampling
        the processes run different numbers of rounds). ``metrics`` holds this process's
        timings and reward failure counts; batch statistics come from ``sample_metrics``."""
        G = self.cfg.num_generations
        t0 = time.perf_counter()
        prompt_ids = [r["prompt_ids"] for r in rows]
        if seeds is None:
            groups = self.engine.generate(prompt_ids, G, self.sampling)
        else:
            groups = self.engine.generate(prompt_ids, G, self.sampling, seeds=seeds)
        t_gen = time.perf_counter() - t0
        samples = [s for g in groups for s in g]
        prompts, completions, columns = reward_inputs(rows, [s.text for s in samples], [s.token_ids for s in samples],
                                                      G, self.cfg.prompt_column, skip=INTERNAL_COLUMNS,
                                                      plain_text=self.cfg.rewards_plain_text)
        t0 = time.perf_counter()
        out = self.rewards.score(prompts, completions, columns, shared={"trainer_state": self.trainer_state()})
        t_score = time.perf_counter() - t0
        metrics = {"time/generation_s": t_gen, "time/scoring_s": t_score, **out.logged}
        for name in out.per_func:
            metrics[f"rewards/{name}/failures"] = float(out.failures.get(name, 0))
        self.reward_errors.update(out.errors)
        # No applicable term: NaN, left out of the group statistics (advantage 0), never a 0 score.
        rewards = torch.where(out.applicable, out.total, torch.full_like(out.total, math.nan))
        return Rollout([r["prompt_ids"] for r in rows for _ in range(G)], samples, rewards, out.per_func,
                       prompts, G, metrics, extra=out.extra)

    def trainer_state(self) -> TrainerState:
        """What TRL passes rewards as ``trainer_state`` (they read ``global_step``, ``max_steps``)."""
        n = max(len(self.train_dataset), 1)
        per_step = self.prompts_per_process * self.acc.num_processes
        return TrainerState(global_step=self.step, max_steps=self.cfg.max_steps, epoch=self.step * per_step / n,
                            num_train_epochs=math.ceil(self.cfg.max_steps * per_step / n))

    def sample_metrics(self, ro: Rollout) -> dict[str, float]:
        """Reward and length statistics of the whole step's batch: every process's samples are
        gathered first (a mean of per-process means or stds would be wrong for unequal shards)."""
        names = list(ro.per_func)
        cols = [ro.rewards.float(), *(ro.per_func[k].float() for k in names),
                torch.tensor([float(len(s.token_ids)) for s in ro.samples]),
                torch.tensor([float(s.finish_reason == "length") for s in ro.samples])]
        table = gather_varlen(self.acc, torch.stack(cols, dim=1).reshape(len(ro.samples), len(cols)))
        if len(table) == 0:
            return {}
        rewards, lengths, truncated = table[:, 0], table[:, -2], table[:, -1]
        scored = rewards[~torch.isnan(rewards)]  # completions with no applicable term carry no score
        metrics = {
            "reward/mean": scored.mean().item() if len(scored) else float("nan"),
            "reward/std": scored.std().item() if len(scored) > 1 else 0.0,
            "reward/no_signal_frac": 1.0 - len(scored) / len(rewards),
            "completion/mean_length": lengths.mean().item(),
            "completion/max_length": lengths.max().item(),
            "completion/truncated_frac": truncated.mean().item(),
        }
        for i, name in enumerate(names):
            vals = table[:, 1 + i]
            ok = vals[~torch.isnan(vals)]
            metrics[f"rewards/{name}/mean"] = ok.mean().item() if len(ok) else float("nan")
            metrics[f"rewards/{name}/std"] = ok.std().item() if len(ok) > 1 else 0.0
            metrics[f"rewards/{name}/none_frac"] = 1.0 - len(ok) / len(vals)
        return metrics

    def collect(self) -> Rollout:
        """This step's batch: a rollout of this step's prompts; with dynamic sampling (DAPO,
        sec. 3.2), groups whose rewards are all equal are dropped and more prompts sampled until
        the batch is full again or ``max_resample_rounds`` extra rounds are spent."""
        cfg = self.cfg
        ro = self.rollout(self.prompt_rows(self.step), self._seeds("train", self.prompt_positions(self.step)))
        metrics = {**ro.metrics, **self.sample_metrics(ro)}  # of the policy's draw, before any filtering
        if cfg.dynamic_sampling:
            want = self.prompts_per_process
            ro = ro.select(ro.informative_groups())
            rounds = 0
            while ro.num_groups < want and rounds < cfg.max_resample_rounds:
                rounds += 1
                first = self.extra_prompts_drawn
                more = self.rollout(self.extra_prompt_rows(want),
                                    self._seeds(f"extra-{self.acc.process_index}", range(first, first + want)))
                metrics["time/generation_s"] += more.metrics["time/generation_s"]
                metrics["time/scoring_s"] += more.metrics["time/scoring_s"]
                ro = ro.concat(more.select(more.informative_groups()))
            ro = ro.select(list(range(min(want, ro.num_groups))))
            metrics.update({"dynamic_sampling/rounds": float(rounds),
                            "dynamic_sampling/extra_prompts": float(rounds * want),
                            "dynamic_sampling/kept_groups": float(ro.num_groups)})
        ro.advantages, m = self.compute_advantages(ro.rewards)
        ro.metrics = {**metrics, **m}
        return ro

    def compute_advantages(self, rewards: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Advantages of this process's rewards [N] -> [N]. Estimators that normalise over the
        batch see the global batch: rewards are gathered from every process first (shards may
        differ in length). Collective with several processes: every process calls it, even
        with no rewards."""
        cfg, G = self.cfg, self.cfg.num_generations
        est, scale = cfg.advantage_estimator, self.scale_rewards
        world = self.acc.num_processes
        if self.global_advantages and world > 1:
            sizes = gather_varlen(self.acc, torch.tensor([len(rewards)])).tolist()
            all_r = gather_varlen(self.acc, rewards.float())
            if len(all_r) == 0:
                return rewards.clone(), {"frac_zero_std_groups": float("nan")}
            adv, m = A.advantages(all_r, G, est, scale)
            start = sum(sizes[:self.acc.process_index])
            return adv[start:start + len(rewards)], m
        if len(rewards) == 0:
            adv, m = rewards.clone(), {"frac_zero_std_groups": float("nan")}
        else:
            adv, m = A.advantages(rewards, G, est, scale)
        if world > 1:  # the fraction over all groups, not a mean of per-process fractions
            n_groups = len(rewards) // G
            flat = 0.0 if n_groups == 0 else m["frac_zero_std_groups"] * n_groups
            flat, total = reduce_sum(self.acc, [flat, float(n_groups)])
            m["frac_zero_std_groups"] = flat / total if total else float("nan")
        return adv, m

    # ------------------------------------------------------------------ update

    def _micro_batches(self, ro: Rollout) -> list[tuple[slice, dict[str, torch.Tensor]]]:
        mb = self.cfg.per_device_train_batch_size
        out = []
        if not ro.samples:
            # An empty shard (dynamic sampling kept no group here) while other processes train:
            # one pad-token row with an all-zero mask joins DDP's gradient all-reduce with zero
            # gradients, so the processes' collectives stay matched.
            return [(slice(0, 1), self._padding_micro_batch())]
        G = ro.group_size
        # Packed by prompt group when every micro-batch holds whole groups (rlreason/packing.py):
        # the same per-token log-probs without G copies of each prompt or completion padding.
        packed = self.cfg.pack_prompt_groups and mb % G == 0 and self.packing_supported
        for i in range(0, len(ro.samples), mb):
            sl = slice(i, min(i + mb, len(ro.samples)))  # exact: padding micro-batches' advantages follow
            sampler = [s.logprobs for s in ro.samples[sl]] if self._uses_sampler_logprobs() else None
            completions = [s.token_ids for s in ro.samples[sl]]
            if packed:
                batch = pack_groups(ro.prompt_ids[sl], completions, self.tokenizer.pad_token_id, G,
                                    self.pack_row_tokens, sampler, share_rows=self.share_pack_rows)
            else:
                batch = pack(ro.prompt_ids[sl], completions, self.tokenizer.pad_token_id, sampler)
            if self.cfg.mask_truncated_completions:  # DAPO's overlong filtering: no signal from cut-off answers
                cut = torch.tensor([s.finish_reason == "length" for s in ro.samples[sl]])
                batch["completion_mask"][cut] = 0
            out.append((sl, {k: v.to(self.acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}))
        return out

    def _padding_micro_batch(self) -> dict[str, Any]:
        """A micro-batch that changes nothing: one pad-token row with an all-zero completion mask
        (zero loss, zero gradient, no routed tokens), marked "is_padding"."""
        pad = self.tokenizer.pad_token_id
        batch = pack([[pad]], [[pad]], pad, [[0.0]] if self._uses_sampler_logprobs() else None)
        batch["completion_mask"].zero_()
        batch = {k: v.to(self.acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        return {**batch, "is_padding": True}

    def _match_micro_batches(self, batches: list, adv: torch.Tensor) -> tuple[list, torch.Tensor]:
        """Pad this process's micro-batches [(slice, batch)] and advantages [n] with padding
        micro-batches (advantage 0) up to the largest count of any process. Skipped groups and
        dynamic sampling leave the processes with different counts, and every forward of a sharded
        policy (FSDP's all-gathers, ZeRO-3) is a collective: unequal counts hang there. Under DDP
        (one all-reduce, at the last micro-batch) it changes nothing but costs the padding's
        forwards. Collective: every process calls it."""
        if self.acc.num_processes == 1:
            return batches, adv
        counts = self.acc.gather(torch.tensor([len(batches)], device=self.acc.device))
        extra = int(counts.max().item()) - len(batches)
        for _ in range(extra):
            batches.append((slice(len(adv), len(adv) + 1), self._padding_micro_batch()))
            adv = torch.cat([adv, adv.new_zeros(1)])
        return batches, adv

    def _stale_sampler(self) -> bool:
        """Whether this step's rollout came from older weights than the policy's: a separate engine
        is synced every ``weight_sync_steps`` steps, after the update of a step that is a multiple
        of it (and at start), so it lags at the steps in between. (After a resume, which syncs, the
        first steps until the next multiple count as lagging although they are not: their ratio
        then compares the policy with the engine's own numerics, which is harmless.)"""
        k = self.cfg.weight_sync_steps
        return not self.engine_shares_policy and k > 1 and self.step % k != 0

    def _uses_sampler_logprobs(self) -> bool:
        return bool(self.cfg.importance_sampling_cap) or self._stale_sampler()

    @torch.no_grad()
    def _frozen_logprobs(self, model, batches, temperature: float | None = None,
                         truncation: tuple[int, float] | None = None) -> list[torch.Tensor]:
        """Per micro-batch [n, T] log-probs under a model that is not trained (default: at the
        sampling temperature, the distribution the policy sampled from; ``truncation`` = (top_k,
        top_p) also cuts it as the sampler did)."""
        t = self.cfg.temperature if temperature is None else temperature
        # Under the accelerator's mixed precision, as the prepared policy's forward runs: the reference
        # (and teacher) are not prepared, so without this they ran in float32 while the policy ran in
        # bf16, and the KL at step 1 (policy = reference) was 8e-6 instead of 0. A no-op without
        # mixed precision, and for the policy, whose forward is already wrapped.
        with self.acc.autocast():
            return [completion_logprobs(model, b, t, chunk_size=self.cfg.logprob_chunk_size, truncation=truncation)[0]
                    for _, b in batches]

    @torch.no_grad()
    def _old_pass(self, batches) -> tuple[list[torch.Tensor], list[list[torch.Tensor]] | None]:
        """Old log-probs (per micro-batch [n, T]) with the weights that sampled; for an MoE
        policy also the experts each router chose in this pass (per micro-batch, n_layers x
        [n * L, k]): the reference for the routing flip fraction and what routing replay reuses."""
        if not self.routers:
            return self._frozen_logprobs(self.model, batches), None
        logps, routes = [], []
        for _, b in batches:
            with RoutingCapture(self.model) as cap:
                logps.append(completion_logprobs(self.model, b, self.cfg.temperature,
                                                 chunk_size=self.cfg.logprob_chunk_size)[0])
            routes.append(cap.chosen_indices())
        return logps, routes

    def _reference_logprobs(self, batches) -> list[torch.Tensor] | None:
        if self.cfg.beta == 0:
            return None
        if self.ref_is_base_adapter:
            with self.acc.unwrap_model(self.model).disable_adapter():
                return self._frozen_logprobs(self.model, batches)
        return self._frozen_logprobs(self.ref_model, batches)

    def token_loss(self, logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-token loss to minimise and its clip flags, [n, T] each: the clipped surrogate
        of the configured preset. (A subclass with another objective overrides only this:
        rlreason.sft.SFTTrainer's is the negative log-likelihood.)"""
        cfg = self.cfg
        eps_low, eps_high = self.clip_range
        return A.token_surrogate(logp, old_logp, adv, eps_low, eps_high, mask=mask, level=self.ratio_level,
                                 dual_clip=cfg.dual_clip)

    def _completion_tokens(self, ro: Rollout) -> int:
        """Completion tokens of ``ro`` that the loss covers (as the micro-batches' completion masks count them)."""
        cut = self.cfg.mask_truncated_completions
        return sum(len(s.token_ids) for s in ro.samples if not (cut and s.finish_reason == "length"))

    def _skips_flat_groups(self) -> bool:
        """Whether groups whose advantages are all 0 can be left out of the forward and backward
        passes without changing the update: their tokens' surrogate loss is 0 with 0 gradient at
        any ratio, and nothing else in the loss reaches them (no KL or entropy term, no teacher,
        no router loss), provided the loss is normalised by whole-batch counts (not BNPO's
        per-micro-batch ones), which ``update`` keeps counting over every sample."""
        cfg = self.cfg
        return (cfg.skip_zero_advantage_groups and cfg.beta == 0 and cfg.entropy_coef == 0 and self.teacher is None
                and not self.routers and self.preset.batch_normalised)

    def _denominator(self, n_tokens: int, n_sequences: int) -> float | None:
        """The denom for ``aggregate`` for the preset's aggregation, from this process's whole
        batch (completion tokens, sequences).

        Counts over the whole batch, so micro-batching leaves the gradient unchanged. With
        several processes the count is the global one divided by the number of processes:
        DDP averages the processes' gradients, so each process's sum over its shard divided by
        global/world makes the average the single-process loss (sum over the batch / global),
        also when the shards differ in size (dynamic sampling)."""
        if self.preset.aggregation == "token_mean" and not self.preset.batch_normalised:
            return None  # BNPO: each micro-batch normalised by its own token count
        count = float(n_tokens if self.preset.aggregation == "token_mean" else n_sequences)
        if self.acc.num_processes > 1:
            count = reduce_sum(self.acc, [count])[0] / self.acc.num_processes
        return max(count, 1.0 / self.acc.num_processes)

    def update(self, ro: Rollout) -> dict[str, float]:
        """``num_iterations`` optimizer steps on this step's batch. Collective with several
        processes: every process calls it once per step, also with an empty shard."""
        cfg, preset = self.cfg, self.preset
        t0 = time.perf_counter()
        if reduce_sum(self.acc, [float(len(ro.samples))])[0] == 0:
            # dynamic sampling found no group with a signal anywhere: nothing to learn from
            return {"empty_batch": 1.0, "time/training_s": 0.0}
        denom = self._denominator(self._completion_tokens(ro), len(ro.samples))
        n_groups = ro.num_groups
        if self._skips_flat_groups() and ro.samples:
            # Groups with no learning signal (all advantages 0: e.g. every answer right, or every
            # one wrong) only cost compute: train on the others, normalised by the whole batch.
            live = ro.advantages.view(-1, ro.group_size).ne(0).any(1)
            if not live.all():
                ro = ro.select(live.nonzero().flatten().tolist())
        batches = self._micro_batches(ro)
        adv = ro.advantages.to(self.acc.device) if ro.samples else torch.zeros(1, device=self.acc.device)
        per_micro = 1.0 if denom is not None else 1.0 / len(batches)  # BNPO: a mean over the real micro-batches
        batches, adv = self._match_micro_batches(batches, adv)
        n_tokens = int(sum(b["completion_mask"].sum().item() for _, b in batches))  # the tokens trained on
        # With one update per rollout the policy that sampled is the policy being trained:
        # old log-probs equal the current ones (detached), so no extra forward pass is spent
        # (unless routing replay needs the old pass's experts).
        replay = cfg.routing_replay and bool(self.routers)
        old, routes = self._old_pass(batches) if cfg.num_iterations > 1 or replay else (None, None)
        ref = self._reference_logprobs(batches)
        # The importance weight's pi_old is the distribution the sampler drew from: with top-k/top-p
        # that is the truncated one (the engines report truncated log-probs), so it gets its own
        # pass; against the full distribution the weight was the kept mass (~0.9 at top_p 0.9).
        truncation = (cfg.top_k, cfg.top_p) if cfg.top_k > 0 or cfg.top_p < 1 else None
        # A stale sampler (weight_sync_steps > 1) drew from weights the trainer no longer has: its own
        # log-probs are the behaviour policy, so the ratio (and its clip) covers the lag. The trainer's
        # current weights as pi_old made the ratio 1 and ignored the lag. The importance weight then
        # has nothing left to correct (pi_old is the sampler's): it is 1.
        stale = self._stale_sampler() and bool(ro.samples)
        behaviour = self._frozen_logprobs(self.model, batches, truncation=truncation) \
            if cfg.importance_sampling_cap and truncation and not stale else None
        # the teacher's own distribution (temperature 1) is the target of on-policy distillation
        teacher = self._frozen_logprobs(self.teacher, batches, 1.0) if self.teacher is not None else None
        self.model.train()
        settings = A.LossSettings(  # the terms of the loss and how they combine (A.policy_loss)
            eps_low=self.clip_range[0], eps_high=self.clip_range[1], ratio_level=self.ratio_level,
            dual_clip=cfg.dual_clip, aggregation=preset.aggregation, max_len=cfg.max_completion_length,
            beta=cfg.beta, kl_estimator=cfg.kl_estimator, entropy_coef=cfg.entropy_coef,
            is_cap=cfg.importance_sampling_cap, teacher_kl_coef=cfg.teacher_kl_coef,
            teacher_reward_weight=cfg.teacher_reward_weight)
        stats = dict.fromkeys(("clipped", "entropy", "kl", "loss", "is_weight", "log_ratio", "log_ratio_sq",
                               "reverse_kl"), 0.0)
        max_abs_log_ratio = 0.0
        grad_norms = []
        router = RouterStats.zeros(len(self.routers), self.routers[0].num_experts) if self.routers else None
        # the load-balancing loss of a micro-batch is weighted by its share of this process's tokens
        real = [0.0 if b.get("is_padding") else float(_input_tokens(b).sum()) for _, b in batches]
        for _ in range(cfg.num_iterations):
            for j, (sl, b) in enumerate(batches):
                ctx = contextlib.nullcontext() if j == len(batches) - 1 else self.acc.no_sync(self.model)
                # routing stays captured (and replayed) through the backward: a checkpointed layer's
                # recompute must route as its forward did
                capture = RoutingCapture(self.model, routes[j] if replay else None) if self.routers \
                    else contextlib.nullcontext()
                with ctx, capture as cap:
                    logp, ent = completion_logprobs(self.model, b, cfg.temperature, with_entropy=True,
                                                    entropy_grad=cfg.entropy_coef > 0,
                                                    chunk_size=cfg.logprob_chunk_size)
                    old_logp = b["sampler_logp"] if stale else (old[j] if old is not None else logp.detach())
                    loss, tok_stats = A.policy_loss(
                        logp, old_logp, adv[sl], b["completion_mask"], settings, entropy=ent, denom=denom,
                        ref_logp=ref[j] if ref is not None else None,
                        teacher_logp=teacher[j] if teacher is not None else None,
                        behaviour_logp=behaviour[j] if behaviour is not None else None,
                        sampler_logp=b.get("sampler_logp"), token_loss=self.token_loss)
                    loss = loss * per_micro
                    if cap is not None:
                        # every real token went through the routers (none of an empty shard's pad row counts)
                        routed = torch.zeros_like(_input_tokens(b)) if b.get("is_padding") else _input_tokens(b)
                        # without a gradient when it is only logged: no [tokens, experts] graph per layer
                        with torch.set_grad_enabled(self.router_aux_loss_coef > 0 and torch.is_grad_enabled()):
                            aux = cap.aux_loss(routed)
                        if self.router_aux_loss_coef > 0:
                            loss = loss + self.router_aux_loss_coef * aux * (real[j] / max(sum(real), 1.0))
                        s = cap.stats(routed, reference=routes[j] if routes is not None else None)
                        s.aux_sum, s.aux_n = aux.item(), 1
                        router.add(s)
                    self.acc.backward(loss)
                for key, value in tok_stats.sums().items():
                    stats[key] += value.item()
                max_abs_log_ratio = max(max_abs_log_ratio, tok_stats.max_abs_log_ratio.item())
                stats["loss"] += loss.item()
            norm = self.acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
            grad_norm = float("nan") if norm is None else float(norm)  # None: DeepSpeed before its first step
            # The gradient norm is the same on every process (after the all-reduce), the loss is
            # not: all processes must agree to step, or their weights drift apart.
            finite = (norm is None or math.isfinite(grad_norm)) and math.isfinite(stats["loss"])
            if self.acc.num_processes > 1:
                finite = reduce_sum(self.acc, [float(finite)])[0] == self.acc.num_processes
            if finite:
                self.optimizer.step()
                self.nonfinite_streak = 0
            else:  # a non-finite update would poison the weights: skip it and count it
                self.nonfinite_skipped += 1
                self.nonfinite_streak += 1
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            grad_norms.append(grad_norm)
        k = cfg.num_iterations
        # Token averages over the whole batch: sums and token counts of all processes. The loss
        # is each process's share of DDP's averaged objective: averaged in _reduce.
        keys = ("clipped", "entropy", "kl", "is_weight", "log_ratio", "log_ratio_sq", "reverse_kl")
        *sums, n_tokens, n_trained, n_groups = reduce_sum(
            self.acc, [stats[x] for x in keys] + [float(n_tokens), float(ro.num_groups), float(n_groups)])
        stats.update(zip(keys, sums, strict=True))
        tok = max(n_tokens, 1) * k
        mean_lr = stats["log_ratio"] / tok
        metrics = {
            "loss": stats["loss"] / k,
            "clip_frac": stats["clipped"] / tok,
            # spread of the token log-ratio log(pi_theta / pi_old) over completion tokens and all
            # training passes (the first pass of a batch has ratio 1 up to numerics)
            "ratio/log_std": math.sqrt(max(stats["log_ratio_sq"] / tok - mean_lr ** 2, 0.0)),
            "ratio/max_abs_log": max_abs_log_ratio,
            "entropy": stats["entropy"] / tok,
            "grad_norm": sum(grad_norms) / k,
            "lr": self.scheduler.get_last_lr()[0],
            "nonfinite_skipped": float(self.nonfinite_skipped),
            # groups left out of the passes (all advantages 0); token statistics above cover the others
            "skipped_groups_frac": 1.0 - n_trained / n_groups if n_groups else 0.0,
            "stale_sampler": float(self._stale_sampler()),
            "time/training_s": time.perf_counter() - t0,
        }
        if ref is not None:
            metrics["kl"] = stats["kl"] / tok
        if teacher is not None:  # mean per completion token of log pi_student - log pi_teacher
            metrics["distill/reverse_kl"] = stats["reverse_kl"] / tok
        if cfg.importance_sampling_cap:
            metrics["is_weight_mean"] = stats["is_weight"] / tok
        if router is not None:
            if self.acc.num_processes > 1:
                router = router.from_flat(reduce_sum(self.acc, router.flat()))
            metrics.update(router.metrics(per_expert=cfg.log_expert_load))
        return metrics

    def sync_weights(self) -> None:
        """Give the engine the new policy; nothing to move when it generates with the policy itself."""
        if not self.engine_shares_policy:
            unwrapped = self.acc.unwrap_model(self.model)
            if is_peft_model(unwrapped):  # LoRA: W + BA under the base model's names (the engine serves a plain model)
                weights = merged_named_parameters(unwrapped)
            else:  # full tensors (gathered one at a time if the policy is sharded), plain names
                weights = full_named_parameters(self.model, self.acc)
            self.engine.load_weights(weights)
            # a shared server is updated by one process: nobody generates before it has the new weights
            self.acc.wait_for_everyone()

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

    def evaluate_suites(self) -> dict[str, float]:
        """Greedy pass@1 (and friends) on the configured benchmark suites, on the main process
        (the others wait), with the suites' own prompt templates: the same code as
        ``python -m rlreason.eval``."""
        cfg = self.cfg
        if not cfg.eval_suites:
            return {}
        flat: dict[str, float] = {}
        if self.acc.is_main_process:
            protocol = EvalProtocol(max_tokens=cfg.eval_max_tokens or cfg.max_completion_length, seed=cfg.seed)
            results = evaluate_suites(self.engine, self.tokenizer, cfg.eval_suites, protocol,
                                      limit=cfg.eval_suites_limit)
            flat = flat_metrics(results, prefix="suite")
        self.acc.wait_for_everyone()
        return flat

    def _log_completions(self, ro: Rollout) -> None:
        G = self.cfg.num_generations
        rows = []
        for i in range(min(len(ro.samples), 2 * G)):  # the first two groups
            reward = ro.rewards[i].item()
            rows.append({"prompt": ro.prompts[i], "completion": ro.samples[i].text,
                         "reward": None if math.isnan(reward) else reward, "advantage": ro.advantages[i].item(),
                         **{f"reward/{k}": (None if math.isnan(v[i].item()) else v[i].item())
                            for k, v in ro.per_func.items()},
                         **{k: v[i] for k, v in ro.extra.items()},
                         "finish_reason": ro.samples[i].finish_reason})
        self.log.completions(self.step, rows)

    def train(self) -> dict[str, Any]:
        try:
            with stopping.handle_stop_signals():
                return self._train()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the reward workers (also done at garbage collection and interpreter exit)."""
        self.rewards.close()

    @property
    def stop_requested(self) -> bool:
        """SIGTERM (the usual preemption notice) or SIGINT arrived (rlreason/stopping.py): stop at
        the next step boundary with a checkpoint, or at once where nothing trained would be lost."""
        return stopping.requested()

    def _stop_at_once(self):
        """Stop signals raise ``stopping.Stopped`` within: for phases that lose nothing when cut
        short. One process only: several must stop at the same collective (the step boundary)."""
        return stopping.stop_at_once(enabled=self.acc.num_processes == 1)

    def _any_process(self, flag: bool) -> bool:
        """True on every process if it is True on one (so all stop at the same step)."""
        return flag if self.acc.num_processes == 1 else reduce_sum(self.acc, [float(flag)])[0] > 0

    def _resume(self, path: Path) -> None:
        """Restore everything a checkpoint holds; the loop then continues as if never stopped."""
        self.acc.load_state(str(path))  # weights, optimizer, scheduler, every rank's RNG states
        state = read_state(path)
        self.step = state["step"]
        self.extra_prompts_drawn = state.get("extra_prompts_drawn", 0)
        self.nonfinite_skipped = state.get("nonfinite_skipped", 0)
        self.nonfinite_streak = state.get("nonfinite_streak", 0)
        self.last_eval = state.get("metrics", {})
        self.heldout_before = state.get("heldout_before", {})
        self._saved_step = self.step
        apply_optimizer_changes(self.optimizer, self.scheduler, self.cfg, state.get("config", {}))
        self.sync_weights()  # a separate engine started from the initial weights
        self.log.print(f"resumed from {path} at step {self.step}")

    def _train(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.acc.is_main_process:
            Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        t_start = time.perf_counter()
        before: dict[str, Any] = {}
        samples_per_s = []
        interrupted = False
        try:  # before the first step nothing is trained: a stop signal stops at once
            with self._stop_at_once():
                if self.resume_path is not None:
                    self._resume(self.resume_path)
                    before = self.heldout_before
                else:
                    before = self.evaluate(cfg.final_eval_size)
                    before.update(self.evaluate_suites())
        except stopping.Stopped:
            interrupted, before = True, {}
        if self.resume_path is None and before:  # outside: a stop must not tear the line
            self.log.log(0, {k: v for k, v in before.items() if k != "eval/samples"})
            self.heldout_before = {k: v for k, v in before.items() if k != "eval/samples"}
        if before:
            self.log.advance(self.step, before)
        if "eval/accuracy" in before:
            self.log.print(f"held-out accuracy before training: {before['eval/accuracy']:.3f} "
                           f"({before['eval/correct']}/{before['eval/n']})")
        t_train = time.perf_counter()
        # a stop requested before the first step (several processes: between the phases above)
        interrupted = interrupted or self._any_process(self.stop_requested)
        while not interrupted and self.step < cfg.max_steps:
            metrics, n_samples = self._one_step()
            samples_per_s.append(metrics["perf/samples_per_s"])
            if self.dead_rewards():
                ckpt = self.save(self.step)
                name = self.dead_rewards()[0]
                raise RewardFailureError(
                    f"reward {name!r} scored no completion (every one failed or was None) in "
                    f"{self.dead_reward_streak[name]} steps in a row, so the run stopped rather than train on "
                    f"nothing (checkpoint: {ckpt}). Its error: {self.reward_errors.get(name, 'returned None')}. "
                    f"Fix the reward, or raise 'max_failed_reward_steps'")
            if self.nonfinite_streak >= cfg.max_nonfinite_steps:
                ckpt = self.save(self.step)
                raise FloatingPointError(
                    f"{self.nonfinite_streak} updates in a row had a non-finite loss or gradient (all skipped, "
                    f"so the weights are the last good ones, saved in {ckpt}); lower 'learning_rate', check "
                    f"the rewards for inf/NaN, or raise 'max_nonfinite_steps'")
            if self._any_process(self.stop_requested):
                interrupted = True
                self.save(self.step)
                break
            if cfg.save_steps and self.step % cfg.save_steps == 0 and self.step < cfg.max_steps:
                self.save(self.step)
                # a stop that arrived during the save: this checkpoint is the one to stop with
                interrupted = self._any_process(self.stop_requested)
        train_time = time.perf_counter() - t_train
        after: dict[str, Any] = {}
        if not interrupted:
            # The checkpoint first: a stop during the (long) final evaluation then loses nothing
            # trained, and a resume from it only evaluates and writes the final model.
            if self._saved_step != self.step:
                self.save(self.step)
            try:
                with self._stop_at_once():
                    after = self.evaluate(cfg.final_eval_size)
                    after.update(self.evaluate_suites())
            except stopping.Stopped:
                interrupted, after = True, {}
            if after:
                self.log.log(self.step, {k: v for k, v in after.items() if k != "eval/samples"})
                self.last_eval = {k: v for k, v in after.items() if isinstance(v, int | float)}
                record_final_eval(self.acc, Path(cfg.output_dir) / "checkpoints" / f"step-{self.step:07d}",
                                  self.last_eval, keep=cfg.save_total_limit, best_metric=cfg.metric_for_best_model,
                                  greater_is_better=cfg.greater_is_better)
        self.log.close()
        summary = {"steps": self.step, "train_time_s": train_time, "total_time_s": time.perf_counter() - t_start,
                   "samples_per_s": sum(samples_per_s) / max(len(samples_per_s), 1),
                   "nonfinite_skipped": self.nonfinite_skipped, "interrupted": interrupted,
                   "reward_failures": dict(self.reward_failures_total)}
        suites_after = {k: v for k, v in after.items() if k.startswith("suite/")}
        if suites_after:
            summary["suites_before"] = {k: v for k, v in before.items() if k.startswith("suite/")}
            summary["suites_after"] = suites_after
        if "eval/accuracy" in before and "eval/accuracy" in after:
            lo, hi = diff_interval(before["eval/correct"], before["eval/n"], after["eval/correct"], after["eval/n"])
            summary.update({"heldout_before": before["eval/accuracy"], "heldout_after": after["eval/accuracy"],
                            "heldout_n": after["eval/n"], "gain": after["eval/accuracy"] - before["eval/accuracy"],
                            "gain_ci95": [lo, hi],
                            "before_ci95": [before["eval/accuracy_ci_low"], before["eval/accuracy_ci_high"]],
                            "after_ci95": [after["eval/accuracy_ci_low"], after["eval/accuracy_ci_high"]]})
        if self.acc.is_main_process:
            write_report(cfg.output_dir, cfg.to_dict(), summary)
        if interrupted and self._saved_step is None:
            self.log.print("stopped before the first step: nothing trained, nothing to save; rerun with "
                           "--resume_from_checkpoint auto to start (or continue) the run")
        elif interrupted:
            self.log.print(f"stopped at step {self.step} with a checkpoint; continue with "
                           f"--resume_from_checkpoint auto --output_dir {cfg.output_dir}")
        if cfg.report_to:
            self.acc.end_training()
        return summary

    def _one_step(self) -> tuple[dict[str, float], int]:
        """Collect, update, sync, log (and evaluate when due). -> (the step's metrics, samples)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        ro = self.collect()
        metrics = dict(ro.metrics)
        metrics.update(self.update(ro))
        self.step += 1
        if self.step % cfg.weight_sync_steps == 0:
            self.sync_weights()
        dt = time.perf_counter() - t0
        n_comp = len(ro.samples)  # this process's; _reduce sums the rates over processes
        n_tok = sum(len(s.token_ids) for s in ro.samples)
        metrics.update({"time/step_s": dt, "perf/samples_per_s": n_comp / dt, "perf/tokens_per_s": n_tok / dt})
        acc_name = next((n for n in ro.per_func if n.startswith("accuracy")), None)
        if acc_name is not None:  # the progress bar's "acc": the accuracy reward's batch mean
            metrics["accuracy"] = metrics[f"rewards/{acc_name}/mean"]
        metrics = self._reduce(metrics)
        self._check_rewards(metrics)
        if cfg.eval_steps and self.step % cfg.eval_steps == 0 and self.step < cfg.max_steps:
            ev = self.evaluate(cfg.eval_size)
            ev.update(self.evaluate_suites())
            self.last_eval = {k: v for k, v in ev.items() if isinstance(v, int | float)}
            metrics.update({k: v for k, v in ev.items() if k != "eval/samples"})
        if self.step % cfg.logging_steps == 0 or self.step == cfg.max_steps:
            self.log.log(self.step, metrics)
        if cfg.log_completions_steps and (self.step == 1 or self.step % cfg.log_completions_steps == 0):
            self._log_completions(ro)
        self.log.advance(self.step, metrics)
        return metrics, n_comp

    def _check_rewards(self, metrics: dict[str, float]) -> None:
        """Count, per reward, the steps in a row it scored no completion (every one failed or was
        None); print the first step's failures, and any reward's first dead step."""
        names = [k[len("rewards/"):-len("/none_frac")] for k in metrics if k.startswith("rewards/")
                 and k.endswith("/none_frac")]
        for name in names:
            failed = int(metrics.get(f"rewards/{name}/failures", 0))
            self.reward_failures_total[name] = self.reward_failures_total.get(name, 0) + failed
            dead = metrics[f"rewards/{name}/none_frac"] >= 1.0
            self.dead_reward_streak[name] = self.dead_reward_streak.get(name, 0) + 1 if dead else 0
            first_dead = dead and self.dead_reward_streak[name] == 1
            if first_dead or (failed and self.step == 1):
                why = self.reward_errors.get(name, "returned None")
                scope = "every completion" if dead else f"{failed} completions"
                self.log.print(f"[yellow]step {self.step}: reward {name!r} scored no value on {scope}: "
                               f"{rich.markup.escape(why)}")

    def dead_rewards(self) -> list[str]:
        """Rewards that scored no completion for ``max_failed_reward_steps`` steps in a row."""
        return [n for n, k in self.dead_reward_streak.items() if k >= self.cfg.max_failed_reward_steps]

    # Per-process counts and rates whose global value is the sum over processes. Batch
    # statistics (rewards, lengths, token averages, grad norm) are already global when they
    # get here (computed on gathered data), so averaging them changes nothing; what is left
    # per process is timings (averaged) and the loss (DDP's objective: the average).
    SUMMED_METRICS = ("perf/samples_per_s", "perf/tokens_per_s", "dynamic_sampling/extra_prompts",
                      "dynamic_sampling/kept_groups")

    def _reduce(self, metrics: dict[str, float]) -> dict[str, float]:
        """Combine scalar metrics over processes: sums for counts and rates, max for maxima,
        else the mean."""
        if self.acc.num_processes == 1:
            return metrics
        keys = sorted(k for k, v in metrics.items() if isinstance(v, int | float))
        vals = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=self.acc.device)
        gathered = self.acc.gather(vals.unsqueeze(0))  # [world, K]
        out = dict(metrics)
        for i, k in enumerate(keys):
            col = gathered[:, i]
            if k in self.SUMMED_METRICS or k.endswith("/failures"):
                out[k] = col.sum().item()
            elif k.endswith(("max_length", "/max_abs_log")):
                out[k] = col.max().item()
            else:
                out[k] = col.nanmean().item()
        return out

    def save(self, step: int) -> Path:
        """A checkpoint of everything ``_resume`` needs to continue exactly from ``step``."""
        state = {"config": self.cfg.to_dict(), "extra_prompts_drawn": self.extra_prompts_drawn,
                 "nonfinite_skipped": self.nonfinite_skipped, "nonfinite_streak": self.nonfinite_streak,
                 "metrics": self.last_eval, "heldout_before": self.heldout_before,
                 # the KL reference is the initial policy (or, with LoRA, the adapter-disabled base)
                 "reference_model": None if self.ref_model is None and not self.ref_is_base_adapter
                 else ("base_adapter_disabled" if self.ref_is_base_adapter else self.cfg.model_name_or_path),
                 "teacher_model": self.cfg.teacher_model_name_or_path, "config_changes": self.config_changes}
        path = save_checkpoint(self.acc, self.cfg.output_dir, step, state, keep=self.cfg.save_total_limit,
                               best_metric=self.cfg.metric_for_best_model,
                               greater_is_better=self.cfg.greater_is_better, extra=self._hf_model_files)
        self._saved_step = step
        return path

    def _hf_model_files(self, folder: Path) -> None:
        """Make a checkpoint a Hugging Face model folder too: accelerate saved the weights as
        model.safetensors under the model's own names; with config.json, the generation config and
        the tokenizer next to them, ``from_pretrained(checkpoint)`` loads it (a full model; with
        LoRA the weights are the adapter-wrapped model's, so load final_model/ instead)."""
        model = self.acc.unwrap_model(self.model)
        if is_peft_model(model):
            return
        model.config.save_pretrained(folder)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    def save_final(self, out_dir: str | Path) -> Path:
        """The trained policy as a plain Hugging Face model; with LoRA the merged weights, and
        the adapter itself in ``out_dir/adapter``."""
        model = self.acc.unwrap_model(self.model)
        if not is_peft_model(model):
            return save_model(self.acc, self.model, self.tokenizer, out_dir)
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            save_merged(model, self.tokenizer, out_dir)
            model.save_pretrained(Path(out_dir) / "adapter", safe_serialization=True)
        self.acc.wait_for_everyone()
        return Path(out_dir)

"""The policy's side of a step: a rollout's micro-batches, the frozen log-prob passes (old,
reference, teacher, sampler's behaviour), the loss and the optimizer steps.

``Actor.update`` is GRPO's update on one step's batch (docs/algorithms.md): ``num_iterations``
optimizer steps, each over the whole batch in micro-batches of ``per_device_train_batch_size``
completions, the loss of each from ``algorithms.policy_loss``. With several processes it is
collective (DDP through accelerate; FSDP, DeepSpeed): every process runs as many micro-batches
as the one with the most, loss denominators count the whole batch, and token statistics are
summed over processes (rlreason/loop/trainer.py's docstring says why each is needed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import DistributedType

from rlreason import algorithms as A
from rlreason.config import GRPOConfig
from rlreason.data.batching import pack, pack_groups, supports_packing
from rlreason.loop.distributed import reduce_sum
from rlreason.loop.experience import Rollout
from rlreason.loop.logprobs import completion_logprobs
from rlreason.loop.parts import Parts
from rlreason.loop.ref_sync import ReferenceSync
from rlreason.moe import ROUTER_CLASSES, RouterStats, RoutingCapture, aux_loss_coef, find_routers
from rlreason.run import stopping


def _input_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[rows, width] 1 where the model input holds a real token: the 2D attention mask of a
    padded batch; a prompt-group-packed batch's block mask is 4D, it carries "row_tokens"."""
    return batch["row_tokens"] if "row_tokens" in batch else batch["attention_mask"]


def _nth(per_micro: list | None, j: int) -> Any:
    """Micro-batch ``j``'s entry of a per-micro-batch list; None where the list is None (no such pass)."""
    return None if per_micro is None else per_micro[j]


@dataclass
class _Frozen:
    """Per micro-batch log-probs ([n, T]) from the passes that train nothing; None where the loss
    has no such term."""

    old: list[torch.Tensor] | None  # pi_old, the weights that sampled (None: the current ones, detached)
    routes: list[list[torch.Tensor]] | None  # MoE: the experts each router chose in that pass, n_layers x [n * L, k]
    replay: bool  # routing replay: the training passes route as ``routes`` did
    ref: list[torch.Tensor] | None  # the reference policy (the KL term)
    behaviour: list[torch.Tensor] | None  # the sampler's truncated distribution (the importance weight's pi_old)
    teacher: list[torch.Tensor] | None  # the teacher at temperature 1 (on-policy distillation)


@dataclass
class _Batch:
    """This process's shard of one step, as the update trains on it."""

    micro: list[tuple[slice, dict[str, torch.Tensor]]]  # [(its rows of adv, model inputs)], padding ones last
    adv: torch.Tensor  # [n] advantages (0 on padding micro-batches' rows)
    denom: float | None  # the loss's denominator (Actor.denominator; None: BNPO's, per micro-batch)
    n_micro: float  # real micro-batches per optimizer step (micro-batch means are divided by it: BNPO, entropy bonus)
    aux_share: list[float]  # each micro-batch's share of this process's input tokens (load-balancing loss weight)
    n_tokens: int  # completion tokens trained on
    n_groups: int  # prompt groups in the shard ...
    n_trained_groups: int  # ... and those trained on (flat ones left out)
    stale: bool  # pi_old is the sampler's log-probs (a lagging sampler, a non-empty shard)
    frozen: _Frozen
    # micro-batch indices of each optimizer step of a pass: one slice unless steps_per_generation >
    # gradient_accumulation_steps; gradients are all-reduced at each slice's last micro-batch
    slices: list[range] = field(default_factory=list)


@dataclass
class _Totals:
    """What the update adds up on this process over micro-batches and passes. The token
    statistics are ``algorithms.SUMMED_STATS``: the one list that is accumulated here, summed
    over processes and averaged per token (``Actor._metrics``)."""

    token: dict[str, float]  # sums over completion tokens, by name
    router: RouterStats | None  # MoE routing
    loss: float = 0.0
    max_abs_log_ratio: float = 0.0
    grad_norms: list[float] = field(default_factory=list)  # one per optimizer step
    is_ratio_min: float = math.inf  # the sampler correction's weights: min and max over every unit
    is_ratio_max: float = -math.inf

    @classmethod
    def zeros(cls, routers: list) -> _Totals:
        router = RouterStats.zeros(len(routers), routers[0].num_experts) if routers else None
        return cls(dict.fromkeys(A.SUMMED_STATS, 0.0), router)

    def add(self, loss: torch.Tensor, stats: A.PolicyLossStats) -> None:
        """A micro-batch's loss (as back-propagated) and token statistics."""
        for name, value in stats.sums().items():
            self.token[name] += value.item()
        self.max_abs_log_ratio = max(self.max_abs_log_ratio, stats.max_abs_log_ratio.item())
        self.is_ratio_min = min(self.is_ratio_min, stats.is_ratio_min.item())
        self.is_ratio_max = max(self.is_ratio_max, stats.is_ratio_max.item())
        self.loss += loss.item()


class Actor:
    """The policy (prepared), its optimizer and scheduler, and the frozen models its loss compares
    with. ``objective``: the per-token loss (None: the preset's clipped surrogate; SFT: the NLL);
    ``share_pack_rows``: whether several prompt groups may share a packed row (rlreason.data.batching;
    GRPO's groups fill rows, many short SFT examples do not)."""

    def __init__(self, cfg: GRPOConfig, parts: Parts, objective: A.TokenLoss | None = None,
                 share_pack_rows: bool = False) -> None:
        self.cfg, self.acc, self.tokenizer = cfg, parts.acc, parts.tokenizer
        self.model, self.optimizer, self.scheduler = parts.model, parts.optimizer, parts.scheduler
        self.ref_model, self.ref_is_base_adapter = parts.ref_model, parts.ref_is_base_adapter
        self.teacher = parts.teacher
        self.objective, self.share_pack_rows = objective, share_pack_rows
        self.preset = A.PRESETS[cfg.loss_type]
        # the terms of the loss and how they combine (A.policy_loss); SFT's tokens were given, not sampled
        self.loss_settings = self.settings_from(cfg, sampled=objective is None)
        # TRL's entropy bonus: on with a coefficient or the adaptive controller, whose state (the coefficient
        # and the last step's entropy, inf before the first) is training state, in the checkpoint
        self.entropy_bonus = cfg.entropy_coef > 0 or cfg.use_adaptive_entropy
        self.entropy_coef, self.last_world_entropy = cfg.entropy_coef, math.inf
        self._entropy_window = [0.0, 0.0]  # this pass's (entropy sum, tokens) over the bonus's tokens
        policy = self.acc.unwrap_model(self.model)
        # Mixture-of-experts policy: router metrics every step, optional load-balancing loss and
        # routing replay (rlreason/moe.py). Nothing of it runs for a dense model.
        self.routers = find_routers(policy)
        if cfg.routing_replay and not self.routers:
            raise ValueError("config key 'routing_replay': the policy has no mixture-of-experts routers "
                             f"rlreason knows (it recognises {', '.join(sorted(ROUTER_CLASSES))})")
        self.router_aux_loss_coef = aux_loss_coef(policy.config, cfg.router_aux_loss_coef) if self.routers else 0.0
        self.packing_supported = supports_packing(policy) and (self.teacher is None or supports_packing(self.teacher))
        self.pack_row_tokens = cfg.pack_max_row_tokens or max(
            64, getattr(policy.config.get_text_config(), "hidden_size", 1024))
        self.nonfinite_skipped = 0  # updates skipped for a non-finite loss or gradient, whole run
        self.nonfinite_streak = 0  # ... in a row
        self.ref_sync = self._reference_sync(policy)  # TR-DPO's moving reference (sync_ref_model), or None

    def _reference_sync(self, policy: torch.nn.Module) -> ReferenceSync | None:
        """``sync_ref_model``: the reference mixed toward the policy every ``ref_model_sync_steps``
        optimizer steps (rlreason/loop/ref_sync.py); None when off."""
        cfg = self.cfg
        if not cfg.sync_ref_model:
            return None
        if self.ref_model is None:  # beta 0 is refused by the config; a PEFT policy given from Python is not
            raise ValueError("config key 'sync_ref_model': the reference is the adapter-disabled base model of a "
                             "LoRA policy, which has no weights of its own to mix (TRL refuses this too)")
        if self.acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise ValueError("config key 'sync_ref_model': with a sharded policy (FSDP, DeepSpeed) each process "
                             "holds a shard of the policy and a whole reference; use DDP (a plain accelerate launch)")
        return ReferenceSync(self.ref_model, policy, cfg.ref_model_mixup_alpha, cfg.ref_model_sync_steps)

    @staticmethod
    def settings_from(cfg: GRPOConfig, sampled: bool = True) -> A.LossSettings:
        """The loss's settings from the config: the loss_type's aggregation and surrogate, and every option.
        ``sampled`` False: the tokens were not sampled by the policy (SFT on a teacher's answers), so no
        sampler correction and no off-policy mask (there are no sampler log-probs to compare with)."""
        preset = A.PRESETS[cfg.loss_type]
        eps_low, eps_high = cfg.clip_range()  # gspo: its paper's values at TRL's defaults
        correction = cfg.is_correction() if sampled else None  # (mode, clip min, clip max) or None
        mode, clip_min, clip_max = correction if correction is not None else (None, None, None)
        return A.LossSettings(
            eps_low=eps_low, eps_high=eps_high, ratio_level=cfg.ratio_level(), dual_clip=cfg.dual_clip,
            aggregation=preset.aggregation, max_len=cfg.max_completion_length, beta=cfg.beta,
            kl_estimator=cfg.kl_estimator, entropy_coef=cfg.entropy_coef, teacher_kl_coef=cfg.teacher_kl_coef,
            teacher_reward_weight=cfg.teacher_reward_weight, surrogate=preset.surrogate, delta=cfg.delta,
            sapo_temperature_pos=cfg.sapo_temperature_pos, sapo_temperature_neg=cfg.sapo_temperature_neg,
            vespo=(cfg.vespo_k_pos, cfg.vespo_lambda_pos, cfg.vespo_k_neg, cfg.vespo_lambda_neg),
            top_entropy_quantile=cfg.top_entropy_quantile,
            off_policy_threshold=cfg.off_policy_mask_threshold if sampled else None,
            bias_correction_kl=cfg.use_bias_correction_kl, is_mode=mode, is_clip_min=clip_min, is_clip_max=clip_max,
            # rlreason's importance_sampling_cap weights the KL term too; TRL's keys add it after the weight
            is_weight_kl=cfg.importance_sampling_cap is not None)

    def needs_sampler_logprobs(self) -> bool:
        """Whether the loss reads the sampler's log-probs: the correction, or the off-policy mask measuring
        drift from a separate sampler (with the policy as its own sampler it measures from pi_old, as TRL)."""
        s = self.loss_settings
        return s.is_mode is not None or (s.off_policy_threshold is not None and self.cfg.separate_sampler)

    def state_dict(self) -> dict[str, Any]:
        """The counters a checkpoint keeps (the weights and optimizer are accelerate's), and the adaptive
        entropy controller's state (its last entropy: None before the first step, JSON has no inf)."""
        last = None if math.isinf(self.last_world_entropy) else self.last_world_entropy
        return {"nonfinite_skipped": self.nonfinite_skipped, "nonfinite_streak": self.nonfinite_streak,
                "entropy_coef": self.entropy_coef, "last_world_entropy": last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nonfinite_skipped = state.get("nonfinite_skipped", 0)  # absent: a checkpoint from before they were
        self.nonfinite_streak = state.get("nonfinite_streak", 0)
        self.entropy_coef = state.get("entropy_coef", self.cfg.entropy_coef)
        last = state.get("last_world_entropy")
        self.last_world_entropy = math.inf if last is None else float(last)

    def micro_batches(self, ro: Rollout, sampler_logprobs: bool = False) -> list[tuple[slice, dict[str, torch.Tensor]]]:
        """``ro`` as [(its slice, model inputs)] of ``per_device_train_batch_size`` completions on the
        device; ``sampler_logprobs``: with the sampler's log-probs ("sampler_logp")."""
        mb = self.cfg.per_device_train_batch_size
        out = []
        if not ro.samples:
            # An empty shard (dynamic sampling kept no group here) while other processes train:
            # one pad-token row with an all-zero mask joins DDP's gradient all-reduce with zero
            # gradients, so the processes' collectives stay matched.
            return [(slice(0, 1), self.padding_micro_batch(sampler_logprobs))]
        G = ro.group_size
        # Packed by prompt group when every micro-batch holds whole groups (rlreason/data/batching.py):
        # the same per-token log-probs without G copies of each prompt or completion padding.
        packed = (self.cfg.pack_prompt_groups and mb % G == 0 and self.packing_supported
                  and self.groups_share_prompts(ro))
        for i in range(0, len(ro.samples), mb):
            sl = slice(i, min(i + mb, len(ro.samples)))  # exact: padding micro-batches' advantages follow
            sampler = [s.logprobs for s in ro.samples[sl]] if sampler_logprobs else None
            completions = [s.token_ids for s in ro.samples[sl]]
            masks = [s.loss_mask for s in ro.samples[sl]]  # tool output (multi-turn): out of the loss
            if packed:
                batch = pack_groups(ro.prompt_ids[sl], completions, self.tokenizer.pad_token_id, G,
                                    self.pack_row_tokens, sampler, share_rows=self.share_pack_rows, loss_masks=masks)
            else:
                batch = pack(ro.prompt_ids[sl], completions, self.tokenizer.pad_token_id, sampler, loss_masks=masks)
            if self.cfg.mask_truncated_completions:  # DAPO's overlong filtering: no signal from cut-off answers
                cut = torch.tensor([s.finish_reason == "length" for s in ro.samples[sl]])
                batch["completion_mask"][cut] = 0
            if ro.failed is not None:  # a reward failed on them: unknown totals are trained with zero weight
                batch["completion_mask"][ro.failed[sl]] = 0
            out.append((sl, {k: v.to(self.acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}))
        return out

    @staticmethod
    def groups_share_prompts(ro: Rollout) -> bool:
        """Whether every group's samples continue one prompt, as prompt-group packing needs: not when an
        environment's reset gave each rollout of a prompt its own observation (rlreason/loop/tool_rollout.py)."""
        G = ro.group_size
        return all(ro.prompt_ids[i] is ro.prompt_ids[i - i % G] or ro.prompt_ids[i] == ro.prompt_ids[i - i % G]
                   for i in range(len(ro.prompt_ids)))

    def padding_micro_batch(self, sampler_logprobs: bool = False) -> dict[str, Any]:
        """A micro-batch that changes nothing: one pad-token row with an all-zero completion mask
        (zero loss, zero gradient, no routed tokens), marked "is_padding"."""
        pad = self.tokenizer.pad_token_id
        batch = pack([[pad]], [[pad]], pad, [[0.0]] if sampler_logprobs else None)
        batch["completion_mask"].zero_()
        batch = {k: v.to(self.acc.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        return {**batch, "is_padding": True}

    def match_micro_batches(self, batches: list, adv: torch.Tensor, sampler_logprobs: bool
                            ) -> tuple[list, torch.Tensor]:
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
            batches.append((slice(len(adv), len(adv) + 1), self.padding_micro_batch(sampler_logprobs)))
            adv = torch.cat([adv, adv.new_zeros(1)])
        return batches, adv

    @torch.no_grad()
    def frozen_logprobs(self, model, batches, temperature: float | None = None,
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
    def old_pass(self, batches) -> tuple[list[torch.Tensor], list[list[torch.Tensor]] | None]:
        """Old log-probs (per micro-batch [n, T]) with the weights that sampled; for an MoE
        policy also the experts each router chose in this pass (per micro-batch, n_layers x
        [n * L, k]): the reference for the routing flip fraction and what routing replay reuses."""
        if not self.routers:
            return self.frozen_logprobs(self.model, batches), None
        logps, routes = [], []
        for _, b in batches:
            with RoutingCapture(self.model) as cap:
                logps.append(completion_logprobs(self.model, b, self.cfg.temperature,
                                                 chunk_size=self.cfg.logprob_chunk_size)[0])
            routes.append(cap.chosen_indices())
        return logps, routes

    def reference_logprobs(self, batches) -> list[torch.Tensor] | None:
        if self.cfg.beta == 0:
            return None
        if self.ref_is_base_adapter:
            with self.acc.unwrap_model(self.model).disable_adapter():
                return self.frozen_logprobs(self.model, batches)
        return self.frozen_logprobs(self.ref_model, batches)

    def completion_tokens(self, ro: Rollout) -> int:
        """Completion tokens of ``ro`` that the loss covers (as the micro-batches' completion masks count
        them): the model's, tool output left out."""
        cut = self.cfg.mask_truncated_completions
        failed = ro.failed_mask().tolist()
        return sum(s.model_tokens for s, bad in zip(ro.samples, failed, strict=True)
                   if not bad and not (cut and s.finish_reason == "length"))

    def skips_flat_groups(self) -> bool:
        """Whether groups whose advantages are all 0 can be left out of the forward and backward
        passes without changing the update: their tokens' surrogate loss is 0 with 0 gradient at
        any ratio, and nothing else in the loss reaches them (no KL or entropy term, no teacher,
        no router loss), provided the loss is normalised by whole-batch counts (not BNPO's
        per-micro-batch ones), which ``update`` keeps counting over every sample."""
        cfg = self.cfg
        # the high-entropy threshold is a quantile over every token of a micro-batch, flat groups' included;
        # several optimizer steps per generation keep their slices' micro-batches whole
        return (cfg.skip_zero_advantage_groups and cfg.beta == 0 and not self.entropy_bonus and self.teacher is None
                and not self.routers and self.preset.batch_normalised and cfg.top_entropy_quantile >= 1
                and cfg.optimizer_steps_per_generation == 1)

    def denominator(self, n_tokens: int, n_sequences: int) -> float | None:
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

    def update(self, ro: Rollout, stale_sampler: bool = False,
               stop_point: Callable[[], None] | None = None) -> dict[str, float]:
        """``num_iterations`` optimizer steps on this step's batch; ``stale_sampler``: the engine that
        sampled ``ro`` lags the policy (``weight_sync_steps``), its log-probs are the behaviour policy.
        Collective with several processes: every process calls it once per step, also with an empty shard.

        Until the first optimizer step nothing it does changes the weights or the optimizer: the
        step in flight may be abandoned by a stop signal (rlreason/run/stopping.py). ``stop_point`` is
        called before each micro-batch of the first pass and before the first optimizer step (where
        several processes abandon together); ``stopping.commit()`` then ends that window.

        In steps: ``_prepare`` (micro-batches, the frozen log-prob passes), then per pass
        ``_train_micro_batch`` on each micro-batch and one ``_optimizer_step``, then ``_metrics``."""
        stop_point = stop_point or (lambda: None)
        t0 = time.perf_counter()
        if reduce_sum(self.acc, [float(len(ro.samples))])[0] == 0:
            # dynamic sampling found no group with a signal anywhere: nothing to learn from
            return {"empty_batch": 1.0, "time/training_s": 0.0}
        batch = self._prepare(ro, stale_sampler)
        self.model.train()
        totals = _Totals.zeros(self.routers)
        for it in range(self.cfg.num_iterations):
            # steps_per_generation > gradient_accumulation_steps: the generation's micro-batches in k
            # disjoint slices of gradient_accumulation_steps, one optimizer step each (TRL's order: every
            # slice of a pass, then the next pass), old log-probs from the weights that generated them
            for slice_ in batch.slices:
                for j in slice_:
                    if it == 0 and slice_ is batch.slices[0]:
                        stop_point()
                    self._train_micro_batch(batch, j, totals)
                if it == 0 and slice_ is batch.slices[0]:
                    stop_point()
                    stopping.commit()  # from here the step changes the weights, the optimizer and the schedule
                totals.grad_norms.append(self._optimizer_step(totals.loss))
        return self._metrics(batch, totals, stale_sampler, t0)

    def _prepare(self, ro: Rollout, stale_sampler: bool) -> _Batch:
        """This process's shard of the step as the update trains on it: micro-batches padded to the
        largest count of any process, the loss's denominator, and every frozen log-prob pass, all
        before the weights change. Collective (the denominator, the micro-batch counts)."""
        cfg = self.cfg
        denom = self.denominator(self.completion_tokens(ro), len(ro.samples))  # counts every sample, flat ones too
        # k optimizer steps per generation: TRL's normaliser is the generation batch's count scaled to one
        # accumulation window (num_items_in_batch / num_processes * gradient_accumulation_steps /
        # steps_per_generation): each slice's loss over the generation's count / k, its average per step
        k = cfg.optimizer_steps_per_generation
        denom = None if denom is None else denom / k
        n_groups = ro.num_groups
        if self.skips_flat_groups() and ro.samples:
            # Groups with no learning signal (all advantages 0: e.g. every answer right, or every
            # one wrong) only cost compute: train on the others, normalised by the whole batch.
            live = ro.advantages.view(-1, ro.group_size).ne(0).any(1)
            if not live.all():
                ro = ro.select(live.nonzero().flatten().tolist())
        sampler_logprobs = self.needs_sampler_logprobs() or stale_sampler
        micro = self.micro_batches(ro, sampler_logprobs)
        adv = ro.advantages.to(self.acc.device) if ro.samples else torch.zeros(1, device=self.acc.device)
        # the real micro-batches of one optimizer step: BNPO's and the entropy bonus's means are over them
        n_micro = len(micro) / k
        micro, adv = self.match_micro_batches(micro, adv, sampler_logprobs)
        per_step = len(micro) // k  # equal counts: skipping, dynamic sampling and async are off when k > 1
        slices = [range(i * per_step, (i + 1) * per_step) for i in range(k - 1)] \
            + [range((k - 1) * per_step, len(micro))]
        # A stale sampler (weight_sync_steps > 1) drew from weights the trainer no longer has: its own
        # log-probs are the behaviour policy, so the ratio (and its clip) covers the lag. The trainer's
        # current weights as pi_old made the ratio 1 and ignored the lag. The importance weight then
        # has nothing left to correct (pi_old is the sampler's): it is 1.
        stale = stale_sampler and bool(ro.samples)
        # the load-balancing loss of a micro-batch is weighted by its share of this process's tokens
        real = [0.0 if b.get("is_padding") else float(_input_tokens(b).sum()) for _, b in micro]
        return _Batch(micro=micro, adv=adv, denom=denom, n_micro=n_micro,
                      aux_share=[r / max(sum(real), 1.0) for r in real],
                      n_tokens=int(sum(b["completion_mask"].sum().item() for _, b in micro)),  # the tokens trained on
                      n_groups=n_groups, n_trained_groups=ro.num_groups, stale=stale,
                      frozen=self._frozen_passes(micro, stale),  # the padded ones: sharded forwards are collective
                      slices=slices)

    def _frozen_passes(self, micro: list, stale: bool) -> _Frozen:
        """The log-probs the loss compares with, from passes that train nothing (each one only where
        the loss has its term); in this order, which every process keeps (sharded forwards are collective)."""
        cfg = self.cfg
        # With one update per rollout the policy that sampled is the policy being trained:
        # old log-probs equal the current ones (detached), so no extra forward pass is spent
        # (unless routing replay needs the old pass's experts).
        replay = cfg.routing_replay and bool(self.routers)
        # ... nor with several optimizer steps per generation: the later slices train on weights that moved
        reused = cfg.num_iterations > 1 or cfg.optimizer_steps_per_generation > 1
        old, routes = self.old_pass(micro) if reused or replay else (None, None)
        ref = self.reference_logprobs(micro)
        # The importance weight's pi_old is the distribution the sampler drew from: with top-k/top-p/min-p
        # that is the truncated one (the engines report truncated log-probs), so it gets its own
        # pass; against the full distribution the weight was the kept mass (~0.9 at top_p 0.9).
        # The repetition penalty is left out of this pass on purpose: it is not a cut of the policy's
        # distribution but a change of it that depends on each row's prefix, and the importance
        # weight pi_theta / pi_sampler is what corrects it back to the policy being trained (as in
        # TRL, whose weight is always against the plain tempered policy). Reproducing it here made
        # the weight ~1 and trained the policy toward its penalised samples without correction.
        min_p = cfg.min_p or 0.0
        truncation = (cfg.top_k, cfg.top_p, min_p) if cfg.top_k > 0 or cfg.top_p < 1 or min_p > 0 else None
        behaviour = self.frozen_logprobs(self.model, micro, truncation=truncation) \
            if self.loss_settings.is_mode is not None and truncation and not stale else None
        # the teacher's own distribution (temperature 1) is the target of on-policy distillation
        teacher = self.frozen_logprobs(self.teacher, micro, 1.0) if self.teacher is not None else None
        return _Frozen(old=old, routes=routes, replay=replay, ref=ref, behaviour=behaviour, teacher=teacher)

    def _train_micro_batch(self, batch: _Batch, j: int, totals: _Totals) -> None:
        """Forward and backward of micro-batch ``j`` (gradients accumulate; DDP all-reduces them at the
        last micro-batch only); its loss and statistics are added to ``totals``."""
        cfg, (sl, b), f = self.cfg, batch.micro[j], batch.frozen
        sync = contextlib.nullcontext() if any(j == sl[-1] for sl in batch.slices) else self.acc.no_sync(self.model)
        # routing stays captured (and replayed) through the backward: a checkpointed layer's
        # recompute must route as its forward did
        capture = RoutingCapture(self.model, f.routes[j] if f.replay else None) if self.routers \
            else contextlib.nullcontext()
        with sync, capture as cap:
            # TRL's adaptive controller: the coefficient applies only while the last step's entropy is at or
            # below the target (before the first step, inf: not yet)
            coef = self.entropy_coef if not self.cfg.use_adaptive_entropy or \
                self.last_world_entropy <= cfg.entropy_target else 0.0
            logp, ent = completion_logprobs(self.model, b, cfg.temperature, with_entropy=True,
                                            entropy_grad=coef > 0, chunk_size=cfg.logprob_chunk_size)
            old_logp = b["sampler_logp"] if batch.stale else (f.old[j] if f.old is not None else logp.detach())
            settings = self.loss_settings if coef == self.loss_settings.entropy_coef else \
                dataclasses.replace(self.loss_settings, entropy_coef=coef)
            loss, tok_stats = A.policy_loss(
                logp, old_logp, batch.adv[sl], b["completion_mask"], settings, entropy=ent,
                denom=batch.denom, n_micro=batch.n_micro, entropy_cut=self._entropy_cut(ent, b["completion_mask"]),
                ref_logp=_nth(f.ref, j), teacher_logp=_nth(f.teacher, j), behaviour_logp=_nth(f.behaviour, j),
                sampler_logp=b.get("sampler_logp"), token_loss=self.objective)
            self._entropy_window[0] += tok_stats.bonus_entropy.item()
            self._entropy_window[1] += tok_stats.bonus_tokens.item()
            if cap is not None:
                aux = self._record_routing(cap, b, _nth(f.routes, j), totals.router)
                if self.router_aux_loss_coef > 0:
                    loss = loss + self.router_aux_loss_coef * aux * batch.aux_share[j]
            self.acc.backward(loss)
        totals.add(loss, tok_stats)

    def _entropy_cut(self, ent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """top_entropy_quantile's threshold over this micro-batch's real tokens on every process, as TRL
        gathers them (None: every token is trained, or no process has a token). Collective."""
        if self.cfg.top_entropy_quantile >= 1:
            return None
        local = ent.detach()[mask.bool()].float()
        if self.acc.num_processes > 1:
            pad = -1e9  # entropies are >= 0: the sentinel cannot be a real value
            gathered = self.acc.gather(self.acc.pad_across_processes(local, dim=0, pad_index=pad))
            local = gathered[gathered != pad]
        return A.entropy_threshold(local, self.cfg.top_entropy_quantile) if local.numel() else \
            ent.new_tensor(math.inf)  # no token anywhere: none is trained

    def _update_entropy_coef(self) -> None:
        """The adaptive controller at an optimizer step (Skywork-OR1, as TRL 1.16): the step's mean entropy over
        the bonus's tokens on every process; at or below entropy_target the coefficient grows by
        entropy_coef_delta, above it shrinks, within [entropy_coef_min, entropy_coef_max]. Collective."""
        cfg = self.cfg
        total, count = reduce_sum(self.acc, self._entropy_window)
        self._entropy_window = [0.0, 0.0]
        world = total / max(count, 1.0)
        if world <= cfg.entropy_target:
            self.entropy_coef = min(self.entropy_coef + cfg.entropy_coef_delta, cfg.entropy_coef_max)
        else:
            self.entropy_coef = max(self.entropy_coef - cfg.entropy_coef_delta, cfg.entropy_coef_min)
        self.last_world_entropy = world

    def _record_routing(self, cap: RoutingCapture, b: dict[str, Any], reference: list[torch.Tensor] | None,
                        router: RouterStats) -> torch.Tensor:
        """Add a micro-batch's routing to ``router`` (expert load, router entropy, and the flips against
        ``reference``, the old pass's experts) and return its load-balancing loss (0-d)."""
        # every real token went through the routers (none of an empty shard's pad row counts)
        routed = torch.zeros_like(_input_tokens(b)) if b.get("is_padding") else _input_tokens(b)
        # without a gradient when it is only logged: no [tokens, experts] graph per layer
        with torch.set_grad_enabled(self.router_aux_loss_coef > 0 and torch.is_grad_enabled()):
            aux = cap.aux_loss(routed)
        s = cap.stats(routed, reference=reference)
        s.aux_sum, s.aux_n = aux.item(), 1
        router.add(s)
        return aux

    def _optimizer_step(self, loss_sum: float) -> float:
        """Clip the gradient and step the optimizer and the schedule, or skip and count a non-finite
        update; then clear the gradient. ``loss_sum``: the losses summed so far this step (one
        non-finite pass makes the step's later passes skip too). Returns the gradient norm (NaN:
        none reported). Collective with several processes."""
        if self.cfg.use_adaptive_entropy:  # at every optimizer-step boundary, as TRL (whether the step is taken)
            self._update_entropy_coef()
        norm = self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        grad_norm = float("nan") if norm is None else float(norm)  # None: DeepSpeed before its first step
        # The gradient norm is the same on every process (after the all-reduce), the loss is
        # not: all processes must agree to step, or their weights drift apart.
        finite = (norm is None or math.isfinite(grad_norm)) and math.isfinite(loss_sum)
        if self.acc.num_processes > 1:
            finite = reduce_sum(self.acc, [float(finite)])[0] == self.acc.num_processes
        if finite:
            self.optimizer.step()
            # the schedule counts optimizer steps, as transformers' Trainer's does (not stepped when
            # the optimizer step was skipped): stepped on a skipped update, warm-up and decay ran ahead
            self.scheduler.step()
            self.nonfinite_streak = 0
        else:  # a non-finite update would poison the weights: skip it and count it
            self.nonfinite_skipped += 1
            self.nonfinite_streak += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.ref_sync is not None:  # TRL's SyncRefModelCallback.on_step_end: after every optimizer step
            self.ref_sync.after_optimizer_step()
        return grad_norm

    def _metrics(self, batch: _Batch, totals: _Totals, stale_sampler: bool, t0: float) -> dict[str, float]:
        """The step's update metrics. Collective: token statistics are means over every process's
        trained tokens and passes; the loss is this process's share of DDP's averaged objective
        (averaged in rlreason.loop.distributed.reduce_metrics)."""
        k = self.cfg.num_iterations
        steps = len(totals.grad_norms)  # optimizer steps: num_iterations * optimizer_steps_per_generation
        *sums, n_tokens, n_trained, n_groups = reduce_sum(
            self.acc, [totals.token[name] for name in A.SUMMED_STATS]
            + [float(batch.n_tokens), float(batch.n_trained_groups), float(batch.n_groups)])
        tok = max(n_tokens, 1) * k
        mean = {name: s / tok for name, s in zip(A.SUMMED_STATS, sums, strict=True)}  # per token and pass
        metrics = {
            "loss": totals.loss / steps,  # per optimizer step
            "clip_frac": mean["clipped"],
            # spread of the token log-ratio log(pi_theta / pi_old) over completion tokens and all
            # training passes (the first pass of a batch has ratio 1 up to numerics)
            "ratio/log_std": math.sqrt(max(mean["log_ratio_sq"] - mean["log_ratio"] ** 2, 0.0)),
            "ratio/max_abs_log": totals.max_abs_log_ratio,
            "entropy": mean["entropy"],
            "grad_norm": sum(totals.grad_norms) / steps,
            "lr": self.scheduler.get_last_lr()[0],
            "nonfinite_skipped": float(self.nonfinite_skipped),
            # groups left out of the passes (all advantages 0); token statistics above cover the others
            "skipped_groups_frac": 1.0 - n_trained / n_groups if n_groups else 0.0,
            "stale_sampler": float(stale_sampler),
            "time/training_s": time.perf_counter() - t0,
        }
        if batch.frozen.ref is not None:
            metrics["kl"] = mean["kl"]
        if batch.frozen.teacher is not None:  # mean per completion token of log pi_student - log pi_teacher
            metrics["distill/reverse_kl"] = mean["reverse_kl"]
        metrics.update(self._loss_option_metrics(mean, sums, totals, n_tokens))
        if totals.router is not None:
            router = totals.router
            if self.acc.num_processes > 1:
                router = router.from_flat(reduce_sum(self.acc, router.flat()))
            metrics.update(router.metrics(per_expert=self.cfg.log_expert_load))
        return metrics

    def _loss_option_metrics(self, mean: dict[str, float], sums: list[float], totals: _Totals,
                             n_tokens: float) -> dict[str, float]:
        """The loss options' metrics, under TRL's names where TRL logs them (clip_ratio/*, cispo_clip_ratio,
        vespo/phi_seq_mean, sampling/importance_sampling_ratio/*, entropy_coef). Collective."""
        s, out = self.loss_settings, {}
        total = dict(zip(A.SUMMED_STATS, sums, strict=True))
        if s.surrogate == "clip" and self.objective is None:  # token-weighted, over every pass
            out["clip_ratio/low_mean"], out["clip_ratio/high_mean"] = mean["clip_low"], mean["clip_high"]
            out["clip_ratio/region_mean"] = mean["clip_low"] + mean["clip_high"]
        elif s.surrogate == "clipped_weight":
            out["cispo_clip_ratio"] = mean["clipped"]
        elif s.surrogate == "gamma_weight":
            out["vespo/phi_seq_mean"] = total["phi_seq"] / total["sequences"] if total["sequences"] else math.nan
        if s.is_mode is not None:
            # NaN on a step that trained no token (every group flat): a mean of nothing, not a weight of 0
            out["is_weight_mean"] = mean["is_weight"] if n_tokens > 0 else math.nan
            out["is_weight_capped_frac"] = mean["is_capped"] if n_tokens > 0 else math.nan  # truncated or masked
            units = total["is_units"]
            lo, hi = totals.is_ratio_min, totals.is_ratio_max
            if self.acc.num_processes > 1:  # the min and max over processes, as one gather
                t = torch.tensor([[-lo, hi]], dtype=torch.float64, device=self.acc.device)
                neg_lo, hi = self.acc.gather(t).max(0).values.tolist()
                lo = -neg_lo
            out["sampling/importance_sampling_ratio/min"] = lo if units else math.nan
            out["sampling/importance_sampling_ratio/mean"] = total["is_unit_weight"] / units if units else math.nan
            out["sampling/importance_sampling_ratio/max"] = hi if units else math.nan
        if self.entropy_bonus:
            out["entropy_coef"] = self.entropy_coef
        return out

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
import math
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerState

from rlreason import algorithms as A
from rlreason import stopping
from rlreason.batching import pack, pack_groups, supports_packing
from rlreason.build import Parts, shares_policy
from rlreason.checkpoint import hf_model_files, read_state, record_final_eval, save_checkpoint, save_model
from rlreason.config import GRPOConfig
from rlreason.data import INTERNAL_COLUMNS
from rlreason.distributed import full_named_parameters, gather_varlen, reduce_metrics, reduce_sum
from rlreason.eval.core import EvalProtocol, evaluate, evaluate_suites, flat_metrics
from rlreason.eval.metrics import wilson_interval
from rlreason.experience import PromptStream, Rollout, completion_rows, sample_metrics
from rlreason.health import RewardHealth
from rlreason.logprobs import completion_logprobs
from rlreason.lora import is_peft_model, merged_named_parameters
from rlreason.moe import ROUTER_CLASSES, RouterStats, RoutingCapture, aux_loss_coef, find_routers
from rlreason.resume import apply_optimizer_changes
from rlreason.rewards.runner import reward_inputs
from rlreason.rollout.base import SamplingConfig
from rlreason.tracking import run_summary, write_report


def _input_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """[rows, width] 1 where the model input holds a real token: the 2D attention mask of a
    padded batch; a prompt-group-packed batch's block mask is 4D, it carries "row_tokens"."""
    return batch["row_tokens"] if "row_tokens" in batch else batch["attention_mask"]


class GRPOTrainer:
    # whether several prompt groups may share a packed row (rlreason.batching); GRPO's groups are
    # long enough to fill rows, many short SFT examples are not (rlreason.sft)
    share_pack_rows = False
    # the per-token loss (A.TokenLoss); None: the preset's clipped surrogate (rlreason.sft: the NLL)
    objective: A.TokenLoss | None = None

    def __init__(self, cfg: GRPOConfig, parts: Parts) -> None:
        """Train with the parts ``rlreason.build`` made (``build(cfg)``, or ``assemble(...)`` around
        a given model and dataset). ``parts.teacher``: a causal LM sharing the tokenizer for
        on-policy distillation (its per-token log-probs give the advantages, ``cfg.teacher_kl_coef``)."""
        self.cfg, self.acc, self.run_dir = cfg, parts.acc, parts.run_dir
        self.model, self.optimizer, self.scheduler = parts.model, parts.optimizer, parts.scheduler
        self.tokenizer, self.train_dataset, self.engine = parts.tokenizer, parts.train, parts.engine
        self.rewards, self.log = parts.rewards, parts.logger
        self.ref_model, self.ref_is_base_adapter = parts.ref_model, parts.ref_is_base_adapter
        self.teacher = parts.teacher
        self.eval_rows, self.eval_scorer, self.suite_scorer = parts.eval_rows, parts.eval_scorer, parts.suite_scorer
        self.engine_shares_policy = shares_policy(self.engine, self.model, self.acc)
        self.preset = A.PRESETS[cfg.loss_type]
        self.scale_rewards = cfg.scale_rewards or self.preset.scale_rewards
        self.ratio_level = cfg.importance_sampling_level or self.preset.ratio_level
        self.clip_range = cfg.clip_range()  # the preset's paper values unless the config sets epsilon
        self.loss_settings = A.LossSettings(  # the terms of the loss and how they combine (A.policy_loss)
            eps_low=self.clip_range[0], eps_high=self.clip_range[1], ratio_level=self.ratio_level,
            dual_clip=cfg.dual_clip, aggregation=self.preset.aggregation, max_len=cfg.max_completion_length,
            beta=cfg.beta, kl_estimator=cfg.kl_estimator, entropy_coef=cfg.entropy_coef,
            is_cap=cfg.importance_sampling_cap, teacher_kl_coef=cfg.teacher_kl_coef,
            teacher_reward_weight=cfg.teacher_reward_weight)
        # Estimators that normalise over the whole batch need every process's rewards (gathered
        # with their lengths, so dynamic sampling's unequal shards work too).
        self.global_advantages = cfg.advantage_estimator == "reinforce_pp" or (
            cfg.advantage_estimator == "grpo" and self.scale_rewards == "batch")
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
        self.sampling = SamplingConfig(max_tokens=cfg.max_completion_length, temperature=cfg.temperature,
                                       top_p=cfg.top_p, top_k=cfg.top_k)
        self.eval_sampling = SamplingConfig(max_tokens=cfg.eval_max_tokens or cfg.max_completion_length,
                                            temperature=0.0)
        self.prompts_per_process = cfg.completions_per_step // self.group_size
        self.prompts = PromptStream(self.train_dataset, cfg.seed, self.prompts_per_process, self.acc.process_index,
                                    self.acc.num_processes, cfg.generation_seed_per_prompt)
        self.health = RewardHealth(cfg.max_failed_reward_steps, log=self.log.print)
        self.step = 0
        self.nonfinite_skipped = 0
        self.nonfinite_streak = 0  # non-finite updates in a row
        self.last_eval: dict[str, float] = {}  # the latest periodic eval, saved with checkpoints
        self.heldout_before: dict[str, Any] = {}
        self._saved_step: int | None = None  # the step of the newest checkpoint this run wrote or resumed from

    @property
    def group_size(self) -> int:
        """Completions per prompt (GRPO's G)."""
        return self.cfg.num_generations

    # ------------------------------------------------------------------ rollout

    def rollout(self, rows: list[dict], seeds: list[int] | None = None) -> Rollout:
        """Generate and score ``rows`` on this process (no communication: with dynamic sampling
        the processes run different numbers of rounds). ``metrics`` holds this process's
        timings and reward failure counts; batch statistics come from ``rlreason.experience.sample_metrics``."""
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
        self.health.errors.update(out.errors)
        # No applicable term: NaN, left out of the group statistics (advantage 0), never a 0 score.
        rewards = torch.where(out.applicable, out.total, torch.full_like(out.total, math.nan))
        return Rollout([r["prompt_ids"] for r in rows for _ in range(G)], samples, rewards, out.per_func,
                       prompts, G, metrics, extra=out.extra)

    def trainer_state(self) -> TrainerState:
        """What TRL passes rewards as ``trainer_state`` (they read ``global_step``, ``max_steps``)."""
        return TrainerState(global_step=self.step, max_steps=self.cfg.max_steps, epoch=self.prompts.epoch(self.step),
                            num_train_epochs=math.ceil(self.prompts.epoch(self.cfg.max_steps)))

    def collect(self) -> Rollout:
        """This step's batch: a rollout of this step's prompts; with dynamic sampling (DAPO,
        sec. 3.2), groups whose rewards are all equal are dropped and more prompts sampled until
        the batch is full again or ``max_resample_rounds`` extra rounds are spent."""
        cfg = self.cfg
        ro = self.rollout(self.prompts.rows(self.step), self.prompts.seeds("train", self.prompts.positions(self.step)))
        metrics = {**ro.metrics, **sample_metrics(self.acc, ro)}  # of the policy's draw, before any filtering
        if cfg.dynamic_sampling:
            want = self.prompts_per_process
            ro = ro.select(ro.informative_groups())
            rounds = 0
            while ro.num_groups < want and rounds < cfg.max_resample_rounds:
                rounds += 1
                more = self.rollout(*self.prompts.extra_rows(want))
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
        # Packed by prompt group when every micro-batch holds whole groups (rlreason/batching.py):
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
        cfg = self.cfg
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
                        logp, old_logp, adv[sl], b["completion_mask"], self.loss_settings, entropy=ent, denom=denom,
                        ref_logp=ref[j] if ref is not None else None,
                        teacher_logp=teacher[j] if teacher is not None else None,
                        behaviour_logp=behaviour[j] if behaviour is not None else None,
                        sampler_logp=b.get("sampler_logp"), token_loss=self.objective)
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
        if not rows or self.eval_scorer is None:
            return {}
        mine = rows[self.acc.process_index::self.acc.num_processes]
        res = evaluate(self.engine, [r["prompt_ids"] for r in mine], [r[self.cfg.prompt_column] for r in mine],
                       [r["answer"] for r in mine], self.eval_scorer, self.eval_sampling)
        counts = torch.tensor([res["correct"], res["n"], res.get("format_rate", 0.0) * res["n"],
                               res["mean_length"] * res["n"], res["truncated_frac"] * res["n"], res["score_failures"]],
                              dtype=torch.float64, device=self.acc.device)
        counts = self.acc.reduce(counts, "sum") if self.acc.num_processes > 1 else counts
        correct, total, fmt, length, trunc, failures = counts.tolist()
        lo, hi = wilson_interval(int(correct), int(total))
        return {"eval/accuracy": correct / total, "eval/accuracy_ci_low": lo, "eval/accuracy_ci_high": hi,
                "eval/correct": int(correct), "eval/n": int(total), "eval/format_rate": fmt / total,
                "eval/mean_length": length / total, "eval/truncated_frac": trunc / total,
                "eval/score_failures": int(failures), "eval/samples": res["samples"]}

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
                                      scorer=self.suite_scorer, limit=cfg.eval_suites_limit)
            flat = flat_metrics(results, prefix="suite")
        self.acc.wait_for_everyone()
        return flat

    def train(self) -> dict[str, Any]:
        try:
            with stopping.handle_stop_signals():
                return self._train()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the reward workers (also done at garbage collection and interpreter exit)."""
        for runner in (self.rewards, self.eval_scorer, self.suite_scorer):
            if runner is not None:
                runner.close()

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
        self.prompts.extra_drawn = state.get("extra_prompts_drawn", 0)
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
                if self.run_dir.resume is not None:
                    self._resume(self.run_dir.resume)
                    before = self.heldout_before
                else:
                    before = self.evaluate(cfg.final_eval_size)
                    before.update(self.evaluate_suites())
        except stopping.Stopped:
            interrupted, before = True, {}
        if self.run_dir.resume is None and before:  # outside: a stop must not tear the line
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
            if self.health.dead():
                raise self.health.failure(self.save(self.step))
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
        summary = run_summary(before, after, steps=self.step, train_time_s=train_time,
                              total_time_s=time.perf_counter() - t_start,
                              samples_per_s=sum(samples_per_s) / max(len(samples_per_s), 1),
                              nonfinite_skipped=self.nonfinite_skipped, interrupted=interrupted,
                              reward_failures=dict(self.health.failures_total))
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
        n_comp = len(ro.samples)  # this process's; reduce_metrics sums the rates over processes
        n_tok = sum(len(s.token_ids) for s in ro.samples)
        metrics.update({"time/step_s": dt, "perf/samples_per_s": n_comp / dt, "perf/tokens_per_s": n_tok / dt})
        acc_name = next((n for n in ro.per_func if n.startswith("accuracy")), None)
        if acc_name is not None:  # the progress bar's "acc": the accuracy reward's batch mean
            metrics["accuracy"] = metrics[f"rewards/{acc_name}/mean"]
        metrics = reduce_metrics(self.acc, metrics)
        self.health.record(self.step, metrics)
        if cfg.eval_steps and self.step % cfg.eval_steps == 0 and self.step < cfg.max_steps:
            ev = self.evaluate(cfg.eval_size)
            ev.update(self.evaluate_suites())
            self.last_eval = {k: v for k, v in ev.items() if isinstance(v, int | float)}
            metrics.update({k: v for k, v in ev.items() if k != "eval/samples"})
        if self.step % cfg.logging_steps == 0 or self.step == cfg.max_steps:
            self.log.log(self.step, metrics)
        if cfg.log_completions_steps and (self.step == 1 or self.step % cfg.log_completions_steps == 0):
            self.log.completions(self.step, completion_rows(ro, 2 * cfg.num_generations))  # two groups
        self.log.advance(self.step, metrics)
        return metrics, n_comp

    def save(self, step: int) -> Path:
        """A checkpoint of everything ``_resume`` needs to continue exactly from ``step``."""
        state = {"config": self.cfg.to_dict(), "extra_prompts_drawn": self.prompts.extra_drawn,
                 "nonfinite_skipped": self.nonfinite_skipped, "nonfinite_streak": self.nonfinite_streak,
                 "metrics": self.last_eval, "heldout_before": self.heldout_before,
                 # the KL reference is the initial policy (or, with LoRA, the adapter-disabled base)
                 "reference_model": None if self.ref_model is None and not self.ref_is_base_adapter
                 else ("base_adapter_disabled" if self.ref_is_base_adapter else self.cfg.model_name_or_path),
                 "teacher_model": self.cfg.teacher_model_name_or_path, "config_changes": self.run_dir.config_changes}
        policy = self.acc.unwrap_model(self.model)
        path = save_checkpoint(self.acc, self.cfg.output_dir, step, state, keep=self.cfg.save_total_limit,
                               best_metric=self.cfg.metric_for_best_model, greater_is_better=self.cfg.greater_is_better,
                               extra=lambda folder: hf_model_files(policy, self.tokenizer, folder))
        self._saved_step = step
        return path

    def save_final(self, out_dir: str | Path) -> Path:
        """The trained policy as a plain Hugging Face model (rlreason.checkpoint.save_model)."""
        return save_model(self.acc, self.model, self.tokenizer, out_dir)

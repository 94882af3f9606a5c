"""The GRPO loop: rollouts -> rewards -> advantages -> updates -> sync -> log.

One step:
1. take this step's prompts (a seeded permutation, sharded across processes; each
   prompt's whole group is generated on one process, so group statistics are local;
   statistics over the whole batch are computed on every process's data, see below);
2. sample ``num_generations`` completions per prompt with the rollout engine;
3. score them with the reward functions (weighted sum of the values, None terms left out); a
   completion with no applicable term, or one a reward failed on (its total is unknown), has
   reward NaN: no signal, advantage 0, and a failed one is left out of the loss; a reward that
   never worked, or stopped working for ``max_failed_reward_steps`` steps, stops the run
   (rewards/health.py);
4. turn rewards into group-relative advantages;
5. ``num_iterations`` optimizer steps on the clipped surrogate (+ beta * KL), each over the
   whole batch in micro-batches of ``per_device_train_batch_size`` completions (the actor,
   rlreason/loop/actor.py; the loss is ``algorithms.policy_loss``);
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

With ``async_rollouts`` steps 2-3 of step t+1 run on a background thread (rlreason/loop/async_rollout.py)
while step t's update runs, on a separate engine (a copy of the policy, or a vLLM server). Which
weights sample which batch depends only on the step (``Overlap.launch_next``): the engine takes the
policy's weights right after a batch is taken and before the next is started, when a batch
would otherwise be sampled more than ``max_staleness`` steps behind the weights it trains. The
update then compares the policy with pi_prox, its weights at the start of the update (the clip),
and corrects each token's distribution for the lag with the truncated importance weight
min(pi_prox / pi_sampler, importance_sampling_cap), fixed per token (Yao et al. 2025; the decoupled
objective of AReaL), the KL term included; not the prefixes the sampler drew (docs/scaling.md says
what that costs per ``max_staleness``). A checkpoint holds the batch in flight, so a resume is exact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerState

from rlreason import algorithms as A
from rlreason.config import GRPOConfig
from rlreason.data import INTERNAL_COLUMNS
from rlreason.eval.core import HELDOUT_SUMS, EvalProtocol, evaluate, evaluate_suites, flat_metrics, heldout_metrics
from rlreason.loop.actor import Actor
from rlreason.loop.async_rollout import Job, Overlap
from rlreason.loop.distributed import full_named_parameters, gather_varlen, reduce_metrics, reduce_sum
from rlreason.loop.experience import PromptStream, Rollout, completion_rows, sample_metrics
from rlreason.loop.parts import Parts
from rlreason.loop.tool_rollout import (
    Generated,
    RolloutFuncContext,
    context_length,
    mark_rollout_errors,
    plain_rollouts,
    rollout_func_rollouts,
    tools_rollouts,
)
from rlreason.lora import is_peft_model, merged_named_parameters
from rlreason.rewards.health import RewardHealth
from rlreason.rewards.runner import add_reward_columns, reward_inputs
from rlreason.rollout import factory
from rlreason.rollout.base import SamplingConfig
from rlreason.rollout.errors import find_server_error
from rlreason.rollout.tools.parse import check_tool_template, use_response_template
from rlreason.rollout.tools.rollouts import ToolRollouts
from rlreason.run import stopping
from rlreason.run.checkpoint import (
    Stateful,
    hf_model_files,
    load_parts,
    parts_state,
    record_final_eval,
    rng_states,
    save_checkpoint,
    save_model,
    set_rng_states,
)
from rlreason.run.resume import RunConfig
from rlreason.run.tracking import run_summary, write_report


class GRPOTrainer:
    # How the actor (rlreason/loop/actor.py) trains; rlreason.loop.sft.SFTTrainer changes both.
    share_pack_rows = False  # several prompt groups in one packed row (GRPO's groups fill rows)
    objective: A.TokenLoss | None = None  # the per-token loss; None: the preset's clipped surrogate

    def __init__(self, cfg: GRPOConfig, parts: Parts) -> None:
        """Train with the parts ``rlreason.build`` made (``build(cfg)``, or ``assemble(...)`` around
        a given model and dataset). ``parts.teacher``: a causal LM sharing the tokenizer for
        on-policy distillation (its per-token log-probs give the advantages, ``cfg.teacher_kl_coef``)."""
        self.cfg, self.acc, self.run_dir = cfg, parts.acc, parts.run_dir
        self.model, self.optimizer, self.scheduler = parts.model, parts.optimizer, parts.scheduler
        self.tokenizer, self.train_dataset, self.engine = parts.tokenizer, parts.train, parts.engine
        self.rewards, self.log = parts.rewards, parts.logger
        # multi-turn rollouts (rlreason/loop/tool_rollout.py): the tools' executor, or the user's rollout_func
        self.tools, self.rollout_func = parts.tools, parts.rollout_func
        if self.tools is not None:
            check_tool_template(self.tokenizer, getattr(cfg, "model_name_or_path", None))
            use_response_template(self.tokenizer)  # TRL's parser for a template it knows, else Hermes
        self.max_model_len = context_length(self.acc.unwrap_model(self.model))
        self.eval_rows, self.eval_scorer, self.suite_scorer = parts.eval_rows, parts.eval_scorer, parts.suite_scorer
        # the held-out eval and the suites run with the run's tools (eval/core.py), in the policy's context
        self._eval_executor = parts.eval_tools  # its own with async_rollouts (rlreason/loop/parts.py)
        self.eval_tools = None if parts.tools is None else ToolRollouts(
            parts.eval_tools or parts.tools, self.tokenizer, cfg.max_tool_calling_iterations, self.max_model_len,
            dict(cfg.chat_template_kwargs or {}))
        self.actor = Actor(cfg, parts, self.objective, self.share_pack_rows)  # the update (rlreason/loop/actor.py)
        self.engine_shares_policy = factory.shares_policy(self.engine, self.acc.unwrap_model(self.model))
        self.scale_rewards = cfg.scale_rewards or "group"  # null (older configs): group, TRL's default
        # Estimators that normalise over the whole batch need every process's rewards (gathered
        # with their lengths, so dynamic sampling's unequal shards work too).
        self.global_advantages = cfg.advantage_estimator == "reinforce_pp" or (
            cfg.advantage_estimator == "grpo" and self.scale_rewards == "batch")
        self.sampling = SamplingConfig(max_tokens=cfg.max_completion_length, temperature=cfg.temperature,
                                       top_p=cfg.top_p, top_k=cfg.top_k, min_p=cfg.min_p or 0.0,
                                       repetition_penalty=cfg.repetition_penalty, extra=cfg.sampling_extra())
        # held-out eval: greedy, one answer per problem; with num_generations_eval, that many samples per
        # problem from the training distribution (TRL's meaning), accuracy = their mean (pass@1)
        self.eval_n = cfg.num_generations_eval or 1
        self.eval_sampling = dataclasses.replace(self.sampling, max_tokens=cfg.eval_max_tokens or
                                                 cfg.max_completion_length) if cfg.num_generations_eval else \
            SamplingConfig(max_tokens=cfg.eval_max_tokens or cfg.max_completion_length, temperature=0.0,
                           repetition_penalty=cfg.repetition_penalty)
        self.prompts_per_process = cfg.completions_per_step // self.group_size
        self.prompts = PromptStream(self.train_dataset, cfg.seed, self.prompts_per_process, self.acc.process_index,
                                    self.acc.num_processes, cfg.generation_seed_per_prompt)
        self.health = RewardHealth(cfg.max_failed_reward_steps, log=self.log.print)
        if cfg.reward_num_workers == 0:
            self.log.print("[yellow]reward_num_workers: 0: the rewards run in the trainer's process, with no timeout "
                           "and no memory cap; a reward that hangs, crashes the interpreter or calls os._exit ends "
                           "the run (a worker pool, reward_num_workers >= 1, contains all three)")
        self.step = 0  # optimizer steps per pass (TRL's global_step when num_iterations is 1)
        # optimizer steps one generation makes (steps_per_generation / gradient_accumulation_steps): the
        # step advances by k per generation, and the prompt stream is read by generation (self.generation)
        self.k = cfg.optimizer_steps_per_generation
        self.last_eval: dict[str, float] = {}  # the latest periodic eval, saved with checkpoints
        self.heldout_before: dict[str, Any] = {}
        self._saved_step: int | None = None  # the step of the newest checkpoint this run wrote or resumed from
        self.pending_row: dict[str, float] | None = None  # a step's metrics not logged yet (_evaluate_and_log)
        self.overlap: Overlap | None = None  # the batch in flight and its schedule (async_rollouts)
        # Called as hook(event, step, info) after each step's row is logged ("step", the step's metrics) and
        # after each checkpoint ("save", {"path": ...}): rlreason.api's TrainerCallbacks; nothing else here.
        self.hooks: list[Callable[[str, int, dict[str, Any]], None]] = []
        if cfg.async_rollouts:
            if self.engine_shares_policy:
                raise ValueError("config key 'async_rollouts': the engine generates with the policy itself, whose "
                                 "weights the update changes; build the parts with rlreason.build.assemble (it "
                                 "gives the transformers engine a copy of the policy) or pass a separate engine")
            # Several processes: each has its own rollout thread, which runs no collective (generation
            # and scoring are local); every collective (weight sync, batch statistics, the update)
            # stays on the trainer's thread, at the same step on every process.
            self.overlap = Overlap(cfg.max_staleness, cfg.max_steps, self._rollout_job, self.sync_weights, self.acc)

    @property
    def generation(self) -> int:
        """Generations (rollout batches) done: the prompt stream's position and weight_sync_steps' unit."""
        return self.step // self.k

    def _crossed(self, every: int | None) -> bool:
        """Whether the last generation's optimizer steps reached a multiple of ``every`` (0 or None, TRL's
        eval_steps default: off): with one optimizer step per generation, ``step % every == 0``."""
        return bool(every) and self.step // every > (self.step - self.k) // every

    @property
    def group_size(self) -> int:
        """Completions per prompt (GRPO's G)."""
        return self.cfg.num_generations

    # ------------------------------------------------------------------ rollout

    def rollout(self, rows: list[dict], seeds: list[int] | None = None) -> Rollout:
        """Generate and score ``rows`` on this process (no communication: with dynamic sampling
        the processes run different numbers of rounds). ``metrics`` holds this process's
        timings and reward failure counts; batch statistics come from ``rlreason.loop.experience.sample_metrics``."""
        ro, errors = self.generate_and_score(rows, seeds, self.trainer_state())
        self.health.errors.update(errors)
        return ro

    def generate_and_score(self, rows: list[dict], seeds: list[int] | None, state: TrainerState
                           ) -> tuple[Rollout, dict[str, str]]:
        """``rollout``'s work: -> (the rollout, the rewards' errors). It reads and changes nothing of
        the trainer's (``state`` is the rewards' ``trainer_state``), so it may run on the rollout thread."""
        G = self.cfg.num_generations
        t0 = time.perf_counter()
        gen = self._generate(rows, seeds, state)
        t_gen = time.perf_counter() - t0
        samples = gen.samples
        prompts, completions, columns = reward_inputs(rows, [s.text for s in samples], [s.token_ids for s in samples],
                                                      G, self.cfg.prompt_column, skip=INTERNAL_COLUMNS,
                                                      plain_text=self.cfg.rewards_plain_text,
                                                      exchanges=gen.exchanges, prompt_messages=gen.prompts)
        columns.update(gen.columns)
        t0 = time.perf_counter()
        out = self.rewards.score(prompts, completions, columns, shared={"trainer_state": state})
        if self.tools is not None and self.tools.reward_names:  # each environment's get_reward: weight 1, as TRL
            out = add_reward_columns(out, *self.tools.rewards())
        out = mark_rollout_errors(out, samples)  # an environment's reset failed: the reward is unknown
        t_score = time.perf_counter() - t0
        metrics = {"time/generation_s": t_gen, "time/scoring_s": t_score, **out.logged}
        for name in out.per_func:
            metrics[f"rewards/{name}/failures"] = float(out.failures.get(name, 0))
        if self.tools is not None:
            metrics["tools/reset/failures"] = float(sum(s.error is not None for s in samples))
        # No applicable term, or a reward failed (the total is unknown): NaN, left out of the group
        # statistics (advantage 0), never a 0 score; a failed one is also left out of the loss.
        rewards = torch.where(out.known, out.total, torch.full_like(out.total, math.nan))
        return Rollout(gen.prompt_ids, samples, rewards, out.per_func, prompts, G, metrics, extra=out.extra,
                       failed=out.failed), dict(out.errors)

    def _generate(self, rows: list[dict], seeds: list[int] | None, state: TrainerState) -> Generated:
        """G rollouts per row: single-turn, multi-turn with the tools, or the user's rollout_func
        (rlreason/loop/tool_rollout.py)."""
        cfg, G = self.cfg, self.cfg.num_generations
        if self.rollout_func is not None:
            ctx = RolloutFuncContext(self.tokenizer, cfg, self.acc, state, G, self.engine, self.sampling)
            return rollout_func_rollouts(self.rollout_func, rows, G, cfg.prompt_column, ctx)
        if self.tools is not None:
            return tools_rollouts(self.engine, self.tokenizer, self.tools, rows, G, self.sampling, seeds,
                                  getattr(cfg, "max_tool_calling_iterations", None), self.max_model_len,
                                  getattr(cfg, "chat_template_kwargs", None))
        return plain_rollouts(self.engine, rows, G, self.sampling, seeds)

    def trainer_state(self, step: int | None = None) -> TrainerState:
        """What TRL passes rewards as ``trainer_state`` (they read ``global_step``, ``max_steps``), at
        ``step`` (default: the current one)."""
        step = self.step if step is None else step
        return TrainerState(global_step=step, max_steps=self.cfg.max_steps, epoch=self.prompts.epoch(step // self.k),
                            num_train_epochs=math.ceil(self.prompts.epoch(self.cfg.max_steps // self.k)))

    def collect(self) -> Rollout:
        """This step's batch: a rollout of this step's prompts; with dynamic sampling (DAPO,
        sec. 3.2), groups whose rewards are all equal are dropped and more prompts sampled until
        the batch is full again or ``max_resample_rounds`` extra rounds are spent."""
        cfg = self.cfg
        if self.overlap is not None:  # generated on the rollout thread (async_rollouts; no dynamic sampling)
            ro, errors = self.overlap.take(self.step)
            self.health.errors.update(errors)
        else:
            ro = self.rollout(self.prompts.rows(self.generation),
                              self.prompts.seeds("train", self.prompts.positions(self.generation)))
        # of the policy's draw, before any filtering
        metrics = {**ro.metrics, **sample_metrics(self.acc, ro, with_tools=self.tools is not None)}
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
        if cfg.multi_objective_aggregation == "normalize_then_sum":
            ro.advantages, m = self.gdpo_advantages(ro)
        else:
            ro.advantages, m = self.compute_advantages(ro.rewards)
        ro.metrics = {**metrics, **m}
        return ro

    def gdpo_advantages(self, ro: Rollout) -> tuple[torch.Tensor, dict[str, float]]:
        """``multi_objective_aggregation: normalize_then_sum`` (rlreason.algorithms.gdpo_advantages):
        each reward normalised within its group, the weighted sum normalised over the whole batch, so
        every process's scores are gathered first. A completion whose total is unknown (a reward
        failed) is left out of every statistic (all its scores NaN), as in the default aggregation.
        Collective with several processes."""
        names = list(ro.per_func)
        per_func = torch.stack([ro.per_func[k].double() for k in names], dim=1) if names \
            else torch.zeros((len(ro.samples), 0), dtype=torch.float64)
        per_func[torch.isnan(ro.rewards)] = math.nan  # unknown or unscorable totals carry no signal
        # an environment's get_reward column (not one of the runner's functions) weighs 1, as TRL
        weights = torch.tensor([self.rewards.weights[self.rewards.names.index(k)] if k in self.rewards.names
                                else 1.0 for k in names], dtype=torch.float64)
        world = self.acc.num_processes
        all_pf = gather_varlen(self.acc, per_func) if world > 1 else per_func
        if len(all_pf) == 0:
            return ro.rewards.float(), {"frac_zero_std_groups": float("nan")}
        adv, m = A.gdpo_advantages(all_pf, weights, self.cfg.num_generations)
        if world > 1:
            sizes = gather_varlen(self.acc, torch.tensor([len(per_func)])).tolist()
            start = sum(sizes[:self.acc.process_index])
            adv = adv[start:start + len(per_func)]
        return adv.float(), m

    def compute_advantages(self, rewards: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Advantages of this process's rewards [N] -> [N]. Estimators that normalise over the
        batch see the global batch: rewards are gathered from every process first (shards may
        differ in length). Collective with several processes: every process calls it, even
        with no rewards."""
        cfg, G = self.cfg, self.cfg.num_generations
        est, scale = cfg.advantage_estimator, self.scale_rewards
        world = self.acc.num_processes
        # float64: rewards may reach float32's limit (3.4e38), whose squares the std takes; the
        # advantages come out normalised (or, unscaled, within the rewards' range): float32 again
        rewards = rewards.double()
        if self.global_advantages and world > 1:
            sizes = gather_varlen(self.acc, torch.tensor([len(rewards)])).tolist()
            all_r = gather_varlen(self.acc, rewards)
            if len(all_r) == 0:
                return rewards.float(), {"frac_zero_std_groups": float("nan")}
            adv, m = A.advantages(all_r, G, est, scale)
            start = sum(sizes[:self.acc.process_index])
            return adv[start:start + len(rewards)].float(), m
        if len(rewards) == 0:
            adv, m = rewards.float(), {"frac_zero_std_groups": float("nan")}
        else:
            adv, m = A.advantages(rewards, G, est, scale)
            adv = adv.float()
        if world > 1:  # the fraction over all groups, not a mean of per-process fractions
            n_groups = len(rewards) // G
            flat = 0.0 if n_groups == 0 else m["frac_zero_std_groups"] * n_groups
            flat, total = reduce_sum(self.acc, [flat, float(n_groups)])
            m["frac_zero_std_groups"] = flat / total if total else float("nan")
        return adv, m

    def _rollout_job(self, step: int) -> Job:
        """async_rollouts: step ``step``'s rollout, to run on the rollout thread; its prompts, seeds
        and the rewards' trainer_state are fixed here, on the trainer's thread."""
        rows = self.prompts.rows(step)
        seeds = self.prompts.seeds("train", self.prompts.positions(step))
        state = self.trainer_state(step)
        return lambda: self.generate_and_score(rows, seeds, state)

    # ------------------------------------------------------------------ update

    def _stale_sampler(self) -> bool:
        """Whether this step's rollout came from older weights than the policy's: a separate engine
        is synced every ``weight_sync_steps`` steps, after the update of a step that is a multiple
        of it (and at start), so it lags at the steps in between. (After a resume, which syncs, the
        first steps until the next multiple count as lagging although they are not: their ratio
        then compares the policy with the engine's own numerics, which is harmless.)"""
        k = self.cfg.weight_sync_steps  # counted in generations
        return not self.engine_shares_policy and k > 1 and self.generation % k != 0

    def update(self, ro: Rollout) -> dict[str, float]:
        """``num_iterations`` optimizer steps on this step's batch (rlreason/loop/actor.py). Collective
        with several processes: every process calls it once per step, also with an empty shard."""
        return self.actor.update(ro, stale_sampler=self._stale_sampler(), stop_point=self._stop_point)

    def sync_weights(self) -> None:
        """Give the engine the new policy; nothing to move when it generates with the policy itself.
        Never cut in the middle by a stop signal (a vLLM server receives it in a collective)."""
        if not self.engine_shares_policy:
            unwrapped = self.acc.unwrap_model(self.model)
            if is_peft_model(unwrapped):  # LoRA: W + BA under the base model's names (the engine serves a plain model)
                weights = merged_named_parameters(unwrapped)
            else:  # full tensors (gathered one at a time if the policy is sharded), plain names
                weights = full_named_parameters(self.model, self.acc)
            with stopping.deferred():
                self.engine.load_weights(weights)
            # a shared server is updated by one process: nobody generates before it has the new weights
            self.acc.wait_for_everyone()

    # ------------------------------------------------------------------ eval / loop

    def evaluate(self, n: int | None = None) -> dict[str, Any]:
        """Greedy accuracy on the held-out rows (the first ``n``), sharded across processes; with
        ``num_generations_eval``, the mean accuracy of that many samples per row (pass@1)."""
        rows = self.eval_rows[:n] if n else self.eval_rows
        if not rows or self.eval_scorer is None:
            return {}
        mine = rows[self.acc.process_index::self.acc.num_processes]
        # scored as training scores (rlreason.eval.core.score_samples): any training reward can be the scorer
        res = evaluate(self.engine, mine, self.eval_scorer, self.eval_sampling, prompt_column=self.cfg.prompt_column,
                       plain_text=self.cfg.rewards_plain_text, shared={"trainer_state": self.trainer_state()},
                       n=self.eval_n, tools=self.eval_tools)
        sums = torch.tensor([res["sums"][k] for k in HELDOUT_SUMS], dtype=torch.float64, device=self.acc.device)
        sums = self.acc.reduce(sums, "sum") if self.acc.num_processes > 1 else sums
        return {**heldout_metrics(dict(zip(HELDOUT_SUMS, sums.tolist(), strict=True))), "eval/samples": res["samples"]}

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
                                      scorer=self.suite_scorer, limit=cfg.eval_suites_limit, tools=self.eval_tools)
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
        """Stop the reward and tool workers (also done at garbage collection and interpreter exit) and
        drop the rollout in flight."""
        if self.overlap is not None:
            self.overlap.close()
        for runner in (self.rewards, self.eval_scorer, self.suite_scorer):
            if runner is not None:
                runner.close()
        for executor in (self.tools, self._eval_executor):  # the tool workers, and the environments they hold
            if executor is not None:
                executor.close()

    @property
    def stop_requested(self) -> bool:
        """SIGTERM (the usual preemption notice) or SIGINT arrived (rlreason/run/stopping.py): stop at
        the next step boundary with a checkpoint, or at once where nothing trained would be lost."""
        return stopping.requested()

    def _stop_at_once(self):
        """Stop signals raise ``stopping.Stopped`` within: for phases that lose nothing when cut
        short. One process only: several must stop at the same collective (the step boundary)."""
        return stopping.stop_at_once(enabled=self.acc.num_processes == 1)

    @contextlib.contextmanager
    def _in_flight(self) -> Iterator[None]:
        """The step in flight, until its update commits (``stopping.commit``, right before the first
        optimizer step): a stop signal abandons it. Its weights and optimizer state are untouched
        then, so what it changed is put back (the random-number generators, the prompt stream's
        refills, the batch in flight of async rollouts) and the loop checkpoints the previous step:
        the checkpoint that step's end would have written. With several processes the signal is a
        request until the next stop point (``_stop_point``), where every process abandons together.
        An error before the commit (a rollout server that failed for good) puts the same back: the
        checkpoint the loop then writes is exact too."""
        rng, extra_drawn = rng_states(), self.prompts.extra_drawn
        try:
            with stopping.step_in_flight(enabled=self.acc.num_processes == 1):
                yield
        except BaseException as e:  # both come before the update commits (a server only serves rollouts)
            if not isinstance(e, stopping.Stopped) and find_server_error(e) is None:
                raise
            set_rng_states(rng)
            self.prompts.extra_drawn = extra_drawn
            if self.overlap is not None:
                self.overlap.abandon()
            if isinstance(e, stopping.Stopped):
                self.log.print(f"{stopping.reason()}: step {self.step + 1} abandoned before its update; "
                               f"checkpointing step {self.step}")
            raise

    def _stop_point(self) -> None:
        """Within a step in flight, between its phases: with several processes, whether any was asked
        to stop (a collective, at the same point on every process) abandons the step on all of them.
        One process: a signal abandons the step where it lands; this catches one that came before."""
        if self._any_process(self.stop_requested):
            raise stopping.Stopped(stopping.reason() or "a stop signal to another process")

    def _any_process(self, flag: bool) -> bool:
        """True on every process if it is True on one (so all stop at the same step)."""
        return flag if self.acc.num_processes == 1 else reduce_sum(self.acc, [float(flag)])[0] > 0

    def _checkpointed(self) -> dict[str, Stateful | None]:
        """Every part whose state a checkpoint holds besides accelerate's ``save_state`` (weights,
        optimizer, scheduler, every rank's random-number generators), name -> part: ``save`` writes
        each one's ``state_dict``, ``_resume`` loads it back (where each goes:
        rlreason.run.checkpoint.Stateful). A new stateful part is one line here; None: not in this run."""
        return {  # in the order of trainer_state.json's keys as they were before they were declared here
            "config": RunConfig(self.cfg, self.optimizer, self.scheduler),  # a resume applies allowed changes
            "prompts": self.prompts,  # the refill stream's position (dynamic sampling)
            "actor": self.actor,  # skipped non-finite updates
            "trainer": self,  # the step, the evaluations, the row a stop kept aside; the run's record
            "reward_health": self.health,  # a reward's steps in a row without a score
            "async_rollouts": self.overlap,  # the batch in flight, in its own file
            "reference_sync": self.actor.ref_sync,  # sync_ref_model: the mixed reference's weights, own file
        }

    def state_dict(self) -> dict[str, Any]:
        """The loop's own part of a checkpoint (``_checkpointed``): the step, the latest periodic and
        the before-training evaluations, the step's metrics a stop kept from being logged
        (``pending_row``); and, for rlreason.build and people (never loaded back here), the run's KL
        reference and teacher and the config changes of its resumes."""
        return {"step": self.step, "metrics": self.last_eval, "heldout_before": self.heldout_before,
                # the KL reference is the initial policy (or, with LoRA, the adapter-disabled base)
                "reference_model": None if self.actor.ref_model is None and not self.actor.ref_is_base_adapter
                else ("base_adapter_disabled" if self.actor.ref_is_base_adapter
                      # sync_ref_model: mixed toward the policy; its weights are in the checkpoint's own file
                      else "reference_model.pt" if self.actor.ref_sync is not None else self.cfg.model_name_or_path),
                "teacher_model": self.cfg.teacher_model_name_or_path, "config_changes": self.run_dir.config_changes,
                # the step's metrics when a stop cut its periodic evaluation short (_evaluate_and_log)
                "pending_row": self.pending_row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.last_eval = state.get("metrics", {})
        self.heldout_before = state.get("heldout_before", {})
        self.pending_row = state.get("pending_row")

    def _resume(self, path: Path) -> None:
        """Restore everything a checkpoint holds; the loop then continues as if never stopped."""
        self.acc.load_state(str(path))  # weights, optimizer, scheduler, every rank's RNG states
        load_parts(path, self._checkpointed())
        self._saved_step = self.step
        self.sync_weights()  # a separate engine started from the initial weights
        if self.overlap is not None:
            self.overlap.version = self.step  # what the sync gave the engine
        self.log.print(f"resumed from {path} at step {self.step}")

    def _train(self) -> dict[str, Any]:
        cfg = self.cfg
        t_start = time.perf_counter()
        before: dict[str, Any] = {}
        samples_per_s = []
        interrupted = False
        try:  # before the first step nothing is trained: a stop signal stops at once
            with self._stop_at_once():
                if self.run_dir.resume is not None:
                    self._resume(self.run_dir.resume)
                    before = self.heldout_before
                    if self.pending_row is not None:  # stopped during the last step's evaluation
                        self._evaluate_and_log(self.pending_row)
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
        if self.overlap is not None and not interrupted and self.step < cfg.max_steps:
            self.log.print(f"async rollouts: each batch generated during the previous update, at most "
                           f"{cfg.max_staleness} step(s) stale; importance_sampling_cap {cfg.importance_sampling_cap}")
            self.overlap.start(self.step)
        while not interrupted and self.step < cfg.max_steps:
            try:
                metrics, n_samples = self._one_step()
            except stopping.Stopped:  # the step in flight abandoned, or its periodic evaluation cut short
                interrupted = True
                if self._saved_step != self.step:
                    self.save(self.step)
                break
            except Exception as e:  # a rollout server that failed for good: what the policy learned is fine
                if (err := find_server_error(e)) is None or self.acc.num_processes > 1:
                    raise  # several processes: saving is collective, and another may be in a collective
                ckpt = self.save(self.step) if self._saved_step != self.step or self.pending_row else None
                where = f"a checkpoint in {ckpt}" if ckpt else "its checkpoint"
                raise err.with_hint(f"stopped at step {self.step} with {where}; fix or restart the server, "
                                    f"then --resume_from_checkpoint auto") from e
            samples_per_s.append(metrics["perf/samples_per_s"])
            if self.health.dead():
                raise self.health.failure(self.save(self.step))
            if self.actor.nonfinite_streak >= cfg.max_nonfinite_steps:
                ckpt = self.save(self.step)
                raise FloatingPointError(
                    f"{self.actor.nonfinite_streak} updates in a row had a non-finite loss or gradient (all skipped, "
                    f"so the weights are the last good ones, saved in {ckpt}); lower 'learning_rate', check "
                    f"the rewards for inf/NaN, or raise 'max_nonfinite_steps'")
            if self._any_process(self.stop_requested):
                interrupted = True
                self.save(self.step)
                break
            if self._crossed(cfg.save_steps) and self.step < cfg.max_steps:
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
            if self.overlap is not None:  # the final weights, not the last synced ones
                self.overlap.make_current(self.step)
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
                              nonfinite_skipped=self.actor.nonfinite_skipped, interrupted=interrupted,
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
        """Collect, update, sync, log (and evaluate when due). -> (the step's metrics, samples).
        Raises ``stopping.Stopped`` when a stop signal abandons the step (``_in_flight``) or cuts its
        periodic evaluation short (``_evaluate_and_log``)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        with self._in_flight():
            ro = self.collect()
            self._stop_point()
            if self.overlap is not None:
                self.overlap.launch_next(self.step)  # the next batch generates while this one trains
            metrics = dict(ro.metrics)
            metrics.update(self.update(ro))  # commits the step right before its first optimizer step
        self.step += self.k
        acc_name = next((n for n in ro.per_func if n.startswith("accuracy")), None)
        if acc_name is not None:  # the progress bar's "acc": the accuracy reward's batch mean
            metrics["accuracy"] = metrics[f"rewards/{acc_name}/mean"]
        # a stop already requested skips the sync: nobody generates with it, and a resume syncs
        if self.overlap is None and self.generation % cfg.weight_sync_steps == 0 and not (
                self.acc.num_processes == 1 and self.stop_requested):
            try:
                self.sync_weights()
            except Exception as e:
                if find_server_error(e) is not None:  # the step is done: its row is written by the resume
                    self.pending_row = reduce_metrics(self.acc, metrics)
                raise
        dt = time.perf_counter() - t0
        n_comp = len(ro.samples)  # this process's; reduce_metrics sums the rates over processes
        n_tok = sum(s.model_tokens for s in ro.samples)  # generated: tool output left out
        metrics.update({"time/step_s": dt, "perf/samples_per_s": n_comp / dt, "perf/tokens_per_s": n_tok / dt})
        metrics = reduce_metrics(self.acc, metrics)
        self.health.record(self.step, metrics)
        if cfg.log_completions_steps and (self.step == self.k or self._crossed(cfg.log_completions_steps)):
            self.log.completions(self.step, completion_rows(ro, 2 * cfg.num_generations))  # two groups
        self._evaluate_and_log(metrics)
        return metrics, n_comp

    def _evaluate_and_log(self, metrics: dict[str, float]) -> None:
        """The periodic evaluation when due, its results added to the step's ``metrics``, then the
        step's row. Until the row is written it is ``pending_row``: a stop signal during the
        evaluation (one process) raises ``stopping.Stopped`` and the checkpoint keeps the row, so the
        resumed run evaluates and writes it as the uninterrupted run would have."""
        cfg = self.cfg
        if self._crossed(cfg.eval_steps) and self.step < cfg.max_steps:
            self.pending_row = metrics
            with self._stop_at_once():
                if self.overlap is not None:
                    self.overlap.make_current(self.step)
                ev = self.evaluate(cfg.eval_size)
                ev.update(self.evaluate_suites())
            self.last_eval = {k: v for k, v in ev.items() if isinstance(v, int | float)}
            metrics.update({k: v for k, v in ev.items() if k != "eval/samples"})
        if self._crossed(cfg.logging_steps) or self.step == cfg.max_steps:
            self.log.log(self.step, metrics)
        self.log.advance(self.step, metrics)
        self.pending_row = None
        for hook in self.hooks:
            hook("step", self.step, metrics)

    def save(self, step: int) -> Path:
        """A checkpoint of everything ``_resume`` needs to continue exactly from ``step``: accelerate's
        ``save_state`` and the state of every part ``_checkpointed`` declares."""
        state, files = parts_state(self._checkpointed())  # on every process: the batch in flight is gathered
        policy = self.acc.unwrap_model(self.model)
        t0 = time.perf_counter()
        path = save_checkpoint(self.acc, self.cfg.output_dir, step, state, keep=self.cfg.save_total_limit,
                               best_metric=self.cfg.metric_for_best_model, greater_is_better=self.cfg.greater_is_better,
                               extra=lambda folder: hf_model_files(policy, self.tokenizer, folder), files=files)
        self._saved_step = step
        if self.acc.is_main_process:  # what a stop signal's checkpoint costs: the number to size a grace period by
            size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
            self.log.print(f"checkpoint {path.name}: {size / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s")
        for hook in self.hooks:
            hook("save", step, {"path": path})
        return path

    def save_final(self, out_dir: str | Path) -> Path:
        """The trained policy as a plain Hugging Face model (rlreason.run.checkpoint.save_model), written
        whole or not at all; a full disk names the checkpoint that holds the same weights."""
        ckpt = Path(self.cfg.output_dir) / "checkpoints" / f"step-{self.step:07d}"
        intact = (f"the trained weights are in checkpoint {ckpt}: free space, then --resume_from_checkpoint auto "
                  f"writes the final model" if self._saved_step == self.step and ckpt.is_dir() else "")
        return save_model(self.acc, self.model, self.tokenizer, out_dir, intact=intact)

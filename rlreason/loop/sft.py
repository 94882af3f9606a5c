"""Supervised fine-tuning on fixed completions: the student's side of offline distillation.

``SFTTrainer`` is the GRPO trainer with two things replaced: a step's batch comes from the
dataset (prompt and completion token ids, e.g. a teacher's verified answers from
``rlreason.distill.teacher``) instead of from sampling, and the per-token loss is the negative
log-likelihood of the completion tokens (``algorithms.nll_token_loss``). Everything else is the GRPO loop's:
the loss only on completion tokens, averaged over all completion tokens of the step
(``loss_type: dapo``'s token mean) however it is split into micro-batches; packing (several
short examples per row under a block mask, ``share_pack_rows``); chunked log-probs;
accelerate (DDP, DeepSpeed, FSDP); held-out evaluation before, during and after; checkpoints,
exact resume, progress, metrics and report.

A step takes ``per_device_train_batch_size * gradient_accumulation_steps`` examples per process
from a seeded order of the dataset (a new order every epoch), so ``max_steps`` sets the number
of sequences trained on, the same unit as a GRPO run's completions per step.
"""

from __future__ import annotations

import math

import torch

from rlreason import algorithms as A
from rlreason.loop.experience import Rollout, sample_metrics
from rlreason.loop.parts import Parts
from rlreason.loop.trainer import GRPOTrainer
from rlreason.rewards import completion_text
from rlreason.rollout.base import Sample

SFT_COLUMNS = ("prompt_ids", "completion_ids")


class SFTTrainer(GRPOTrainer):
    share_pack_rows = True
    objective = staticmethod(A.nll_token_loss)

    def __init__(self, cfg, parts: Parts) -> None:
        """``parts``: built with ``rlreason.build.assemble(..., keep_dropout=True)`` (the NLL compares
        no two passes: lora_dropout stays a regulariser) around a dataset of prompt and completion ids."""
        missing = [c for c in SFT_COLUMNS if c not in parts.train.column_names]
        if missing:
            raise ValueError(f"the SFT dataset has no column(s) {missing}: it needs token ids of prompts and "
                             f"completions (rlreason.distill.teacher builds them); it has {parts.train.column_names}")
        if A.PRESETS[cfg.loss_type].aggregation != "token_mean":
            # the NLL is a token mean; the sequence-level presets would weigh tokens by their answer's length
            token_mean = [name for name, p in A.PRESETS.items() if p.aggregation == "token_mean"]
            raise ValueError(f"config key 'loss_type': SFT averages the loss over tokens; use one of "
                             f"{', '.join(token_mean)}, not {cfg.loss_type!r}")
        super().__init__(cfg, parts)

    @property
    def group_size(self) -> int:
        return 1  # one example per "prompt", no groups

    def collect(self) -> Rollout:
        """This step's examples as a ``Rollout`` of groups of one; the advantage is unused."""
        rows = self.prompts.rows(self.step)
        text_col = "completion" if "completion" in self.train_dataset.column_names else None
        samples = [Sample(token_ids=list(r["completion_ids"]),
                          text=completion_text(r[text_col]) if text_col else "", finish_reason="stop") for r in rows]
        rewards = torch.tensor([float(r.get("reward", math.nan)) for r in rows])
        prompts = [r.get(self.cfg.prompt_column, "") for r in rows]
        ro = Rollout([list(r["prompt_ids"]) for r in rows], samples, rewards, {}, prompts, 1,
                     {"time/generation_s": 0.0, "time/scoring_s": 0.0})
        ro.metrics.update(sample_metrics(self.acc, ro))
        ro.advantages = torch.ones(len(samples))
        return ro

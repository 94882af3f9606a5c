"""TR-DPO's reference update (Gorbatovski et al. 2024, "Learn Your Reference Model for Real Good
Alignment", eq. 6), TRL's ``sync_ref_model``: every ``ref_model_sync_steps`` optimizer steps the KL
reference moves toward the policy,

    pi_ref <- alpha * pi_theta + (1 - alpha) * pi_ref        (alpha = ref_model_mixup_alpha)

parameter by parameter, as TRL's ``SyncRefModelCallback`` does (``global_step % sync_steps == 0``
after an optimizer step). The reference's weights are then training state: a checkpoint holds them
(``reference_model.pt``) with the count of optimizer steps, and a resume puts both back, so the
resumed run mixes at the same steps from the same weights.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


@torch.no_grad()
def mix_into_(target: Iterable[torch.Tensor], source: Iterable[torch.Tensor], alpha: float) -> None:
    """target <- alpha * source + (1 - alpha) * target, in place, tensor by tensor (same shapes)."""
    for t, s in zip(target, source, strict=True):
        t.mul_(1.0 - alpha).add_(s.to(t.dtype), alpha=alpha)


class ReferenceSync:
    """The reference model's mixing schedule and its checkpointed state (a ``Stateful`` part with a file
    of its own: rlreason.run.checkpoint). ``policy``: the unwrapped policy, whose parameters are full
    on every process (DDP; a sharded policy is refused by the actor) and equal across processes, so
    each process mixes its own reference copy to the same weights."""

    checkpoint_file = "reference_model.pt"

    def __init__(self, ref_model: torch.nn.Module, policy: torch.nn.Module, alpha: float, every: int) -> None:
        self.ref_model, self.policy, self.alpha, self.every = ref_model, policy, alpha, every
        self.optimizer_steps = 0  # TRL's global_step: every optimizer step, stepped or skipped
        self.syncs = 0

    def after_optimizer_step(self) -> bool:
        """Count one optimizer step; mix when the count is a multiple of ``every``. -> whether it mixed."""
        self.optimizer_steps += 1
        if self.optimizer_steps % self.every:
            return False
        mix_into_(self.ref_model.parameters(), self.policy.parameters(), self.alpha)
        self.syncs += 1
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer_steps": self.optimizer_steps, "syncs": self.syncs,
                "weights": {k: v.detach().cpu().clone() for k, v in self.ref_model.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer_steps, self.syncs = int(state["optimizer_steps"]), int(state["syncs"])
        self.ref_model.load_state_dict(state["weights"])

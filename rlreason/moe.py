"""Mixture-of-experts policies: router health metrics and routing replay.

An MoE layer sends each token to the ``k`` experts with the largest router probabilities. In
RL the importance ratio pi_theta / pi_old compares two forward passes, and with an MoE policy
they can differ not only by the weights but by *which experts ran*: a small change in router
logits flips a token's top-k, and the token's log-prob then jumps discontinuously. The GSPO
paper (Zheng et al. 2025, arXiv 2507.18071) reports that on the 48-layer Qwen3-30B-A3B-Base
about 10% of the experts activated for a rollout change after a gradient update, describes
the "Routing Replay" token-level GRPO needed to converge on MoE models (cache the experts
activated in pi_old and reuse them in pi_theta when computing the ratios), and presents its
sequence-level ratio as a way to do without it. R3, Rollout Routing Replay (Ma et al. 2025,
arXiv 2510.11370), records the routing mask in the inference engine at rollout time and
replays it in the training forward, with the gating weights computed from the training
router's logits so that the router still gets gradients.

Here (``RoutingCapture``):

- *recording*: forward hooks on every router module keep its logits and the experts it
  chose, per forward pass;
- *replay*: the hook replaces the router's chosen experts by recorded ones and recomputes
  their weights with the router's own gating function from the *current* logits, so the
  expert set is the recorded one while gradients still reach the router through the weights.

What rlreason records and replays is the old-policy forward pass (the no-grad pass with the
weights that sampled, which gives the old log-probs); the training passes with gradients
then use its experts. With the HF engine that pass has the sampler's weights and numerics;
with vLLM, routing inside the engine is not recorded (that is R3's setting), so the replay
removes the training-side drift only.

Routers are recognised by class: transformers' top-k routers of Qwen2-MoE, Qwen3-MoE and
Mixtral, which return ``(router_logits [R, E], routing_weights [R, k], expert_indices [R, k])``
for R = batch x sequence tokens, after softmax over the E experts and top-k (with the top-k
weights renormalised to sum to 1 when ``norm_topk_prob``; always for Mixtral).

Notation: R routed tokens (rows, batch-major: row = sequence * L + position), E experts,
k experts per token, n_layers MoE layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

# class name -> whether the top-k weights are renormalised (None: read ``norm_topk_prob``)
ROUTER_CLASSES: dict[str, bool | None] = {
    "Qwen2MoeTopKRouter": None,
    "Qwen3MoeTopKRouter": None,
    "MixtralTopKRouter": True,
}


def find_routers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's router modules in layer order (empty for a dense model); wrappers (DDP, PEFT) are fine."""
    return [m for m in model.modules() if type(m).__name__ in ROUTER_CLASSES]


def is_moe(model: torch.nn.Module) -> bool:
    return bool(find_routers(model))


def _normalises(router: torch.nn.Module) -> bool:
    fixed = ROUTER_CLASSES[type(router).__name__]
    return bool(getattr(router, "norm_topk_prob", False)) if fixed is None else fixed


# ---------------------------------------------------------------------- pure functions


def _row_mask(mask: torch.Tensor | None, rows: int, device: torch.device) -> torch.Tensor:
    """[R] float weights (1 for a counted token); all ones without a mask."""
    if mask is None:
        return torch.ones(rows, device=device)
    m = mask.reshape(-1).to(device=device, dtype=torch.float32)
    if m.numel() != rows:
        raise ValueError(f"mask has {m.numel()} entries for {rows} routed tokens")
    return m


def expert_counts(indices: torch.Tensor, num_experts: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Assignments per expert: indices [R, k] (long), mask [R] or any shape with R entries -> [E] float.

    Each counted token adds 1 to each of its k experts, so the counts sum to k x tokens.
    """
    w = _row_mask(mask, indices.shape[0], indices.device)
    counts = torch.zeros(num_experts, dtype=torch.float32, device=indices.device)
    return counts.scatter_add_(0, indices.reshape(-1), w.repeat_interleave(indices.shape[1]))


def load_fractions(counts: torch.Tensor) -> torch.Tensor:
    """Expert load: the share of routed assignments each expert takes, counts [..., E] -> [..., E].

    Sums to 1 over experts; perfectly balanced is 1/E each.
    """
    return counts / counts.sum(-1, keepdim=True).clamp_min(1e-12)


def load_cv(load: torch.Tensor) -> torch.Tensor:
    """Coefficient of variation of the expert load, load [..., E] -> [...]: std / mean over
    experts (population std). 0 when balanced; sqrt(E / k - 1) when every token goes to the
    same k experts."""
    mean = load.mean(-1)
    return load.std(-1, unbiased=False) / mean.clamp_min(1e-12)


def router_entropy(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean entropy (nats) of the router's softmax over all E experts: logits [R, E] -> scalar.

    log(E) for a router that cannot tell experts apart, 0 for a one-hot one.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    ent = -(logp.exp() * logp).sum(-1)  # [R]
    w = _row_mask(mask, logits.shape[0], logits.device)
    return (ent * w).sum() / w.sum().clamp_min(1.0)


def load_balancing_loss(layer_logits: list[torch.Tensor], top_k: int, mask: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """The Switch Transformer auxiliary loss (Fedus et al. 2021, eqs. 4-6) as transformers'
    Qwen2-MoE / Qwen3-MoE / Mixtral compute it: layer_logits n_layers x [R, E], mask [R] -> scalar.

    E * sum_e f_e * P_e with f_e the fraction of tokens that have expert e among their top k
    and P_e the mean router probability of e, both over all layers' tokens together (so
    sum_e f_e = k and a balanced router scores k). Differentiable through P.
    """
    E = layer_logits[0].shape[-1]
    dev = layer_logits[0].device
    w = _row_mask(mask, layer_logits[0].shape[0], dev)
    counts = torch.zeros(E, dtype=torch.float32, device=dev)
    prob_sum = torch.zeros(E, dtype=torch.float32, device=dev)
    for logits in layer_logits:
        probs = F.softmax(logits.float(), dim=-1)
        idx = torch.topk(probs, top_k, dim=-1).indices
        counts = counts + expert_counts(idx, E, w)
        prob_sum = prob_sum + (probs * w.unsqueeze(-1)).sum(0)
    rows = w.sum() * len(layer_logits)
    return E * torch.sum((counts / rows) * (prob_sum / rows))


def topk_changed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Whether two routings chose different expert sets: a, b [R, k] -> [R] bool (order within k ignored)."""
    return (a.sort(-1).values != b.sort(-1).values).any(-1)


def gate_weights(logits: torch.Tensor, indices: torch.Tensor, normalise: bool) -> torch.Tensor:
    """The routers' gating function for a given expert set: softmax(logits) at ``indices``,
    renormalised to sum to 1 if ``normalise``. logits [R, E], indices [R, k] -> [R, k] in
    logits' dtype. With the router's own top-k indices this is exactly its routing weights."""
    probs = F.softmax(logits, dtype=torch.float, dim=-1)
    w = probs.gather(-1, indices)
    if normalise:
        w = w / w.sum(-1, keepdim=True)
    return w.to(logits.dtype)


# ---------------------------------------------------------------------- recording and replay


@dataclass
class RouterRecord:
    """One router's view of one forward pass."""

    logits: torch.Tensor  # [R, E], with gradient in a training pass
    natural: torch.Tensor  # [R, k] the experts the router itself would pick (its top-k)
    chosen: torch.Tensor  # [R, k] the experts that ran (the replayed ones under replay)


@dataclass
class RoutingCapture:
    """Context manager: records every router of ``model`` during the forward passes inside it;
    with ``replay`` (n_layers x [R, k], e.g. a previous capture's ``chosen_indices()``) the
    routers use those experts instead of their own top-k.

    Stay inside the context through ``backward()`` when activation checkpointing is on: the
    recomputed forward must route the same way. The first call of a router in the context is
    the one kept (a checkpointed recompute calls it again with the same inputs).
    """

    model: torch.nn.Module
    replay: list[torch.Tensor] | None = None
    records: list[RouterRecord | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.routers = find_routers(self.model)
        if self.replay is not None and len(self.replay) != len(self.routers):
            raise ValueError(f"replay has {len(self.replay)} layers' routing, the model {len(self.routers)} routers")
        self._handles: list = []

    def __enter__(self) -> RoutingCapture:
        self.records = [None] * len(self.routers)
        self._handles = [r.register_forward_hook(self._hook(i, r)) for i, r in enumerate(self.routers)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, i: int, router: torch.nn.Module):
        normalise = _normalises(router)

        def hook(mod, args, out):
            logits, weights, natural = out
            chosen = natural
            if self.replay is not None:
                chosen = self.replay[i].to(natural.device)
                if chosen.shape != natural.shape:
                    raise ValueError(f"router {i}: replayed routing has shape {tuple(chosen.shape)}, this pass "
                                     f"routes {tuple(natural.shape)} (replay needs the same batch)")
                weights = gate_weights(logits, chosen, normalise).to(weights.dtype)
            if self.records[i] is None:
                self.records[i] = RouterRecord(logits, natural.detach(), chosen.detach())
            return (logits, weights, chosen) if self.replay is not None else None

        return hook

    def _done(self) -> list[RouterRecord]:
        if any(r is None for r in self.records):
            raise RuntimeError("not every router ran inside the capture")
        return self.records  # type: ignore[return-value]

    def chosen_indices(self) -> list[torch.Tensor]:
        """n_layers x [R, k]: what to pass as ``replay`` to make a later pass route the same way."""
        return [r.chosen for r in self._done()]

    def aux_loss(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``load_balancing_loss`` of this pass's router logits (with their gradient)."""
        return load_balancing_loss([r.logits for r in self._done()], self.routers[0].top_k, mask)

    def stats(self, mask: torch.Tensor | None = None, reference: list[torch.Tensor] | None = None) -> RouterStats:
        """Sums over this pass's counted tokens, for ``RouterStats.metrics``: the load and
        entropy of the router's own top-k; with ``reference`` (n_layers x [R, k], e.g. the old
        pass's experts) the tokens whose own top-k differs from it."""
        recs = self._done()
        E = self.routers[0].num_experts
        s = RouterStats.zeros(len(recs), E)
        for i, r in enumerate(recs):
            w = _row_mask(mask, r.natural.shape[0], r.natural.device)
            s.counts[i] += expert_counts(r.natural, E, w).cpu()
            s.entropy_sum[i] += (router_entropy(r.logits.detach(), w) * w.sum()).item()
            s.tokens[i] += w.sum().item()
            if reference is not None:
                flips = topk_changed(r.natural, reference[i].to(r.natural.device)).float()
                s.flip_sum[i] += (flips * w).sum().item()
                s.flip_tokens[i] += w.sum().item()
        return s


@dataclass
class RouterStats:
    """Additive router statistics (so they can be summed over micro-batches and processes)."""

    counts: torch.Tensor  # [n_layers, E] assignments
    entropy_sum: torch.Tensor  # [n_layers] sum of per-token router entropies
    tokens: torch.Tensor  # [n_layers] counted tokens
    flip_sum: torch.Tensor  # [n_layers] tokens whose top-k differs from the reference
    flip_tokens: torch.Tensor  # [n_layers] tokens compared with a reference
    aux_sum: float = 0.0  # sum of aux-loss values ...
    aux_n: int = 0  # ... over this many passes

    @classmethod
    def zeros(cls, n_layers: int, num_experts: int) -> RouterStats:
        z = torch.zeros(n_layers, dtype=torch.float64)
        return cls(torch.zeros(n_layers, num_experts, dtype=torch.float64), z.clone(), z.clone(), z.clone(),
                   z.clone())

    def add(self, other: RouterStats) -> None:
        for name in ("counts", "entropy_sum", "tokens", "flip_sum", "flip_tokens"):
            getattr(self, name).add_(getattr(other, name))
        self.aux_sum += other.aux_sum
        self.aux_n += other.aux_n

    def flat(self) -> list[float]:
        """Every field as one list (for a sum over processes); ``from_flat`` inverts it."""
        return [*self.counts.flatten().tolist(), *self.entropy_sum.tolist(), *self.tokens.tolist(),
                *self.flip_sum.tolist(), *self.flip_tokens.tolist(), self.aux_sum, float(self.aux_n)]

    def from_flat(self, vals: list[float]) -> RouterStats:
        L, E = self.counts.shape
        t = torch.tensor(vals, dtype=torch.float64)
        out = RouterStats(t[:L * E].view(L, E), *t[L * E:L * E + 4 * L].view(4, L).clone())
        out.aux_sum, out.aux_n = float(t[-2]), int(t[-1])
        return out

    def metrics(self, per_expert: bool = True) -> dict[str, float]:
        """``moe/...`` metrics: per layer the load per expert, its CV and the router entropy (and
        the flip fraction if measured); over layers their means, the worst layer's CV and the
        largest single expert load."""
        load = load_fractions(self.counts)  # [n_layers, E]
        cv = load_cv(load)
        ent = self.entropy_sum / self.tokens.clamp_min(1)
        out: dict[str, float] = {
            "moe/load_cv": cv.mean().item(), "moe/load_cv_max": cv.max().item(),
            "moe/max_expert_load": load.max().item(),
            "moe/router_entropy": ent.mean().item(),
        }
        flips = self.flip_tokens.sum().item() > 0
        if flips:
            out["moe/routing_flip_frac"] = (self.flip_sum.sum() / self.flip_tokens.sum()).item()
        if self.aux_n:
            out["moe/aux_loss"] = self.aux_sum / self.aux_n
        for i in range(load.shape[0]):
            out[f"moe/layer{i}/load_cv"] = cv[i].item()
            out[f"moe/layer{i}/router_entropy"] = ent[i].item()
            if flips:
                out[f"moe/layer{i}/routing_flip_frac"] = (self.flip_sum[i] / self.flip_tokens[i].clamp_min(1)).item()
            if per_expert:
                out.update({f"moe/layer{i}/load/{e}": load[i, e].item() for e in range(load.shape[1])})
        return out


def aux_loss_coef(model_config, configured: float | None) -> float:
    """The load-balancing loss weight: ``configured`` if set, else the model config's
    ``router_aux_loss_coef`` when its ``output_router_logits`` is true (transformers adds the
    loss to its own training loss only then), else 0."""
    if configured is not None:
        return float(configured)
    if getattr(model_config, "output_router_logits", False):
        return float(getattr(model_config, "router_aux_loss_coef", 0.0) or 0.0)
    return 0.0

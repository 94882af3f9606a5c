"""Helpers for multi-process training: gathers of per-rank tensors of different lengths, and
full (unsharded) weights from a model however it is wrapped.

Every function here is a collective when more than one process runs: all ranks must call it,
in the same order, with tensors of the same dtype and trailing shape.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

# Prefixes that wrappers put in front of parameter names: DDP / DeepSpeed (``module.``),
# FSDP1 (``_fsdp_wrapped_module.``), activation checkpointing (``_checkpoint_wrapped_module.``)
# and torch.compile (``_orig_mod.``). The engine and the saved model know the plain names.
WRAPPER_PREFIXES = ("module.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def clean_name(name: str) -> str:
    """A parameter name without wrapper components. DDP, DeepSpeed and torch.compile wrap only
    the top (``module.``, ``_orig_mod.``, in any nesting); FSDP1 and activation checkpointing
    insert their ``_fsdp_wrapped_module.`` / ``_checkpoint_wrapped_module.`` at every wrapped
    submodule, so those go wherever they occur (a user's submodule called ``module`` stays)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    for inner in ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module."):
        name = name.replace("." + inner, ".")
    return name


def gather_varlen(accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, in rank order; ranks may hold different
    lengths (dynamic sampling keeps a different number of groups on each), including zero.

    tensor: [n_rank, *rest] -> [sum of n_rank, *rest] on every rank, on ``tensor``'s device.
    A plain ``gather`` needs equal shapes, so the rows are padded to the longest rank's count,
    gathered and the padding cut out again.
    """
    if accelerator.num_processes == 1:
        return tensor
    device = tensor.device
    x = tensor.to(accelerator.device)
    sizes = accelerator.gather(torch.tensor([x.shape[0]], device=accelerator.device)).tolist()
    longest = max(sizes)
    if longest == 0:
        return tensor[:0]
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[:x.shape[0]] = x
    gathered = accelerator.gather(padded.unsqueeze(0))  # [world, longest, *rest]
    return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)]).to(device)


def reduce_sum(accelerator, values: list[float]) -> list[float]:
    """Element-wise sum of a list of numbers over processes (float64: counts stay exact)."""
    if accelerator.num_processes == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(t, "sum").tolist()


def _is_fsdp1(model: torch.nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return False
    return any(isinstance(m, FullyShardedDataParallel) for m in model.modules())


def _is_zero3(model: torch.nn.Module) -> bool:
    return any(hasattr(p, "ds_id") for p in model.parameters())


@torch.no_grad()
def full_named_parameters(model: torch.nn.Module, accelerator=None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) for every parameter of ``model``, gathered one at a time when the
    parameters are sharded, with wrapper prefixes stripped from the names.

    For syncing weights to a generation engine or saving full weights. Collective under
    sharding: every rank must iterate it to the end, in step (each rank receives every full
    tensor; only the consumer decides what to do with it). The yielded tensor may be the
    parameter's storage or a buffer reused after the next item: copy it to keep it.

    - plain module, DDP (``module.`` prefix): the parameters themselves, no communication;
    - FSDP2 (``fully_shard``; parameters are ``DTensor``): ``full_tensor()`` per parameter,
      so at most one unsharded parameter exists at a time (tested on CPU with gloo);
    - FSDP1 (``FullyShardedDataParallel``): ``summon_full_params`` on the whole model, which
      unshards everything at once (``offload_to_cpu`` keeps the full copy off the GPU);
      not tested here;
    - DeepSpeed ZeRO-3 (parameters carry ``ds_id``): ``deepspeed.zero.GatheredParameters``
      one parameter at a time, so memory stays bounded; DeepSpeed is imported only on this
      path and is not installed in CI: this branch is untested.
    """
    if accelerator is not None:
        model = accelerator.unwrap_model(model, keep_torch_compile=False)
    if _is_fsdp1(model):
        from torch.distributed.fsdp import FullyShardedDataParallel

        offload = next(model.parameters()).device.type == "cuda"
        with FullyShardedDataParallel.summon_full_params(model, writeback=False, offload_to_cpu=offload):
            for name, p in model.named_parameters():
                yield clean_name(name), p.detach()
        return
    if _is_zero3(model):
        import deepspeed  # only on this path: DeepSpeed is an optional dependency

        for name, p in model.named_parameters():
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                yield clean_name(name), p.detach()
        return
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without DTensor: nothing can be an FSDP2 shard
        DTensor = ()  # noqa: N806
    for name, p in model.named_parameters():
        if isinstance(p, DTensor):
            yield clean_name(name), p.full_tensor().detach()
        else:
            yield clean_name(name), p.detach()


def full_state_dict(model: torch.nn.Module, accelerator=None) -> dict[str, torch.Tensor]:
    """Every parameter's full tensor, copied to CPU (for saving or comparing weights)."""
    return {name: t.detach().to("cpu", copy=True) for name, t in full_named_parameters(model, accelerator)}



# Per-process counts and rates whose global value is the sum over processes. Batch statistics
# (rewards, lengths, token averages, grad norm) are already global when they get here (computed
# on gathered data), so averaging them changes nothing; what is left per process is timings
# (averaged) and the loss (DDP's objective: the average).
SUMMED_METRICS = ("perf/samples_per_s", "perf/tokens_per_s", "dynamic_sampling/extra_prompts",
                  "dynamic_sampling/kept_groups")


def reduce_metrics(accelerator, metrics: dict[str, float]) -> dict[str, float]:
    """A step's scalar metrics combined over processes: sums for counts and rates (``SUMMED_METRICS``,
    ``*/failures``), max for maxima, else the mean (ignoring NaN). Collective."""
    if accelerator.num_processes == 1:
        return metrics
    keys = sorted(k for k, v in metrics.items() if isinstance(v, int | float))
    vals = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    gathered = accelerator.gather(vals.unsqueeze(0))  # [world, K]
    out = dict(metrics)
    for i, k in enumerate(keys):
        col = gathered[:, i]
        if k in SUMMED_METRICS or k.endswith("/failures"):
            out[k] = col.sum().item()
        elif k.endswith(("max_length", "/max_abs_log")):
            out[k] = col.max().item()
        else:
            out[k] = col.nanmean().item()
    return out

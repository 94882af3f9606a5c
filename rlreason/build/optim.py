"""The optimizer, chosen by the config key ``optim`` (transformers' / TRL's names).

``adamw_torch`` is torch's AdamW, in its fused implementation where it applies (one kernel
over all parameters instead of a dozen elementwise ops per tensor: the same update up to
float rounding; on CPU it cut the optimizer step of a 4-layer Qwen2.5-0.5B-shaped model from
8% of a GRPO update, see docs/benchmarks.md). The 8-bit variants come from bitsandbytes: they keep
Adam's two moments in 8 bits (blockwise quantised), 2 bytes per parameter instead of 8,
which for a 1.5B-parameter model is 3 GB instead of 12 GB; ``paged_adamw_8bit`` also lets
the moments page out to host memory under pressure.
"""

from __future__ import annotations

import importlib
from typing import get_args

import torch

from rlreason.config import ConfigError, Optimizer

# optim value -> its bitsandbytes.optim class (the others are torch's)
BNB_CLASSES = {
    "adamw_8bit": "AdamW8bit",
    "adamw_bnb_8bit": "AdamW8bit",  # transformers' alias of adamw_8bit
    "paged_adamw_8bit": "PagedAdamW8bit",
}


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class for ``optim``; fails with the fix if bitsandbytes is needed and missing."""
    if name not in get_args(Optimizer):
        raise ConfigError(f"config key 'optim': must be one of {get_args(Optimizer)}, got {name!r}")
    if name not in BNB_CLASSES:
        return torch.optim.AdamW
    try:
        bnb_optim = importlib.import_module("bitsandbytes.optim")
    except ImportError as e:
        raise ConfigError(f"config key 'optim': {name!r} needs bitsandbytes, which is not installed "
                          f"({e}). Install it (pip install bitsandbytes) or set optim: adamw_torch") from e
    return getattr(bnb_optim, BNB_CLASSES[name])


def optimizer_kwargs(name: str, params: list[torch.nn.Parameter], sharded: bool) -> dict:
    """Extra constructor arguments: ``fused=True`` for torch's AdamW when every parameter is a
    plain floating-point tensor on a CPU or CUDA device and the policy is not sharded
    (DeepSpeed and FSDP manage the optimizer's tensors themselves)."""
    if name in BNB_CLASSES or sharded or not params:
        return {}
    plain = all(type(p.data) is torch.Tensor and p.is_floating_point() and p.device.type in ("cpu", "cuda")
                for p in params)
    return {"fused": True} if plain else {}

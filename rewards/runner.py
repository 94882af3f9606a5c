"""Scoring a batch of completions with several reward functions, in process.

A broken reward must not stop training: a function that raises, returns the wrong number of
values, or returns values that are not finite numbers has those completions scored None
(NaN in :attr:`RewardOutput.per_func`), counted in :attr:`RewardOutput.failures`, and logged.

This runner calls the functions in the trainer's process. A sandboxed multi-process runner
will replace it behind the same :func:`score` signature and :class:`RewardOutput`.
"""

from __future__ import annotations

import logging
import math
import numbers
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .registry import reward_name

logger = logging.getLogger("rlreason.rewards")

_RESERVED = ("prompts", "completions")  # passed by name, so a column cannot reuse them


@dataclass
class RewardOutput:
    """Scores of N completions."""

    total: torch.Tensor  # [N] float32: weighted sum over functions, None/NaN terms left out
    per_func: dict[str, torch.Tensor]  # name -> [N] float32, NaN where the function gave None or failed
    failures: dict[str, int]  # name -> completions scored None because the function raised or misbehaved


def score(
    funcs: list[Callable],
    weights: list[float] | None,
    prompts: list,
    completions: list,
    columns: dict[str, list],
) -> RewardOutput:
    """Score ``completions`` with each of ``funcs`` and sum the scores with ``weights``.

    Each function is called as ``fn(prompts=prompts, completions=completions, **columns)``.
    ``weights=None`` weighs every function 1.0. For each completion, terms whose value is None
    or failed are left out of the sum; with no term left, its total is 0.0.

    Raises ValueError for inconsistent inputs (a trainer bug, not a reward failure): weights
    and funcs of different lengths, prompts or columns not one per completion, or a column
    named ``prompts`` or ``completions``.
    """
    weights = _check_weights(funcs, weights)
    _check_inputs(prompts, completions, columns)
    n = len(completions)
    total = torch.zeros(n, dtype=torch.float32)
    per_func: dict[str, torch.Tensor] = {}
    failures: dict[str, int] = {}
    for fn, name, weight in zip(funcs, unique_names(funcs), weights, strict=True):
        values, failed = _run_one(fn, name, prompts, completions, columns)
        scores = torch.tensor(values, dtype=torch.float32)
        per_func[name], failures[name] = scores, failed
        total += torch.where(torch.isnan(scores), 0.0, scores) * weight
    return RewardOutput(total=total, per_func=per_func, failures=failures)


def unique_names(funcs: Sequence[Callable]) -> list[str]:
    """The functions' names, with ``_2``, ``_3``... appended to repeats so each is unique."""
    used: set[str] = set()
    names = []
    for fn in funcs:
        base = name = reward_name(fn)
        k = 1
        while name in used:
            k += 1
            name = f"{base}_{k}"
        used.add(name)
        names.append(name)
    return names


def _check_weights(funcs: Sequence[Callable], weights: Sequence[float] | None) -> list[float]:
    if weights is None:
        return [1.0] * len(funcs)
    if len(weights) != len(funcs):
        raise ValueError(f"got {len(funcs)} reward functions but {len(weights)} reward weights")
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"reward weights must be finite, got {list(weights)}")
    return [float(w) for w in weights]


def _check_inputs(prompts: Sequence, completions: Sequence, columns: dict[str, Sequence]) -> None:
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"got {n} completions but {len(prompts)} prompts")
    for key, column in columns.items():
        if key in _RESERVED:
            raise ValueError(f"a dataset column cannot be named {key!r}: rewards receive it as an argument")
        if len(column) != n:
            raise ValueError(f"column {key!r} has {len(column)} values for {n} completions")


def _run_one(fn: Callable, name: str, prompts: list, completions: list, columns: dict) -> tuple[list[float], int]:
    """One function's scores (NaN for None or failed) and how many completions failed."""
    n = len(completions)
    try:
        # Fresh lists, so a reward that mutates its arguments does not change what the next one sees.
        result = fn(prompts=list(prompts), completions=list(completions), **{k: list(v) for k, v in columns.items()})
    except Exception as e:
        logger.warning("reward %r raised %r%s; scoring its %d completions None", name, e, _where(e), n)
        logger.debug("traceback of reward %r", name, exc_info=True)
        return [math.nan] * n, n
    if hasattr(result, "tolist") and not isinstance(result, (list, tuple)):
        result = result.tolist()  # a torch tensor or numpy array of scores
    if not isinstance(result, (list, tuple)):
        logger.warning(
            "reward %r returned a %s, expected a list; scoring its %d completions None", name, type(result).__name__, n
        )
        return [math.nan] * n, n
    if len(result) != n:
        logger.warning(
            "reward %r returned %d values, expected length %d (one per completion); scoring all None",
            name,
            len(result),
            n,
        )
        return [math.nan] * n, n
    return _check_values(name, result)


def _where(e: BaseException) -> str:
    """`` at file:line in function`` for the frame that raised, to find the bug without DEBUG logs."""
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f" at {last.filename}:{last.lineno} in {last.name}"


def _check_values(name: str, result: Sequence[Any]) -> tuple[list[float], int]:
    """Values as floats, NaN for None; a value that is not a finite real number is a failure."""
    values: list[float] = []
    bad: list[Any] = []
    for v in result:
        value = _as_float(v)
        if value is None:
            bad.append(v)
            value = math.nan
        values.append(value)
    if bad:
        logger.warning(
            "reward %r returned %d values that are not finite numbers (first: %r); scoring those None",
            name,
            len(bad),
            bad[0],
        )
    return values, len(bad)


def _as_float(v: Any) -> float | None:
    """``v`` as a float (NaN for None, meaning "does not apply"); None if ``v`` is invalid."""
    if v is None:
        return math.nan
    # numbers.Real: int, bool, float, Fraction, and numpy scalars; not str, complex or containers.
    if not isinstance(v, numbers.Real):
        return None
    try:
        value = float(v)
    except (OverflowError, ValueError):
        return None
    return value if math.isfinite(value) else None

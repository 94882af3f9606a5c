"""Scoring a batch of completions with several reward functions.

A broken reward must not stop training: a function that raises, returns the wrong number of
values, or returns values that are not finite numbers has those completions marked failed
(NaN in :attr:`RewardOutput.per_func`, True in :attr:`RewardOutput.failed`), counted in
:attr:`RewardOutput.failures`, and logged. A failure is not a None: None means "does not apply"
and is left out of the weighted sum (as in TRL); a failure leaves the completion's total unknown
(:attr:`RewardOutput.known` is False), and the trainer keeps it out of its group's statistics and
out of the loss. Summed as if it were 0, a failure on a correct answer trained it like a wrong one.

Two ways to score, both calling each reward through the one call-and-check,
:func:`~._call.call_reward` (also what the preflight check uses):

- :func:`score` calls every function once on the whole batch, in the caller's process. Simple,
  but a reward that hangs hangs the trainer, and one that raises on one completion scores the
  whole batch None (no item-by-item retry).
- :class:`RewardRunner` runs the functions in a pool of worker processes (see :mod:`._pool`)
  with a per-call timeout and a memory cap. A call that hangs, raises, runs out of memory or
  kills its worker is stopped, its worker replaced, and only the completions involved fail
  and are counted. Each is logged once (never again on retries) with the start of the
  completion that caused it: the first three per function and batch in full, the rest summed
  up in one line, so a reward broken on every completion does not flood the log.

How :class:`RewardRunner` splits a batch: as in TRL, each function is called once with the
whole batch, so a reward that compares completions across the batch (open-r1's ``len_reward``)
sees what it would see under TRL. A reward that scores each completion independently may opt
in to chunks (attribute ``rlreason_chunk_size``, or ``chunk_size`` in its ``reward_funcs``
entry): an int, or ``"auto"`` (at most 64 completions, about four chunks per worker), so the
workers score it in parallel and the per-call overhead (pickling, two pipe hops) is paid per
chunk. Either way a call that fails as a whole is retried one completion per call, so a
pathological completion costs its call one timeout plus its own retry, and the others are
still scored.

Overhead, measured with
``OMP_NUM_THREADS=1 python -c "from rlreason.rewards.runner import _benchmark; _benchmark()"``
(best of 5, a trivial reward on 1,024 completions, 2 shared CPU cores): :func:`score` 0.37 ms
per batch (2.7M completions/s), ``RewardRunner(in_process=True)`` 0.43 ms, the pool with two
workers 1.3-1.6 ms (about 700k completions/s): roughly 1 ms per batch of pickling and pipe
hops, small next to a training step. With ``_benchmark(reward=accuracy_reward)``: 2.6 ms in
process, 4.8 ms in the pool.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ._call import BatchResult, Shared, run_in_process, short_repr
from ._pool import Pool, PoolConfig
from .model import IN_PROCESS_ATTRIBUTE
from .registry import CHUNK_ATTRIBUTE, reward_name

logger = logging.getLogger("rlreason.rewards")

# What every reward call passes besides the dataset's columns: no column may have one of these names.
RESERVED_ARGUMENTS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")
_RESERVED = tuple(a for a in RESERVED_ARGUMENTS if a != "completion_ids")  # completion_ids travels with the columns


def refuse_reserved_columns(columns: set[str] | frozenset[str], source: str, fix: str = "rename it") -> None:
    """Refuse data columns named like the arguments every reward receives (:data:`RESERVED_ARGUMENTS`):
    every reward call would fail (``completion_ids``: the column would be replaced by the token ids,
    in silence). ValueError ``"<source>: column 'x' has the name of ...; <fix>"``, ``fix`` formatted
    with ``column`` (the first such column)."""
    taken = sorted(set(columns) & set(RESERVED_ARGUMENTS))
    if taken:
        raise ValueError(f"{source}: column {taken[0]!r} has the name of an argument every reward receives "
                         f"({', '.join(RESERVED_ARGUMENTS)}); {fix.format(column=taken[0])}")


@dataclass
class RewardOutput:
    """Scores of N completions."""

    total: torch.Tensor  # [N] float64: weighted sum over functions, None/failed terms left out
    per_func: dict[str, torch.Tensor]  # name -> [N] float64, NaN where the function gave None or failed
    failures: dict[str, int]  # name -> completions it failed on (raised, hung, crashed, returned an invalid value)
    errors: dict[str, str] = field(default_factory=dict)  # name -> the first failure's detail, if any
    extra: dict[str, list] = field(default_factory=dict)  # log_extra columns, [N] each (None where not logged)
    logged: dict[str, float] = field(default_factory=dict)  # log_metric values, averaged over the batch's calls
    failed: torch.Tensor | None = None  # [N] bool: some function failed on the completion (None: none did)

    @property
    def known(self) -> torch.Tensor:
        """[N] bool: the total is a score, i.e. some term applies and no function failed on it. A
        failed term leaves the total unknown: 0 in its place trained a correct answer as a wrong one."""
        return self.applicable if self.failed is None else self.applicable & ~self.failed

    def failed_mask(self) -> torch.Tensor:
        """[N] bool: ``failed``, all False where it is None."""
        return torch.zeros(len(self.total), dtype=torch.bool) if self.failed is None else self.failed.clone()

    @property
    def applicable(self) -> torch.Tensor:
        """[N] bool: some reward term applies (is not None and did not fail). A completion
        without one carries no learning signal: its total (0.0) is not a score."""
        if not self.per_func:
            return torch.zeros(len(self.total), dtype=torch.bool)
        return ~torch.stack(list(self.per_func.values())).isnan().all(dim=0)


def score(
    funcs: list[Callable],
    weights: list[float] | None,
    prompts: list,
    completions: list,
    columns: dict[str, list],
) -> RewardOutput:
    """Score ``completions`` with each of ``funcs`` and sum the scores with ``weights``.

    Each function is called once, in this process, as :class:`RewardRunner` with
    ``in_process=True`` calls it (:func:`~._call.call_reward`: ``fn(prompts=prompts,
    completions=completions, **columns)``, TRL's ``log_extra``/``log_metric`` to a reward that
    takes them, its own deep copy of the arguments), but a call that fails fails all its
    completions (no item-by-item retry). ``weights=None`` weighs every function 1.0. For each
    completion, terms whose value is None or failed are left out of the sum; with no term left,
    its total is 0.0.

    Raises ValueError for inconsistent inputs (a trainer bug, not a reward failure): weights
    and funcs of different lengths, prompts or columns not one per completion, or a column
    named ``prompts`` or ``completions``.
    """
    weights = _check_weights(funcs, weights)
    _check_inputs(prompts, completions, columns)
    result = run_in_process(funcs, list(prompts), list(completions), dict(columns), retry=False)
    return _output(unique_names(funcs), weights, result, completions, set())


# The column where rlreason.data keeps the messages a plain-text prompt became in the chat template.
MESSAGES_COLUMN = "prompt_messages"


def reward_inputs(rows: list[dict], texts: list[str], token_ids: list[list[int]], n: int, prompt_column: str,
                  skip: Sequence[str] = (), plain_text: bool = False,
                  exchanges: list[list[dict]] | None = None,
                  prompt_messages: list[list[dict]] | None = None) -> tuple[list, list, dict[str, list]]:
    """The arguments of a reward call for ``n`` completions per row (rows' completions adjacent):
    (prompts, completions, columns), as TRL passes them. A prompt that went through a chat
    template is its message list (the rows' :data:`MESSAGES_COLUMN`, system message included)
    and a completion then ``[{"role": "assistant", "content": text}]``, as for a conversational
    dataset; otherwise (or with ``plain_text``) prompts and completions are strings. Every row
    column except the prompt, :data:`MESSAGES_COLUMN` and ``skip`` arrives once per completion,
    plus ``completion_ids`` (length rewards count tokens).

    Multi-turn rollouts (tools): ``exchanges`` [one per completion] are the conversational
    completions (the assistant and tool turns, TRL's) and ``prompt_messages`` [one per completion]
    the prompts each rollout was rendered from (an environment's reset observation appended); with
    ``plain_text`` both become text, the turns one per line."""
    use_messages = not plain_text and bool(rows) and rows[0].get(MESSAGES_COLUMN) is not None
    source = MESSAGES_COLUMN if use_messages else prompt_column
    prompts = list(prompt_messages) if prompt_messages is not None else [r[source] for r in rows for _ in range(n)]
    if plain_text and prompts and isinstance(prompts[0], list):
        prompts = [_messages_text(p) for p in prompts]
    conversational = bool(prompts) and isinstance(prompts[0], list)
    if exchanges is not None:
        completions = [list(m) if conversational else _messages_text(m) for m in exchanges]
    else:
        completions = [[{"role": "assistant", "content": t}] if conversational else t for t in texts]
    leave_out = {prompt_column, MESSAGES_COLUMN, *skip}
    columns = {k: [r[k] for r in rows for _ in range(n)] for k in rows[0] if k not in leave_out} if rows else {}
    columns["completion_ids"] = token_ids
    return prompts, completions, columns


def add_reward_columns(out: RewardOutput, values: dict[str, list[float | None]],
                       failed: dict[str, list[bool]]) -> RewardOutput:
    """``out`` with reward sources scored outside the runner (an environment's ``get_reward``, TRL's
    rule: weight 1, named after the environment class), ``values[name]`` [N] each: a ``per_func``
    column (NaN where None or failed), added to the total with weight 1. A failed value, or one
    that is not a finite number, counts as the source's failure and leaves the total unknown, as a
    failing reward function's does."""
    n = len(out.total)
    total, any_failed = out.total.clone(), out.failed_mask()
    per_func, failures, errors = dict(out.per_func), dict(out.failures), dict(out.errors)
    for name, vals in values.items():
        if name in per_func:
            raise ValueError(f"reward source {name!r} is named twice (a reward function and an environment)")
        if len(vals) != n or len(failed.get(name, [False] * n)) != n:
            raise ValueError(f"reward source {name!r}: {len(vals)} values for {n} completions")
        bad = [bool(f) or (v is not None and not (isinstance(v, int | float) and math.isfinite(v)))
               for v, f in zip(vals, failed.get(name, [False] * n), strict=True)]
        scores = torch.tensor([math.nan if b or v is None else float(v) for v, b in zip(vals, bad, strict=True)],
                              dtype=torch.float64)
        per_func[name], failures[name] = scores, sum(bad)
        total += torch.where(torch.isnan(scores), 0.0, scores)
        any_failed |= torch.tensor(bad, dtype=torch.bool)
        if any(bad):
            errors[name] = "get_reward failed (raised, hung or its worker died) or returned no finite number"
    return dataclasses.replace(out, total=total, per_func=per_func, failures=failures, errors=errors,
                               failed=any_failed)


def _messages_text(messages: list[dict]) -> str:
    """A conversation as plain text for ``plain_text`` rewards: its messages' contents, one per line."""
    return "\n".join(str(m.get("content", "")) for m in messages)


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


# ---------------------------------------------------------------------------------------------
# The sandboxed runner

_MAX_CHUNK = 64  # completions per call: small enough that retrying a failed chunk one by one is cheap
_CHUNKS_PER_WORKER = 4  # enough chunks that a slow one does not leave the other workers idle
_MAX_LOGGED = 3  # detailed warnings per function per batch; the rest are summed up in one line


class RewardRunner:
    """Scores batches like :func:`score`, but in sandboxed worker processes.

    Each call of a reward function gets ``timeout_s`` seconds and ``memory_mb`` MB of address
    space beyond what its worker maps at start (``None``: no cap). A call that hangs, raises,
    exhausts memory or kills its worker is stopped and its worker replaced; its completions
    are retried one per call, and those that still fail are marked failed, counted in
    ``failures`` and logged (see the module docstring). ``timeout_s`` is per call, and a call scores a chunk of
    up to ``chunk_size`` completions (default: at most 64), so set it for a chunk; a chunk
    that times out because the reward is slow is rescored one completion per call, which
    succeeds, at the cost of one timeout.

    A function is given up on for the rest of a batch (its remaining completions failed,
    "skipped") after ``max_timeouts`` one-completion calls timed out, or after
    ``2 * num_workers`` timeouts with no call succeeding: this bounds the stall a reward that
    always hangs causes to about two timeouts per batch, and one with many pathological
    inputs to about ``2 * max_timeouts * timeout_s / num_workers``.

    Heavy one-time setup (loading a model, warming a cache) belongs at import time or in the
    constructor of a callable reward: with ``"fork"`` the workers inherit it; done inside the
    first call it would be repeated in every replacement worker, within the timeout.

    ``start_method``: ``"fork"`` (default, Linux) forks the manager process from this one when
    the runner is built, so build it early: before the trainer starts threads (a fork copies
    locks other threads hold) and before it loads big things into CPU memory (the manager keeps
    a copy-on-write snapshot of that moment). Every function works (closures, lambdas,
    functions loaded from files). ``"spawn"`` starts a fresh
    interpreter: safe whatever threads run, but slower to start and the functions must pickle
    (module-level functions and instances of module-level classes, including those in files
    loaded with :func:`~.registry.resolve`). Workers are always forked from the manager.

    ``chunk_size`` (None: each function's own ``rlreason_chunk_size``, else the whole batch)
    sets the completions per call for every function; ``"auto"`` is at most 64, about four
    chunks per worker.

    ``in_process=True`` calls the functions in this process with the same call-then-retry
    rules (one call per function), without timeouts or memory cap: for debugging.

    Close it with :meth:`close` or use it as a context manager; it is also closed when
    garbage-collected and at interpreter exit.
    """

    def __init__(
        self,
        funcs: Sequence[Callable],
        weights: Sequence[float] | None = None,
        *,
        num_workers: int = 2,
        timeout_s: float = 10.0,
        memory_mb: float | None = 1024,
        in_process: bool = False,
        chunk_size: int | str | None = None,
        max_timeouts: int = 16,
        start_method: Literal["fork", "spawn"] = "fork",
    ) -> None:
        self.funcs = list(funcs)
        self.weights = _check_weights(self.funcs, weights)
        self.names = unique_names(self.funcs)
        _check_settings(num_workers, timeout_s, memory_mb, chunk_size, max_timeouts)
        self.num_workers = num_workers
        self.timeout_s = float(timeout_s)
        self.memory_mb = memory_mb
        self.chunk_size = chunk_size
        self._seen: set[tuple[str, str]] = set()  # (function, failure) already logged in full
        self._lock = threading.Lock()  # one batch at a time through the pipe to the manager
        self._closed = False
        self._pool: Pool | None = None
        # Rewards that must run here (a reward model: the pool cannot pickle it, nor use a GPU from a
        # fork) are called in this process with the in_process rules; the others go to the pool.
        self._local = [i for i, fn in enumerate(self.funcs) if getattr(fn, IN_PROCESS_ATTRIBUTE, False)]
        self._pooled = [i for i in range(len(self.funcs)) if i not in self._local]
        if not in_process and self._pooled:
            config = PoolConfig(num_workers, float(timeout_s), memory_mb, max_timeouts)
            self._pool = Pool([self.funcs[i] for i in self._pooled], config, start_method)

    @property
    def in_process(self) -> bool:
        return self._pool is None

    def settings(self) -> dict[str, Any]:
        """How this runner scores (recorded with evaluation results): the failure policy's knobs."""
        return {"functions": list(self.names), "num_workers": self.num_workers, "timeout_s": self.timeout_s,
                "memory_mb": self.memory_mb, "in_process": self.in_process, "chunk_size": self.chunk_size}

    def score(self, prompts: list, completions: list, columns: dict[str, list],
              shared: dict[str, Any] | None = None) -> RewardOutput:
        """Score ``completions``: same arguments, result and ValueErrors as :func:`score`.

        ``shared``: arguments passed unchanged to every call (TRL's ``trainer_state``). Each
        reward that can take them also gets TRL's ``log_extra`` and ``log_metric``; what it
        logs is in the result's ``extra`` and ``logged``."""
        _check_inputs(prompts, completions, columns)
        if self._closed:
            raise RuntimeError("this RewardRunner is closed")
        cols: dict[str, Any] = {k: list(v) for k, v in columns.items()}
        for key, value in (shared or {}).items():
            if key in cols:
                raise ValueError(f"{key!r} is both a column and a shared argument")
            cols[key] = Shared(value)
        with self._lock:
            result = self._run(list(prompts), list(completions), cols)
        return _output(self.names, self.weights, result, completions, self._seen)

    def close(self) -> None:
        """Stop the worker processes. Idempotent."""
        self._closed = True
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> RewardRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, prompts: list, completions: list, columns: dict[str, list]) -> BatchResult:
        n = len(completions)
        if self._pool is None or n == 0:
            return run_in_process(self.funcs, prompts, completions, columns)
        pooled = self._pool.run(prompts, completions, columns, self._chunk_size(n))
        if pooled is None:
            logger.error("the reward manager process died; scoring this batch None and starting a new one")
            pooled = BatchResult.all_failed(len(self._pooled), n, "crash", "the reward manager process died")
        if not self._local:
            return pooled
        local = run_in_process([self.funcs[i] for i in self._local], prompts, completions, columns)
        return _merge([(self._pooled, pooled), (self._local, local)], len(self.funcs))

    def _chunk_size(self, n: int) -> list[int]:
        """Completions per call, per pooled function: the whole batch unless the runner or the
        function asks for chunks."""
        sizes = []
        for fn in (self.funcs[i] for i in self._pooled):
            size = self.chunk_size if self.chunk_size is not None else getattr(fn, CHUNK_ATTRIBUTE, None)
            if size == "auto":
                size = max(1, min(_MAX_CHUNK, math.ceil(n / (self.num_workers * _CHUNKS_PER_WORKER))))
            sizes.append(n if size is None else int(size))
        return sizes


def _merge(parts: list[tuple[list[int], BatchResult]], num_funcs: int) -> BatchResult:
    """One BatchResult from the results of disjoint sets of functions (``(their indices, result)``)."""
    values: list[list[float]] = [[] for _ in range(num_funcs)]
    failures: list[list] = [[] for _ in range(num_funcs)]
    logs: list[list] = [[] for _ in range(num_funcs)]
    for indices, result in parts:
        for j, i in enumerate(indices):
            values[i], failures[i] = result.values[j], result.failures[j]
            logs[i] = result.logs[j] if result.logs else []
    return BatchResult(values=values, failures=failures, logs=logs)


def _output(names: list[str], weights: list[float], result: BatchResult, completions: list,
            seen: set[tuple[str, str]]) -> RewardOutput:
    """The batch's :class:`RewardOutput`, its failures logged (:func:`_log_failures`; ``seen``: the
    failures already logged in full)."""
    total = torch.zeros(len(completions), dtype=torch.float64)
    failed_any = torch.zeros(len(completions), dtype=torch.bool)
    per_func: dict[str, torch.Tensor] = {}
    failures: dict[str, int] = {}
    errors: dict[str, str] = {}
    extra: dict[str, list] = {}
    logged: dict[str, list[float]] = {}
    logs = result.logs or [[] for _ in names]
    for name, weight, values, failed, calls in zip(names, weights, result.values, result.failures, logs, strict=True):
        scores = torch.tensor(values, dtype=torch.float64)
        per_func[name], failures[name] = scores, len(failed)
        total += torch.where(torch.isnan(scores), 0.0, scores) * weight
        failed_any[[index for index, _, _ in failed]] = True
        if failed:
            errors[name] = failed[0][2]
        _log_failures(name, failed, completions, seen)
        for indices, (columns, metrics) in calls:
            for column, vals in columns.items():
                # values of a call, in its completions' order; a short list leaves the rest None
                slots = extra.setdefault(column, [None] * len(completions))
                for i, v in zip(indices, vals, strict=False):
                    slots[i] = v
            for metric, vals in metrics.items():
                logged.setdefault(metric, []).extend(vals)
    return RewardOutput(total=total, per_func=per_func, failures=failures, errors=errors, extra=extra,
                        logged={k: sum(v) / len(v) for k, v in logged.items() if v}, failed=failed_any)


def _check_settings(
    num_workers: int, timeout_s: float, memory_mb: float | None, chunk_size: int | None, max_timeouts: int
) -> None:
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    if memory_mb is not None and not memory_mb > 0:
        raise ValueError(f"memory_mb must be positive or None, got {memory_mb}")
    if chunk_size is not None and chunk_size != "auto" and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be at least 1, 'auto' or None, got {chunk_size!r}")
    if max_timeouts < 1:
        raise ValueError(f"max_timeouts must be at least 1, got {max_timeouts}")


def _log_failures(name: str, failed: list[tuple[int, str, str]], completions: list,
                  seen: set[tuple[str, str]] | None = None) -> None:
    """One warning per distinct failure (the first completion it hit, and how many more), up to
    ``_MAX_LOGGED``; then a summary.

    A failure already logged in an earlier batch (same function, same detail) is only counted
    in the summary, so a reward broken on every completion shows its exception once, not every
    step (the trainer's metrics count every failure)."""
    seen = set() if seen is None else seen
    by_detail: dict[str, list[tuple[int, str, str]]] = {}
    for f in failed:
        by_detail.setdefault(f[2], []).append(f)
    new = [fs for detail, fs in by_detail.items() if (name, detail) not in seen][:_MAX_LOGGED]
    for fs in new:
        index, _, detail = fs[0]
        also = f" (and {len(fs) - 1} more completions)" if len(fs) > 1 else ""
        logger.warning("reward %r %s on completion %d: %s%s; its total is unknown (not trained on)", name, detail,
                       index,
                       short_repr(completions[index]), also)
        seen.add((name, detail))
    shown = {id(f) for fs in new for f in fs}
    rest = [f for f in failed if id(f) not in shown]
    if rest:
        kinds = collections.Counter(kind for _, kind, _ in rest)
        summary = ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())
        level = logging.WARNING if new else logging.DEBUG  # nothing new: the metrics count it
        logger.log(level, "reward %r failed on %d more completions in this batch (%s)", name, len(rest), summary)


def _benchmark(n: int = 1024, repeats: int = 5, reward: Callable | None = None) -> None:
    """Print scoring throughput of ``reward`` (default: a trivial one), in process vs in the pool.

    Run: ``OMP_NUM_THREADS=1 python -c "from rlreason.rewards.runner import _benchmark; _benchmark()"``.
    """

    def trivial(prompts: list, completions: list, **kwargs: Any) -> list[float]:
        return [float(len(c) % 2) for c in completions]

    reward = reward or trivial
    prompts, completions = ["p"] * n, [f"<think>{i}+1</think><answer>{i + 1}</answer>" for i in range(n)]
    columns = {"answer": [str(i + 1 if i % 3 else i) for i in range(n)]}
    for label, kwargs in [("score()", None), ("in_process", {"in_process": True}), ("pool, 2 workers", {})]:
        runner = None if kwargs is None else RewardRunner([reward], **kwargs)
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            if runner is None:
                score([reward], None, prompts, completions, columns)
            else:
                runner.score(prompts, completions, columns)
            best = min(best, time.perf_counter() - start)
        if runner is not None:
            runner.close()
        print(f"{label:>16}: {best * 1e3:7.2f} ms per batch of {n}, {n / best:10,.0f} completions/s", file=sys.stdout)

"""A step's experience (``Rollout``) and the prompt stream it is drawn from.

The prompt stream is a pure function of (seed, position): step t's prompts are positions
``t * per_step ... (t + 1) * per_step - 1`` of an endless sequence of seeded permutations of
the dataset, sharded by rank. So a resumed run draws exactly the prompts the uninterrupted
run would have, and the union of the processes' shards is what one process would draw.
Dynamic sampling's refills come from a second stream of their own (``extra_rows``), so they
never take the prompts of later steps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import datasets
import torch

from rlreason import algorithms as A
from rlreason.loop.distributed import gather_varlen
from rlreason.rollout.base import Sample


@dataclass
class Rollout:
    """One step's experience on this process. N = prompts * G completions, groups adjacent."""

    prompt_ids: list[list[int]]  # [N] (each prompt repeated G times)
    samples: list[Sample]  # [N]
    rewards: torch.Tensor  # [N] float64 weighted sum; NaN where no term applies or a reward failed (no signal)
    per_func: dict[str, torch.Tensor]  # name -> [N], NaN where None or failed
    prompts: list[Any]  # [N] raw prompts, for logging
    group_size: int
    metrics: dict[str, float]
    advantages: torch.Tensor | None = None  # [N], set once the batch is final
    extra: dict[str, list] = dataclasses.field(default_factory=dict)  # rewards' log_extra columns, [N] each
    # [N] bool: a reward failed on the completion, so its total is unknown: out of its group's
    # statistics (its reward is NaN) and out of the loss (the actor masks its tokens). None: no failure.
    failed: torch.Tensor | None = None

    @property
    def num_groups(self) -> int:
        return len(self.samples) // self.group_size

    def informative_groups(self) -> list[int]:
        """Indices of groups whose rewards are not all equal (they carry a learning signal);
        NaN rewards (no applicable term) do not count."""
        return torch.nonzero(A.signal_groups(self.rewards, self.group_size)).flatten().tolist()

    def select(self, groups: list[int]) -> Rollout:
        """Only the given groups (in that order)."""
        G = self.group_size
        idx = [i * G + j for i in groups for j in range(G)]
        t = torch.tensor(idx, dtype=torch.long)
        return Rollout([self.prompt_ids[i] for i in idx], [self.samples[i] for i in idx], self.rewards[t],
                       {k: v[t] for k, v in self.per_func.items()}, [self.prompts[i] for i in idx], G, self.metrics,
                       None if self.advantages is None else self.advantages[t],
                       {k: [v[i] for i in idx] for k, v in self.extra.items()},
                       None if self.failed is None else self.failed[t])

    def concat(self, other: Rollout) -> Rollout:
        return Rollout(self.prompt_ids + other.prompt_ids, self.samples + other.samples,
                       torch.cat([self.rewards, other.rewards]),
                       {k: torch.cat([v, other.per_func[k]]) for k, v in self.per_func.items()},
                       self.prompts + other.prompts, self.group_size, self.metrics, None,
                       {k: self.extra.get(k, [None] * len(self.samples))
                        + other.extra.get(k, [None] * len(other.samples)) for k in {*self.extra, *other.extra}},
                       None if self.failed is None and other.failed is None
                       else torch.cat([self.failed_mask(), other.failed_mask()]))

    def failed_mask(self) -> torch.Tensor:
        """[N] bool: ``failed``, all False where it is None."""
        return torch.zeros(len(self.samples), dtype=torch.bool) if self.failed is None else self.failed


def rollout_state(ro: Rollout) -> dict[str, Any]:
    """``ro`` as plain containers and tensors (a checkpoint's in-flight batch, ``async_rollouts``):
    every field, exactly (floats as they are, not through text), loadable with
    ``torch.load(weights_only=True)`` (``plain``)."""
    return plain({"prompt_ids": ro.prompt_ids, "samples": [dataclasses.asdict(s) for s in ro.samples],
                  "rewards": ro.rewards, "per_func": ro.per_func, "prompts": ro.prompts, "group_size": ro.group_size,
                  "metrics": ro.metrics, "advantages": ro.advantages, "extra": ro.extra, "failed": ro.failed})


_PLAIN = (type(None), bool, int, float, str, bytes)


def plain(x: Any) -> Any:
    """``x`` as what ``torch.load(weights_only=True)`` loads: tensors, numbers, strings, None, and
    dicts, lists and tuples of them. What a reward may put in its logged columns or metrics beyond
    that becomes its plain equivalent: a numpy number its Python number (the same value), a numpy
    array a list, a subclass of a number or string (an enum, numpy's float64) its base type; any
    other object its ``str`` (it is only ever logged, and the log writes JSON)."""
    if type(x) in _PLAIN:
        return x
    if isinstance(x, torch.Tensor):
        return x.detach() if type(x) is not torch.Tensor else x
    if isinstance(x, dict):
        return {plain(k): plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(plain(v) for v in x) if type(x) in (list, tuple) else [plain(v) for v in x]
    if hasattr(x, "dtype") and hasattr(x, "tolist"):  # a numpy number or array: its Python value(s)
        return x.tolist()
    for base in (bool, int, float, str, bytes):
        if isinstance(x, base):
            return base(x)
    return str(x)


def rollout_from_state(state: dict[str, Any]) -> Rollout:
    """The inverse of ``rollout_state``."""
    return Rollout(state["prompt_ids"], [Sample(**s) for s in state["samples"]], state["rewards"], state["per_func"],
                   state["prompts"], state["group_size"], state["metrics"], state["advantages"], state["extra"],
                   state.get("failed"))


def stream_seed(seed: int, stream: str, pos: int) -> int:
    """The sampling seed of the item at ``pos`` of a named stream (a run's prompts, the distillation
    teacher's problems): a function of (seed, stream, position) only, never of the process count
    or batching."""
    digest = hashlib.blake2b(f"{seed}:{stream}:{pos}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # < 2**63, as torch.manual_seed wants


class PromptStream:
    """This process's prompts, step by step. ``extra_drawn`` (the refill stream's position) is
    the only state; a checkpoint saves it (``state_dict``)."""

    def __init__(self, dataset: datasets.Dataset, seed: int, prompts_per_process: int, process_index: int = 0,
                 num_processes: int = 1, seed_per_prompt: bool = False) -> None:
        self.dataset, self.seed = dataset, seed
        self.per_process, self.rank, self.world = prompts_per_process, process_index, num_processes
        self.seed_per_prompt = seed_per_prompt  # generation_seed_per_prompt: a sampling seed per prompt
        self.extra_drawn = 0
        self._perm: tuple[int, torch.Tensor] | None = None

    def positions(self, step: int) -> range:
        """This process's positions at ``step``: the step's global batch is ``per_process * world``
        consecutive positions and rank r takes the r-th slice, so the shards are disjoint and their
        union (in rank order) is what one process with the whole batch would draw."""
        start = step * self.per_process * self.world + self.rank * self.per_process
        return range(start, start + self.per_process)

    def rows(self, step: int) -> list[dict]:
        """This process's prompts for ``step``."""
        n = len(self.dataset)
        return [self.dataset[int(self._permutation(pos // n)[pos % n])] for pos in self.positions(step)]

    def _permutation(self, epoch: int) -> torch.Tensor:
        """The dataset order for ``epoch``, seeded by (seed, epoch); the current one is kept."""
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.dataset), generator=g))
        return self._perm[1]

    def extra_rows(self, k: int) -> tuple[list[dict], list[int] | None]:
        """(``k`` more prompts for dynamic sampling, their sampling seeds): a stream of their own (a
        different seeded order, offset by rank), so refills never take the prompts of later steps."""
        n = len(self.dataset)
        g = torch.Generator().manual_seed(self.seed * 100_003 + 7_919 * (self.rank + 1))
        order = torch.randperm(n, generator=g)
        first = self.extra_drawn
        rows = [self.dataset[int(order[(first + i) % n])] for i in range(k)]
        self.extra_drawn += k
        return rows, self.seeds(f"extra-{self.rank}", range(first, first + k))

    def seeds(self, stream: str, positions: range) -> list[int] | None:
        """Per-prompt sampling seeds (``generation_seed_per_prompt``), else None (the engine's own RNG)."""
        return [stream_seed(self.seed, stream, p) for p in positions] if self.seed_per_prompt else None

    def epoch(self, step: int) -> float:
        """How many passes over the dataset ``step`` steps are (TRL's ``trainer_state.epoch``)."""
        return step * self.per_process * self.world / max(len(self.dataset), 1)

    def state_dict(self) -> dict[str, int]:
        """Its part of a checkpoint (rlreason.run.checkpoint.Stateful); the rest is a function of the seed
        and the step."""
        return {"extra_prompts_drawn": self.extra_drawn}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.extra_drawn = state.get("extra_prompts_drawn", 0)


TOOL_STATS = ("calls", "failures", "turns", "masked_tokens")  # Sample.tool_stats' counts, as sample_metrics reads them


def tool_names(acc, ro: Rollout) -> list[str]:
    """The tools called in ``ro`` on any process, sorted (every process logs the same columns).
    Collective with several processes."""
    names = {name for s in ro.samples if s.tool_stats for name in s.tool_stats["per_tool"]}
    if acc.num_processes > 1:
        from accelerate.utils import gather_object

        names = set().union(*gather_object([names]))
    return sorted(names)


def _tool_columns(ro: Rollout, names: list[str]) -> list[torch.Tensor]:
    """[N] float64 columns: each of ``TOOL_STATS``, then calls per tool of ``names`` (0 for a
    sample without tool_stats)."""
    stats = [s.tool_stats or {"per_tool": {}} for s in ro.samples]
    cols = [[float(st.get(k, 0)) for st in stats] for k in TOOL_STATS]
    cols += [[float(st["per_tool"].get(name, 0)) for st in stats] for name in names]
    return [torch.tensor(c, dtype=torch.float64) for c in cols]


def sample_metrics(acc, ro: Rollout, with_tools: bool = False) -> dict[str, float]:
    """Reward and length statistics of the whole step's batch: every process's samples are
    gathered first (a mean of per-process means or stds would be wrong for unequal shards).
    Lengths count the model's tokens (tool output left out, as TRL). ``with_tools`` (the run
    has tools, on every process): TRL's tools/call_frequency (calls per completion) and
    tools/failure_frequency (failures per call), and tools/turns_mean (assistant turns),
    tools/masked_tokens_mean (inserted tool tokens), tools/calls/<name> (calls per completion).
    Collective with several processes."""
    names = list(ro.per_func)
    tools = tool_names(acc, ro) if with_tools else []
    # float64: rewards up to float32's limit, whose squares the std takes
    cols = [ro.rewards.double(), *(ro.per_func[k].double() for k in names),
            *(_tool_columns(ro, tools) if with_tools else []),
            ro.failed_mask().double(),
            torch.tensor([float(s.model_tokens) for s in ro.samples], dtype=torch.float64),
            torch.tensor([float(s.finish_reason == "length") for s in ro.samples], dtype=torch.float64)]
    table = gather_varlen(acc, torch.stack(cols, dim=1).reshape(len(ro.samples), len(cols)))
    if len(table) == 0:
        return {}
    rewards, failed, lengths, truncated = table[:, 0], table[:, -3], table[:, -2], table[:, -1]
    scored = rewards[~torch.isnan(rewards)]  # completions with no applicable term, or a failed one, carry no score
    metrics = {
        "reward/mean": scored.mean().item() if len(scored) else float("nan"),
        "reward/std": scored.std().item() if len(scored) > 1 else 0.0,
        "reward/no_signal_frac": 1.0 - len(scored) / len(rewards),
        # a reward failed: the total is unknown, the completion is left out of its group and the loss
        "reward/unknown_frac": failed.mean().item(),
        "completion/mean_length": lengths.mean().item(),
        "completion/max_length": lengths.max().item(),
        "completion/truncated_frac": truncated.mean().item(),
    }
    for i, name in enumerate(names):
        vals = table[:, 1 + i]
        ok = vals[~torch.isnan(vals)]
        metrics[f"rewards/{name}/mean"] = ok.mean().item() if len(ok) else float("nan")
        metrics[f"rewards/{name}/std"] = ok.std().item() if len(ok) > 1 else 0.0
        metrics[f"rewards/{name}/none_frac"] = 1.0 - len(ok) / len(vals)
    if with_tools:
        first = 1 + len(names)
        calls, failures, turns, masked = (table[:, first + i] for i in range(len(TOOL_STATS)))
        metrics["tools/call_frequency"] = calls.mean().item()
        metrics["tools/failure_frequency"] = (failures.sum() / calls.sum()).item() if calls.sum() > 0 else 0.0
        metrics["tools/turns_mean"] = turns.mean().item()
        metrics["tools/masked_tokens_mean"] = masked.mean().item()
        for i, name in enumerate(tools):
            metrics[f"tools/calls/{name}"] = table[:, first + len(TOOL_STATS) + i].mean().item()
    return metrics


def completion_rows(ro: Rollout, n: int) -> list[dict[str, Any]]:
    """completions.jsonl's rows for the first ``n`` completions: prompt, completion, reward (None:
    no signal), advantage, each reward's score, the rewards' logged columns, finish reason; and for
    a multi-turn completion (tools) its exchange turn by turn (``messages``: assistant and tool
    turns, as the rewards saw them) and its ``tool_stats`` (calls, failures, turns, masked tokens)."""
    def score(x: float) -> float | None:
        return None if math.isnan(x) else x

    def turns(s: Sample) -> dict[str, Any]:
        return {"messages": s.messages, "tool_stats": s.tool_stats} if s.messages is not None else {}

    return [{"prompt": ro.prompts[i], "completion": ro.samples[i].text, "reward": score(ro.rewards[i].item()),
             "advantage": ro.advantages[i].item(),
             **{f"reward/{k}": score(v[i].item()) for k, v in ro.per_func.items()},
             **{k: v[i] for k, v in ro.extra.items()}, "finish_reason": ro.samples[i].finish_reason,
             **turns(ro.samples[i])}
            for i in range(min(len(ro.samples), n))]

"""Multi-turn rollouts over any ``RolloutEngine``: the model calls tools, reads their answers, goes on.

One rollout = prompt, then turns::

    prompt | assistant turn 1 (model) | tool suffix 1 (inserted) | assistant turn 2 (model) | ...
            `---------------------- Sample.token_ids: everything after the prompt ----------------'
    loss_mask   1 1 ... 1               0 0 ... 0                  1 1 ... 1
    logprobs    sampler's               0.0                        sampler's

The first turn is ``engine.generate(prompt_ids, n, ...)`` (n per prompt, as without tools). Then,
batched: every rollout whose last turn called tools has them run in one ``call_tools`` request,
its token ids get the tool suffix (``parse.tool_suffix_ids``: the results as the chat template
renders them, up to the next assistant header) and all of them continue together in ONE
``engine.generate(prefixes, 1, ...)`` call, one continuation each; the others wait. Token ids
are kept as generated and the suffix is appended as ids: model text is never re-tokenized, so
the ids the loss sees are the ids that were sampled. The engine is only ever asked to
``generate``, so the transformers, child-process and vLLM engines all run it unchanged.

A rollout ends when its last turn calls nothing, stopped otherwise than at its end-of-turn
token (cut by length), after ``max_iterations`` rounds of tool calls (None: no limit, TRL's
default), or when the exchange reaches ``sampling.max_tokens`` (the completion budget covers the
whole exchange, tool tokens included, as TRL's max_completion_length) or ``max_model_len``. A tool
answer that leaves no room for one more model token is dropped and the rollout ends there,
finish_reason "length" (TRL drops it too, past the budget; it keeps it when it fills the budget
exactly, leaving a turn with no token, which this loop does not make).

Seeds: with ``seeds`` (one per prompt) the first turn is the engine's seeded group and turn t of
rollout j of prompt i is seeded with ``turn_seed(seeds[i], j, t)``, so a rollout is a function of
(weights, prompt, seed, tool answers) only, not of which other rollouts continue beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from rlreason.rollout.base import RolloutEngine, Sample, SamplingConfig
from rlreason.rollout.tools.parse import parse_assistant, tool_suffix_ids

if TYPE_CHECKING:  # the executor's types (rlreason/rollout/tools/results.py); the loop only reads fields
    from rlreason.rollout.tools.results import EpisodeStart, ToolResult

UNKNOWN_TOOL = "<unknown>"  # tool_stats["per_tool"]'s key for calls to a tool the rollout does not have
CallTools = Callable[[list[tuple[int, list[dict]]]], "list[list[ToolResult]]"]


def turn_seed(seed: int, rollout: int, turn: int) -> int:
    """The sampling seed of turn ``turn`` (>= 1; turn 0 is the engine's seeded group) of the
    ``rollout``-th sample of a prompt whose seed is ``seed``: a pure function of the three, in
    [0, 2**63) as torch.manual_seed takes (vLLM engines reduce it mod 2**31)."""
    digest = hashlib.blake2b(f"rlreason-tool-turn:{seed}:{rollout}:{turn}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class _Exchange:
    """One rollout in progress: everything after its prompt."""

    prompt: list[int]
    schemas: list[dict]
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    messages: list[dict] = field(default_factory=list)
    finish: Literal["stop", "length"] = "stop"
    calls: int = 0
    failures: int = 0
    per_tool: dict[str, int] = field(default_factory=dict)

    def add_turn(self, tokenizer: Any, sample: Sample) -> None:
        """The model's turn: its ids (loss mask 1), its log-probs, its parsed message."""
        self.messages.append(parse_assistant(tokenizer, sample.token_ids, self.prompt + self.ids, self.schemas))
        self.ids += sample.token_ids
        self.logprobs += sample.logprobs
        self.mask += [1] * len(sample.token_ids)
        self.finish = sample.finish_reason

    def calls_pending(self) -> list[dict] | None:
        """The tool calls of the last turn, when it ended at its end-of-turn token and made some."""
        return self.messages[-1].get("tool_calls") if self.finish == "stop" else None

    def room(self, max_tokens: int, max_model_len: int) -> int:
        """How many more tokens the exchange may take: the completion budget and the context left."""
        return min(max_tokens - len(self.ids), max_model_len - len(self.prompt) - len(self.ids))

    def sample(self, tokenizer: Any, error: str | None) -> Sample:
        return Sample(token_ids=self.ids, text=tokenizer.decode(self.ids, skip_special_tokens=True),
                      logprobs=self.logprobs, finish_reason=self.finish, loss_mask=self.mask,
                      messages=self.messages,
                      tool_stats={"calls": self.calls, "failures": self.failures,
                                  "turns": sum(m["role"] == "assistant" for m in self.messages),
                                  "masked_tokens": len(self.mask) - sum(self.mask), "per_tool": self.per_tool},
                      error=error)


def generate_with_tools(engine: RolloutEngine, tokenizer: Any, prompt_ids: list[list[int]], n: int,
                        sampling: SamplingConfig, seeds: Sequence[int] | None, starts: Sequence[EpisodeStart],
                        call_tools: CallTools, max_iterations: int | None,
                        max_model_len: int) -> list[list[Sample]]:
    """``n`` multi-turn rollouts per prompt, grouped per prompt as ``engine.generate`` returns them.

    ``starts[i * n + j]`` is rollout j of prompt i: its tools' schemas (for parsing) and, when its
    environment could not be reset, ``error``: that rollout is generated single-turn (the group
    keeps its shape) and its Sample carries the error (reward unknown). ``call_tools`` takes
    ``[(rollout index, tool_calls)]`` and answers one ``ToolResult`` list per request, in call order.
    Every Sample has ``loss_mask``, ``messages`` and ``tool_stats`` set (module docstring)."""
    if len(starts) != len(prompt_ids) * n:
        raise ValueError(f"got {len(starts)} episode starts for {len(prompt_ids)} prompts x {n} rollouts")
    if max_iterations is not None and max_iterations < 0:
        raise ValueError(f"config key 'max_tool_calling_iterations' must be >= 0 or None, got {max_iterations}")
    first = engine.generate(prompt_ids, n, sampling, seeds)
    ex = [_Exchange(prompt_ids[r // n], list(starts[r].schemas)) for r in range(len(starts))]
    for r, e in enumerate(ex):
        e.add_turn(tokenizer, first[r // n][r % n])
    active = [r for r, e in enumerate(ex) if starts[r].error is None and e.calls_pending()]
    turn = 0
    while active and (max_iterations is None or turn < max_iterations):
        turn += 1
        active = _answer_calls(tokenizer, ex, active, call_tools, sampling.max_tokens, max_model_len)
        if not active:
            break
        budget = max(ex[r].room(sampling.max_tokens, max_model_len) for r in active)
        turn_seeds = None if seeds is None else [turn_seed(seeds[r // n], r % n, turn) for r in active]
        out = engine.generate([ex[r].prompt + ex[r].ids for r in active], 1,
                              dataclasses.replace(sampling, max_tokens=budget), turn_seeds)
        for r, group in zip(active, out, strict=True):
            ex[r].add_turn(tokenizer, _cut(group[0], ex[r].room(sampling.max_tokens, max_model_len)))
        active = [r for r in active if ex[r].calls_pending()]
    samples = [e.sample(tokenizer, starts[r].error) for r, e in enumerate(ex)]
    return [samples[i * n:(i + 1) * n] for i in range(len(prompt_ids))]


def _answer_calls(tokenizer: Any, ex: list[_Exchange], active: list[int], call_tools: CallTools,
                  max_tokens: int, max_model_len: int) -> list[int]:
    """Run the pending calls of the ``active`` rollouts (one request), append each one's answers
    (messages, and the tool suffix as ids with loss mask 0 and log-prob 0.0); the rollouts that
    still have room for a model token after it, which continue. The others end, answers dropped,
    cut by length."""
    requests = [(r, ex[r].calls_pending() or []) for r in active]
    results = call_tools(requests)
    if len(results) != len(requests) or any(len(a) != len(c) for a, (_, c) in zip(results, requests, strict=False)):
        raise RuntimeError("call_tools must answer every tool call of every request, in order")
    going = []
    for r, answers in zip(active, results, strict=True):
        e = ex[r]
        known = {s.get("function", s).get("name") for s in e.schemas}
        for a in answers:  # calls run count, answers dropped for length or not (as TRL counts them)
            e.calls += 1
            e.failures += int(a.failed)
            # a name the model made up counts as UNKNOWN_TOOL: one metric column, not one per invention
            name = a.name if a.name in known else UNKNOWN_TOOL
            e.per_tool[name] = e.per_tool.get(name, 0) + 1
        tool_messages = [{"role": "tool", "name": a.name, "content": a.content} for a in answers]
        suffix = tool_suffix_ids(tokenizer, tool_messages)
        if e.room(max_tokens, max_model_len) - len(suffix) < 1:
            e.finish = "length"
            continue
        e.messages += tool_messages
        e.ids += suffix
        e.logprobs += [0.0] * len(suffix)
        e.mask += [0] * len(suffix)
        going.append(r)
    return going


def _cut(sample: Sample, room: int) -> Sample:
    """``sample`` cut to ``room`` tokens (the continuation was generated with the largest budget
    of its batch); a cut one ends by length."""
    if len(sample.token_ids) <= room:
        return sample
    return dataclasses.replace(sample, token_ids=sample.token_ids[:room], logprobs=sample.logprobs[:room],
                               finish_reason="length")

"""Running the model's tool calls without trusting the tools: :class:`ToolExecutor`.

Every call runs isolated (``isolation="process"``, the default): in a worker process with a
wall-clock timeout per call (the worker is killed), an address-space cap (RLIMIT_AS, ``memory_mb``
above what the worker maps at start) and its output cut at ``max_output_chars`` in the worker, so a
10 MB answer never crosses the pipe. An exception, a hang, a memory blow-up, a crash of the worker
(``os._exit``, a segfault), an unknown tool or bad arguments each become a
:class:`~.results.ToolResult` with ``failed=True``, the short error text the model reads (TRL's
``{'error': '...'}``) and a ``reason``; never an exception in the trainer. The processes, and how
environments stay in one worker for their whole rollout, are in :mod:`._workers`; the environments
and the tool tables themselves in :mod:`.environments`.

``isolation="none"`` runs the same calls in the trainer's process, each in a thread joined with the
timeout (for debugging, like ``reward_num_workers: 0``): a hung call is abandoned, not stopped, and
its episode's environment is dropped; a memory blow-up or ``os._exit`` takes the trainer with it.

    executor = ToolExecutor(tools=[multiply], timeout_s=5)
    starts = executor.start(rows)                  # one per rollout (rows repeated G times by the caller)
    results = executor.call([(0, [{"type": "function", "function": {"name": "multiply",
                                                                   "arguments": {"a": 3, "b": 4}}}])])
    executor.close()

Speed: ``benchmarks/tool_executor.py`` (docs/benchmarks.md) measures calls/s through each mode.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from rlreason.rollout.tools._workers import LOST, Remote, WorkerConfig, failed_job, lost_call
from rlreason.rollout.tools.environments import (
    EnvironmentInfo,
    Episodes,
    environment_name,
    normalize_factories,
    parse_call,
)
from rlreason.rollout.tools.results import EpisodeStart, Isolation, ToolResult
from rlreason.rollout.tools.schema import tool_schemas

IN_PROCESS_WARNING = ("tool_isolation: none runs the tools in the trainer's process: a hung call is abandoned, not "
                      "stopped, and a memory blow-up or os._exit takes the run with it; for debugging only")

__all__ = ["EpisodeStart", "ToolExecutor", "ToolResult"]


class ToolExecutor:
    """Runs tools and environments isolated (see the module docstring). ``tools``: standalone
    functions, callable in every rollout; ``environment_factory``: TRL's (a callable returning an
    environment, or a dict of them chosen by each row's ``environment`` column). One instance of
    each environment is built (in a worker) when the executor is, to check it and read its tools."""

    def __init__(self, tools: Sequence[Callable] | None = None, environment_factory: Any = None, *,
                 timeout_s: float = 10.0, memory_mb: int | None = 1024, max_output_chars: int = 4096,
                 num_workers: int = 2, isolation: Isolation = "process") -> None:
        _check_settings(timeout_s, memory_mb, max_output_chars, num_workers, isolation)
        self.tools = list(tools or [])
        self.schemas = tool_schemas(self.tools)
        self.factories = normalize_factories(environment_factory)
        self.timeout_s = timeout_s
        self.isolation = isolation
        self._episodes = Episodes(self.tools, self.factories, max_output_chars)
        self._remote: Remote | None = None
        if isolation == "process":
            self._remote = Remote(self._episodes, WorkerConfig(num_workers, timeout_s, memory_mb))
        else:
            warnings.warn(IN_PROCESS_WARNING, stacklevel=2)
        self.environments: dict[str | None, EnvironmentInfo] = {}
        if self.factories:
            try:
                self.environments = self._probe()
                self._check_names()
            except BaseException:
                self.close()
                raise
        self._batch = 0
        self._names: list[str | None] = []  # each episode's environment, this batch
        self._start_errors: list[str | None] = []
        self._lost: dict[int, str] = {}  # episodes whose environment is gone (in-process: dropped; a manager died)
        self._generation = self._remote.generation if self._remote is not None else 0

    # ------------------------------------------------------------------ the API

    @property
    def reward_names(self) -> list[str]:
        """The class names of the environments whose class defines ``get_reward`` (TRL logs each
        as a reward source of weight 1 under that name)."""
        return list(dict.fromkeys(info.class_name for info in self.environments.values() if info.has_reward))

    @property
    def manager_pid(self) -> int | None:
        """The manager process's pid (None in-process or closed); its children are the workers."""
        return self._remote.manager_pid if self._remote is not None else None

    def schemas_for(self, name: str | None) -> list[dict]:
        """The tool schemas of a rollout in environment ``name``: the standalone tools, then its methods."""
        return [*self.schemas, *(self.environments[name].schemas if name in self.environments else ())]

    def start(self, rows: list[dict]) -> list[EpisodeStart]:
        """Begin one episode per row (the caller repeats a prompt's row G times): each resets an
        environment instance with ``reset(**row)``; the previous batch's instances go back to the pool."""
        self._batch += 1
        self._lost = {}
        self._names = [environment_name(row, self.factories) for row in rows] if self.factories else [None] * len(rows)
        if not self.factories:
            self._start_errors = [None] * len(rows)
            return [EpisodeStart(None, list(self.schemas)) for _ in rows]
        jobs = [(i, row, name) for i, (row, name) in enumerate(zip(rows, self._names, strict=True))]
        if self._remote is not None:
            answers = self._remote.request("start", (self._batch, jobs))
            if answers is None:
                answers = {i: (None, "reset(): the tool manager process died") for i, _, _ in jobs}
            self._generation = self._remote.generation
        else:
            answers = {i: self._local(i, "start", (self._batch, i, row, name)) for i, row, name in jobs}
        self._start_errors = [answers[i][1] for i in range(len(rows))]
        return [EpisodeStart(answers[i][0], self.schemas_for(name), answers[i][1])
                for i, name in enumerate(self._names)]

    def call(self, requests: list[tuple[int, list[dict]]]) -> list[list[ToolResult]]:
        """Run each request's tool calls (``(episode, tool_calls)``, calls as transformers parses
        them) -> their results, in call order. Never raises for what a tool does."""
        jobs = []
        for r, (episode, calls) in enumerate(requests):
            if not 0 <= episode < len(self._names):
                raise IndexError(f"tool call for episode {episode}, but this batch has {len(self._names)} episodes "
                                 f"(call start(rows) first)")
            jobs += [((r, c), episode, tool_call) for c, tool_call in enumerate(calls)]
        self._check_manager()
        answers: dict = {}
        for key, episode, tool_call in jobs:  # an environment whose reset failed, or lost: its methods cannot run
            why = f"its reset failed ({self._start_errors[episode]})" if self._start_errors[episode] is not None \
                else self._lost.get(episode)
            if why is not None and self.factories and parse_call(tool_call)[0] not in self._episodes.tools:
                answers[key] = lost_call(tool_call, why)
        jobs = [job for job in jobs if job[0] not in answers]
        if self._remote is not None:
            remote = self._remote.request("call", jobs) if jobs else {}
            if remote is None:  # the manager died: every environment with it
                self._lost = dict.fromkeys(range(len(self._names)), "the tool manager process died")
                remote = {key: failed_job("call", (episode, tool_call), "crashed", "the tool manager process died")
                          for key, episode, tool_call in jobs}
            answers.update(remote)
        else:
            answers.update({key: self._local(episode, "call", (episode, tool_call))
                            for key, episode, tool_call in jobs})
        return [[answers[(r, c)] for c in range(len(calls))] for r, (_, calls) in enumerate(requests)]

    def rewards(self) -> tuple[dict[str, list[float | None]], dict[str, list[bool]]]:
        """``get_reward()`` of each episode's environment: ``{class name: [value per episode, None
        where the episode's environment is another class]}``, and ``{class name: [failed]}``: True
        where the reward is unknown (reset failed, the environment was lost, get_reward raised,
        hung or returned no number), never a made-up zero."""
        n = len(self._names)
        values = {name: [None] * n for name in self.reward_names}
        failed = {name: [False] * n for name in self.reward_names}
        wanted = [i for i, name in enumerate(self._names)
                  if name in self.environments and self.environments[name].has_reward]
        self._check_manager()
        asked = [i for i in wanted if self._start_errors[i] is None and i not in self._lost]
        if self._remote is not None:
            answers = self._remote.request("reward", asked) if asked else {}
            if answers is None:
                answers = {i: (None, "get_reward(): the tool manager process died") for i in asked}
        else:
            answers = {i: self._local(i, "reward", (i,)) for i in asked}
        for i in wanted:
            cls = self.environments[self._names[i]].class_name
            value, error = answers.get(i, (None, self._start_errors[i] or LOST.format(why=self._lost.get(i))))
            values[cls][i] = value
            failed[cls][i] = error is not None
        return values, failed

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()

    def __enter__(self) -> ToolExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers

    def _check_manager(self) -> None:
        """A manager restarted since this batch's resets (it died) holds none of its environments."""
        if self._remote is None:
            return
        self._remote.ensure_running()
        if self.factories and self._remote.generation != self._generation:
            self._lost = dict.fromkeys(range(len(self._names)), "the tool manager process died")

    def _probe(self) -> dict[str | None, EnvironmentInfo]:
        if self._remote is not None:
            found = self._remote.request("probe", None)
            if found is None:
                found = "probing the environments: the tool manager process died"
        else:
            found = self._episodes.probe()
        if isinstance(found, str):
            raise ValueError(found)
        return found

    def _check_names(self) -> None:
        standalone = {s["function"]["name"] for s in self.schemas}
        for name, info in self.environments.items():
            clash = standalone & set(info.method_names)
            if clash:
                label = "environment_factory" if name is None else f"environment_factory[{name!r}]"
                raise ValueError(f"{label} ({info.class_name}): method {sorted(clash)[0]!r} has the name of one of "
                                 f"the tools; the model calls tools by name, so rename one")

    def _local(self, episode: int, op: str, args: tuple) -> Any:
        """An op of :class:`Episodes` in this process, in a thread joined with the timeout."""
        if episode in self._lost:  # the environment was dropped after a hung call
            if op == "call" and parse_call(args[1])[0] not in self._episodes.tools:
                return lost_call(args[1], self._lost[episode])
            if op == "reward":
                return None, LOST.format(why=self._lost[episode])
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["answer"] = getattr(self._episodes, op)(*args)
            except BaseException as e:  # sys.exit / KeyboardInterrupt raised by the tool
                box["error"] = e

        thread = threading.Thread(target=target, name="rlreason-tool", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        if thread.is_alive():  # abandoned: it may still change its environment, which is never used again
            self._episodes.forget(episode)
            self._episodes.new_loop()
            if self.factories:
                self._lost[episode] = f"dropped after a call timed out after {self.timeout_s:g} s"
            return failed_job(op, args, "timeout", f"timed out after {self.timeout_s:g} s (abandoned, still running)")
        if "error" in box:
            return failed_job(op, args, "crashed", f"raised {type(box['error']).__name__}")
        return box["answer"]


def _check_settings(timeout_s: float, memory_mb: int | None, max_output_chars: int, num_workers: int,
                    isolation: str) -> None:
    """Each setting checked, the error naming its config key."""
    if not timeout_s > 0:
        raise ValueError(f"tool_timeout_s must be > 0, got {timeout_s}")
    if memory_mb is not None and not memory_mb > 0:
        raise ValueError(f"tool_memory_mb must be > 0 or None (no cap), got {memory_mb}")
    if not max_output_chars > 0:
        raise ValueError(f"tool_max_output_chars must be > 0, got {max_output_chars}")
    if not num_workers >= 1:
        raise ValueError(f"tool_num_workers must be >= 1, got {num_workers}")
    if isolation not in ("process", "none"):
        raise ValueError(f"tool_isolation must be 'process' or 'none', got {isolation!r}")


"""Environments (TRL 1.16's ``environment_factory``) and the tools of each rollout, as the process
that runs them holds them: :class:`Episodes`.

TRL's rules, kept: ``environment_factory`` is a callable returning an object, or a dict of them
picked per row by its ``environment`` column (:func:`normalize_factories`,
:func:`environment_name`); the object must define ``reset``, which gets the row's columns as
keyword arguments (minus ``environment`` with a dict) and returns None or a string added to the
prompt; its public methods (listed on the class, so properties are not evaluated) other than
``reset`` and ``get_reward`` are the rollout's tools, next to the standalone ``tools``; an optional
``get_reward()`` scores the finished rollout. Instances are pooled and reset across batches
("construct once, reset often"): a batch takes instances from the pool, builds more only when it
needs more at once than exist, and gives them all back when the next batch starts.

:class:`Episodes` is what one worker process of the executor holds (or the trainer's process with
``tool_isolation: none``): the pool, which instance each of its episodes uses, and the tool table
of each. Its methods never raise: what user code does wrong comes back as a result (a
:class:`~.results.ToolResult`, an error text), so the process around it only ever moves data.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlreason.rewards._call import as_float, short_repr, where
from rlreason.rollout.tools.results import ToolResult, error_content
from rlreason.rollout.tools.schema import ToolSchemaError, tool_name, tool_schemas

# {environment name: factory}; the name is None for a single (non-dict) environment_factory
Factories = dict[str | None, Callable[[], Any]]
ENVIRONMENT_COLUMN = "environment"  # TRL's: a dict factory's key for the row
NOT_TOOLS = ("reset", "get_reward")  # an environment's methods that are never its tools


def normalize_factories(environment_factory: Any) -> Factories | None:
    """``environment_factory`` as ``{name: factory}`` (a single callable: ``{None: it}``), checked."""
    if environment_factory is None:
        return None
    if isinstance(environment_factory, dict):
        if not environment_factory:
            raise ValueError("environment_factory: an empty dict; give at least one environment")
        for name, factory in environment_factory.items():
            if not isinstance(name, str):
                raise ValueError(f"environment_factory: key {name!r} is not a string (rows name their environment "
                                 f"by a string in the '{ENVIRONMENT_COLUMN}' column)")
            if not callable(factory):
                raise ValueError(f"environment_factory[{name!r}]: a {type(factory).__name__}, not a callable that "
                                 f"returns an environment")
        return dict(environment_factory)
    if not callable(environment_factory):
        raise ValueError(f"environment_factory: a {type(environment_factory).__name__}, not a callable (a class, or "
                         f"a function returning an environment) nor a dict of them")
    return {None: environment_factory}


def environment_name(row: dict, factories: Factories) -> str | None:
    """The environment of ``row``: None for a single factory; else its ``environment`` column,
    which must name one of the dict's environments."""
    if list(factories) == [None]:
        return None
    if ENVIRONMENT_COLUMN not in row:
        raise ValueError(f"environment_factory is a dict ({', '.join(map(repr, factories))}): every row needs an "
                         f"'{ENVIRONMENT_COLUMN}' column naming its environment; this row has columns {sorted(row)}")
    name = row[ENVIRONMENT_COLUMN]
    if name not in factories:
        raise ValueError(f"row has environment={name!r} (column '{ENVIRONMENT_COLUMN}'), which is not among the "
                         f"environments of environment_factory: {', '.join(map(repr, factories))}")
    return name


def reset_arguments(row: dict, name: str | None) -> dict:
    """What ``reset(**kwargs)`` gets: the row, without the routing column of a dict factory (TRL's)."""
    return {k: v for k, v in row.items() if k != ENVIRONMENT_COLUMN} if name is not None else dict(row)


def environment_tools(instance: Any) -> list[Callable]:
    """The tools of an environment: its class's public functions other than ``reset`` and
    ``get_reward``, bound to ``instance`` (listed on the class: an instance would evaluate properties)."""
    return [getattr(instance, name) for name, _ in inspect.getmembers(type(instance), predicate=inspect.isfunction)
            if name not in NOT_TOOLS and not name.startswith("_")]


@dataclass(frozen=True)
class EnvironmentInfo:
    """What the trainer needs to know of one environment (learnt from a probe instance)."""

    class_name: str
    schemas: tuple[dict, ...]  # its methods' tool schemas
    method_names: tuple[str, ...]
    has_reward: bool  # its class defines get_reward: a reward source, logged under class_name


def describe(name: str | None, instance: Any) -> EnvironmentInfo:
    """``instance``'s :class:`EnvironmentInfo`; a ValueError naming the environment if it has no
    ``reset`` or a method whose schema cannot be built."""
    label = "environment_factory" if name is None else f"environment_factory[{name!r}]"
    cls = type(instance)
    if not callable(getattr(cls, "reset", None)):
        raise ValueError(f"{label}: the environment it returns ({cls.__name__}) has no reset method; TRL's "
                         f"environments define reset(**row) returning the text added to the prompt, or None")
    methods = environment_tools(instance)
    try:
        schemas = tool_schemas(methods)
    except ToolSchemaError as e:
        raise ValueError(f"{label} ({cls.__name__}): {e}") from None
    return EnvironmentInfo(cls.__name__, tuple(schemas), tuple(tool_name(m) for m in methods),
                           callable(getattr(cls, "get_reward", None)))


def parse_call(tool_call: Any) -> tuple[str, dict | None, str | None]:
    """(name, arguments, why they are unusable) of one call as transformers parses it:
    ``{"type": "function", "function": {"name": str, "arguments": dict | JSON str}}``."""
    if not isinstance(tool_call, dict):
        return "unknown", None, f"a tool call must be a dict, got {short_repr(tool_call)}"
    if tool_call.get("type", "function") != "function":
        return str(tool_call.get("name", "unknown")), None, f"Unsupported tool call type: {tool_call['type']}"
    function = tool_call.get("function", tool_call)
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        return "unknown", None, f"the tool call names no function: {short_repr(tool_call)}"
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):  # some templates' parsers leave the JSON text
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError as e:
            return name, None, f"arguments are not valid JSON ({e})"
    if not isinstance(arguments, dict):
        return name, None, f"arguments must be a JSON object, got {short_repr(arguments)}"
    return name, arguments, None


class Episodes:
    """The environments and tool tables of the episodes one process runs (see the module docstring).

    ``tools``: the standalone tools, callable in every episode. ``factories``: the environments
    (None: tools only). Every method returns a result and never raises, except that a
    ``BaseException`` (KeyboardInterrupt, SystemExit from a tool) propagates in the worker, which
    then dies and is counted as crashed.
    """

    def __init__(self, tools: list[Callable], factories: Factories | None, max_output_chars: int) -> None:
        self.tools = {tool_name(fn): fn for fn in tools}
        self.factories = factories or {}
        self.max_output_chars = max_output_chars
        self.pool: dict[str | None, list[Any]] = {}  # idle instances per environment
        self.active: dict[int, tuple[str | None, Any]] = {}  # episode -> (environment, instance) of this batch
        self.tables: dict[int, dict[str, Callable]] = {}  # episode -> its tools by name
        self.batch: int | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # one per process: an env's async state stays on it

    # -------------------------------------------------------------- environments

    def probe(self) -> dict[str | None, EnvironmentInfo] | str:
        """Build one instance of each environment (it seeds the pool) and describe it; or the
        error text when a factory raises or its environment is unusable."""
        found = {}
        for name, factory in self.factories.items():
            label = "environment_factory" if name is None else f"environment_factory[{name!r}]"
            try:
                instance = factory()
            except Exception as e:
                return f"{label} raised {short_repr(e)}{where(e)}"
            try:
                found[name] = describe(name, instance)
            except ValueError as e:
                return str(e)
            self.pool.setdefault(name, []).append(instance)
        return found

    def start(self, batch: int, episode: int, row: dict, name: str | None) -> tuple[str | None, str | None]:
        """Reset an instance of environment ``name`` for ``episode`` of ``batch`` (a new batch first
        returns every instance to the pool) -> (observation, error)."""
        if batch != self.batch:
            self.release()
            self.batch = batch
        self.tables[episode] = dict(self.tools)
        if name is None and not self.factories:
            return None, None
        pool = self.pool.setdefault(name, [])
        try:
            instance = pool.pop() if pool else self.factories[name]()
        except Exception as e:
            return None, f"environment_factory raised {short_repr(e)}{where(e)}"
        self.active[episode] = (name, instance)
        try:
            observation = self.settle(instance.reset(**reset_arguments(row, name)))
        except Exception as e:
            return None, f"reset() raised {short_repr(e)}{where(e)}"
        if observation is not None and not isinstance(observation, str):
            return None, f"reset() returned a {type(observation).__name__}; it must return a str or None"
        self.tables[episode].update({tool_name(m): m for m in environment_tools(instance)})
        return observation, None

    def release(self) -> None:
        """Every active instance back to its pool: the batch is over."""
        for name, instance in self.active.values():
            self.pool.setdefault(name, []).append(instance)
        self.active.clear()
        self.tables.clear()

    def forget(self, episode: int) -> None:
        """Drop ``episode``'s instance for good: a call on it was abandoned mid-way (in-process
        timeout), so its state is unknown and it must never be reset for another rollout."""
        self.active.pop(episode, None)
        self.tables.pop(episode, None)

    def reward(self, episode: int) -> tuple[float | None, str | None]:
        """(``get_reward()`` of ``episode``'s environment, None) or (None, why it failed)."""
        if episode not in self.active:
            return None, "the episode has no environment (its reset failed or it was lost)"
        try:
            value = self.settle(self.active[episode][1].get_reward())
        except MemoryError as e:
            return None, f"get_reward() ran out of memory{where(e)}"
        except Exception as e:
            return None, f"get_reward() raised {short_repr(e)}{where(e)}"
        number = as_float(value)
        if number is None:
            return None, f"get_reward() returned {short_repr(value)}, not a finite number or None"
        return (None if value is None else number), None

    # -------------------------------------------------------------- calls

    def call(self, episode: int, tool_call: Any) -> ToolResult:
        """Run one tool call of ``episode``; the result's content is cut at ``max_output_chars``."""
        name, arguments, bad = parse_call(tool_call)
        if bad is not None:
            return ToolResult(name, error_content(bad), True, "bad_arguments")
        fn = self.tables.get(episode, self.tools).get(name)
        if fn is None:
            return ToolResult(name, error_content(f"Tool {name} not found."), True, "unknown_tool")
        try:
            inspect.signature(fn).bind(**arguments)
        except TypeError as e:  # before the call: a TypeError from inside the tool is the tool's
            return ToolResult(name, error_content(f"bad arguments for {name}: {e}"), True, "bad_arguments")
        except ValueError:
            pass  # no signature to check (a builtin): the call tells
        try:
            content = str(self.settle(fn(**arguments)))
        except MemoryError:
            return ToolResult(name, error_content("ran out of memory (MemoryError)"), True, "memory")
        except Exception as e:
            return ToolResult(name, error_content(str(e)), True, "raised")
        except SystemExit as e:  # the tool's sys.exit: its failure, not its worker's end (other episodes live there)
            return ToolResult(name, error_content(f"called sys.exit({e.code!r})"), True, "raised")
        if len(content) > self.max_output_chars:
            return ToolResult(name, content[:self.max_output_chars], False, truncated=True)
        return ToolResult(name, content, False)

    def settle(self, value: Any) -> Any:
        """``value``, or what it resolves to when awaitable (async tools, reset, get_reward), on
        this process's event loop."""
        if not inspect.isawaitable(value):
            return value
        if self.loop is None or self.loop.is_closed():
            self.loop = asyncio.new_event_loop()
        return self.loop.run_until_complete(_awaited(value))

    def new_loop(self) -> None:
        """Forget the event loop (in-process: a timed-out thread may still be running it)."""
        self.loop = None


async def _awaited(awaitable: Any) -> Any:
    return await awaitable

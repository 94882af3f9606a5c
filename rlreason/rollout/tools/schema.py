"""Tool functions -> the JSON schemas a chat template renders (``apply_chat_template(tools=...)``).

transformers' ``get_json_schema`` reads a function's name, type hints and Google-style docstring,
as TRL does; sync and ``async def`` functions alike, and bound methods of an environment (``self``
is not a parameter of a bound method, so it never reaches the schema). What it cannot read becomes
a :class:`ToolSchemaError` naming the tool and the fix, at start-up rather than mid-run.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from transformers.utils import get_json_schema


class ToolSchemaError(ValueError):
    """A tool whose schema cannot be built; the message names the tool."""


def tool_name(fn: Callable) -> str:
    """The name the model calls ``fn`` by: its ``__name__`` (a bound method: the method's name)."""
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise ToolSchemaError(f"tool {fn!r}: a tool must be a function or method with a name (got a "
                              f"{type(fn).__name__}); wrap it in a def with a docstring and type hints")
    return name


def tool_schemas(functions: list[Callable]) -> list[dict]:
    """One JSON schema per function, in order: ``{"type": "function", "function": {"name",
    "description", "parameters", ...}}``. Raises :class:`ToolSchemaError` for a non-callable, a
    nameless callable, two tools of one name, or a docstring / type hints transformers cannot read."""
    schemas, seen = [], set()
    for fn in functions:
        if not callable(fn):
            raise ToolSchemaError(f"tools: {fn!r} is a {type(fn).__name__}, not a function")
        name = tool_name(fn)
        if name in seen:  # the model calls by name: a second tool of that name could never be reached
            raise ToolSchemaError(f"tool {name!r}: two tools have this name; rename one")
        seen.add(name)
        if not (inspect.isfunction(fn) or inspect.ismethod(fn)):
            raise ToolSchemaError(f"tool {name!r}: a {type(fn).__name__} object; tools must be functions or methods "
                                  f"(transformers reads their docstring and type hints)")
        try:
            schemas.append(get_json_schema(fn))
        except Exception as e:  # DocstringParsingException, TypeHintParsingException, ...
            raise ToolSchemaError(
                f"tool {name!r}: {e}. A tool needs a Google-style docstring (a description, then 'Args:' with one "
                f"line per parameter) and a type hint on every parameter") from e
    return schemas

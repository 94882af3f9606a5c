"""The reward-function contract, the built-in rewards, and resolving reward specs to callables.

The contract::

    def my_reward(prompts: list, completions: list, **columns) -> list[float | None]: ...

A reward is called with keyword arguments only. ``prompts`` and ``completions`` have one
entry per completion (completions are strings or conversational message lists; use
:func:`completion_text`). Every dataset column other than the prompt arrives in ``columns``
as a list of the same length, so a reward names the columns it needs (``answer``) and takes
``**kwargs`` for the rest. It returns one value per completion; ``None`` means the reward
does not apply to that completion (it is left out of the weighted sum, not scored 0).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._text import completion_text
from .format import format_reward, tag_count_reward
from .math import accuracy_reward

RewardFunc = Callable[..., list[float | None]]

BUILTIN: dict[str, RewardFunc] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "tag_count": tag_count_reward,
}

# Modules loaded from files get distinct names, so two files both called rewards.py coexist.
_file_module_ids = itertools.count()

__all__ = [
    "BUILTIN",
    "RewardFunc",
    "RewardImportError",
    "RewardSpecError",
    "completion_text",
    "resolve",
    "reward_name",
]


class RewardSpecError(ValueError):
    """A reward spec that does not name a usable reward function."""


class RewardImportError(RewardSpecError, ImportError):
    """A reward spec whose module or file cannot be found or imported.

    Also a ``ValueError``, so callers can catch every bad spec with one ``except``.
    """


def resolve(spec: str | Callable) -> RewardFunc:
    """The reward function a spec names.

    ``spec`` is a callable (returned as is), a builtin name (see :data:`BUILTIN`),
    ``"pkg.module:function"``, or ``"path/to/file.py:function"``. The part after the colon
    may be dotted (``"module:Class.method"``). Raises :class:`RewardSpecError` or
    :class:`RewardImportError`, naming the spec, when it cannot be resolved.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise RewardSpecError(f"reward spec must be a string or a callable, got {type(spec).__name__}: {spec!r}")
    if ":" not in spec:
        return _builtin(spec)
    # rsplit, so a Windows drive letter ("C:\\r.py:fn") stays in the path.
    target, attr = (part.strip() for part in spec.rsplit(":", 1))
    if not target or not attr:
        raise RewardSpecError(f"reward spec {spec!r}: expected 'module:function' or 'file.py:function'")
    module = _load_file(target, spec) if _is_path(target) else _import_module(target, spec)
    return _get_callable(module, attr, spec)


def _builtin(name: str) -> RewardFunc:
    try:
        return BUILTIN[name]
    except KeyError:
        known = ", ".join(sorted(BUILTIN))
        raise RewardSpecError(
            f"unknown reward {name!r}; builtin rewards are: {known} "
            "(or give 'module:function' or 'path/to/file.py:function')"
        ) from None


def _is_path(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _import_module(name: str, spec: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        # Tell "the module does not exist" from "it exists but imports something missing".
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            raise RewardImportError(f"reward spec {spec!r}: module {name!r} not found") from e
        raise RewardImportError(f"reward spec {spec!r}: importing module {name!r} failed: {e}") from e
    except Exception as e:
        raise RewardImportError(f"reward spec {spec!r}: importing module {name!r} failed: {e!r}") from e


def _load_file(path_str: str, spec: str) -> Any:
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise RewardImportError(f"reward spec {spec!r}: file {str(path)!r} not found")
    module_name = f"rlreason_reward_file_{next(_file_module_ids)}_{_identifier(path.stem)}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise RewardImportError(f"reward spec {spec!r}: cannot load {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    # Registered before running it, as a normal import would be: dataclasses and pickling look it up.
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise RewardImportError(f"reward spec {spec!r}: executing {str(path)!r} failed: {e!r}") from e
    except BaseException:  # KeyboardInterrupt, SystemExit: pass through, but leave no half-run module
        del sys.modules[module_name]
        raise
    return module


def _identifier(stem: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in stem)


def _get_callable(module: Any, attr: str, spec: str) -> RewardFunc:
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            where = getattr(module, "__file__", None) or module.__name__
            raise RewardSpecError(f"reward spec {spec!r}: {where!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise RewardSpecError(f"reward spec {spec!r}: {attr!r} is a {type(obj).__name__}, not callable")
    return obj


def reward_name(fn: Callable) -> str:
    """A reward's display name: its ``__name__``, else (callable objects) its class name.

    A ``functools.partial`` is named after the function it wraps.
    """
    if isinstance(fn, functools.partial):
        return reward_name(fn.func)
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) and name else type(fn).__name__

"""The reward-function contract, the built-in rewards, and resolving reward specs to callables.

The contract::

    def my_reward(prompts: list, completions: list, **columns) -> list[float | None]: ...

A reward is called with keyword arguments only. ``prompts`` and ``completions`` have one
entry per completion (completions are strings or conversational message lists; use
:func:`completion_text`). Every dataset column other than the prompt arrives in ``columns``
as a list of the same length, so a reward names the columns it needs (``answer``) and takes
``**kwargs`` for the rest. It returns one value per completion; ``None`` means the reward
does not apply to that completion (it is left out of the weighted sum, not scored 0).

:func:`build_rewards` turns a config's ``reward_funcs`` entries (names, ``module:function``,
``file.py:function``, or ``{"name", "weight", "kwargs"}`` mappings) into configured callables
and weights, checking every name, argument and signature at start-up. See docs/rewards.md.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import inspect
import itertools
import math
import numbers
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import length as _length
from ._call import TRAINER_ARGS
from ._text import completion_text
from .code import code_tests
from .format import format_lenient_reward, format_reward, r1_format_reward, r1_tag_count_reward, tag_count_reward
from .length import CosineLengthReward, R1CosineReward, RepetitionPenaltyReward, SoftOverlongReward
from .math import accuracy_reward
from .model import RewardModel, RewardModelError, is_model_spec, is_reward_model, load_reward_model, model_name
from .trl_names import TRL_REWARDS

RewardFunc = Callable[..., list[float | None]]

# The rewards :func:`resolve` returns ready to call, as they were before configurable rewards.
# "format" and "tag_count" are open-r1's (newlines around the tags), so an open-r1 config means
# the same here; rlreason's inline forms are "think_answer_format" and "think_answer_tags".
BUILTIN: dict[str, RewardFunc] = {
    "accuracy": accuracy_reward,
    "format": r1_format_reward,
    "tag_count": r1_tag_count_reward,
}

# Every built-in name. A value is either ready to call (a function or an instance: config
# kwargs become a functools.partial) or a class (instantiated with the config kwargs).
REWARDS: dict[str, Callable] = {
    **BUILTIN,
    "think_answer_format": format_reward,
    "think_answer_tags": tag_count_reward,
    "format_lenient": format_lenient_reward,
    "soft_overlong": SoftOverlongReward,
    "cosine_length": CosineLengthReward,
    "cosine": R1CosineReward,  # open-r1's name and arguments
    "repetition_penalty": RepetitionPenaltyReward,
    "code_tests": code_tests,  # programs run against tests in the sandbox (docs/code.md)
    **TRL_REWARDS,  # `trl grpo`'s names (accuracy_reward, think_format_reward, ...), with TRL's meaning
}

# Keys of a dict entry in ``reward_funcs``.
ENTRY_KEYS = ("name", "weight", "kwargs", "chunk_size")
# What a reward opts in to chunked calls with (rewards/runner.py): an int, or "auto".
CHUNK_ATTRIBUTE = "rlreason_chunk_size"

# Modules loaded from files get distinct names, so two files both called rewards.py coexist.
_file_module_ids = itertools.count()

__all__ = [
    "BUILTIN",
    "ENTRY_KEYS",
    "REWARDS",
    "RewardFunc",
    "RewardImportError",
    "RewardSignatureError",
    "RewardSpecError",
    "build_rewards",
    "check_signature",
    "completion_text",
    "load_object",
    "resolve",
    "reward_name",
]


class RewardSpecError(ValueError):
    """A reward spec that does not name a usable reward function."""


class RewardImportError(RewardSpecError, ImportError):
    """A reward spec whose module or file cannot be found or imported.

    Also a ``ValueError``, so callers can catch every bad spec with one ``except``.
    """


class RewardSignatureError(RewardSpecError):
    """A reward whose parameters do not fit the calling convention or the dataset's columns."""


# --------------------------------------------------------------------------- resolving one spec


def resolve(spec: str | Callable) -> RewardFunc:
    """The reward function a spec names, ready to call.

    ``spec`` is a callable (returned as is), a builtin name (see :data:`REWARDS`; TRL's
    ``accuracy_reward``, ... included), ``"pkg.module:function"``, TRL's ``"pkg.module.function"``,
    or ``"path/to/file.py:function"``. The part after the colon
    may be dotted (``"module:Class.method"``). A class (a configurable builtin such as
    ``repetition_penalty``, or ``"module:Class"``) is instantiated without arguments; use
    :func:`build_rewards` to pass arguments. Raises :class:`RewardSpecError` or
    :class:`RewardImportError`, naming the spec, when it cannot be resolved.
    """
    if callable(spec) and not inspect.isclass(spec):
        return spec
    return _materialize(_target(spec), {}, repr(spec), named=False)  # what the spec names, never called


def load_object(spec: str, label: str) -> Any:
    """What ``"pkg.module:name"`` or ``"path/to/file.py:name"`` names, not called: the loader of
    reward specs, for the other plug-ins a config names the same way (tools, environment classes,
    rollout functions). Errors are :class:`RewardSpecError` naming ``label`` (e.g. "config key
    'tools'") and the spec."""
    if not isinstance(spec, str) or ":" not in spec.strip(":"):
        raise RewardSpecError(f"{label}: {spec!r} is not a spec: write 'pkg.module:name' or 'path/file.py:name'")
    try:
        return _target(spec)
    except RewardSpecError as e:
        raise type(e)(f"{label}: {str(e).replace('reward spec ', 'spec ', 1)}") from e


def _target(spec: str | Callable) -> Callable:
    """What a spec names: a function, a callable instance, or a class still to instantiate."""
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise RewardSpecError(f"reward spec must be a string or a callable, got {type(spec).__name__}: {spec!r}")
    if ":" not in spec:
        if spec not in REWARDS and "." in spec.strip(".") and not is_path_spec(spec):
            return _dotted(spec)
        return _builtin(spec)
    # rsplit, so a Windows drive letter ("C:\\r.py:fn") stays in the path.
    target, attr = (part.strip() for part in spec.rsplit(":", 1))
    if not target or not attr:
        raise RewardSpecError(f"reward spec {spec!r}: expected 'module:function' or 'file.py:function'")
    module = _load_file(target, spec) if is_path_spec(target) else _import_module(target, spec)
    return _get_callable(module, attr, spec)


def _dotted(spec: str) -> Callable:
    """TRL's form, ``"my_lib.rewards.custom_reward"``: the module up to the last dot, imported as
    `trl grpo` imports it (the working directory first on sys.path), and its attribute."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module, attr = spec.rsplit(".", 1)
    return _get_callable(_import_module(module, spec), attr, spec)


def _builtin(name: str) -> Callable:
    try:
        return REWARDS[name]
    except KeyError:
        known = ", ".join(sorted(REWARDS))
        close = difflib.get_close_matches(name, REWARDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RewardSpecError(
            f"unknown reward {name!r}{hint}; builtin rewards are: {known} "
            "(or give 'module:function' or 'path/to/file.py:function')"
        ) from None


def _materialize(target: Callable, kwargs: dict[str, Any], label: str, named: bool = True) -> RewardFunc:
    """``target`` configured with ``kwargs``: a class is instantiated, anything else is wrapped in a
    ``functools.partial`` (named like the function, so logs and TRL see the same name)."""
    if target.__module__ == _length.__name__ and isinstance(kwargs.get("accuracy"), str):
        # a length reward's correctness reward, named in the config: the registry resolves it, so the
        # length rewards import no registry (no cycle)
        kwargs = {**kwargs, "accuracy": resolve(kwargs["accuracy"])}
    if inspect.isclass(target):
        return _instantiate(target, kwargs, label)
    if named and _is_factory(target):  # a function handed over directly is meant as the reward itself
        return _call_factory(target, kwargs, label)
    if not kwargs:
        return target
    if any(target is v for v in REWARDS.values()) and not inspect.isroutine(target):
        # A built-in that is a ready-made instance of a configurable class (accuracy, format):
        # its kwargs configure a new instance of that class rather than becoming call arguments.
        return _instantiate(type(target), kwargs, label)
    _check_bound_kwargs(target, kwargs, label)
    partial = functools.partial(target, **kwargs)
    partial.__name__ = reward_name(target)  # type: ignore[attr-defined]  # TRL reads __name__
    return partial


def _is_factory(target: Callable) -> bool:
    """Whether ``target`` makes rewards rather than being one (TRL's ``get_soft_overlong_punishment``,
    open-r1's ``get_cosine_scaled_reward``): a function that can take neither ``prompts`` nor
    ``completions`` nor ``**kwargs``, so it could never be called as a reward."""
    if not inspect.isfunction(target):
        return False
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    return not any(p.kind is p.VAR_KEYWORD or p.name in ("prompts", "completions") for p in params)


def _call_factory(factory: Callable, kwargs: dict[str, Any], label: str) -> RewardFunc:
    """The reward ``factory(**kwargs)`` returns, with its arguments checked first."""
    signature = inspect.signature(factory)
    _check_kwarg_names(signature, kwargs, label, reward_name(factory), allow_var_keyword=False)
    try:
        signature.bind(**kwargs)
    except TypeError as e:
        raise RewardSpecError(f"reward {label}: {e}; the factory {reward_name(factory)} takes "
                              f"{_describe(signature)} (give them under 'kwargs')") from None
    try:
        fn = factory(**kwargs)
    except Exception as e:
        raise RewardSpecError(f"reward {label}: the factory raised {e!r}") from e
    if not callable(fn):
        raise RewardSpecError(f"reward {label}: the factory returned a {type(fn).__name__}, not a reward function")
    return fn


def _instantiate(cls: type, kwargs: dict[str, Any], label: str) -> RewardFunc:
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        _check_kwarg_names(signature, kwargs, label, cls.__name__, allow_var_keyword=True)
        try:
            signature.bind(**kwargs)
        except TypeError as e:
            raise RewardSpecError(f"reward {label}: {e}; {cls.__name__} takes {_describe(signature)}") from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # the constructor's own argument checks
        raise RewardSpecError(f"reward {label}: {e}") from e


def _check_bound_kwargs(fn: Callable, kwargs: dict[str, Any], label: str) -> None:
    """Config kwargs must name real parameters: ones that would only land in ``**kwargs`` are typos."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # no signature to check against (a C function): the first call will tell
    _check_kwarg_names(signature, kwargs, label, reward_name(fn), allow_var_keyword=False)


def _check_kwarg_names(
    signature: inspect.Signature, kwargs: dict[str, Any], label: str, owner: str, *, allow_var_keyword: bool
) -> None:
    """Name the first kwarg that is no parameter of ``signature`` (with a did-you-mean).

    A constructor's ``**kwargs`` may accept anything (``allow_var_keyword``); a reward's
    ``**kwargs`` is where the columns go, so a config kwarg landing there is a typo.
    """
    params = signature.parameters
    if allow_var_keyword and any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in named:
            close = difflib.get_close_matches(key, named, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RewardSpecError(
                f"reward {label}: no parameter named {key!r}{hint}; {owner} takes {_describe(signature)}"
            )


def _describe(signature: inspect.Signature) -> str:
    params = [str(p) for p in signature.parameters.values()]
    return f"({', '.join(params)})" if params else "no arguments"


def is_path_spec(target: str) -> bool:
    """Whether a spec's target (before ``:fn``) names a file (``x.py``, ``dir/x``), not a module."""
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


# --------------------------------------------------------------------------- checking a signature


def check_signature(fn: Callable, columns: set[str] | None = None) -> None:
    """Raise :class:`RewardSignatureError` unless ``fn`` can be called as a reward.

    Rewards are called ``fn(prompts=..., completions=..., **columns)`` (TRL also passes
    ``completion_ids`` and ``trainer_state``), so ``fn`` must accept ``prompts`` and
    ``completions`` by keyword, or have ``**kwargs``. With ``columns`` (the dataset's columns
    other than the prompt) it must also: get every parameter it requires from a column (the
    error names the missing column), and, without ``**kwargs``, name every column, since each
    one is passed to it. A callable without an inspectable signature is accepted unchecked.
    """
    name = reward_name(fn)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    by_keyword = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for p in params:
        if p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
            raise RewardSignatureError(
                f"reward {name!r}: parameter {p.name!r} is positional-only, "
                "but rewards are called with keyword arguments"
            )
    for needed in ("prompts", "completions"):
        if needed not in by_keyword and not var_kw:
            raise RewardSignatureError(
                f"reward {name!r} must accept the keyword argument {needed!r} (or **kwargs): rewards are called as "
                "fn(prompts=..., completions=..., **columns), as in TRL"
            )
    if columns is None:
        return
    check_columns = getattr(fn, "check_columns", None)  # a reward that finds its columns by name (accuracy)
    if callable(check_columns):
        try:
            check_columns(set(columns))
        except ValueError as e:
            raise RewardSignatureError(
                f"reward {name!r} {e}, which the dataset does not have; its columns are: "
                f"{', '.join(sorted(columns)) or '(none)'} (rename one with column_map)") from None
    available = set(columns) | {"prompts", "completions", *TRAINER_ARGS}  # TRL's, passed to every call
    missing = [p.name for p in params if p.name in by_keyword and p.default is p.empty and p.name not in available]
    if missing:
        raise RewardSignatureError(
            f"reward {name!r} needs the column {', '.join(map(repr, missing))}, which the dataset does not have; "
            f"its columns are: {', '.join(sorted(columns)) or '(none)'} (rename one with column_map)"
        )
    unnamed = sorted(set(columns) - by_keyword)
    if unnamed and not var_kw:
        raise RewardSignatureError(
            f"reward {name!r} has no **kwargs and no parameter for the column(s) {', '.join(map(repr, unnamed))}, "
            "which every call passes; add **kwargs to its parameters"
        )


# --------------------------------------------------------------------------- building the reward list


def build_rewards(
    entries: list[str | dict | Callable],
    weights: list[float] | None = None,
    *,
    columns: set[str] | None = None,
    processing_classes: list[Any] | None = None,
    trust_remote_code: bool = False,
) -> tuple[list[RewardFunc], list[float]]:
    """The reward functions and weights a config's ``reward_funcs`` / ``reward_weights`` describe.

    Each entry is a spec string (a builtin name, ``"pkg.module:function"`` or
    ``"path/to/file.py:function"``), a callable, or a dict
    ``{"name": spec, "weight": 0.5, "kwargs": {...}}`` (``weight`` and ``kwargs`` optional).
    A class (a configurable builtin such as ``soft_overlong``, or ``"module:Class"``) is
    instantiated with ``kwargs``; a factory (a function that takes neither ``prompts`` nor
    ``completions`` nor ``**kwargs``, e.g. ``trl.rewards:get_soft_overlong_punishment``) is
    called with ``kwargs`` and the reward it returns is used; a reward function or callable
    instance with ``kwargs`` becomes a ``functools.partial`` keeping the function's name.
    Weights come from ``weights`` (the config's ``reward_weights``) or from the entries, not
    both; the default is 1.0.

    Every function's signature is checked (:func:`check_signature`, against ``columns`` when
    given), so a wrong name, argument or signature fails here, at start-up, with a
    :class:`RewardSpecError` that names the entry, rather than in the middle of a run.

    A reward model (a sequence-classification model object, a local model folder or a hub id
    ``org/name``) becomes a :class:`~.model.RewardModel`, as TRL takes one in ``reward_funcs``;
    its tokenizer is ``processing_classes[i]`` (TRL's ``reward_processing_classes``) or the one
    saved with the model.
    """
    if not isinstance(entries, list | tuple) or not entries:
        raise RewardSpecError(f"reward_funcs must be a non-empty list, got {entries!r}")
    if weights is not None:
        if not isinstance(weights, list | tuple) or len(weights) != len(entries):
            raise RewardSpecError(
                f"reward_weights {weights!r} must be a list with one weight per reward_funcs entry ({len(entries)})"
            )
        weights = [_check_weight(f"reward_weights[{i}]", w) for i, w in enumerate(weights)]
    funcs: list[RewardFunc] = []
    out_weights: list[float] = []
    for i, entry in enumerate(entries):
        try:
            spec, weight, kwargs = _parse_entry(entry)
            if weights is not None and weight is not None:
                raise RewardSpecError("has its own weight but reward_weights is also given; use one or the other")
            if is_reward_model(spec) or is_model_spec(spec):
                funcs.append(_reward_model(spec, kwargs, processing_classes[i] if processing_classes else None,
                                           trust_remote_code))
                out_weights.append(weights[i] if weights is not None else (1.0 if weight is None else weight))
                continue
            fn = _materialize(_target(spec), kwargs, repr(spec) if isinstance(spec, str) else reward_name(spec),
                              named=isinstance(spec, str))
            if isinstance(entry, dict) and entry.get("chunk_size") is not None:
                fn = _chunked(fn, entry["chunk_size"])
            check_signature(fn, columns)
        except RewardSpecError as e:
            raise type(e)(f"reward_funcs[{i}]: {e}") from e
        funcs.append(fn)
        out_weights.append(weights[i] if weights is not None else (1.0 if weight is None else weight))
    return funcs, out_weights


def _reward_model(spec: Any, kwargs: dict[str, Any], tokenizer: Any, trust_remote_code: bool) -> RewardModel:
    """A reward model entry, loaded (a path or hub id) or wrapped (an object), with its tokenizer."""
    label = repr(spec) if isinstance(spec, str) else f"reward model {model_name(spec)!r}"
    if kwargs:
        raise RewardSpecError(f"{label}: a reward model takes no kwargs (got {sorted(kwargs)})")
    try:
        return load_reward_model(spec, tokenizer, label, trust_remote_code=trust_remote_code)
    except RewardModelError as e:
        raise RewardSpecError(str(e)) from e


def _parse_entry(entry: Any) -> tuple[str | Callable, float | None, dict[str, Any]]:
    """(spec, weight or None, kwargs) of one ``reward_funcs`` entry."""
    if isinstance(entry, str) or callable(entry):
        return entry, None, {}
    if not isinstance(entry, dict):
        raise RewardSpecError(f"entry must be a spec string or a mapping with keys {ENTRY_KEYS}, got {entry!r}")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise RewardSpecError(
            f"unknown key(s) {unknown} in {entry!r}; an entry's keys are {ENTRY_KEYS} "
            "(put the reward's own arguments under 'kwargs')"
        )
    if "name" not in entry:
        raise RewardSpecError(f"{entry!r} has no 'name'")
    kwargs = entry.get("kwargs") or {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise RewardSpecError(f"'kwargs' must be a mapping of argument names to values, got {kwargs!r}")
    weight = entry.get("weight")
    return entry["name"], (None if weight is None else _check_weight("weight", weight)), dict(kwargs)


def _chunked(fn: Callable, chunk_size: Any) -> RewardFunc:
    """``fn`` opted in to chunked calls: a ``functools.partial`` carrying the chunk size (the
    function itself, maybe a shared built-in, is not changed), logged under ``fn``'s name."""
    if chunk_size != "auto" and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise RewardSpecError(f"chunk_size must be a positive int or 'auto', got {chunk_size!r}")
    wrapped = functools.partial(fn)
    wrapped.__name__ = reward_name(fn)  # type: ignore[attr-defined]
    setattr(wrapped, CHUNK_ATTRIBUTE, chunk_size)
    return wrapped


def _check_weight(label: str, weight: Any) -> float:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
        raise RewardSpecError(f"{label} must be a finite number, got {weight!r}")
    return float(weight)

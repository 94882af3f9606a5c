"""Named evaluation protocols: the settings a published number was made with, by name
(``python -m rlreason.eval --protocol open-r1``), or a YAML file of the user's.

A protocol is a set of :class:`~rlreason.eval.core.EvalProtocol` field values; the fields it leaves
out keep the CLI's defaults, and flags given explicitly override it (the CLI's ``build_protocol``).

- ``default``: the CLI as it always ran: greedy for ``--n 1``, else temperature 0.6 and top_p 0.95;
  1,024 new tokens; each suite's own template. It sets nothing.
- ``greedy``: one greedy answer per problem, 1,024 new tokens, the suite's own template.
- ``open-r1``: what open-r1's README runs for its MATH-500 numbers::

      lighteval vllm "model_name=$MODEL,dtype=bfloat16,max_model_length=32768,gpu_memory_utilization=0.8,
          generation_parameters={max_new_tokens:32768,temperature:0.6,top_p:0.95}" \\
          "lighteval|math_500|0|0" --use-chat-template

  temperature 0.6, top_p 0.95, no top-k, 32,768 new tokens (capped at the model's context minus the
  prompt, as vLLM stops a sequence at ``max_model_length``), lighteval's math prompt
  (``lighteval_math``), the chat template required (``--use-chat-template``; a tokenizer without
  one is an error, as in lighteval), no system prompt; n samples per problem with pass@1 their
  mean (n 1 as ``lighteval|math_500|0|0``'s ``pass@k:k=1&n=1``; R1's AIME protocol is ``--n 64``).

A YAML protocol holds any of :data:`FIELDS`, plus ``name`` (default: the file's stem),
``description`` and ``based_on`` (a named protocol it starts from)::

    # my_protocol.yaml -- python -m rlreason.eval --protocol my_protocol.yaml ...
    based_on: open-r1
    description: open-r1's settings, 4 samples, a shorter budget
    n: 4
    max_tokens: 4096
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

PROTOCOLS: dict[str, dict[str, Any]] = {
    "default": {"description": "rlreason's default: greedy for n=1, else temperature 0.6 and top_p 0.95; "
                               "1024 new tokens; each suite's own template"},
    "greedy": {"description": "one greedy answer per problem, 1024 new tokens, each suite's own template",
               "n": 1, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "max_tokens": 1024},
    "open-r1": {"description": "open-r1's README: lighteval vllm, generation_parameters={max_new_tokens:32768,"
                               "temperature:0.6,top_p:0.95}, lighteval|math_500|0|0, --use-chat-template",
                "n": 1, "temperature": 0.6, "top_p": 0.95, "top_k": 0, "max_tokens": 32768,
                "template": "lighteval_math", "chat_template": "on"},
}

# The EvalProtocol fields a protocol may set (limit is the run's, not the protocol's; extract_rules stays
# the verifier's default so numbers stay comparable; extra is free-form notes).
FIELDS: tuple[str, ...] = ("n", "temperature", "top_p", "top_k", "max_tokens", "seed", "ks", "template",
                           "user_template", "system_prompt", "chat_template", "extract_fallback")
_META = ("name", "description", "based_on")


def resolve_protocol(spec: str) -> dict[str, Any]:
    """The EvalProtocol field values of ``spec``, a protocol's name (:data:`PROTOCOLS`) or a YAML
    file's path, with ``name`` and ``description`` (kept by the caller in ``extra``). Raises
    ValueError (one line, naming the file and the key) for an unknown name, an unknown key or a bad
    value; OSError / yaml.YAMLError for a file that cannot be read."""
    if spec in PROTOCOLS:
        return {"name": spec, **PROTOCOLS[spec]}
    path = Path(spec)
    if path.suffix.lower() not in (".yaml", ".yml") and not path.exists():
        raise ValueError(f"--protocol {spec!r}: no such protocol; the named ones are {', '.join(PROTOCOLS)}, "
                         f"or give a .yaml file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"--protocol {spec}: not valid YAML ({str(e).splitlines()[0]})") from None
    except OSError as e:
        raise OSError(f"--protocol {spec}: cannot read it ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--protocol {spec}: expected a mapping of protocol settings, got {type(data).__name__}")
    unknown = [k for k in data if k not in FIELDS + _META]
    if unknown:
        raise ValueError(f"--protocol {spec}: unknown key {unknown[0]!r}; the keys are {', '.join(FIELDS + _META)}")
    base = data.pop("based_on", None)
    if base is not None and base not in PROTOCOLS:
        raise ValueError(f"--protocol {spec}: key 'based_on': {base!r} is not a named protocol "
                         f"({', '.join(PROTOCOLS)})")
    values = {**(PROTOCOLS[base] if base else {}), "name": path.stem, **data}
    if base:
        values["based_on"] = base
    check_values(values, f"--protocol {spec}")
    return values


def check_values(values: dict[str, Any], source: str) -> None:
    """Each value checked alone, so an error names its key (EvalProtocol checks them together later)."""
    from rlreason.eval.core import EvalProtocol

    types = {"n": int, "top_k": int, "max_tokens": int, "seed": int, "temperature": (int, float),
             "top_p": (int, float), "template": str, "user_template": str, "system_prompt": str,
             "chat_template": str, "extract_fallback": (str, list)}
    for key, value in values.items():
        if key in _META:
            if not isinstance(value, str):
                raise ValueError(f"{source}: key {key!r} must be a string, got {value!r}")
            continue
        want = types.get(key)
        if want is not None and value is not None and (isinstance(value, bool) or not isinstance(value, want)):
            kind = {int: "a whole number", str: "a string", (str, list): "a string or a list"}.get(want, "a number")
            raise ValueError(f"{source}: key {key!r} must be {kind}, got {value!r}")
        if key == "ks" and not (isinstance(value, list | tuple) and value
                                and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in value)):
            raise ValueError(f"{source}: key 'ks' must be a list of whole numbers >= 1, got {value!r}")
        try:
            EvalProtocol(**{key: tuple(value) if key == "ks" else value})
        except (ValueError, TypeError) as e:
            raise ValueError(f"{source}: key {key!r}: {e}") from None


def protocol_fields(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` restricted to EvalProtocol's fields (``ks`` as a tuple)."""
    from rlreason.eval.core import EvalProtocol

    names = {f.name for f in dataclasses.fields(EvalProtocol)}
    return {k: tuple(v) if k == "ks" else v for k, v in values.items() if k in names}

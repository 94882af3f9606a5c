"""Tool calls in, tool results out, in the chat template's own format.

Three pure functions over a tokenizer:

- ``parse_assistant``: one assistant turn's token ids -> TRL's conversational message
  (``{"role": "assistant", "content": str, "tool_calls": [...]?}``). With a tokenizer that has a
  ``response_template`` (the model repo ships one, or ``use_response_template`` sets TRL's for a
  template TRL knows) transformers' ``parse_response`` reads it; otherwise the Hermes/Qwen format
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` is read from the decoded text. A
  malformed call makes the whole turn plain text (TRL's fallback); a call to a tool the rollout
  does not have is still a call (the executor answers "unknown tool").
- ``tool_suffix_ids``: the tokens the template inserts after an assistant turn for the tool
  results, up to and including the next assistant header (TRL's ``_get_tool_suffix_ids``: a dummy
  conversation rendered with and without the tool messages, the difference taken).
- ``supports_tool_calling`` / ``check_tool_template``: whether the template renders a whole
  tool exchange (user -> assistant with tool_calls -> tool); the check fails at start-up naming
  the model.
"""

from __future__ import annotations

import json
import re
from typing import Any

# Hermes/Qwen tool-call blocks: Qwen2.5's and Qwen3's templates render a call as
# "<tool_call>\n{json}\n</tool_call>", several in a row for several calls.
_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
_OPEN = "<tool_call>"


def supports_tool_calling(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders a whole tool exchange: the call's name, its
    argument and the tool's answer all appear in the text (some templates drop ``tool_calls`` or
    tool messages silently; those cannot train with tools)."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    name, key, value, answer = "tool_name_7f3a", "tool_arg_key_5c1d", "tool_arg_val_9e2b", "tool_answer_3d8c"
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": "",
                 "tool_calls": [{"type": "function", "function": {"name": name, "arguments": {key: value}}}]},
                {"role": "tool", "name": name, "content": answer}]
    try:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception:  # noqa: BLE001 - a template that raises on these roles cannot render tools (jinja2's errors vary)
        return False
    return all(s in rendered for s in (name, key, value, answer))


def check_tool_template(tokenizer: Any, model: str | None = None) -> None:
    """Fail at start-up, naming the model, when its chat template cannot render a tool exchange."""
    if not supports_tool_calling(tokenizer):
        model = model or getattr(tokenizer, "name_or_path", None) or "the model"
        raise ValueError(
            f"the chat template of {model!r} cannot render tool calls (a conversation user -> assistant with "
            f"tool_calls -> tool loses the call or the result), so config keys 'tools' / 'environment_factory' "
            f"cannot be used with it: pick a tool-calling model (e.g. Qwen2.5/Qwen3) or set a chat template that "
            f"renders 'tool_calls' and 'tool' messages (tokenizer.chat_template)")


def use_response_template(tokenizer: Any) -> str:
    """Which parser ``parse_assistant`` will use for ``tokenizer``: "response_template" when it has
    one, or TRL (installed) knows its chat template and sets one (as TRL's GRPOTrainer does, on the
    tokenizer itself); otherwise "hermes". Called once at start-up."""
    if getattr(tokenizer, "response_template", None) is not None:
        return "response_template"
    try:  # trl is a dev dependency only: its table of known templates is a bonus, not a requirement
        from trl.chat_template_utils import add_response_schema
    except ImportError:
        return "hermes"
    try:
        add_response_schema(tokenizer)
    except ValueError:  # a template TRL does not know
        return "hermes"
    return "response_template" if getattr(tokenizer, "response_template", None) is not None else "hermes"


def parse_assistant(tokenizer: Any, ids: list[int], prefix_ids: list[int], schemas: list[dict] | None) -> dict:
    """One assistant turn as TRL's message: ``{"role": "assistant", "content": str}`` plus
    ``"tool_calls": [{"type": "function", "function": {"name": str, "arguments": dict | str}}]``
    when it calls tools.

    ``ids``: the turn's tokens (its end-of-turn token included); ``prefix_ids``: everything before
    it (the prompt and earlier turns; ``parse_response`` needs it for templates that pre-write part
    of the turn); ``schemas``: the rollout's tools (types the arguments on transformers >= 5.15)."""
    if getattr(tokenizer, "response_template", None) is not None:
        return _parse_with_template(tokenizer, ids, prefix_ids, schemas)
    return parse_hermes(tokenizer.decode(ids, skip_special_tokens=True))


def _parse_with_template(tokenizer: Any, ids: list[int], prefix_ids: list[int], schemas: list[dict] | None) -> dict:
    """transformers' ``parse_response``, normalised as TRL's ``parse_response`` does: content always a
    string, a trailing eos text removed, a call without a string name or a failing parse -> plain text."""
    try:
        parsed = tokenizer.parse_response(ids, prefix=prefix_ids, tools=schemas or None)
        if parsed is None:  # a turn cut so short that even its content is lost
            raise ValueError("nothing parsed")
        content = parsed.get("content")
        parsed["content"] = content.removesuffix(tokenizer.eos_token) if isinstance(content, str) and content else ""
        calls = parsed.get("tool_calls")
        if calls is not None:
            parsed["tool_calls"] = _checked_calls(calls)
            if not parsed["tool_calls"]:
                del parsed["tool_calls"]
    except (ValueError, TypeError):
        return {"role": "assistant", "content": tokenizer.decode(ids, skip_special_tokens=True)}
    return parsed


def _checked_calls(calls: Any) -> list[dict]:
    """``calls`` as TRL's ``{"type": "function", "function": {"name", "arguments"}}`` list; ValueError
    when one has no string name or its arguments are neither an object nor a string."""
    if not isinstance(calls, list):
        raise ValueError("tool_calls is not a list")
    out = []
    for call in calls:
        if not isinstance(call, dict):
            raise ValueError("a tool call is not an object")
        fn = call.get("function", call)  # the nested form, or a flat {"name", "arguments"}
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ValueError("a tool call has no name")
        args = fn.get("arguments")
        args = {} if args is None else args  # a call with no arguments (some templates omit them)
        if not isinstance(args, dict | str):
            raise ValueError("a tool call's arguments are neither an object nor a string")
        out.append({"type": "function", "function": {"name": fn["name"], "arguments": args}})
    return out


def parse_hermes(text: str) -> dict:
    """The Hermes/Qwen format: content, then ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
    blocks with only whitespace around and between them. Any block that is not such JSON, or text
    after the calls, makes the whole turn plain text (what the Qwen3 response schema TRL ships
    does): the model sees no tool answer and the exchange ends."""
    start = text.find(_OPEN)
    plain = {"role": "assistant", "content": text}
    if start < 0:
        return plain
    calls, pos = [], start
    for m in _CALL.finditer(text, start):
        if text[pos:m.start()].strip():
            return plain
        try:
            calls.append(json.loads(m.group(1)))
        except json.JSONDecodeError:
            return plain
        pos = m.end()
    if not calls or text[pos:].strip():
        return plain
    try:
        checked = _checked_calls(calls)
    except ValueError:
        return plain
    # Qwen's templates put a newline between the content and the first call: not the content's
    return {"role": "assistant", "content": text[:start].removesuffix("\n"), "tool_calls": checked}


def tool_suffix_ids(tokenizer: Any, tool_messages: list[dict]) -> list[int]:
    """The tokens the chat template inserts after an assistant turn that ended with its
    end-of-turn token (eos): the tool messages as the template renders them, up to and including
    the next assistant header (the generation prompt).

    A dummy exchange is rendered without and with ``tool_messages`` and the difference taken.
    Templates such as ChatML render "<|im_end|>\\n" after a turn, but the model's turn ends at
    <|im_end|>: the shorter rendering is cut after its last eos so the newline lands in the suffix
    (TRL's rule). The dummy call uses the real tool name: some templates derive the tool answer's
    header from it."""
    if not tool_messages:
        raise ValueError("tool_suffix_ids needs at least one tool message")
    call = {"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}
    dummy = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    before = tokenizer.apply_chat_template(dummy, add_generation_prompt=False, tokenize=True, return_dict=False)
    full = tokenizer.apply_chat_template(dummy + tool_messages, add_generation_prompt=True, tokenize=True,
                                         return_dict=False)
    eos = [i for i, t in enumerate(before) if t == tokenizer.eos_token_id]
    if eos:
        before = before[: eos[-1] + 1]
    if full[: len(before)] != before:
        raise ValueError(f"the chat template of {getattr(tokenizer, 'name_or_path', 'the model')!r} renders the "
                         f"assistant turn differently once tool messages follow it, so the tool results cannot be "
                         f"appended to the generated tokens")
    return full[len(before):]

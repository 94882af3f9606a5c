"""Turning a completion, plain or conversational, into the text a reward looks at."""

from __future__ import annotations

from typing import Any


def completion_text(completion: Any) -> str:
    """The text of one completion.

    Accepts what a trainer hands to rewards:

    - a plain string, returned unchanged;
    - a conversational completion: a list of messages ``[{"role": "assistant", "content": ...}]``
      (or a single message dict). The content of the *last* message is used, since with
      several turns the final answer is in the last one;
    - message content given as a list of parts (``[{"type": "text", "text": ...}]``), whose
      text parts are joined.

    Raises ``TypeError`` for anything else, so a malformed batch fails loudly instead of being
    scored as an empty string.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        if not completion:
            return ""
        last = completion[-1]
        if not isinstance(last, dict):
            raise TypeError(f"conversational completion must be a list of message dicts, got {type(last).__name__}")
        return _content_text(last.get("content"))
    raise TypeError(f"completion must be a string or a list of messages, got {type(completion).__name__}")


def _content_text(content: Any) -> str:
    """A message's content as text: a string, None (empty), or a list of typed parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Multimodal-style content: keep the text parts, ignore images and the like.
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    raise TypeError(f"message content must be a string or a list of parts, got {type(content).__name__}")

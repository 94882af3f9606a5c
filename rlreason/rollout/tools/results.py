"""What running a tool or starting an episode gives back (interface 2 of issue 32): plain
dataclasses, so they pickle quickly across the executor's pipes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Where tools run (config key tool_isolation): worker processes, or the trainer's own process (debugging)
Isolation = Literal["process", "none"]

# Why a call failed: the tool raised; it ran past the timeout (its worker was killed); it blew the
# memory cap; the model named no such tool; the arguments were not JSON / did not fit the signature;
# its worker died (os._exit, a segfault); the episode's environment died with an earlier call's worker.
FailReason = Literal["raised", "timeout", "memory", "unknown_tool", "bad_arguments", "crashed", "environment_lost"]


@dataclass
class ToolResult:
    name: str
    content: str  # what the model reads (TRL's {'error': '...'} text on failure)
    failed: bool  # raised, timed out, out of memory, unknown tool, bad arguments, crashed worker, lost environment
    reason: FailReason | None = None
    truncated: bool = False  # output cut at max_output_chars (in the worker: the rest never crosses the pipe)


@dataclass
class EpisodeStart:
    observation: str | None  # what reset() returned (None: nothing to add to the prompt)
    schemas: list[dict]  # the tools this rollout may call, for apply_chat_template(tools=...)
    error: str | None = None  # reset raised / hung / the environment could not be built: reward unknown


def error_content(message: str) -> str:
    """The text the model reads for a failed call: TRL's shape, ``str({"error": str(e)})``."""
    return str({"error": message})

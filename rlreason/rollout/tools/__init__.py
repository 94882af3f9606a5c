"""Tools and environments (TRL 1.16's ``tools``, ``environment_factory``): the schemas a chat
template renders (``schema``), the environments and tool tables (``environments``), running the
calls isolated (``executor``, over the processes of ``_workers``); the multi-turn loop itself is
``loop`` and the calls' parsing ``parse``. docs/tools.md."""

from rlreason.rollout.tools.executor import ToolExecutor
from rlreason.rollout.tools.results import EpisodeStart, ToolResult
from rlreason.rollout.tools.schema import ToolSchemaError, tool_schemas

__all__ = ["EpisodeStart", "ToolExecutor", "ToolResult", "ToolSchemaError", "tool_schemas"]

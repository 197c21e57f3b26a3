"""The shapes that cross the tool proxy: a proposed call and its result (defined in `tether.types`)."""

from tether.types import CallStatus, ToolCall, ToolResult

__all__ = ["CallStatus", "ToolCall", "ToolResult"]

"""The set of tools a workflow may call, by name."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from tether.errors import ToolError, UnknownTool
from tether.tools.tool import Tool


class ToolRegistry:
    """The set of tools a workflow or session may call, by name."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, t: Tool) -> None:
        if not isinstance(t, Tool):
            raise ToolError(f"{t!r} is not a tool (declare it with @tool)")
        if t.name in self._tools:
            raise ToolError(f"tool {t.name} is registered twice")
        self._tools[t.name] = t

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownTool(f"unknown tool {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def specs(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        return [self.get(n).spec() for n in (names if names is not None else self.names())]

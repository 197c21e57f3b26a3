"""Tools from what people already have: typed functions and JSON Schemas."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import pytest
from pydantic import Field

from tether.errors import InvalidArguments, ToolError
from tether.guardrails.policy import PolicySet
from tether.orchestration.pipeline import CallPipeline, CallScope
from tether.tools.proxy import ToolProxy
from tether.tools.registry import ToolRegistry
from tether.tools.tool import Args, Tool, ToolContext, tool
from tether.types import Decision, RunInfo, ToolCall, ToolResult

ALLOW = PolicySet.from_text("policies: []")


class _Rec:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def proposed(self, call: ToolCall, args: Any, error: Any, schema: Any = None) -> None:
        self.seen.append("proposed")

    def decided(self, call: ToolCall, decision: Decision) -> None:
        self.seen.append(decision.action)

    def approval_requested(self, call: ToolCall, decision: Decision) -> str:
        return "apr_1"

    def approval_applied(self, *a: Any) -> None: ...

    def finished(self, call: ToolCall, result: ToolResult) -> None:
        self.seen.append(result.status)


def _call(t: Tool, args: dict[str, Any], deps: Any = None) -> ToolResult:
    pipeline = CallPipeline(ToolProxy(ToolRegistry([t])))
    try:
        return pipeline.propose(ToolCall(call_id="1.1", tool=t.name, args=args, proposer="test"),
                                CallScope(RunInfo("r", 1, "t"), ALLOW, _Rec(), deps))  # fmt: skip
    finally:
        pipeline.close()


def lookup(order_id: str, limit: int = 10, *, include_items: bool = False) -> dict[str, Any]:
    """Look up an order.

    Reads the order and, if asked, its items.

    Args:
        order_id: the order's id, like "#W123"
        limit: at most this many items
    """
    return {"order": order_id, "limit": limit, "items": include_items}


def test_from_function_builds_a_strict_schema_from_the_signature_and_docstring() -> None:
    t = Tool.from_function(lookup, side_effect=False, risk_tier="low")
    assert t.name == "lookup" and t.description.startswith("Look up an order.\n\nReads the order")
    props = t.schema["properties"]
    assert props["order_id"]["type"] == "string" and props["order_id"]["description"] == 'the order\'s id, like "#W123"'
    assert props["limit"]["default"] == 10 and t.schema["required"] == ["order_id"]
    assert t.schema["additionalProperties"] is False and not t.side_effect and t.risk_tier == "low"
    r = _call(t, {"order_id": "#W1", "include_items": True})
    assert r.ok and r.output == {"order": "#W1", "limit": 10, "items": True}
    with pytest.raises(InvalidArguments, match="argument 'limit'"):
        t.validate({"order_id": "#W1", "limit": "many"})
    with pytest.raises(InvalidArguments, match="Additional properties"):
        t.validate({"order_id": "#W1", "shell": "rm"})


def test_from_function_injects_the_context_only_where_declared() -> None:
    seen: list[Any] = []

    def with_ctx(ctx: ToolContext[dict[str, int]], n: Annotated[int, Field(ge=1, le=5)]) -> int:
        seen.append((ctx.deps, ctx.run_id, ctx.idempotency_key))
        return n * 2

    t = Tool.from_function(with_ctx, name="math.double")
    assert "ctx" not in t.schema["properties"] and t.schema["properties"]["n"]["maximum"] == 5
    r = _call(t, {"n": 3}, deps={"a": 1})
    assert r.ok and r.output == 6 and seen[0][:2] == ({"a": 1}, "r") and len(seen[0][2]) == 32
    assert _call(t, {"n": 9}).status == "invalid"


def test_from_function_keeps_reserved_and_positional_names() -> None:
    def odd(schema: str, _private: int, /, json: bool = False) -> list[Any]:
        return [schema, _private, json]

    t = Tool.from_function(odd)
    assert set(t.schema["properties"]) == {"schema", "_private", "json"}
    r = _call(t, {"schema": "s", "_private": 2, "json": True})
    assert r.ok and r.output == ["s", 2, True]


def test_from_function_refuses_what_it_cannot_validate() -> None:
    def untyped(x):  # type: ignore[no-untyped-def]
        return x

    def star(*items: int) -> None: ...

    with pytest.raises(ToolError, match="parameter 'x' has no type annotation"):
        Tool.from_function(untyped)
    with pytest.raises(ToolError, match=r"\*args/\*\*kwargs"):
        Tool.from_function(star)
    with pytest.raises(ToolError, match="must look like"):
        Tool.from_function(lookup, name="bad name!")
    with pytest.raises(ToolError, match="not callable"):
        Tool.from_function(42)  # type: ignore[arg-type]
    with pytest.raises(ToolError, match="unknown option 'risk'"):
        Tool.from_function(lookup, risk="high")
    with pytest.raises(ToolError, match="risk_tier must be"):
        Tool.from_function(lookup, risk_tier="extreme")


def test_async_tools_work_from_inside_and_outside_an_event_loop() -> None:
    async def fetch(url: str) -> dict[str, str]:
        await asyncio.sleep(0)
        return {"url": url}

    t = Tool.from_function(fetch, name="web.fetch", side_effect=False)
    assert _call(t, {"url": "https://example.com"}).output == {"url": "https://example.com"}

    async def inside_a_loop() -> ToolResult:
        return _call(t, {"url": "https://a.example"})

    assert asyncio.run(inside_a_loop()).output == {"url": "https://a.example"}

    class A(Args):
        n: int

    @tool("math.inc")
    async def inc(ctx: ToolContext[None], args: A) -> int:
        return args.n + 1

    assert _call(inc, {"n": 1}).output == 2
    with pytest.raises(ToolError, match="async tool needs a timeout_s"):
        Tool.from_function(fetch, timeout_s=None)


def test_from_schema_validates_against_the_schema_it_was_given() -> None:
    schema = {"type": "object", "properties": {"path": {"type": "string", "minLength": 1},
                                               "opts": {"type": "object", "properties": {"recursive": {"type": "boolean"}}}},
              "required": ["path"]}  # fmt: skip
    calls: list[Any] = []
    t = Tool.from_schema("fs.read-file", schema, lambda args: calls.append(args) or "text", side_effect=False)
    assert t.schema["additionalProperties"] is False and t.schema["properties"]["opts"]["additionalProperties"] is False
    assert schema.get("additionalProperties") is None  # the caller's schema is left as it was
    assert _call(t, {"path": "/etc/hosts", "opts": {"recursive": True}}).output == "text"
    assert calls == [{"path": "/etc/hosts", "opts": {"recursive": True}}]
    bad = _call(t, {"path": "/x", "opts": {"follow": True}})
    assert bad.status == "invalid" and "argument 'opts'" in (bad.error or "") and len(calls) == 1
    loose = Tool.from_schema("fs.stat", schema, lambda args: "ok", strict=False)
    assert loose.validate({"path": "/x", "extra": 1}) == {"path": "/x", "extra": 1}
    with_ctx = Tool.from_schema("getUser", {"type": "object", "properties": {"id": {"type": "integer"}}},
                                lambda ctx, args: {"run": ctx.run_id, **args})  # fmt: skip
    assert _call(with_ctx, {"id": 3}).output == {"run": "r", "id": 3}


def test_from_schema_refuses_broken_schemas() -> None:
    with pytest.raises(ToolError, match="not valid JSON Schema"):
        Tool.from_schema("a.b", {"type": "object", "properties": {"x": {"type": "nonsense"}}}, lambda a: a)
    with pytest.raises(ToolError, match="must describe an object"):
        Tool.from_schema("a.b", {"type": "string"}, lambda a: a)
    with pytest.raises(ToolError, match="must take"):
        Tool.from_schema("a.b", {"type": "object"}, lambda: None)
    with pytest.raises(ToolError, match="target 'id' is not one of its arguments"):
        Tool.from_schema("a.b", {"type": "object", "properties": {}}, lambda a: a, target="id")


def test_plain_names_and_globs() -> None:
    t = Tool.from_function(lookup, name="lookup_order")
    deny = PolicySet.from_text("policies:\n  - name: no_lookups\n    if: {tool: 'lookup*'}\n    then: {action: deny}\n")
    pipeline = CallPipeline(ToolProxy(ToolRegistry([t])))
    r = pipeline.propose(ToolCall(call_id="1", tool="lookup_order", args={"order_id": "x"}, proposer="t"),
                         CallScope(RunInfo("r", 1, "t"), deny, _Rec()))  # fmt: skip
    assert r.status == "denied" and r.decision is not None and r.decision.rules == ["no_lookups"]
    pipeline.close()


def test_from_function_edge_cases() -> None:
    def clash(arg_1: str, copy: str) -> list[str]:  # `copy` is BaseModel's: it needs an alias, not arg_1's name
        return [arg_1, copy]

    t = Tool.from_function(clash)
    assert set(t.schema["properties"]) == {"arg_1", "copy"}
    assert _call(t, {"arg_1": "a", "copy": "b"}).output == ["a", "b"]

    def positional_ctx(ctx: ToolContext[None], /, n: int) -> int:
        return n

    with pytest.raises(ToolError, match="cannot be positional-only"):
        Tool.from_function(positional_ctx)

    class Point(Args):  # a model of the declaring scope
        x: int
        y: int

    def norm(p: Point) -> int:
        return abs(p.x) + abs(p.y)

    n = Tool.from_function(norm)
    assert _call(n, {"p": {"x": 3, "y": -4}}).output == 7
    assert _call(n, {"p": {"x": 3, "y": -4, "z": 1}}).status == "invalid"

    def with_option(args: dict[str, Any], retries: int = 2) -> Any:
        return [args, retries]

    assert _call(Tool.from_schema("opt.call", {"type": "object"}, with_option), {"a": 1}).output == [{"a": 1}, 2]


def test_a_cancelled_async_tool_is_an_error_result() -> None:
    async def cancelled(n: int) -> int:
        raise asyncio.CancelledError()

    r = _call(Tool.from_function(cancelled), {"n": 1})
    assert r.status == "error" and r.error is not None and r.error.startswith("CancelledError")


def test_the_pipeline_records_in_order() -> None:
    t = Tool.from_function(lookup)
    rec = _Rec()
    pipeline = CallPipeline(ToolProxy(ToolRegistry([t])))
    pipeline.propose(ToolCall(call_id="1", tool="lookup", args={"order_id": "x"}, proposer="t"), CallScope(RunInfo("r", 1, "t"), ALLOW, rec))
    pipeline.propose(ToolCall(call_id="2", tool="lookup", args={}, proposer="t"), CallScope(RunInfo("r", 1, "t"), ALLOW, rec))
    pipeline.close()
    assert rec.seen == ["proposed", "allow", "ok", "proposed", "invalid"]

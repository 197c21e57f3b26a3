"""Plain typed functions as tools: the argument model from the signature and the docstring."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

import docstring_parser
from pydantic import BaseModel, ConfigDict, Field, create_model

from tether.errors import ToolError


class _Aliased(BaseModel):
    """Arguments some of whose names pydantic reserves: they travel under their own names."""

    model_config = ConfigDict(extra="forbid", serialize_by_alias=True)


def function_args(
    fn: Callable[..., Any], name: str, localns: dict[str, Any] | None = None
) -> tuple[type[BaseModel], str, Callable[[Any, Any], Any]]:
    """(argument model, description, call(ctx, parsed)) for `fn`. A parameter annotated
    `ToolContext` gets the call's context; every other parameter is an argument and needs a type.
    `localns` resolves annotations naming classes of the declaring scope."""
    from tether.tools.tool import Args, ToolContext, _is_async, _sync

    if not callable(fn):
        raise ToolError(f"tool {name}: {fn!r} is not callable")
    try:
        hints = typing.get_type_hints(fn, localns=localns, include_extras=True)
    except NameError as e:
        raise ToolError(f"tool {name}: cannot resolve the annotations of {fn.__qualname__} ({e})") from None
    doc = docstring_parser.parse(inspect.getdoc(fn) or "")
    described = {p.arg_name: p.description for p in doc.params if p.description}
    fields: dict[str, Any] = {}
    order: list[tuple[str, str, bool]] = []  # (parameter, field, positional-only)
    ctx_param: str | None = None
    params = list(inspect.signature(fn).parameters.values())
    taken = {p.name for p in params}
    for p in params:
        ann = hints.get(p.name, inspect.Parameter.empty)
        if ann is ToolContext or typing.get_origin(ann) is ToolContext:
            if p.kind is p.POSITIONAL_ONLY:
                raise ToolError(f"tool {name}: the context parameter {p.name!r} cannot be positional-only")
            ctx_param = p.name
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ToolError(f"tool {name}: parameter {p.name!r} is *args/**kwargs; a tool's arguments must each be named and typed")
        if ann is inspect.Parameter.empty:
            raise ToolError(f"tool {name}: parameter {p.name!r} has no type annotation; every argument is validated by its type")
        # Names pydantic reserves (leading underscore, BaseModel's own attributes) keep their
        # name on the wire through an alias.
        field_name = p.name if _plain_field(p.name) else _free(f"arg_{len(order)}", taken)
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[field_name] = (ann, Field(default, alias=p.name if field_name != p.name else None,
                                         description=described.get(p.name)))  # fmt: skip
        order.append((p.name, field_name, p.kind is p.POSITIONAL_ONLY))
    aliased = any(f != p for p, f, _ in order)
    model = create_model(f"{_camel(name)}Args", __base__=_Aliased if aliased else Args, **fields)
    description = "\n\n".join(x for x in (doc.short_description, doc.long_description) if x) or name

    def call(ctx: Any, parsed: BaseModel) -> Any:
        positional = [getattr(parsed, f) for _, f, pos in order if pos]
        keywords = {p: getattr(parsed, f) for p, f, pos in order if not pos}
        if ctx_param is not None:
            keywords[ctx_param] = ctx
        return fn(*positional, **keywords)

    if _is_async(fn):
        async def acall(ctx: Any, parsed: BaseModel) -> Any:
            return await call(ctx, parsed)

        return model, description, _sync(acall, name, with_ctx=True)
    return model, description, call


def _free(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _plain_field(name: str) -> bool:
    return not name.startswith("_") and not hasattr(BaseModel, name)


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.replace(".", "_").replace("-", "_").split("_")) or "Tool"

"""Declaring tools: a function, a strict pydantic argument model, a name.

    class RefundArgs(Args):
        transaction_id: str
        amount_usd: float

    @tool("payments.refund", timeout_s=5)
    def refund(ctx: ToolContext[Systems], args: RefundArgs) -> Receipt:
        "Refund a card transaction."

The decorated object is a `Tool`, which cannot be called directly: a workflow or a
session runs it through the governed call (`CallPipeline`), which validates, gates,
records, and only then has the `ToolProxy` execute it.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import jsonschema
from pydantic import BaseModel, ConfigDict, ValidationError

from tether.errors import InvalidArguments, ToolError

DepsT = TypeVar("DepsT")


class Args(BaseModel):
    """Base for tool argument models: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Grant:
    """Proof handed to a tool that the gate authorised this exact call."""

    call_id: str
    tool: str
    policy_hash: str
    rules: tuple[str, ...]
    approval_id: str | None = None
    credential: str | None = None  # the transaction-scoped token for this call
    target: str = ""  # the object the credential is bound to
    approved_by: str | None = None  # who approved it, when the gate asked a person



@dataclass(frozen=True)
class ToolContext(Generic[DepsT]):
    """What a tool receives besides its arguments (dependency injection)."""

    deps: DepsT
    run_id: str
    step: int
    call_id: str
    tenant: str
    grant: Grant
    verifier: Any = None  # tether.tools.credentials.Credentials, or None when the proxy mints none
    secrets: Any = None  # tether.tools.secrets.SecretStore: the only way a tool gets upstream credentials
    facts: Mapping[str, Any] = field(default_factory=dict)  # the facts the gate decided on (ToolCall.facts)

    def check_credential(self, target: object = "") -> dict[str, Any]:
        """Refuse unless this call's credential is valid, unused, and for this tool and `target`.

        Tools that change things call this first; it uses the credential up."""
        if self.verifier is None:
            from tether.tools.credentials import CredentialError

            raise CredentialError(f"{self.grant.tool}: no credential was issued for this call")
        return self.verifier.verify(self.grant.credential, tool=self.grant.tool, target=str(target))  # type: ignore[no-any-return]

    @property
    def idempotency_key(self) -> str:
        """Stable for (run, step, call): a retried or resumed call reuses it."""
        return idempotency_key(self.run_id, self.step, self.call_id)


def idempotency_key(run_id: str, step: int, call_id: str) -> str:
    return hashlib.sha256(f"{run_id}/{step}/{call_id}".encode()).hexdigest()[:32]


# The compensating call's arguments from the undone call's (arguments, output, idempotency key).
Compensation = Callable[[dict[str, Any], Any, str], dict[str, Any]]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to try a call again after a retryable failure.

    Retryable: `tether.errors.Retryable` and the exception types in `on`; a timeout
    only with `timeouts=True` (the abandoned attempt may still finish, so only for
    tools whose systems honour the idempotency key). Waits grow exponentially from
    `backoff_s` up to `max_backoff_s`, with full jitter."""

    attempts: int = 1  # 1: no retry
    on: tuple[type[BaseException], ...] = ()
    timeouts: bool = False
    backoff_s: float = 0.2
    max_backoff_s: float = 10.0

    def delay(self, attempt: int, rand: Callable[[], float]) -> float:
        """The wait before attempt `attempt + 1` (attempt counts from 1)."""
        return rand() * min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))


@dataclass(frozen=True, eq=False)
class Tool:
    """A tool: its name, argument schema, risk features and function. Build one with `@tool`,
    `Tool.from_function` (a plain typed function) or `Tool.from_schema` (a JSON Schema, as MCP
    and OpenAPI describe tools). Only a governed call (a workflow's or a session's) runs it."""

    name: str
    description: str
    args_model: type[BaseModel] | None  # None for a tool described by JSON Schema alone
    timeout_s: float | None
    side_effect: bool
    schema: dict[str, Any]
    target: str | None  # the argument naming the object a call acts on (credentials bind to it)
    risk_tier: str  # low | medium | high | critical
    risk_amount: str | None  # the argument holding a money amount, for the risk score
    risk_volume: str | None  # the argument holding a data volume (rows), for the risk score
    # Which of its output an attacker may write: True (all of it) or the keys that
    # hold outside text (a merchant's descriptor, a customer's message).
    untrusted_output: bool | tuple[str, ...]
    retry: RetryPolicy
    # (compensating tool, its args from (this call's args, output, idempotency key)): how to undo this call's effect
    compensate: tuple[str, Compensation] | None
    _fn: Callable[[ToolContext[Any], Any], Any] = field(repr=False)
    _validator: jsonschema.protocols.Validator = field(repr=False)
    _code: Callable[..., Any] | None = field(default=None, repr=False)  # the author's function (its source versions a workflow)
    # The arguments that choose *what* a read returns (an id, a query); the others only shape it
    # (a page size, a sort order). None: every argument chooses. Only choosers steer the result's trust.
    selects: tuple[str, ...] | None = None

    def spec(self) -> dict[str, Any]:
        """The tool as a model sees it: name, description, JSON Schema of its arguments."""
        return {"name": self.name, "description": self.description, "parameters": self.schema}

    def validate(self, args: Mapping[str, Any]) -> Any:
        """The arguments parsed as the function takes them (its pydantic model, or a dict for a
        schema-described tool), or InvalidArguments naming the first argument at fault."""
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(dict(args)))
        if error is not None:
            path = ".".join(str(p) for p in error.absolute_path)
            raise _invalid(self.name, path, error.message)
        if self.args_model is None:
            return dict(args)
        try:
            return self.args_model.model_validate(dict(args))
        except ValidationError as e:
            first = e.errors()[0]
            raise _invalid(self.name, ".".join(str(p) for p in first["loc"]), first["msg"]) from None

    def dump(self, parsed: Any) -> dict[str, Any]:
        """Validated arguments as plain JSON (defaults filled): what the gate decides on."""
        return parsed.model_dump(mode="json") if isinstance(parsed, BaseModel) else dict(parsed)

    def execute(self, ctx: ToolContext[Any], parsed: Any) -> Any:
        """Run the function on validated arguments. The governed call path is the only caller:
        calling it yourself bypasses the gate, the ledger and the credential."""
        return self._fn(ctx, parsed)

    @property
    def code(self) -> Callable[..., Any]:
        """The author's function, whose source versions the workflows that use the tool."""
        return self._code or self._fn

    @classmethod
    def from_function(cls, fn: Callable[..., Any], *, name: str | None = None, **options: Any) -> Tool:
        """A tool from a plain typed function: its parameters become the arguments (types and
        defaults from the signature, descriptions from the docstring). A parameter annotated
        `ToolContext` receives the call's context; no other parameter is injected. `options`
        are those of `@tool` (timeout_s, side_effect, risk_tier, target, ...)."""
        from tether.tools._functions import function_args

        if not callable(fn):
            raise ToolError(f"tool {name}: {fn!r} is not callable")
        tool_name = name or fn.__name__
        _check_name(tool_name, _OUTSIDE_NAME)
        model, description, call = function_args(fn, tool_name, sys._getframe(1).f_locals)
        options.setdefault("description", description)
        return _build(tool_name, model, model.model_json_schema(), call, fn, ToolOptions.of(tool_name, options))

    @classmethod
    def from_schema(
        cls, name: str, json_schema: Mapping[str, Any], fn: Callable[..., Any], *, strict: bool = True, **options: Any
    ) -> Tool:
        """A tool described by a JSON Schema (an MCP tool's `inputSchema`, an OpenAPI operation's
        body). Every call is validated against the schema; `fn(args)` or `fn(ctx, args)` gets the
        arguments as a dict. With `strict` (the default) an object schema that lists properties
        and says nothing of others refuses unknown fields, as tether's own tools do."""
        _check_name(name, _OUTSIDE_NAME)
        if not isinstance(json_schema, Mapping):
            raise ToolError(f"tool {name}: its schema must be a JSON object, got {type(json_schema).__name__}")
        schema = _closed(dict(json_schema)) if strict else dict(json_schema)
        if schema.get("type", "object") != "object":
            raise ToolError(f"tool {name}: its schema must describe an object of arguments, got type {schema.get('type')!r}")
        schema.setdefault("type", "object")
        call = _schema_call(fn, name)
        return _build(name, None, schema, call, fn, ToolOptions.of(name, options), check_closed=False)


_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")  # @tool: family.action, or a plain action
# Tools described elsewhere (a function, an MCP server) keep their names: MCP's character set.
_OUTSIDE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_][A-Za-z0-9_\-]*)*$")


def _check_name(name: str, pattern: re.Pattern[str]) -> None:
    if not isinstance(name, str) or len(name) > 128 or not pattern.match(name):
        shape = "lowercase, dot-separated" if pattern is _NAME else "letters, digits, _ and -, dot-separated, at most 128"
        raise ToolError(f"tool name {name!r} must look like 'family.action' or 'action' ({shape})")


def _closed(schema: Any) -> Any:
    """A copy where every object schema with properties and no word on others refuses unknown fields."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out and out.get("type", "object") == "object":
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def _schema_call(fn: Callable[..., Any], name: str) -> Callable[[ToolContext[Any], Any], Any]:
    if not callable(fn):
        raise ToolError(f"tool {name}: {fn!r} is not callable")
    # Parameters with defaults are the function's own options, not what the proxy passes.
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]  # fmt: skip
    if len(params) == 2:
        return _sync(fn, name, with_ctx=True)
    if len(params) == 1:
        return _sync(fn, name, with_ctx=False)
    raise ToolError(f"tool {name}: its function must take (args) or (ctx, args), got {[p.name for p in params]}")


def _sync(fn: Callable[..., Any], name: str, *, with_ctx: bool) -> Callable[[ToolContext[Any], Any], Any]:
    """(ctx, args) -> output. An `async def` runs to completion on its own event loop, in the
    proxy's worker thread, so it works whether or not the caller runs an event loop."""
    if _is_async(fn):
        import asyncio

        if with_ctx:
            return lambda ctx, args: asyncio.run(fn(ctx, args))
        return lambda ctx, args: asyncio.run(fn(args))
    return fn if with_ctx else (lambda ctx, args: fn(args))


def _closed_objects(schema: Any, where: str = "") -> str | None:
    """The first object schema that allows unknown fields, if any."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema and schema.get("additionalProperties") is not False:
            return where or "the argument model"
        for key, sub in schema.items():
            found = _closed_objects(sub, f"{where}/{key}" if where else key)
            if found:
                return found
    elif isinstance(schema, list):
        for i, sub in enumerate(schema):
            found = _closed_objects(sub, f"{where}[{i}]")
            if found:
                return found
    return None


def _annotation(fn: Callable[..., Any], param: str, caller_locals: dict[str, Any]) -> Any:
    """The parameter's type, resolving string annotations in the module and the declaring scope."""
    try:
        return typing.get_type_hints(fn, localns=caller_locals).get(param)
    except NameError as e:
        raise ToolError(f"tool function {fn.__qualname__}: cannot resolve its annotations ({e})") from None


@dataclass(frozen=True)
class ToolOptions:
    """How a tool is governed and run: the keyword arguments of `@tool`, `Tool.from_function`
    and `Tool.from_schema`."""

    description: str | None = None
    timeout_s: float | None = 10.0
    side_effect: bool = True
    target: str | None = None  # the argument naming the object a call acts on (credentials bind to it)
    risk_tier: str = "medium"
    risk_amount: str | None = None
    risk_volume: str | None = None
    untrusted_output: bool | tuple[str, ...] = False
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = ()
    retry_timeouts: bool = False
    backoff_s: float = 0.2
    max_backoff_s: float = 10.0
    compensate: tuple[str, Compensation] | None = None
    selects: tuple[str, ...] | None = None  # the arguments that choose what a read returns (see Tool.selects)

    @classmethod
    def of(cls, name: str, options: Mapping[str, Any]) -> ToolOptions:
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise ToolError(f"tool {name}: unknown option {unknown[0]!r} (one of {', '.join(cls.__dataclass_fields__)})")
        opts = cls(**options)
        opts.check(name)
        return opts

    def check(self, name: str) -> None:
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ToolError(f"tool {name}: timeout_s must be positive")
        if self.risk_tier not in ("low", "medium", "high", "critical"):
            raise ToolError(f"tool {name}: risk_tier must be low, medium, high or critical")
        if self.retries < 0 or self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ToolError(f"tool {name}: retries and backoff_s must be >= 0 and max_backoff_s >= backoff_s")
        c = self.compensate
        if c is not None and not (len(c) == 2 and _OUTSIDE_NAME.match(c[0]) and callable(c[1])):
            raise ToolError(f"tool {name}: compensate must be (tool name, function of (args, output, key) -> args)")


def tool(
    name: str,
    *,
    description: str | None = None,
    timeout_s: float | None = 10.0,
    side_effect: bool = True,
    target: str | None = None,
    risk_tier: str = "medium",
    risk_amount: str | None = None,
    risk_volume: str | None = None,
    untrusted_output: bool | tuple[str, ...] = False,
    retries: int = 0,
    retry_on: tuple[type[BaseException], ...] = (),
    retry_timeouts: bool = False,
    backoff_s: float = 0.2,
    max_backoff_s: float = 10.0,
    compensate: tuple[str, Compensation] | None = None,
    selects: tuple[str, ...] | None = None,
) -> Callable[[Callable[..., Any]], Tool]:
    """Declare a tool. The function takes (ctx: ToolContext[Deps], args: SomeArgs); an `async def`
    works too. For a plain function without `ctx`, see `Tool.from_function`. The options are
    `ToolOptions`'s."""
    _check_name(name, _NAME)
    opts = ToolOptions(description, timeout_s, side_effect, target, risk_tier, risk_amount, risk_volume, untrusted_output,
                       retries, tuple(retry_on), retry_timeouts, backoff_s, max_backoff_s, compensate,
                       tuple(selects) if selects is not None else None)  # fmt: skip
    opts.check(name)

    def wrap(fn: Callable[..., Any]) -> Tool:
        params = list(inspect.signature(fn).parameters)
        if len(params) != 2:
            raise ToolError(f"tool {name}: function must take (ctx, args), got {params}")
        args_model = _annotation(fn, params[1], sys._getframe(1).f_locals)
        if not (isinstance(args_model, type) and issubclass(args_model, BaseModel)):
            raise ToolError(f"tool {name}: the 'args' parameter must be annotated with a pydantic model")
        return _build(name, args_model, args_model.model_json_schema(), _sync(fn, name, with_ctx=True), fn, opts)

    return wrap


def _build(
    name: str, args_model: type[BaseModel] | None, schema: dict[str, Any], fn: Callable[[ToolContext[Any], Any], Any],
    code: Callable[..., Any], o: ToolOptions, *, check_closed: bool = True,
) -> Tool:  # fmt: skip
    """Every way of declaring a tool ends here: one set of checks, one shape."""
    if _is_async(code) and o.timeout_s is None:
        raise ToolError(f"tool {name}: an async tool needs a timeout_s (it runs on its own event loop in a worker thread)")
    chosen = (("selects", a) for a in (o.selects or ()))
    for what, arg in (("target", o.target), ("risk_amount", o.risk_amount), ("risk_volume", o.risk_volume), *chosen):
        if arg is not None and arg not in schema.get("properties", {}):
            raise ToolError(f"tool {name}: {what} {arg!r} is not one of its arguments")
    if check_closed:
        open_at = _closed_objects(schema)
        if open_at:
            raise ToolError(f"tool {name}: {open_at} accepts unknown fields; derive it from tether.Args")
    validator_cls = jsonschema.validators.validator_for(schema)
    try:
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        raise ToolError(f"tool {name}: its argument schema is not valid JSON Schema: {e.message}") from None
    doc = inspect.getdoc(code) or ""
    return Tool(
        name=name,
        description=o.description or doc.split("\n\n")[0].strip() or name,
        args_model=args_model,
        timeout_s=o.timeout_s,
        side_effect=o.side_effect,
        schema=schema,
        target=o.target,
        risk_tier=o.risk_tier,
        risk_amount=o.risk_amount,
        risk_volume=o.risk_volume,
        untrusted_output=o.untrusted_output if isinstance(o.untrusted_output, bool) else tuple(o.untrusted_output),
        retry=RetryPolicy(o.retries + 1, tuple(o.retry_on), o.retry_timeouts, o.backoff_s, o.max_backoff_s),
        compensate=o.compensate,
        _fn=fn,
        _validator=validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER),
        _code=code,
        selects=tuple(o.selects) if o.selects is not None else None,
    )


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def _invalid(tool: str, path: str, message: str) -> InvalidArguments:
    """One line naming the tool and the argument; `where` and `detail` for callers with their own format."""
    e = InvalidArguments(f"invalid arguments for {tool}: {f'argument {path!r}: ' if path else ''}{message}")
    e.where, e.detail = path, message  # type: ignore[attr-defined]
    return e

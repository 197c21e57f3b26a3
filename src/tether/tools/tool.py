"""Declaring tools: a function, a strict pydantic argument model, a name.

    class RefundArgs(Args):
        transaction_id: str
        amount_usd: float

    @tool("payments.refund", timeout_s=5)
    def refund(ctx: ToolContext[Systems], args: RefundArgs) -> Receipt:
        "Refund a card transaction."

The decorated object is a `Tool`, which cannot be called directly: the only way
to run it is through the `ToolProxy`, which validates, gates and records.
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
from pydantic import BaseModel, ConfigDict

from tether.errors import ToolError

DepsT = TypeVar("DepsT")
_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")


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
    name: str
    description: str
    args_model: type[BaseModel]
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

    def spec(self) -> dict[str, Any]:
        """The tool as a model sees it: name, description, JSON Schema of its arguments."""
        return {"name": self.name, "description": self.description, "parameters": self.schema}


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
) -> Callable[[Callable[..., Any]], Tool]:
    """Declare a tool. The function takes (ctx: ToolContext[Deps], args: SomeArgs)."""
    if not _NAME.match(name):
        raise ToolError(f"tool name {name!r} must look like 'family.action' (lowercase, dot-separated)")
    if timeout_s is not None and timeout_s <= 0:
        raise ToolError(f"tool {name}: timeout_s must be positive")
    if risk_tier not in ("low", "medium", "high", "critical"):
        raise ToolError(f"tool {name}: risk_tier must be low, medium, high or critical")
    if retries < 0 or backoff_s < 0 or max_backoff_s < backoff_s:
        raise ToolError(f"tool {name}: retries and backoff_s must be >= 0 and max_backoff_s >= backoff_s")
    retry = RetryPolicy(retries + 1, tuple(retry_on), retry_timeouts, backoff_s, max_backoff_s)
    if compensate is not None and not (len(compensate) == 2 and _NAME.match(compensate[0]) and callable(compensate[1])):
        raise ToolError(f"tool {name}: compensate must be (tool name, function of (args, output, key) -> args)")

    def wrap(fn: Callable[..., Any]) -> Tool:
        params = list(inspect.signature(fn).parameters)
        if len(params) != 2:
            raise ToolError(f"tool {name}: function must take (ctx, args), got {params}")
        args_model = _annotation(fn, params[1], sys._getframe(1).f_locals)
        if not (isinstance(args_model, type) and issubclass(args_model, BaseModel)):
            raise ToolError(f"tool {name}: the 'args' parameter must be annotated with a pydantic model")
        schema = args_model.model_json_schema()
        for what, arg in (("target", target), ("risk_amount", risk_amount), ("risk_volume", risk_volume)):
            if arg is not None and arg not in schema.get("properties", {}):
                raise ToolError(f"tool {name}: {what} {arg!r} is not one of its arguments")
        open_at = _closed_objects(schema)
        if open_at:
            raise ToolError(f"tool {name}: {open_at} accepts unknown fields; derive it from tether.Args")
        validator_cls = jsonschema.validators.validator_for(schema)
        validator_cls.check_schema(schema)
        doc = inspect.getdoc(fn) or ""
        return Tool(
            name=name,
            description=description or doc.split("\n\n")[0].strip() or name,
            args_model=args_model,
            timeout_s=timeout_s,
            side_effect=side_effect,
            schema=schema,
            target=target,
            risk_tier=risk_tier,
            risk_amount=risk_amount,
            risk_volume=risk_volume,
            untrusted_output=untrusted_output if isinstance(untrusted_output, bool) else tuple(untrusted_output),
            retry=retry,
            compensate=compensate,
            _fn=fn,
            _validator=validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER),
        )

    return wrap

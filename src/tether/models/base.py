"""What a model sees at a decision point, and what it answers.

A decision point offers a bounded set of options (labels, or tool names with
their argument schemas). The model picks one, with arguments and a confidence;
the runtime refuses anything outside the set and the gate judges the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field


class DecisionRequest(BaseModel):
    """What a model is asked: a decision point, the bounded options (tools with schemas), the observation."""

    point: str
    options: list[str]
    tools: list[dict[str, Any]] = []  # specs of the options that are tools
    observation: dict[str, Any]
    instructions: str = ""


class Usage(BaseModel):
    """Tokens a model call used, as the provider reported them."""

    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


class ModelCall(BaseModel):
    """One call to one model behind a choice (a router or a fallback makes several)."""

    model: str
    usage: Usage = Usage()
    cached: bool = False  # answered from the answer cache: no tokens spent
    confidence: float | None = None
    error: str | None = None


class Choice(BaseModel):
    """A model's answer to a decision request: the option, its arguments, confidence, usage."""

    point: str
    option: str | None
    args: dict[str, Any] = {}
    confidence: float = Field(ge=0.0, le=1.0)
    model: str
    alternatives: list[tuple[str, float]] = []
    usage: Usage = Usage()
    error: str | None = None  # set when the answer was refused
    calls: list[ModelCall] = []  # the model calls behind it; empty means one call to `model` using `usage`

    @property
    def model_calls(self) -> list[ModelCall]:
        return self.calls or [ModelCall(model=self.model, usage=self.usage, confidence=self.confidence, error=self.error)]

    @property
    def ok(self) -> bool:
        return self.error is None and self.option is not None


@runtime_checkable
class Model(Protocol):
    """What answers decision requests: the offline classifier, a provider, a router, a cache."""

    name: str

    def choose(self, request: DecisionRequest) -> Choice: ...


# Optional, for the cost meter: a model may also define
#     estimate(request) -> list[ModelCall]    the worst-case calls it would make (usage filled)
# The meter falls back to a character-count estimate for models that do not.


class ModelError(Exception):
    """A model call that failed after its retries (HTTP 429/5xx, timeout, unreachable)."""


@dataclass(frozen=True)
class CallContext:
    """Who a model is answering for: caches and memory key on it (never across tenants)."""

    tenant: str = "default"
    run_id: str = ""
    workflow: str = ""
    policy_hash: str = ""


_context: ContextVar[CallContext] = ContextVar("tether_model_context", default=CallContext())


def current_context() -> CallContext:
    return _context.get()


@contextmanager
def call_context(ctx: CallContext) -> Iterator[CallContext]:
    token = _context.set(ctx)
    try:
        yield ctx
    finally:
        _context.reset(token)

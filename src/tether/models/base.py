"""What a model sees at a decision point, and what it answers.

A decision point offers a bounded set of options (labels, or tool names with
their argument schemas). The model picks one, with arguments and a confidence;
the runtime refuses anything outside the set and the gate judges the rest.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field


class DecisionRequest(BaseModel):
    point: str
    options: list[str]
    tools: list[dict[str, Any]] = []  # specs of the options that are tools
    observation: dict[str, Any]
    instructions: str = ""


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0


class Choice(BaseModel):
    point: str
    option: str | None
    args: dict[str, Any] = {}
    confidence: float = Field(ge=0.0, le=1.0)
    model: str
    alternatives: list[tuple[str, float]] = []
    usage: Usage = Usage()
    error: str | None = None  # set when the answer was refused

    @property
    def ok(self) -> bool:
        return self.error is None and self.option is not None


@runtime_checkable
class Model(Protocol):
    name: str

    def choose(self, request: DecisionRequest) -> Choice: ...

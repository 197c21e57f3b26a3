"""What a model was asked and answered, redacted, for the short-retention prompt store."""

from __future__ import annotations

from typing import Any

from tether.models.base import Choice, DecisionRequest


def prompt_record(red: Any, tools: Any, request: DecisionRequest, choice: Choice) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request, response) with every free text redacted and tool arguments redacted by their schema marks."""
    observation = {k: red.text(v) if isinstance(v, str) else v for k, v in request.observation.items()}
    args = choice.args
    if choice.option in tools:
        args = red.args(tools.get(choice.option).schema, args)
    elif args:  # free-form arguments (a plan, say) have no schema marks: scan their text
        args = _scan_strings(red, args)
    asked = {"options": request.options, "observation": observation, "instructions": red.text(request.instructions)}
    answered = {"option": choice.option, "args": args, "confidence": choice.confidence, "usage": choice.usage.model_dump(),
                "error": red.text(choice.error) if choice.error else None}  # fmt: skip
    return asked, answered


def _scan_strings(red: Any, value: Any) -> Any:
    if isinstance(value, str):
        return red.text(value)
    if isinstance(value, dict):
        return {k: _scan_strings(red, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scan_strings(red, v) for v in value]
    return value

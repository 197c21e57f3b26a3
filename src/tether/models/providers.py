"""Hosted models through their official SDKs: OpenAI (and any OpenAI-compatible
server by base URL: vLLM, Ollama, llama.cpp) and Anthropic.

A decision point becomes one request:
- tool options -> tool calling (OpenAI `tools`, Anthropic `tools` with tool_choice
  "any"); the call's arguments are parsed and validated against the tool's JSON
  Schema here, before the runtime sees them;
- label options -> a structured answer `{"option": <one of them>, "confidence": 0..1}`
  (OpenAI `response_format` json_schema, Anthropic a forced `choose` tool).

Failures: the SDKs retry 429, 5xx and timeouts with backoff (`max_retries`); what is
still failing raises ModelError (a `Fallback` then tries the next model, or the
run's step sees a refused choice). An answer that does not parse or validate is
asked again up to `output_retries` times, then returned as a refused choice.
Never is an unvalidated action returned.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from tether.models.base import Choice, DecisionRequest, ModelCall, ModelError, Usage

SYSTEM = (
    "You are one step of a governed workflow. Pick exactly one of the options offered. "
    "Answer only through the tool or JSON format requested."
)
_SAFE = re.compile(r"[^a-zA-Z0-9_-]")


def estimate_tokens(text: str) -> int:
    """About four characters a token (English, BPE tokenizers): for estimates, never for billing."""
    return max(1, len(text) // 4)


def _wire_name(tool: str) -> str:
    return _SAFE.sub("__", tool.replace(".", "__"))  # providers allow [a-zA-Z0-9_-] in tool names


def offered(request: DecisionRequest) -> list[dict[str, Any]]:
    """Tool specs for a tool request; options that are not tools (e.g. `done`) become argument-less tools."""
    named = {t["name"] for t in request.tools}
    extra = [{"name": o, "description": f"Choose {o!r}.", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}}
             for o in request.options if o not in named]  # fmt: skip
    return [*request.tools, *extra]


def label_schema(options: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"option": {"type": "string", "enum": options},
                       "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["option", "confidence"],
        "additionalProperties": False,
    }  # fmt: skip


def user_message(request: DecisionRequest) -> str:
    body: dict[str, Any] = {"decision": request.point, "observation": request.observation}
    if not request.tools:
        body["options"] = request.options
    return json.dumps(body, ensure_ascii=False, default=str)


class OutputError(Exception):
    """The model answered, but not with something we can accept."""


class _Provider:
    """What the providers share: configuration, output retries, estimates, answer parsing.
    A subclass builds its SDK client (`_client_for`) and makes one request (`_once`)."""

    def __init__(
        self,
        model: str,
        *,
        api_key: str,
        base_url: str | None = None,
        name: str | None = None,
        timeout_s: float = 30.0,
        max_retries: int = 2,  # the SDK's own retries of 429, 5xx and timeouts
        output_retries: int = 1,  # asking again after an answer that does not parse or validate
        max_output_tokens: int = 512,
    ) -> None:
        self.model = model
        self.name = name or model
        self.max_output_tokens = max_output_tokens
        self.output_retries = output_retries
        self._client = self._client_for(api_key, base_url, timeout_s, max_retries)

    def _client_for(self, api_key: str, base_url: str | None, timeout_s: float, max_retries: int) -> Any:
        raise NotImplementedError

    def _once(self, request: DecisionRequest) -> tuple[Choice, Usage]:
        raise NotImplementedError

    def choose(self, request: DecisionRequest) -> Choice:
        usage = Usage()
        calls: list[ModelCall] = []
        last = ""
        for _ in range(1 + self.output_retries):
            try:
                choice, used = self._once(request)
            except OutputError as e:
                used, last = e.args[1], str(e.args[0])
                usage = Usage(input_tokens=usage.input_tokens + used.input_tokens, output_tokens=usage.output_tokens + used.output_tokens)
                calls.append(ModelCall(model=self.name, usage=used, error=last))
                continue
            usage = Usage(input_tokens=usage.input_tokens + used.input_tokens, output_tokens=usage.output_tokens + used.output_tokens)
            calls.append(ModelCall(model=self.name, usage=used, confidence=choice.confidence))
            return choice.model_copy(update={"usage": usage, "calls": calls})
        return Choice(point=request.point, option=None, confidence=0.0, model=self.name, usage=usage, calls=calls,
                      error=f"invalid model output after {len(calls)} attempt(s): {last}")  # fmt: skip

    def estimate(self, request: DecisionRequest) -> list[ModelCall]:
        prompt = SYSTEM + request.instructions + user_message(request) + json.dumps(request.tools)
        one = Usage(input_tokens=estimate_tokens(prompt) + 50, output_tokens=self.max_output_tokens)
        return [ModelCall(model=self.name, usage=one)]

    def _tool_choice(self, request: DecisionRequest, wire: str, args: Any) -> Choice:
        by_wire = {_wire_name(t["name"]): t for t in offered(request)}
        spec = by_wire.get(wire)
        if spec is None:
            raise OutputError(f"called tool {wire!r}, which was not offered")
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError as e:
                raise OutputError(f"arguments of {spec['name']} are not JSON: {e}") from None
        if not isinstance(args, dict):
            raise OutputError(f"arguments of {spec['name']} are not an object")
        problem = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(spec["parameters"]).iter_errors(args))
        if problem is not None:
            where = "/".join(str(p) for p in problem.absolute_path) or "(top)"
            raise OutputError(f"arguments of {spec['name']} fail its schema at {where}: {problem.message}")
        # Tool calling reports no confidence; 1.0 means "the model committed", escalation relies on validation.
        return Choice(point=request.point, option=spec["name"], args=args, confidence=1.0, model=self.name)

    def _label_choice(self, request: DecisionRequest, data: Any) -> Choice:
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError as e:
                raise OutputError(f"structured answer is not JSON: {e}") from None
        problem = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(label_schema(request.options)).iter_errors(data))
        if problem is not None:
            raise OutputError(f"structured answer fails its schema: {problem.message}")
        return Choice(point=request.point, option=data["option"], confidence=float(data["confidence"]), model=self.name)


class OpenAIModel(_Provider):
    """OpenAI chat completions, or any server speaking them (`base_url`)."""

    def _client_for(self, api_key: str, base_url: str | None, timeout_s: float, max_retries: int) -> Any:
        import openai

        return openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=max_retries)

    def _once(self, request: DecisionRequest) -> tuple[Choice, Usage]:
        import openai

        messages = [{"role": "system", "content": (SYSTEM + "\n" + request.instructions).strip()},
                    {"role": "user", "content": user_message(request)}]  # fmt: skip
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": self.max_output_tokens}
        if request.tools:
            kwargs["tools"] = [{"type": "function", "function": {"name": _wire_name(t["name"]), "description": t.get("description", ""),
                                                                 "parameters": t["parameters"]}} for t in offered(request)]  # fmt: skip
            kwargs["tool_choice"] = "required"
        else:
            kwargs["response_format"] = {"type": "json_schema",
                                         "json_schema": {"name": "choice", "strict": True, "schema": label_schema(request.options)}}  # fmt: skip
        try:
            resp = self._client.chat.completions.create(**kwargs)
        except openai.APIStatusError as e:
            raise ModelError(f"{self.name}: HTTP {e.status_code} after retries: {_short(e.message)}") from None
        except openai.APITimeoutError:
            raise ModelError(f"{self.name}: timed out after retries") from None
        except openai.APIConnectionError as e:
            raise ModelError(f"{self.name}: cannot connect: {_short(str(e))}") from None
        except openai.OpenAIError as e:  # a response the SDK cannot read
            raise ModelError(f"{self.name}: {type(e).__name__}: {_short(str(e))}") from None
        usage = Usage(input_tokens=getattr(resp.usage, "prompt_tokens", 0) or 0,
                      output_tokens=getattr(resp.usage, "completion_tokens", 0) or 0)  # fmt: skip
        if not resp.choices:
            raise OutputError("no choices in the response", usage)
        msg = resp.choices[0].message
        try:
            if request.tools:
                if not msg.tool_calls:
                    raise OutputError("no tool call in the answer", usage)
                fn = msg.tool_calls[0].function
                return self._tool_choice(request, fn.name, fn.arguments), usage
            if getattr(msg, "refusal", None):
                raise OutputError(f"the model refused: {_short(msg.refusal)}", usage)
            return self._label_choice(request, msg.content or ""), usage
        except OutputError as e:
            raise OutputError(e.args[0], usage) from None


class AnthropicModel(_Provider):
    """Anthropic messages with tool use."""

    def _client_for(self, api_key: str, base_url: str | None, timeout_s: float, max_retries: int) -> Any:
        import anthropic

        return anthropic.Anthropic(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=max_retries)

    def _once(self, request: DecisionRequest) -> tuple[Choice, Usage]:
        import anthropic

        if request.tools:
            tools = [{"name": _wire_name(t["name"]), "description": t.get("description", ""), "input_schema": t["parameters"]}
                     for t in offered(request)]  # fmt: skip
            tool_choice: dict[str, Any] = {"type": "any"}
        else:
            tools = [{"name": "choose", "description": "Give your answer.", "input_schema": label_schema(request.options)}]
            tool_choice = {"type": "tool", "name": "choose"}
        try:
            resp = self._client.messages.create(
                model=self.model, max_tokens=self.max_output_tokens, system=(SYSTEM + "\n" + request.instructions).strip(),
                messages=[{"role": "user", "content": user_message(request)}], tools=tools, tool_choice=tool_choice,
            )  # fmt: skip
        except anthropic.APIStatusError as e:
            raise ModelError(f"{self.name}: HTTP {e.status_code} after retries: {_short(e.message)}") from None
        except anthropic.APITimeoutError:
            raise ModelError(f"{self.name}: timed out after retries") from None
        except anthropic.APIConnectionError as e:
            raise ModelError(f"{self.name}: cannot connect: {_short(str(e))}") from None
        except anthropic.AnthropicError as e:
            raise ModelError(f"{self.name}: {type(e).__name__}: {_short(str(e))}") from None
        usage = Usage(input_tokens=resp.usage.input_tokens or 0, output_tokens=resp.usage.output_tokens or 0)
        uses = [b for b in resp.content if getattr(b, "type", "") == "tool_use"]
        try:
            if not uses:
                raise OutputError("no tool_use block in the answer", usage)
            if request.tools:
                return self._tool_choice(request, uses[0].name, uses[0].input), usage
            return self._label_choice(request, uses[0].input), usage
        except OutputError as e:
            raise OutputError(e.args[0], usage) from None


class Fallback:
    """Try models in order: the next one answers when one fails (ModelError) or its answer is refused."""

    def __init__(self, *models: Any) -> None:
        if not models:
            raise ValueError("Fallback needs at least one model")
        self.models = list(models)
        self.name = models[0].name

    def choose(self, request: DecisionRequest) -> Choice:
        calls: list[ModelCall] = []
        errors: list[str] = []
        for model in self.models:
            try:
                choice = model.choose(request)
            except ModelError as e:
                calls.append(ModelCall(model=model.name, error=str(e)))
                errors.append(str(e))
                continue
            calls.extend(choice.model_calls)
            if choice.ok:
                return choice.model_copy(update={"calls": calls, "usage": _sum(calls)})
            errors.append(choice.error or "no option")
        return Choice(point=request.point, option=None, confidence=0.0, model=self.models[-1].name, calls=calls,
                      usage=_sum(calls), error="; ".join(errors)[:1000])  # fmt: skip

    def estimate(self, request: DecisionRequest) -> list[ModelCall]:
        from tether.models.meter import estimate

        return [c for m in self.models for c in estimate(m, request)]  # worst case: every model is tried


def _sum(calls: list[ModelCall]) -> Usage:
    return Usage(input_tokens=sum(c.usage.input_tokens for c in calls), output_tokens=sum(c.usage.output_tokens for c in calls))


def _short(text: str | None) -> str:
    return (text or "").splitlines()[0][:200] if text else ""

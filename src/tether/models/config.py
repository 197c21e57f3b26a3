"""Choosing the model by configuration.

    TETHER_MODEL=offline                          the workflow's own offline model (the default)
    TETHER_MODEL=openai:gpt-4.1-mini              OpenAI; key OPENAI_API_KEY
    TETHER_MODEL=anthropic:claude-haiku-4-5       Anthropic; key ANTHROPIC_API_KEY
    TETHER_MODEL=compatible:llama3.1              an OpenAI-compatible server at TETHER_MODEL_BASE_URL
                                                  (key TETHER_MODEL_API_KEY if it needs one)
    TETHER_MODEL=openai:gpt-4.1-mini,anthropic:claude-haiku-4-5     a fallback chain, in order
    TETHER_ROUTER=offline,openai:gpt-4.1-mini,openai:gpt-4.1        a router, cheapest first
    TETHER_ROUTER_THRESHOLD=0.6                   escalate below this confidence
    TETHER_MODEL_TIMEOUT_S, TETHER_MODEL_RETRIES  per request; retries of 429/5xx/timeouts

Keys come from the secret store (`TETHER_SECRET_<NAME>` or the variable itself),
so they are scrubbed from everything tether writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from tether.errors import TetherError
from tether.record.secrets import EnvSecrets, SecretError


class ModelConfigError(TetherError):
    pass


class _KeyStore:
    """`TETHER_SECRET_OPENAI_API_KEY`, else `OPENAI_API_KEY` (the providers' usual variables)."""

    def get(self, name: str) -> str:
        for store in (EnvSecrets("TETHER_SECRET_"), EnvSecrets("")):
            try:
                return store.get(name)
            except SecretError:
                continue
        raise SecretError(f"secret {name!r} is not set (${name} or $TETHER_SECRET_{name})")


def local_key(secrets: Any, name: str) -> str:
    """The key for an OpenAI-compatible local server, if one is set: most (vLLM, Ollama, llama.cpp) take none."""
    try:
        return str(secrets.get(name))
    except SecretError:
        return "none"


def one_model(spec: str, *, secrets: Any = None, env: Mapping[str, str] | None = None, offline: Callable[[], Any] | None = None) -> Any:
    env = os.environ if env is None else env
    secrets = secrets or _KeyStore()
    spec = spec.strip()
    kind, _, model = spec.partition(":")
    opts: dict[str, Any] = {"timeout_s": _number(env, "TETHER_MODEL_TIMEOUT_S", 30.0),
                            "max_retries": int(_number(env, "TETHER_MODEL_RETRIES", 2))}  # fmt: skip
    if kind == "offline":
        if offline is None:
            raise ModelConfigError("TETHER_MODEL names the offline model, but this workflow has none")
        return offline()
    if not model:
        raise ModelConfigError(f"model {spec!r}: write PROVIDER:MODEL (openai:, anthropic:, compatible:) or offline")
    if kind == "openai":
        from tether.models.providers import OpenAIModel

        return OpenAIModel(model, api_key=secrets.get("OPENAI_API_KEY"), name=spec,
                           base_url=env.get("OPENAI_BASE_URL") or None, **opts)  # fmt: skip
    if kind == "anthropic":
        from tether.models.providers import AnthropicModel

        return AnthropicModel(model, api_key=secrets.get("ANTHROPIC_API_KEY"), name=spec,
                              base_url=env.get("ANTHROPIC_BASE_URL") or None, **opts)  # fmt: skip
    if kind == "compatible":
        from tether.models.providers import OpenAIModel

        base = env.get("TETHER_MODEL_BASE_URL")
        if not base:
            raise ModelConfigError(f"model {spec!r} needs TETHER_MODEL_BASE_URL (e.g. http://127.0.0.1:8000/v1)")
        return OpenAIModel(model, api_key=local_key(secrets, "TETHER_MODEL_API_KEY"), base_url=base, name=spec, **opts)
    raise ModelConfigError(f"model {spec!r}: unknown provider {kind!r} (openai, anthropic, compatible, offline)")


def model_from_env(offline: Callable[[], Any] | None = None, *, env: Mapping[str, str] | None = None, secrets: Any = None) -> Any:
    """The model configuration names, or `offline()` when nothing is configured."""
    env = os.environ if env is None else env
    router = env.get("TETHER_ROUTER", "").strip()
    if router:
        from tether.models.router import Router

        tiers = [one_model(s, secrets=secrets, env=env, offline=offline) for s in router.split(",") if s.strip()]
        return Router(tiers, threshold=_number(env, "TETHER_ROUTER_THRESHOLD", 0.6))
    spec = env.get("TETHER_MODEL", "").strip()
    if not spec or spec == "offline":
        if offline is None:
            raise ModelConfigError("no model configured: set TETHER_MODEL (e.g. openai:gpt-4.1-mini)")
        return offline()
    chain = [one_model(s, secrets=secrets, env=env, offline=offline) for s in spec.split(",") if s.strip()]
    if len(chain) == 1:
        return chain[0]
    from tether.models.providers import Fallback

    return Fallback(*chain)


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ModelConfigError(f"${name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ModelConfigError(f"${name} must be >= 0, got {raw!r}")
    return value

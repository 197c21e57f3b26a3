"""Loading policies: YAML rule files, Cedar files, and sets that mix both.

A YAML file may `include:` other policy files (YAML or `.cedar`), relative to
itself; the set decides by asking every part, and the strictest answer wins
(deny > require_human_approval > allow). A set is stored as one bundle (its
parts' texts), so a paused run resumes, and a run replays, under exactly the
set it started with.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tether.errors import PolicyError
from tether.guardrails.cedar import CedarPolicy
from tether.guardrails.policy import (
    STRICTNESS,
    Decision,
    PolicySet,
    _strictest_tier,
    includes_of,
    read_policy_file,
)

_BUNDLE = "tether_policy_bundle"


class Policy(Protocol):
    hash: str
    source: str
    text: str

    def decide(self, tool: str, args: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> Decision: ...

    def lint(self, schemas: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str]]: ...


@dataclass(frozen=True)
class PolicyStack:
    """Several policies (YAML and Cedar, from `include:`) deciding together: the strictest answer wins."""

    parts: tuple[PolicySet | CedarPolicy, ...]
    source: str
    text: str
    hash: str

    @property
    def rules(self) -> tuple[Any, ...]:
        return tuple(r for p in self.parts for r in p.rules)

    @property
    def limits(self) -> tuple[Any, ...]:
        return tuple(lim for p in self.parts for lim in getattr(p, "limits", ()))

    @property
    def default(self) -> str:
        return " / ".join(f"{Path(p.source).name}: {p.default}" for p in self.parts)

    def decide(self, tool: str, args: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> Decision:
        decisions = [p.decide(tool, args, context) for p in self.parts]
        action = max((d.action for d in decisions), key=STRICTNESS.__getitem__)
        producing = [d for d in decisions if d.action == action]
        tiers = [d.approval for d in producing if d.approval]
        return Decision(
            action=action, rules=[r for d in producing for r in d.rules], matched=[r for d in decisions for r in d.matched],
            policy_hash=self.hash, reason="; ".join(d.reason for d in producing), risk=decisions[0].risk,
            approval=_strictest_tier(tiers) if tiers else None,
        )  # fmt: skip

    def lint(self, schemas: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str]]:
        errors, warnings = [], []
        for p in self.parts:
            e, w = p.lint(schemas)
            errors += e
            warnings += w
        return errors, warnings


def _part(path: Path) -> PolicySet | CedarPolicy:
    text = read_policy_file(path)
    return CedarPolicy.from_text(text, str(path)) if path.suffix == ".cedar" else PolicySet.from_text(text, str(path))


def load_policy(path: str | Path) -> PolicySet | CedarPolicy | PolicyStack:
    """A policy file (YAML or .cedar), with whatever it includes."""
    p = Path(path)
    first = _part(p)
    if isinstance(first, CedarPolicy):
        return first
    included = includes_of(first.text, str(p))
    if not included:
        return first
    parts: list[PolicySet | CedarPolicy] = [first]
    for inc in included:
        target = (p.parent / inc)
        if target.suffix not in (".cedar", ".yaml", ".yml"):
            raise PolicyError(f"{p}: include {inc!r} is not a .yaml, .yml or .cedar file")
        part = _part(target)
        if isinstance(part, PolicySet) and includes_of(part.text, str(target)):
            raise PolicyError(f"{target}: included files may not include others")
        parts.append(part)
    return _stack(parts, str(p))


def _stack(parts: list[PolicySet | CedarPolicy], source: str) -> PolicyStack:
    bundle = json.dumps({_BUNDLE: 1, "parts": [{"kind": "cedar" if isinstance(x, CedarPolicy) else "yaml",
                                                 "source": x.source, "text": x.text} for x in parts]}, sort_keys=True)  # fmt: skip
    return PolicyStack(tuple(parts), source, bundle, hashlib.sha256(bundle.encode()).hexdigest())


def _bundle(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) and _BUNDLE in data else None


def policy_from_text(text: str, source: str) -> PolicySet | CedarPolicy | PolicyStack:
    """A policy as stored with a run (a YAML or Cedar text, or a bundle)."""
    bundle = _bundle(text)
    if bundle is not None:
        parts = bundle["parts"]
        return _stack([CedarPolicy.from_text(x["text"], x["source"]) if x["kind"] == "cedar"
                       else PolicySet.from_text(x["text"], x["source"]) for x in parts], source)  # fmt: skip
    if source.endswith(".cedar"):
        return CedarPolicy.from_text(text, source)
    return PolicySet.from_text(text, source)

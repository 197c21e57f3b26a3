"""Policy as code: the YAML rule file users write, and the decisions it makes.

    policies:
      - name: refund_requires_approval
        if: {tool: "payments.refund", amount_usd: "> 100"}
        then: {action: "require_human_approval"}

`tool` is a glob over tool names, or a list of them; every other key under `if`
names an argument of the call and holds a comparison. Conditions are all required
(AND); `any: [{...}, {...}]` needs one of its mappings to hold, `all: [...]` every
one, `not: {...}` its mapping not to hold. A call matching no rule gets the file's
`default` (allow unless the file says otherwise). Of several matching rules the
strictest wins: deny > require_human_approval > allow. Any error while deciding
denies (fail closed).
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.errors import PolicyError
from tether.guardrails import _yaml
from tether.guardrails._conditions import (
    Condition,
    ConditionSyntaxError,
    ConditionTypeError,
)
from tether.guardrails.limits import Limit, parse_limits
from tether.types import Action, ApprovalTier, Decision

ACTIONS: tuple[Action, ...] = ("allow", "require_human_approval", "deny")
STRICTNESS: dict[str, int] = {a: i for i, a in enumerate(ACTIONS)}

# Keys a rule may test besides a call's arguments, supplied by the gate (see decide).
CONTEXT_KEYS = ("risk", "tenant", "principal", "trusted", "provenance", "taint", "facts")
_FILE_KEYS = {"policies", "default", "description", "version", "include", "limits"}
_RULE_KEYS = {"name", "if", "then", "description"}
_THEN_KEYS = {"action", "reason", "approvers", "role", "expires_in", "on_expiry", "escalate_to"}
_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Group:
    """`any:` (one holds), `all:` (every one holds) or `not:` (it does not hold) over mappings of
    conditions. None (an empty argument) propagates: it cannot prove a restrictive rule wrong."""

    kind: str  # any | all | not
    parts: tuple[tuple[Condition | Group, ...], ...]  # each part: conditions that must all hold

    @property
    def key(self) -> str:
        return f"{self.kind}({', '.join(self.keys())})"

    def keys(self) -> list[str]:
        return [k for part in self.parts for c in part for k in (c.keys() if isinstance(c, Group) else [c.key])]

    def matches(self, args: Mapping[str, Any]) -> bool | None:
        results = [_all(part, args) for part in self.parts]
        if self.kind == "not":
            return None if results[0] is None else not results[0]
        if self.kind == "any":
            return True if True in results else (None if None in results else False)
        return False if False in results else (None if None in results else True)


def _all(conditions: tuple[Condition | Group, ...], args: Mapping[str, Any]) -> bool | None:
    results = [c.matches(args) for c in conditions]
    return False if False in results else (None if None in results else True)


@dataclass(frozen=True)
class Rule:
    name: str
    tool: str  # the glob, or the globs joined by ", " (for display)
    conditions: tuple[Condition | Group, ...]
    action: Action
    line: int
    reason: str | None = None
    tier: ApprovalTier | None = None
    globs: tuple[str, ...] = ()  # every glob `tool` names (one, unless `if.tool` is a list)

    def applies_to(self, tool: str) -> bool:
        return any(fnmatch.fnmatchcase(tool, g) for g in (self.globs or (self.tool,)))

    def matches(self, tool: str, args: Mapping[str, Any]) -> tuple[bool, list[str]]:
        """(matched, arguments that were empty). An empty (null) argument cannot prove
        a restrictive rule wrong, so it counts as a match for deny and approval rules
        (conservative) and as no match for allow rules."""
        if not self.applies_to(tool):
            return False, []
        missing = []
        for c in self.conditions:
            ok = c.matches(args)
            if ok is False:
                return False, []
            if ok is None:
                missing.append(c.key)
        if missing and self.action == "allow":
            return False, []
        return True, missing


@dataclass(frozen=True)
class PolicySet:
    """A loaded YAML policy file: its rules, default, limits and content hash; `decide` makes a Decision."""

    rules: tuple[Rule, ...]
    default: Action
    hash: str
    source: str
    text: str
    limits: tuple[Limit, ...] = ()

    @classmethod
    def from_text(cls, text: str, source: str = "<policy>") -> PolicySet:
        digest = hashlib.sha256(text.encode()).hexdigest()
        data = _yaml.load(text, source)
        rules, default = _parse(data, source)
        limits = parse_limits(data.get("limits"), source, data.key_lines.get("limits", 0))
        return cls(tuple(rules), default, digest, source, text, limits)

    @classmethod
    def load(cls, path: str | Path) -> PolicySet:
        return cls.from_text(read_policy_file(Path(path)), str(path))

    def decide(self, tool: str, args: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> Decision:
        """The decision for a call. `context` supplies the reserved keys rules may test besides
        arguments: `risk` (the call's risk score), `tenant`, `principal`, `trusted` (every argument
        from a trusted source), `provenance.ARG` ("trusted" or "untrusted"; see guardrails.provenance)
        and `facts` (what the workflow's code established for this call; rules test `facts.NAME`)."""
        d = self._decide(tool, {**args, **(context or {})})
        risk = (context or {}).get("risk")
        return d.model_copy(update={"risk": risk}) if risk is not None else d

    def _decide(self, tool: str, args: Mapping[str, Any]) -> Decision:
        matched: list[Rule] = []
        unknown: list[str] = []
        for rule in self.rules:
            try:
                hit, missing = rule.matches(tool, args)
                if hit:
                    matched.append(rule)
                    unknown += [f"rule {rule.name!r} applied because {', '.join(map(repr, missing))} is empty"
                                ] if missing else []  # fmt: skip
            except Exception as e:  # noqa: BLE001 - the gate must never fail open
                why = str(e) if isinstance(e, ConditionTypeError) else f"{type(e).__name__}: {e}"
                return Decision(
                    action="deny",
                    rules=[rule.name],
                    matched=[rule.name],
                    policy_hash=self.hash,
                    reason=f"rule {rule.name!r} could not be evaluated ({why}); failing closed",
                )
        if not matched:
            return Decision(
                action=self.default,
                rules=[],
                policy_hash=self.hash,
                reason=f"no rule matched; file default is {self.default}",
            )
        action = max((r.action for r in matched), key=STRICTNESS.__getitem__)
        producing = [r for r in matched if r.action == action]
        reasons = [r.reason for r in producing if r.reason] + unknown
        tiers = [r.tier for r in producing if r.tier] if action == "require_human_approval" else []
        return Decision(
            approval=_strictest_tier(tiers) if tiers else None,
            action=action,
            rules=[r.name for r in producing],
            matched=[r.name for r in matched],
            policy_hash=self.hash,
            reason="; ".join(reasons) or f"matched {', '.join(r.name for r in producing)}",
        )

    def lint(self, schemas: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str]]:
        """(errors, warnings) against a workflow's tools (name -> JSON Schema of its arguments).

        An error is a rule that names a tool of the workflow but an argument none of
        those tools has (a typo like `amount` for `amount_usd`): it would silently
        never be checked. A warning is a rule for tools this workflow does not have
        (policy files are often shared between workflows)."""
        errors, warnings = [], []
        for rule in self.rules:
            names = [n for n in schemas if rule.applies_to(n)]
            where = f"{self.source}:{rule.line}: rule {rule.name!r}"
            if not names:
                warnings.append(f"{where}: tool {rule.tool!r} matches no tool of this workflow")
                continue
            keys = [k for c in rule.conditions for k in (c.keys() if isinstance(c, Group) else [c.key])]
            for key in keys:
                top, _, rest = key.partition(".")
                if top in ("provenance", "taint"):  # provenance.ARG and taint.ARG name an argument too
                    top = rest.split(".")[0]
                elif top in CONTEXT_KEYS:
                    continue
                if not any(top in schemas[n].get("properties", {}) for n in names):
                    errors.append(f"{where}: no matching tool has an argument {top!r} ({', '.join(names)})")
        return errors, warnings


def read_policy_file(p: Path) -> str:
    """A policy file's text, decoded without newline translation so its hash is of the
    file's bytes (`sha256sum FILE` matches); a one-line PolicyError otherwise."""
    try:
        return p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{p}: policy file not found") from None
    except IsADirectoryError:
        raise PolicyError(f"{p}: is a directory, not a policy file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"{p}: cannot read policy file ({e})") from None


def _err(source: str, line: int, rule: str | None, msg: str) -> PolicyError:
    where = f"{source}:{line}" if line else source
    return PolicyError(f"{where}: rule {rule!r}: {msg}" if rule else f"{where}: {msg}")


def _action(value: Any, source: str, line: int, rule: str | None) -> Action:
    if value not in ACTIONS:
        raise _err(source, line, rule, f"unknown action {value!r} (use {', '.join(ACTIONS)})")
    return value  # type: ignore[no-any-return]


def _parse(data: Any, source: str) -> tuple[list[Rule], Action]:
    if data is None:
        raise PolicyError(f"{source}: empty policy file (expected a 'policies:' list)")
    if not isinstance(data, _yaml.LineDict):
        raise PolicyError(f"{source}:1: expected a mapping with a 'policies:' list")
    for key in data:
        if key not in _FILE_KEYS:
            raise _err(source, data.key_lines[key], None, f"unknown key {key!r} (expected {sorted(_FILE_KEYS)})")
    includes = data.get("include", [])
    if not isinstance(includes, list) or not all(isinstance(i, str) and i for i in includes):
        raise _err(source, data.key_lines.get("include", 0), None, "'include' must be a list of policy file paths")
    default = _action(data.get("default", "allow"), source, data.key_lines.get("default", 0), None)
    items = data.get("policies", [])
    if not isinstance(items, list):
        raise _err(source, data.key_lines.get("policies", 0), None, "'policies' must be a list of rules")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for item in items:
        rule = _parse_rule(item, source, data.key_lines.get("policies", 0))
        if rule.name in seen:
            raise _err(source, rule.line, rule.name, f"duplicate rule name (first defined at line {seen[rule.name]})")
        seen[rule.name] = rule.line
        rules.append(rule)
    return rules, default


def _parse_rule(item: Any, source: str, list_line: int) -> Rule:
    if not isinstance(item, _yaml.LineDict):
        raise _err(source, list_line, None, f"each rule must be a mapping, got {item!r}")
    line = item.line
    name = item.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _err(source, line, None, "rule has no 'name'")
    for key in item:
        if key not in _RULE_KEYS:
            raise _err(source, item.key_lines[key], name, f"unknown key {key!r} (expected {sorted(_RULE_KEYS)})")
    cond = item.get("if")
    if not isinstance(cond, _yaml.LineDict):
        raise _err(source, line, name, "'if' must be a mapping with at least 'tool'")
    tool = cond.get("tool")
    globs = tuple(tool) if isinstance(tool, list) else (tool,)
    if not globs or not all(isinstance(g, str) and g for g in globs):
        raise _err(source, cond.line, name, "'if.tool' must be a tool name or glob like \"payments.*\", or a list of them")
    conditions = _conditions(cond, source, name, top=True)
    then = item.get("then")
    if not isinstance(then, _yaml.LineDict) or "action" not in then:
        raise _err(source, line, name, "'then' must be a mapping with 'action'")
    for key in then:
        if key not in _THEN_KEYS:
            raise _err(source, then.key_lines[key], name, f"unknown key {key!r} under 'then'")
    action = _action(then["action"], source, then.key_lines["action"], name)
    reason = then.get("reason")
    tier = _tier(then, source, name, action)
    return Rule(name, ", ".join(globs), conditions, action, line, str(reason) if reason is not None else None, tier,
                globs)  # fmt: skip


def _conditions(cond: Any, source: str, name: str, *, top: bool = False) -> tuple[Condition | Group, ...]:
    """The conditions of one mapping under `if` (or inside `any:`/`all:`/`not:`), in order."""
    out: list[Condition | Group] = []
    for key, spec in cond.items():
        if key == "tool" and top:
            continue
        line = cond.key_lines.get(key, cond.line) if isinstance(cond, _yaml.LineDict) else 0
        if key in ("any", "all", "not"):
            parts = [spec] if key == "not" else spec
            if key != "not" and (not isinstance(spec, list) or not spec):
                raise _err(source, line, name, f"'{key}' must be a non-empty list of mappings of conditions")
            if not all(isinstance(p, dict) and p for p in parts):
                raise _err(source, line, name, f"'{key}' must hold mappings of conditions, like {{amount_usd: '> 100'}}")
            out.append(Group(key, tuple(_conditions(p, source, name) for p in parts)))  # type: ignore[arg-type]
            continue
        if key == "tool":
            raise _err(source, line, name, "'tool' belongs at the top of 'if', not inside any/all/not")
        try:
            out.append(Condition.parse(key, spec))
        except ConditionSyntaxError as e:
            raise _err(source, line, name, f"bad comparison for {key!r}: {e}") from None
    return tuple(out)


def _tier(then: Any, source: str, name: str, action: Action) -> ApprovalTier | None:
    keys = {"approvers", "role", "expires_in", "on_expiry", "escalate_to"} & set(then)
    if not keys:
        return None
    first = min(then.key_lines[k] for k in keys)
    if action != "require_human_approval":
        raise _err(source, first, name, f"{', '.join(sorted(keys))} only go with require_human_approval")
    approvers = then.get("approvers", 1)
    if not isinstance(approvers, int) or isinstance(approvers, bool) or not 1 <= approvers <= 5:
        raise _err(source, then.key_lines.get("approvers", first), name, "approvers must be a whole number from 1 to 5")
    expires = then.get("expires_in")
    seconds = None
    if expires is not None:
        text = str(expires).strip()
        if len(text) < 2 or text[-1] not in _DURATION or not text[:-1].isdigit() or int(text[:-1]) == 0:
            raise _err(source, then.key_lines["expires_in"], name, f"expires_in {expires!r} is not a duration like 30m, 4h or 2d")
        seconds = int(text[:-1]) * _DURATION[text[-1]]
    on_expiry = then.get("on_expiry", "deny")
    if on_expiry not in ("deny", "escalate"):
        raise _err(source, then.key_lines["on_expiry"], name, "on_expiry must be deny or escalate")
    if on_expiry == "escalate" and not then.get("escalate_to"):
        raise _err(source, then.key_lines["on_expiry"], name, "on_expiry: escalate needs escalate_to: ROLE")
    if on_expiry == "escalate" and seconds is None:
        raise _err(source, then.key_lines["on_expiry"], name, "on_expiry needs expires_in")
    return ApprovalTier(required=approvers, role=then.get("role"), expires_in_s=seconds, on_expiry=on_expiry,
                        escalate_to=then.get("escalate_to"))  # fmt: skip


def _strictest_tier(tiers: list[ApprovalTier]) -> ApprovalTier:
    """Several approval rules at once: the most approvers, the first role, the soonest expiry."""
    expiring = [t for t in tiers if t.expires_in_s is not None]
    soonest = min(expiring, key=lambda t: t.expires_in_s or 0) if expiring else None
    return ApprovalTier(
        required=max(t.required for t in tiers),
        role=next((t.role for t in tiers if t.role), None),
        expires_in_s=soonest.expires_in_s if soonest else None,
        on_expiry=soonest.on_expiry if soonest else "deny",
        escalate_to=soonest.escalate_to if soonest else None,
    )


def includes_of(text: str, source: str) -> list[str]:
    data = _yaml.load(text, source)
    return list(data.get("include", [])) if isinstance(data, dict) else []

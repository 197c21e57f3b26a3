"""Argument conditions in policy rules: `> 100`, `<= 5`, `== "EU"`, `in [a, b]`.

A bare value means equality, a YAML list means `in`. Ordering operators take
finite numbers only; anything else is a lint error at load time, or (for an
argument of the wrong type at decision time) an evaluation error that fails
closed. A condition on an argument the tool does not have does not apply
(False). An argument the tool has but the call left empty (null, as validated
calls carry every declared argument) makes the condition unknown (None), which
the policy treats conservatively.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from tether.guardrails._yaml import load_scalar

_MISSING = object()
_OPERATOR = re.compile(r"^\s*(not in(?=[\s\[])|in(?=[\s\[])|>=|<=|==|!=|>|<)\s*(.*?)\s*$", re.S)
_ORDERING: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


class ConditionSyntaxError(ValueError):
    pass


class ConditionTypeError(TypeError):
    pass


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _parse_operand(text: str) -> Any:
    if not text:
        raise ConditionSyntaxError("missing a value after the operator")
    try:
        return load_scalar(text)
    except yaml.YAMLError:
        raise ConditionSyntaxError(f"cannot read the value {text!r}") from None


# The values the gate gives `provenance.ARG` and `taint.ARG` (guardrails.provenance).
_LEVELS = {"provenance": ("trusted", "untrusted"), "taint": ("trusted", "tainted", "unknown")}


@dataclass(frozen=True)
class Condition:
    key: str
    op: str
    value: Any

    @classmethod
    def parse(cls, key: str, spec: Any) -> Condition:
        if isinstance(spec, list):
            return cls(key, "in", spec)._checked()
        if isinstance(spec, dict):
            raise ConditionSyntaxError("a condition is a comparison like '> 100', not a mapping")
        if not isinstance(spec, str):
            return cls(key, "==", spec)._checked()
        m = _OPERATOR.match(spec)
        if m is None:
            # Catch typos like '=> 5' or '=< 5' instead of treating them as text.
            if re.match(r"^\s*[=<>!]", spec):
                raise ConditionSyntaxError(f"unknown operator in {spec!r} (use >, >=, <, <=, ==, !=, in, not in)")
            return cls(key, "==", spec)._checked()
        op, operand = m.group(1), _parse_operand(m.group(2))
        if op in _ORDERING and not _is_number(operand):
            raise ConditionSyntaxError(f"{spec!r}: {op} needs a number, got {operand!r}")
        if op in ("in", "not in") and not isinstance(operand, list):
            raise ConditionSyntaxError(f"{spec!r}: {op} needs a list like [a, b]")
        if op in ("==", "!=") and isinstance(operand, (list, dict)):
            raise ConditionSyntaxError(f"{spec!r}: {op} needs a single value")
        return cls(key, op, operand)._checked()

    def _checked(self) -> Condition:
        """A trust level that cannot occur would make the rule silently never fire: refused."""
        top = self.key.split(".")[0]
        levels = _LEVELS.get(top)
        if levels is None or self.key.count(".") < 1 or self.op in _ORDERING:
            return self
        values = self.value if isinstance(self.value, list) else [self.value]
        wrong = [v for v in values if v not in levels]
        if wrong:
            hint = " (tainted and unknown are levels of taint.ARG)" if top == "provenance" else ""
            raise ConditionSyntaxError(f"{self.key} is one of {', '.join(levels)}, never {wrong[0]!r}{hint}")
        return self

    def matches(self, args: Mapping[str, Any]) -> bool | None:
        """True or False; None when the argument is empty (null) and the rule asks about a value."""
        actual = lookup(args, self.key)
        if actual is _MISSING and self.key.startswith("facts."):
            actual = None  # a fact the workflow did not establish is unknown, not absent: judged conservatively
        if actual is _MISSING:
            return False
        if actual is None and not (self.op in ("==", "!=") and self.value is None):
            return None
        if self.op in _ORDERING:
            if not _is_number(actual):
                raise ConditionTypeError(f"argument {self.key!r} is {actual!r}, not a finite number")
            return _ORDERING[self.op](actual, self.value)
        if self.op == "==":
            return _equal(actual, self.value)
        if self.op == "!=":
            return not _equal(actual, self.value)
        found = any(_equal(actual, v) for v in self.value)
        return found if self.op == "in" else not found

    def __str__(self) -> str:
        return f"{self.key} {self.op} {self.value!r}"


def _equal(a: Any, b: Any) -> bool:
    # No coercion between kinds: "100" != 100 and True != 1.
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def lookup(args: Mapping[str, Any], key: str) -> Any:
    """`customer.tier` reads nested arguments; an empty (null) parent makes the value empty."""
    cur: Any = args
    for part in key.split("."):
        if cur is None:
            return None
        if not isinstance(cur, Mapping) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur

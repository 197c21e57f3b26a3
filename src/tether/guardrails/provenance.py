"""Provenance and trust: where the values in a run came from, and whether to trust them.

Every value that enters a run is labelled with its source and a trust level:

    input            the run's input (the user's request); trusted only in the
                     fields the workflow declares `trusted_input`
    tool:NAME        a tool's result; untrusted where the tool says so
                     (`untrusted_output`), or when the call that produced it was
                     itself steered by untrusted arguments
    model:NAME       arguments a model wrote (its choice among options is bounded
                     and not a value)
    retrieved:NAME   text the workflow labels itself (`RunContext.label`)

When a call is proposed, each argument is traced back to the values the run has
seen. Python cannot follow a value through arbitrary code, so the trace is by
value: an argument is *trusted* when a trusted source holds exactly that value
(corroborated), *untrusted* when it matches only untrusted values (equal to one;
a number, an id or an email address written in untrusted text; a phrase of 16
characters or more copied out of it or pasting it whole), and otherwise takes the trust of
its proposer (workflow code is trusted; a model's free value is not). Arguments
bounded by their schema (enums, booleans) carry no data and are always trusted.

Policies read the result as `trusted` (every argument trusted) and
`provenance.ARG` ("trusted" / "untrusted").
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Trust = Literal["trusted", "untrusted"]

_NUMBER = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.])\d+(?:\.\d+)?")
# An identifier-like token (has a digit or an @) in untrusted text: an id, an email, a code.
_TOKEN = re.compile(r"[\w@+-][\w.@+-]*[\w@+-]")
_MIN_TOKEN = 4
# Plain words are everywhere ("account", "refund"); only a longer run of text counts as a copy.
_MIN_PHRASE = 16


@dataclass(frozen=True, order=True)
class Label:
    source: str
    trust: Trust


@dataclass(frozen=True)
class Origin:
    """One argument's verdict and the sources behind it."""

    trust: Trust
    sources: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"trust": self.trust, "sources": list(self.sources)}


def _key(v: Any) -> tuple[str, Any] | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return ("n", round(float(v), 6))
    if isinstance(v, str):
        s = v.strip().casefold()
        return ("s", s) if s else None
    return None


def _leaves(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """(the nearest mapping key above, scalar) for every scalar inside a JSON-like value."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _leaves(v, str(k))
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v, key)
    else:
        yield key, value


def tokens_in(text: str) -> set[str]:
    return {t for t in _TOKEN.findall(text) if len(t) >= _MIN_TOKEN and any(c.isdigit() or c == "@" for c in t)}


def numbers_in(text: str) -> set[float]:
    out = set()
    for m in _NUMBER.finditer(text):
        n = float(m.group().replace(",", ""))
        if n >= 10 or n != int(n):  # small whole numbers are everywhere; not evidence of a copy
            out.add(round(n, 6))
    return out


class Provenance:
    """The labelled values a run has seen, and the verdict on a proposed call's arguments."""

    def __init__(self) -> None:
        self._exact: dict[tuple[str, Any], set[Label]] = defaultdict(set)
        self._texts: list[tuple[str, Label]] = []  # untrusted text, casefolded, for containment
        self._numbers: dict[float, set[Label]] = defaultdict(set)  # numbers written in untrusted text
        self._tokens: dict[str, set[Label]] = defaultdict(set)  # ids and addresses written in untrusted text

    def add(self, value: Any, source: str, trust: Trust, untrusted_keys: Iterable[str] = ()) -> None:
        """Label every scalar in `value`; those under a key in `untrusted_keys` are untrusted whatever `trust` says."""
        risky = set(untrusted_keys)
        for key, leaf in _leaves(value):
            k = _key(leaf)
            if k is None:
                continue
            label = Label(source, "untrusted" if key in risky else trust)
            self._exact[k].add(label)
            if label.trust == "untrusted" and k[0] == "s":
                if len(k[1]) >= _MIN_PHRASE:
                    self._texts.append((k[1], label))
                for n in numbers_in(k[1]):
                    self._numbers[n].add(label)
                for tok in tokens_in(k[1]):
                    self._tokens[tok].add(label)

    def assess(
        self, args: Mapping[str, Any], schema: Mapping[str, Any] | None, proposer: str
    ) -> dict[str, Origin]:
        """The origin of each argument of a call `proposer` made."""
        props = (schema or {}).get("properties", {})
        defs = (schema or {}).get("$defs", {})
        fallback = Label(proposer, "untrusted" if proposer.startswith("model:") else "trusted")
        out = {}
        for name, value in args.items():
            if _bounded(props.get(name, {}), defs):
                out[name] = Origin("trusted", ("bounded",))
                continue
            labels: set[Label] = set()
            for _, leaf in _leaves(value):
                labels |= self._leaf(leaf, fallback)
            untrusted = sorted({lb.source for lb in labels if lb.trust == "untrusted"})
            if untrusted:
                out[name] = Origin("untrusted", tuple(untrusted))
            else:
                out[name] = Origin("trusted", tuple(sorted({lb.source for lb in labels})) or ("constant",))
        return out

    def _leaf(self, leaf: Any, fallback: Label) -> set[Label]:
        k = _key(leaf)
        if k is None:
            return set()
        found = set(self._exact.get(k, ()))
        if any(lb.trust == "trusted" for lb in found):
            return {lb for lb in found if lb.trust == "trusted"}  # corroborated by a trusted source
        if k[0] == "n":
            found |= self._numbers.get(k[1], set())
        else:
            s = k[1]
            found |= self._tokens.get(s, set())
            for text, label in self._texts:
                if (len(s) >= _MIN_PHRASE and s in text) or text in s:
                    found.add(label)
        return found or {fallback}


def _bounded(prop: Mapping[str, Any], defs: Mapping[str, Any]) -> bool:
    """Does the schema confine this argument to a fixed set of values?"""
    ref = prop.get("$ref", "")
    if ref.startswith("#/$defs/"):
        prop = defs.get(ref.removeprefix("#/$defs/"), {})
    if "enum" in prop or "const" in prop or prop.get("type") == "boolean":
        return True
    if prop.get("type") == "array" and isinstance(prop.get("items"), Mapping):
        return _bounded(prop["items"], defs)
    variants = prop.get("anyOf") or prop.get("oneOf")
    if variants:
        return all(v.get("type") == "null" or _bounded(v, defs) for v in variants)
    return False


def summary(origins: Mapping[str, Origin]) -> dict[str, Any]:
    """The policy context: `trusted` and `provenance.ARG`."""
    return {
        "trusted": all(o.trust == "trusted" for o in origins.values()),
        "provenance": {name: o.trust for name, o in origins.items()},
    }


def gate_view(call: Any, clean: Mapping[str, Any]) -> dict[str, Any]:
    """The gate's view of where a call's arguments came from (`trusted`, `provenance` for rules);
    a call nobody traced has every argument untrusted."""
    if call.provenance is None:
        traced = {name: "untrusted" for name in clean}
    else:  # an argument the caller left out holds the schema's default: the tool author's value
        traced = {name: call.provenance.get(name, {}).get("trust", "trusted") for name in clean}
    return {"trusted": all(v == "trusted" for v in traced.values()), "provenance": traced}


def learn_result(provenance: Provenance, tool: Any, origins: Mapping[str, Origin], result: Any) -> None:
    """Label a call's result: untrusted where the tool says outsiders write it, and all of it when
    untrusted arguments chose what it returned (any argument of a read, the target of a change)."""
    if tool is None or not result.ok or result.output is None:
        return
    choosers = [tool.target] if tool.side_effect else list(origins)
    steered = any(origins[a].trust == "untrusted" for a in choosers if a in origins)
    whole = tool.untrusted_output is True or steered
    keys = tool.untrusted_output if isinstance(tool.untrusted_output, tuple) else ()
    provenance.add(result.output, f"tool:{tool.name}", "untrusted" if whole else "trusted", keys)

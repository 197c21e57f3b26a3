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
value, after normalising per type (numbers written `1,100.00` or `1100`, ISO dates
with a `T` or a space, text case). An argument is *trusted* when the trusted side
holds it exactly, or as a number, id, e-mail address or URL written in trusted text
(this corroboration wins even when an outsider's text repeats the value), or, when
no outsider's text holds it, as whole words of trusted prose (a folder, a `#channel`
the user named). Otherwise it is
*untrusted* when an untrusted source holds it (equal to a value; a number, id,
address or URL written in its text; a phrase of 16 characters or more copied out of
it, or pasting it whole; or such a token of it inside a longer string the model
wrote); and otherwise it takes the trust of its proposer (workflow code is trusted;
a model's free value is not). A trusted value given a `scope` (a trusted input
field) vouches only for the argument of that name. Arguments bounded by their
schema (enums, booleans) carry no data and are always trusted.

Policies read the result as `trusted` (every argument trusted), `provenance.ARG`
("trusted" / "untrusted") and, finer, `taint.ARG`, one of three:

    trusted   a trusted source holds it (or the workflow's own code wrote it)
    tainted   it matches an untrusted source: an outsider may have written it
    unknown   it matches nothing the run has seen: a model wrote it (reformatted
              what the user said, or made it up); not evidence of an attack

`provenance.ARG == "untrusted"` is `taint.ARG` tainted or unknown. A call nobody
traced has every argument tainted (fail closed).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Trust = Literal["trusted", "untrusted"]
Taint = Literal["trusted", "tainted", "unknown"]

_NUMBER = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.])\d+(?:\.\d+)?")
# An identifier-like token (has a digit or an @) in text: an id, an email, a code, an IBAN.
_TOKEN = re.compile(r"[\w@+-][\w.@+-]*[\w@+-]")
_DIGIT, _DIGIT_OR_AT = re.compile(r"\d"), re.compile(r"[\d@]")
_URL = re.compile(r"https?://[^\s\"'<>()\[\]{}]+", re.IGNORECASE)
# Strings that are a number or a date in another spelling: matched after normalising.
_NUMERIC = re.compile(r"-?(?:[1-9]\d{0,2}(?:,\d{3})+|[1-9]\d*|0)(?:\.\d+)?")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ t]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:z|[+-]\d{2}:?\d{2})?")
_MIN_TOKEN = 4
# Plain words are everywhere ("account", "refund"); only a longer run of text counts as a copy.
_MIN_PHRASE = 16


@dataclass(frozen=True, order=True)
class Label:
    source: str
    trust: Trust
    # A trusted value that vouches only for the argument of this name: a trusted input field
    # (`ticket_id`) is what it says, not "anything equal to it anywhere".
    scope: str | None = None


@dataclass(frozen=True)
class Origin:
    """One argument's verdict and the sources behind it."""

    trust: Trust
    sources: tuple[str, ...]
    taint: Taint = "trusted"  # untrusted splits into tainted (an outside source) and unknown (none)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"trust": self.trust, "sources": list(self.sources)}
        if self.taint == "unknown":  # trusted and tainted follow from `trust`; records stay as they were
            out["taint"] = "unknown"
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Origin:
        trust = d.get("trust", "untrusted")
        return cls(trust, tuple(d.get("sources", ())), d.get("taint") or ("trusted" if trust == "trusted" else "tainted"))


def _key(v: Any) -> tuple[str, Any] | None:
    """A value as compared: numbers (also written as text) by value, dates by instant, text casefolded."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return ("n", round(float(v), 6))
    if isinstance(v, str):
        s = v.strip().casefold()
        if not s:
            return None
        first = s[0]
        if (first.isdigit() or first == "-") and _NUMERIC.fullmatch(s):  # "1,100.00" is 1100; "000123" (an id) is not
            return ("n", round(float(s.replace(",", "")), 6))
        if len(s) >= 10 and s[4] == "-" and _DATE.fullmatch(s):
            try:
                return ("s", dt.datetime.fromisoformat(s.upper().replace(" ", "T")).isoformat())
            except ValueError:
                pass
        return ("s", s)
    return None


def _leaves(value: Any, risky: frozenset[str] = frozenset(), under: bool = False) -> Iterator[tuple[bool, Any]]:
    """(is it anywhere under a key in `risky`, scalar) for every scalar inside a JSON-like value."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _leaves(v, risky, under or k in risky)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v, risky, under)
    else:
        yield under, value


def tokens_in(text: str) -> set[str]:
    """Ids, e-mail addresses, codes (a digit or an @ in them) and URLs written in `text`."""
    if not _DIGIT_OR_AT.search(text) and "://" not in text:
        return set()  # the common case: plain words
    found = {t for t in _TOKEN.findall(text) if len(t) >= _MIN_TOKEN and _DIGIT_OR_AT.search(t)}
    if "://" in text:
        found |= {u.casefold().rstrip(".,;:!?") for u in _URL.findall(text)}
    return found


def numbers_in(text: str) -> set[float]:
    if not _DIGIT.search(text):
        return set()
    out = set()
    for m in _NUMBER.finditer(text):
        if m.group()[0] == "0" and m.group()[1:2].isdigit():
            continue  # "000123" is an id, not the number 123
        n = float(m.group().replace(",", ""))
        if n >= 10 or n != int(n):  # small whole numbers are everywhere; not evidence of a copy
            out.add(round(n, 6))
    return out


class Provenance:
    """The labelled values a run has seen, and the verdict on a proposed call's arguments."""

    def __init__(self) -> None:
        self._exact: dict[tuple[str, Any], set[Label]] = defaultdict(set)
        self._texts: list[tuple[str, Label]] = []  # text of 16+ characters, casefolded, for containment
        self._numbers: dict[float, set[Label]] = defaultdict(set)  # numbers written in text
        self._tokens: dict[str, set[Label]] = defaultdict(set)  # ids, addresses and URLs written in text
        self._prose: list[tuple[str, Label]] = []  # trusted text with spaces, for the words the user wrote
        self._scoped = False  # any label confined to one argument (then every lookup filters)

    def add(
        self, value: Any, source: str, trust: Trust, untrusted_keys: Iterable[str] = (), scope: str | None = None
    ) -> None:
        """Label every scalar in `value`; those anywhere under a key in `untrusted_keys` are untrusted
        whatever `trust` says. Text of either trust is searched for the numbers, ids, addresses and
        URLs written in it, so a value the user wrote in prose is recognised as theirs. `scope`
        confines what a trusted `value` vouches for to the argument of that name."""
        for risky, leaf in _leaves(value, frozenset(untrusted_keys)):
            k = _key(leaf)
            if k is None:
                continue
            label = Label(source, "untrusted", None) if risky else Label(source, trust, scope if trust == "trusted" else None)
            self._scoped = self._scoped or label.scope is not None
            self._exact[k].add(label)
            # Trusted values matter inside prose (the user's request); a trusted id or code on its
            # own is matched exactly already. Untrusted text is searched whatever its shape.
            if k[0] == "s" and label.trust == "trusted" and " " in k[1]:
                self._prose.append((k[1], label))
            if k[0] == "s" and (label.trust == "untrusted" or " " in k[1]):
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
                labels |= self._leaf(leaf, fallback, name)
            untrusted = sorted({lb.source for lb in labels if lb.trust == "untrusted"})
            if untrusted:  # tainted when a source outside the proposer's own words holds it
                seen = any(lb.trust == "untrusted" and lb != fallback for lb in labels)
                out[name] = Origin("untrusted", tuple(untrusted), "tainted" if seen else "unknown")
            else:
                out[name] = Origin("trusted", tuple(sorted({lb.source for lb in labels})) or ("constant",))
        return out

    def _leaf(self, leaf: Any, fallback: Label, arg: str | None = None) -> set[Label]:
        k = _key(leaf)
        if k is None:
            return set()
        found = set(self._exact.get(k, ()))
        found |= self._numbers.get(k[1], set()) if k[0] == "n" else self._tokens.get(k[1], set())
        if self._scoped:  # a scoped value vouches for its own argument only
            found = {lb for lb in found if lb.scope is None or lb.scope == arg}
        # Corroboration: what the trusted side holds (exactly, or as a number, id, address or URL in
        # its text) is trusted, whoever else repeats it: the user's own request and our records say
        # what is wanted, and an outsider repeating a value adds nothing the user did not ask for.
        if any(lb.trust == "trusted" for lb in found):
            return {lb for lb in found if lb.trust == "trusted"}
        if k[0] == "s":
            s = k[1]
            for text, label in self._texts:
                if ((len(s) >= _MIN_PHRASE and s in text) or text in s) and label.scope in (None, arg):
                    found.add(label)
            if not any(lb.trust == "untrusted" for lb in found):
                found |= {lb for lb in self._said(s) if lb.scope in (None, arg)}
            # A token of untrusted text inside new text taints it, however much is around it.
            for tok in tokens_in(s):
                if tok != s:
                    found |= {lb for lb in (*self._tokens.get(tok, ()), *self._exact.get(("s", tok), ()))
                              if lb.trust == "untrusted"}  # fmt: skip
        if any(lb.trust == "untrusted" for lb in found):
            return {lb for lb in found if lb.trust == "untrusted"}  # an outsider's, and no trusted value vouches: tainted
        return found or {fallback}

    def _said(self, s: str) -> set[Label]:
        """Trusted prose holding `s` as whole words (a folder, a channel, a name the user wrote)."""
        if len(s) < 3 or not self._prose:
            return set()
        pattern = re.compile(rf"(?<![\w#@]){re.escape(s)}(?![\w@])")
        return {label for text, label in self._prose if pattern.search(text)}


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
        origins = {name: Origin("untrusted", (), "tainted") for name in clean}
    else:  # an argument the caller left out holds the schema's default: the tool author's value
        origins = {name: Origin.from_dict(call.provenance[name]) if name in call.provenance else Origin("trusted", ())
                   for name in clean}  # fmt: skip
    return {**summary(origins), "taint": {name: o.taint for name, o in origins.items()}}


def learn_result(provenance: Provenance, tool: Any, origins: Mapping[str, Origin], result: Any) -> None:
    """Label a call's result: untrusted where the tool says outsiders write it, and all of it when
    untrusted arguments chose what it returned (any argument of a read, the target of a change)."""
    if tool is None or not result.ok or result.output is None:
        return
    if tool.side_effect:
        choosers = [tool.target]
    else:  # a read: the arguments that choose what it returns (all, unless the tool names them)
        choosers = list(origins) if getattr(tool, "selects", None) is None else list(tool.selects)
    steered = any(origins[a].trust == "untrusted" for a in choosers if a in origins)
    whole = tool.untrusted_output is True or steered
    keys = tool.untrusted_output if isinstance(tool.untrusted_output, tuple) else ()
    provenance.add(result.output, f"tool:{tool.name}", "untrusted" if whole else "trusted", keys)

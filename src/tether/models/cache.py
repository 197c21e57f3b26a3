"""The answer cache: repeated questions answered without a model call.

Safe by construction:
- **per tenant**: the tenant is part of the key and of every lookup; no entry is
  ever read across tenants;
- **personalisation**: observation fields named `personal` (customer id, ticket id,
  name...) are left out of the key, and where the answer's arguments carry their
  values those become `{{field}}` placeholders, filled from the next customer's
  observation on a hit. An answer that still carries personal data the
  redactor finds (emails, phone or card numbers...) is not cached;
- **versions**: the key covers the policy hash and the prompt (instructions, options,
  model), so a changed policy or prompt never hits an old answer;
  `invalidate_stale` deletes those entries; entries expire after `ttl_s`;
- only confident, valid answers are cached.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from tether.models.base import (
    Choice,
    DecisionRequest,
    ModelCall,
    Usage,
    current_context,
)
from tether.record.cachestats import counter
from tether.record.canonical import digest
from tether.record.db import Database
from tether.record.tables import answer_cache

_SPACE = re.compile(r"\s+")
_HOLE = re.compile(r"\{\{(\w+)\}\}")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text.strip().lower()).rstrip("?!. ")


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stored: int = 0
    refused: int = 0  # answers not cached (unsure, or personal data left in them)

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0


class AnswerCache:
    """Cached model answers, keyed by tenant, question, policy and prompt; personal fields kept out of the key."""

    def __init__(self, db: Database, *, ttl_s: float = 7 * 24 * 3600, now: Any = None) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self._now = now or (lambda: dt.datetime.now(dt.UTC))
        self.stats = CacheStats()
        self.counter = counter(db, "answer")  # the same hits and misses, summed over processes for `tether metrics`

    def get(self, tenant: str, key: str) -> dict[str, Any] | None:
        now = self._now().isoformat()
        with self.db.read() as conn:
            row = conn.execute(sa.select(answer_cache.c.value, answer_cache.c.expires_at)
                               .where(answer_cache.c.key == key, answer_cache.c.tenant == tenant)).first()  # fmt: skip
        if row is None or row.expires_at <= now:
            self.stats.misses += 1
            self.counter.miss()
            return None
        self.stats.hits += 1
        self.counter.hit()
        with self.db.transaction() as conn:
            conn.execute(answer_cache.update().where(answer_cache.c.key == key).values(hits=answer_cache.c.hits + 1))
        return dict(row.value)

    def put(self, tenant: str, key: str, point: str, value: dict[str, Any], *, policy_hash: str, prompt_hash: str) -> None:
        now = self._now()
        row = {"key": key, "tenant": tenant, "point": point, "value": value, "policy_hash": policy_hash,
               "prompt_hash": prompt_hash, "hits": 0, "created_at": now.isoformat(),
               "expires_at": (now + dt.timedelta(seconds=self.ttl_s)).isoformat()}  # fmt: skip
        with self.db.transaction() as conn:
            conn.execute(answer_cache.delete().where(answer_cache.c.key == key))
            conn.execute(answer_cache.insert().values(**row))
        self.stats.stored += 1

    def invalidate(self, *, tenant: str | None = None) -> int:
        with self.db.transaction() as conn:
            q = answer_cache.delete()
            if tenant is not None:
                q = q.where(answer_cache.c.tenant == tenant)
            return conn.execute(q).rowcount

    def invalidate_stale(self, *, policy_hash: str | None = None, prompt_hash: str | None = None) -> int:
        """Drop entries made under another policy or prompt version than the current ones."""
        conds = []
        if policy_hash is not None:
            conds.append(answer_cache.c.policy_hash != policy_hash)
        if prompt_hash is not None:
            conds.append(answer_cache.c.prompt_hash != prompt_hash)
        conds.append(answer_cache.c.expires_at <= self._now().isoformat())
        with self.db.transaction() as conn:
            return conn.execute(answer_cache.delete().where(sa.or_(*conds))).rowcount


class CachedModel:
    """A model in front of which the answer cache sits. Hits cost nothing and say so (`cached`)."""

    def __init__(self, model: Any, cache: AnswerCache, *, personal: Sequence[str] = (), min_confidence: float = 0.0,
                 question: str = "text") -> None:  # fmt: skip
        self.model = model
        self.cache = cache
        self.personal = tuple(personal)
        self.min_confidence = min_confidence
        self.question = question
        self.name = model.name
        self.max_output_tokens = getattr(model, "max_output_tokens", 256)

    def prompt_hash(self, request: DecisionRequest) -> str:
        return digest([self.model.name, request.point, request.instructions, sorted(request.options), request.tools])

    def _key(self, tenant: str, policy_hash: str, request: DecisionRequest) -> str:
        obs = {k: v for k, v in request.observation.items() if k not in self.personal}
        q = obs.get(self.question)
        if isinstance(q, str):
            obs[self.question] = normalise(q)
        return digest([tenant, policy_hash, self.prompt_hash(request), obs])

    def choose(self, request: DecisionRequest) -> Choice:
        if any(request.observation.get(f) in (None, "") for f in self.personal):
            return self.model.choose(request)  # nothing to personalise with: neither served from nor stored in the cache
        ctx = current_context()
        key = self._key(ctx.tenant, ctx.policy_hash, request)
        hit = self.cache.get(ctx.tenant, key)
        if hit is not None:
            args = _fill(hit["args"], request.observation)
            if args is None:  # this customer lacks a value the template needs: ask the model after all
                self.cache.stats.hits -= 1
                self.cache.stats.misses += 1
                self.cache.counter.add(-1, 1)
            else:
                return Choice(point=request.point, option=hit["option"], args=args, confidence=hit["confidence"],
                              model=self.name, usage=Usage(),
                              calls=[ModelCall(model=self.name, cached=True, confidence=hit["confidence"])])  # fmt: skip
        choice = self.model.choose(request)
        if choice.ok and choice.confidence >= self.min_confidence:
            template = self._template(choice.args, request.observation)
            if template is None:
                self.cache.stats.refused += 1
            else:
                self.cache.put(ctx.tenant, key, request.point,
                               {"option": choice.option, "args": template, "confidence": choice.confidence},
                               policy_hash=ctx.policy_hash, prompt_hash=self.prompt_hash(request))  # fmt: skip
        else:
            self.cache.stats.refused += 1
        return choice

    def estimate(self, request: DecisionRequest) -> list[ModelCall]:
        from tether.models.meter import estimate

        return estimate(self.model, request)  # a miss costs what the model costs

    def _template(self, args: Any, observation: dict[str, Any]) -> Any:
        """Personal values become placeholders; None when other personal data would remain in the answer."""
        values = {str(observation[f]): f for f in self.personal if observation.get(f) not in (None, "")}

        def walk(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: walk(x) for k, x in v.items()}
            if isinstance(v, list):
                return [walk(x) for x in v]
            if isinstance(v, str):
                for value, field in values.items():
                    v = v.replace(value, "{{" + field + "}}")
            return v

        out = walk(args)
        strings: list[str] = []

        def collect(v: Any) -> None:
            if isinstance(v, dict):
                for x in v.values():
                    collect(x)
            elif isinstance(v, list):
                for x in v:
                    collect(x)
            elif isinstance(v, str):
                strings.append(v)

        collect(out)
        red = self.cache.db.redactor
        # Personal data the placeholders did not catch (an email, a phone or card number): never shared.
        return None if any(red.text(x) != x for x in strings) else out


def _fill(template: Any, observation: dict[str, Any]) -> Any:
    """Placeholders filled from this customer's observation; None when one has no value here."""
    missing = False

    def walk(v: Any) -> Any:
        nonlocal missing
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, str):
            def sub(m: re.Match[str]) -> str:
                nonlocal missing
                val = observation.get(m.group(1))
                if val in (None, ""):
                    missing = True
                    return ""
                return str(val)

            return _HOLE.sub(sub, v)
        return v

    out = walk(template)
    return None if missing else out

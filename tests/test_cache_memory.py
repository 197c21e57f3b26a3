"""The answer cache (tenants, personalisation, TTL, invalidation), memory, and context compression."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from _flows import POLICY, Job, World
from click.testing import CliRunner

from tether import Choice, DecisionRequest, End, Runtime, Usage, Workflow
from tether.cli import cli
from tether.memory.embed import HashingEmbedder
from tether.memory.store import ObservationLog, VectorStore
from tether.models.base import CallContext, call_context
from tether.models.cache import AnswerCache, CachedModel
from tether.models.compression import compress, tokens
from tether.orchestration.replay import replay
from tether.record.db import Database
from tether.record.metrics import exposition
from tether.record.tables import model_calls, observations
from tether.tools.retrieval import retrieval_tool


class Counting:
    name = "gpt-4.1"

    def __init__(self, args: dict[str, Any] | None = None, confidence: float = 0.9) -> None:
        self.calls = 0
        self.args = args or {}
        self.confidence = confidence

    def choose(self, request: DecisionRequest) -> Choice:
        self.calls += 1
        args = {k: v.format(**request.observation) if isinstance(v, str) else v for k, v in self.args.items()}
        return Choice(point=request.point, option=request.options[0], args=args, confidence=self.confidence,
                      model=self.name, usage=Usage(input_tokens=500, output_tokens=20))  # fmt: skip


def _ask(model: Any, tenant: str, text: str, policy: str = "p1", instructions: str = "", **obs: Any) -> Choice:
    req = DecisionRequest(point="reply", options=["helpdesk.reply"], observation={"text": text, **obs}, instructions=instructions)
    with call_context(CallContext(tenant=tenant, policy_hash=policy)):
        return model.choose(req)


def test_no_answer_crosses_tenants(db: Database) -> None:
    inner = Counting()
    m = CachedModel(inner, AnswerCache(db))
    assert not _ask(m, "acme", "How do I top up?").model_calls[0].cached
    hit = _ask(m, "acme", "  how do I top up  ")  # normalised: same question
    assert hit.model_calls[0].cached and hit.usage.input_tokens == 0 and inner.calls == 1
    assert not _ask(m, "globex", "How do I top up?").model_calls[0].cached  # another tenant never sees acme's answer
    assert inner.calls == 2 and m.cache.stats.hits == 1 and m.cache.stats.misses == 2


def test_cached_templates_are_filled_per_customer(db: Database) -> None:
    inner = Counting(args={"ticket_id": "{ticket_id}", "template": "fees_help", "note": "for {customer_id}"})
    m = CachedModel(inner, AnswerCache(db), personal=["ticket_id", "customer_id"])
    first = _ask(m, "acme", "why was I charged a fee", ticket_id="T-1", customer_id="C0001")
    assert first.args == {"ticket_id": "T-1", "template": "fees_help", "note": "for C0001"}
    with db.read() as conn:
        stored = conn.execute(sa.text("select value from answer_cache")).scalar()
    assert "T-1" not in stored and "C0001" not in stored and "{{ticket_id}}" in stored
    second = _ask(m, "acme", "Why was I charged a fee?", ticket_id="T-2", customer_id="C0002")
    assert second.model_calls[0].cached and second.args == {"ticket_id": "T-2", "template": "fees_help", "note": "for C0002"}
    assert inner.calls == 1


def test_answers_holding_other_personal_data_are_not_cached(db: Database) -> None:
    inner = Counting(args={"note": "write to ana.costa@example.com"})
    m = CachedModel(inner, AnswerCache(db))
    _ask(m, "acme", "contact me")
    _ask(m, "acme", "contact me")
    assert inner.calls == 2 and m.cache.stats.refused == 2
    unsure = CachedModel(Counting(confidence=0.3), AnswerCache(db), min_confidence=0.6)
    _ask(unsure, "acme", "hm")
    assert unsure.cache.stats.stored == 0


def test_ttl_and_invalidation_on_policy_or_prompt_change(db: Database) -> None:
    clock = [dt.datetime(2026, 11, 27, tzinfo=dt.UTC)]
    cache = AnswerCache(db, ttl_s=3600, now=lambda: clock[0])
    inner = Counting()
    m = CachedModel(inner, cache)
    _ask(m, "acme", "q")
    assert _ask(m, "acme", "q").model_calls[0].cached
    assert not _ask(m, "acme", "q", policy="p2").model_calls[0].cached  # a new policy version: a new answer
    assert not _ask(m, "acme", "q", instructions="be brief").model_calls[0].cached  # a new prompt too
    assert cache.invalidate_stale(policy_hash="p2") == 2  # entries of p1 go
    clock[0] += dt.timedelta(hours=2)
    assert not _ask(m, "acme", "q", policy="p2").model_calls[0].cached  # expired
    assert cache.invalidate(tenant="acme") >= 1


def test_cache_hits_through_the_runtime_are_free_and_measured(db_url: str) -> None:
    from tether.workflows.triage import data, systems
    from tether.workflows.triage.flow import workflow
    from tether.workflows.triage.model import classifier

    db = Database(db_url)
    systems.Systems(db)
    text = next(e.text for e in data.examples() if e.intent == "card_arrival")
    with db.transaction() as conn:
        conn.execute(systems.tickets.insert(), [{"id": f"K-{i}", "customer_id": "C0001", "text": text, "status": "new",
                                                 "created_at": "t", "updated_at": "t"} for i in range(3)])  # fmt: skip
    cached = CachedModel(classifier(), AnswerCache(db))
    rt = Runtime(db, model=lambda: cached)
    results = [rt.start(workflow, {"ticket_id": "K-0"}, tenant="acme"), rt.start(workflow, {"ticket_id": "K-1"}, tenant="acme"),
               rt.start(workflow, {"ticket_id": "K-2"}, tenant="globex")]  # fmt: skip
    assert [r.status for r in results] == ["completed"] * 3
    with db.read() as conn:
        assert conn.execute(sa.select(model_calls.c.tenant, model_calls.c.cached).order_by(model_calls.c.id)).all() == [
            ("acme", False), ("acme", True), ("globex", False)]
    out = json.loads(CliRunner().invoke(cli, ["costs", "--db", db_url, "--json"]).stdout)
    assert out["cache_hits"] == 1 and out["cache_hit_rate"] == pytest.approx(1 / 3, abs=1e-3)
    text = exposition(db).decode()
    assert 'tether_model_calls_total{cached="true",model="offline:banking77-intent"} 1.0' in text
    assert "tether_answer_cache_hit_ratio 0.333" in text
    db.dispose()


def test_vector_store_is_per_tenant_and_caches(db: Database) -> None:
    store = VectorStore(db)
    store.add("acme", "kb", ["Cards arrive within 5 working days", "Top up by bank transfer or card",
                             "Refunds take up to 5 days to appear"], [{"doc": 1}, {"doc": 2}, {"doc": 3}])  # fmt: skip
    store.add("globex", "kb", ["Globex secret: cards arrive by owl"])
    hits = store.search("acme", "kb", "when will my card arrive?", k=2)
    assert hits[0].meta == {"doc": 1} and hits[0].score > hits[1].score
    assert all("owl" not in h.text for h in store.search("acme", "kb", "cards arrive by owl", k=5))
    store.search("acme", "kb", "when will my card arrive?", k=2)
    assert store.hits == 1
    store.add("acme", "kb", ["Cards can be frozen in the app"])  # a change forgets cached searches
    store.search("acme", "kb", "when will my card arrive?", k=2)
    assert store.hits == 1 and store.misses == 3
    emb = HashingEmbedder()
    emb.embed(["a b", "a b", "c"])
    assert (emb.hits, emb.misses) == (0, 3)
    emb.embed(["a b"])
    assert emb.hits == 1


def test_retrieval_hits_are_recorded_for_replay_and_the_observation_log(db: Database) -> None:
    store = VectorStore(db)
    store.add("acme", "kb", ["Refunds take up to 5 days", "Cards arrive within a week"])
    log = ObservationLog(db)
    search = retrieval_tool(store, log=log)
    wf: Workflow[Job, World] = Workflow("kb_lookup", input=Job, tools=[search], policy=POLICY, deps=lambda db: World())

    @wf.state(initial=True, goes_to=[])
    def look(run: Any) -> Any:
        r = run.call("memory.search", {"query": "how long do refunds take", "k": 1})
        return End("completed", r.output["hits"][0]["text"])

    r = Runtime(db).start(wf, {}, tenant="acme")
    assert (r.status, r.outcome) == ("completed", "Refunds take up to 5 days")
    assert [o["data"]["query"] for o in log.read("acme", run_id=r.run_id)] == ["how long do refunds take"]
    before = store.misses + store.hits
    replayed = replay(db, r.run_id, workflow=wf)
    assert replayed.same and store.misses + store.hits == before  # replay answers from the recording
    log.append("acme", "ticket", {"text": "mail me at ana.costa@example.com"})
    with db.read() as conn:
        assert "ana.costa@example.com" not in json.dumps(conn.execute(sa.select(observations.c.data)).scalars().all())


def test_history_past_the_threshold_becomes_a_summary() -> None:
    steps = [{"tool": "crm.lookup_customer", "args": {"customer_id": "C0001"}, "status": "ok",
              "output": {"transactions": [{"id": i, "description": "Grocer purchase"} for i in range(40)]}}] + [
             {"tool": "helpdesk.tag", "args": {"ticket_id": "T1", "tags": [f"t{i}"]}, "status": "ok", "output": {}} for i in range(3)]  # fmt: skip
    assert compress(steps, max_tokens=100_000) == steps
    short = compress(steps, max_tokens=200)
    assert short[0]["summary"].startswith("2 earlier step(s): crm.lookup_customer ok; helpdesk.tag ok")
    assert short[1:] == steps[2:] and "output" not in short[0]["calls"][0]
    assert tokens(short) < tokens(steps) / 3


def test_a_customer_without_the_personal_fields_bypasses_the_cache(db: Database) -> None:
    inner = Counting(args={"ticket_id": "{ticket_id}"})
    m = CachedModel(inner, AnswerCache(db), personal=["ticket_id"])
    _ask(m, "acme", "status?", ticket_id="T-1")
    c = _ask(m, "acme", "status?", ticket_id="")  # nothing to personalise with: the model answers, nothing is stored
    assert not c.model_calls[0].cached and inner.calls == 2 and (m.cache.stats.hits, m.cache.stats.misses, m.cache.stats.stored) == (0, 1, 1)
    c = _ask(m, "acme", "status?", ticket_id="T-3")
    assert c.model_calls[0].cached and c.args == {"ticket_id": "T-3"}


# -- embeddings from a provider, through the openai SDK, against a local server ------------------
def _embedding_reply(vectors: list[list[float]], *, shuffled: bool = False) -> tuple[str, dict[str, Any]]:
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    if shuffled:
        data.reverse()  # the API gives each vector's index; order must not be trusted
    return ("ok", {"object": "list", "data": data, "model": "embed-small", "usage": {"prompt_tokens": 8, "total_tokens": 8}})


def test_provider_embeddings_through_the_openai_sdk(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    from _llm_servers import ScriptedServer

    from tether.memory.embed import EmbeddingError, embedder_from_env

    script = [
        _embedding_reply([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0]], shuffled=True),  # the two documents
        _embedding_reply([[0.0, 1.0, 0.1]]),  # the query, near the second
        ("status", 500, {"error": {"message": "model overloaded", "type": "server_error"}}),
    ]
    with ScriptedServer(script, "/v1/embeddings") as server:
        monkeypatch.setenv("TETHER_EMBEDDINGS", "compatible:embed-small")
        monkeypatch.setenv("TETHER_EMBEDDINGS_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("TETHER_MODEL_RETRIES", "0")
        store = VectorStore(db)  # the embedder named by the environment
        assert store.embedder.name == "compatible:embed-small"
        store.add("acme", "faq", ["how do I reset my card pin", "where is my refund"])
        [hit, _] = store.search("acme", "faq", "refund status", k=2)
        assert hit.text == "where is my refund" and hit.score > 0.99
        assert [r["json"]["input"] for r in server.requests] == [["how do I reset my card pin", "where is my refund"],
                                                                 ["refund status"]]  # fmt: skip
        assert server.requests[0]["json"]["model"] == "embed-small"
        store.embedder.embed(["where is my refund"])  # cached: no request
        assert len(server.requests) == 2 and store.embedder.hits == 1
        with pytest.raises(EmbeddingError, match=r"embeddings from compatible:embed-small failed: InternalServerError"):
            store.embedder.embed(["something new"])
    monkeypatch.setenv("TETHER_EMBEDDINGS", "bogus")
    with pytest.raises(EmbeddingError, match="write offline, openai:MODEL or compatible:MODEL"):
        embedder_from_env()
    monkeypatch.setenv("TETHER_EMBEDDINGS", "compatible:x")
    monkeypatch.delenv("TETHER_EMBEDDINGS_BASE_URL")
    with pytest.raises(EmbeddingError, match="needs TETHER_EMBEDDINGS_BASE_URL"):
        embedder_from_env()


def test_forgetting_a_tenant_also_forgets_it_in_a_live_vector_store(db: Database) -> None:
    """`tether purge --forget-tenant T` deletes T's memory items, but a live process's
    VectorStore keeps answering the same query from its result cache, texts included."""
    from tether.memory.store import VectorStore
    from tether.record.retention import Retention, purge

    vs = VectorStore(db)
    vs.add("acme", "kb", ["acme's customer Jane Roe lives at 1 Main St"])
    assert vs.search("acme", "kb", "where does Jane live")
    assert purge(db, Retention(forget_tenants=("acme",)))["memory_items"] == 1
    assert VectorStore(db).search("acme", "kb", "where does Jane live") == []
    assert vs.search("acme", "kb", "where does Jane live") == []


def test_a_live_vector_store_never_answers_purged_text_when_sqlite_reuses_its_id(db: Database) -> None:
    """A purged item's id is never handed out again (AUTOINCREMENT), so a live store's cached
    ids cannot come to mean another item; its cached hit is dropped and the search redone."""
    from tether.memory.store import VectorStore
    from tether.record.retention import Retention, purge

    vs = VectorStore(db)
    vs.add("acme", "kb", ["acme's customer Jane Roe lives at 1 Main St"])
    assert vs.search("acme", "kb", "where does Jane live")
    assert purge(db, Retention(forget_tenants=("acme",)))["memory_items"] == 1
    assert VectorStore(db).add("globex", "kb", ["globex note"]) == [2]  # another process; id 1 is not reused
    assert vs.search("acme", "kb", "where does Jane live") == []


def test_a_live_vector_store_never_returns_another_tenants_item(db: Database) -> None:
    """A live store's stale matrix never leads it to another tenant's item: every check and
    fetch by id is also filtered by tenant, namespace and embedder."""
    from tether.memory.store import VectorStore
    from tether.record.retention import Retention, purge

    vs = VectorStore(db)
    vs.add("acme", "kb", ["acme's customer Jane Roe lives at 1 Main St"])
    vs.search("acme", "kb", "where does Jane live")  # loads acme's matrix
    purge(db, Retention(forget_tenants=("acme",)))
    VectorStore(db).add("globex", "kb", ["globex internal note"])
    assert vs.search("acme", "kb", "globex") == []


def test_provider_embeddings_keep_the_batches_already_paid_for() -> None:
    """Each batch is cached as it comes back: a later batch failing loses none that were paid for."""
    from tether.memory.embed import EmbeddingError, ProviderEmbedder

    e = ProviderEmbedder("m", api_key="x", base_url="http://127.0.0.1:9/v1", batch=2)
    sent: list[list[str]] = []

    def request(texts: list[str]) -> list[Any]:
        sent.append(list(texts))
        if len(sent) == 2:
            raise EmbeddingError("provider failed on the second batch")
        e.dim = 3
        return [np.ones(3, np.float32) / np.sqrt(3) for _ in texts]

    e._compute = request  # type: ignore[method-assign]
    try:
        e.embed(["a", "b", "c", "d"])
    except EmbeddingError:
        pass
    assert len(e._cache) == 2

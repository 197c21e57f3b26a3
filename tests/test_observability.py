"""Traces, redaction before write, retention, signed exports, metrics."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _flows import make_workflow
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from tether import ApprovalInbox, Database, Ledger, Runtime
from tether.cli import cli
from tether.record.retention import Retention, purge
from tether.record.tables import ledger_entries, prompts, run_events, spans
from tether.workflows.triage import data, systems
from tether.workflows.triage.flow import refund_target, workflow
from tether.workflows.triage.intents import ROUTES

PLANTED = {
    "email": "olga.novak@example.com",
    "phone": "+44 20 7946 0321",
    "card": "4111 1111 1111 1111",
    "iban": "GB82 WEST 1234 5698 7654 32",
    "ip": "203.0.113.77",
}
TEXT = ("My card was stolen, please block it! Write to olga.novak@example.com or call +44 20 7946 0321. "
        "The card is 4111 1111 1111 1111 and my account GB82 WEST 1234 5698 7654 32; I was on 203.0.113.77.")  # fmt: skip


def _spans(db: Database, run_id: str) -> list[dict[str, Any]]:
    res = CliRunner().invoke(cli, ["runs", "show", run_id, "--trace", "--json", "--db", db.url.render_as_string(False)])
    assert res.exit_code == 0, res.stderr
    return json.loads(res.output)


def test_a_run_is_one_trace_with_genai_spans(db: Database) -> None:
    systems.Systems(db)
    r = Runtime(db).start(workflow, {"customer_id": "C0002", "text": "I think my card was stolen, please block it"}, started_by="intake")
    assert r.outcome == "card_frozen"
    sp = _spans(db, r.run_id)
    for s in sp:
        assert {"name", "trace_id", "span_id", "parent_span_id", "attributes"} <= set(s)
        assert s["attributes"]["tether.run.id"] == r.run_id  # the run id is findable from any span
    assert len({s["trace_id"] for s in sp}) == 1
    [root] = [s for s in sp if s["parent_span_id"] is None]
    assert root["name"] == "invoke_agent support_triage" and root["attributes"]["gen_ai.operation.name"] == "invoke_agent"
    assert root["attributes"]["tether.run.status"] == "completed"
    assert all(s["parent_span_id"] == root["span_id"] for s in sp if s is not root)
    [chat] = [s for s in sp if s["name"].startswith("chat ")]
    assert chat["name"] == "chat offline:banking77-intent"
    for key in ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.request.model", "tether.decision.confidence"):
        assert key in chat["attributes"]
    tools = [s for s in sp if s["name"].startswith("execute_tool ")]
    assert [s["attributes"]["gen_ai.tool.name"] for s in tools][:3] == ["helpdesk.open_ticket", "helpdesk.get_ticket", "crm.lookup_customer"]
    for s in tools:
        a = s["attributes"]
        assert a["gen_ai.operation.name"] == "execute_tool" and a["gen_ai.tool.call.id"]
        assert a["tether.policy.decision"] == "allow" and len(a["tether.policy.hash"]) == 64 and a["tether.step"] >= 1
    with db.read() as conn:
        runs_row = conn.execute(sa.text("select trace_id, root_span_id from runs")).one()
    assert tuple(runs_row) == (root["trace_id"], root["span_id"])


def _refund_customer(db: Database) -> str:
    bank = systems.Systems(db)
    data.seed_bank(bank)
    return next(data.customer_id(i) for i in range(data.CUSTOMERS)
                if (t := refund_target(ROUTES["request_refund"], bank.lookup_customer(data.customer_id(i))["transactions"]))
                and 100 < t[1] <= 1000)  # fmt: skip


def test_a_paused_run_continues_its_trace(db: Database) -> None:
    cid = _refund_customer(db)
    r = Runtime(db).start(workflow, {"customer_id": cid, "text": "I would like a refund for my last purchase please"}, started_by="intake")
    assert r.status == "waiting_approval"
    ApprovalInbox(db).decide(r.approval_id or "", approve=True, by="lead")
    assert Runtime(db).resume(r.run_id, workflow).status == "completed"
    sp = _spans(db, r.run_id)
    assert len({s["trace_id"] for s in sp}) == 1
    roots = [s for s in sp if s["name"] == "invoke_agent support_triage"]
    assert len(roots) == 2 and roots[1]["parent_span_id"] == roots[0]["span_id"] and roots[1]["attributes"]["tether.resumed"]
    [approved] = [s for s in sp if s["attributes"].get("tether.approval.wait_s") is not None]
    assert approved["attributes"]["gen_ai.tool.name"] == "payments.refund" and approved["attributes"]["tether.call.status"] == "ok"
    pending = [s for s in sp if s["attributes"].get("tether.call.status") == "pending_approval"]
    assert pending and pending[0]["attributes"]["tether.policy.decision"] == "require_human_approval"


def test_a_stranded_run_resumed_by_hand_stays_one_trace(db: Database) -> None:
    r = Runtime(db).start(make_workflow(), {"amount_usd": 500}, started_by="alice")
    ApprovalInbox(db).decide(r.approval_id or "", approve=True, by="bob")
    with db.transaction() as conn:
        conn.exec_driver_sql("UPDATE runs SET status = 'running'")  # the resumer died
    Runtime(db).resume(r.run_id, make_workflow(), stranded=True)
    with db.read() as conn:
        traces = set(conn.execute(sa.select(spans.c.trace_id).where(spans.c.run_id == r.run_id)).scalars())
    assert len(traces) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Collect:
    """An oteltest sink handler that keeps what arrives."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.lock = threading.Lock()

    def handle_trace(self, request: Any, headers: Any) -> None:
        with self.lock:
            self.requests.append(request)

    def handle_metrics(self, request: Any, headers: Any) -> None: ...

    def handle_logs(self, request: Any, headers: Any) -> None: ...


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_spans_arrive_at_a_real_otlp_receiver(protocol: str, tmp_path: Path) -> None:
    import logging

    from oteltest.sink import GrpcSink, HttpSink

    port = _free_port()
    handler = _Collect()
    sink = (HttpSink(handler, logging.getLogger("sink"), port=port) if protocol == "http/protobuf"
            else GrpcSink(handler, logging.getLogger("sink"), port=port))  # fmt: skip
    sink.start()
    try:
        env = {**os.environ, "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
               "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_SERVICE_NAME": "tether-test"}  # fmt: skip
        p = subprocess.run([sys.executable, "-m", "tether", "demo", "--tickets", "3", "--json"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert p.returncode == 0, p.stderr
        deadline = time.time() + 10
        while time.time() < deadline and not handler.requests:
            time.sleep(0.1)
    finally:
        sink.stop()
    got = [(rs.resource, s) for req in handler.requests for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert got, "no spans arrived"
    service = {a.value.string_value for res, _ in got for a in res.attributes if a.key == "service.name"}
    assert service == {"tether-test"}
    names = [s.name for _, s in got]
    assert names.count("invoke_agent support_triage") == 3 and "chat offline:banking77-intent" in names
    by_id = {s.span_id: s for _, s in got}
    for _, s in got:
        attrs = {a.key: a.value for a in s.attributes}
        assert "tether.run.id" in attrs
        if s.name.startswith("execute_tool "):
            parent = by_id[s.parent_span_id]
            assert parent.name == "invoke_agent support_triage" and parent.trace_id == s.trace_id
            assert attrs["gen_ai.tool.name"].string_value == s.name.removeprefix("execute_tool ")
            assert attrs["tether.policy.decision"].string_value in ("allow", "deny", "require_human_approval")
    # The local store has them too.
    db = Database(f"sqlite:///{tmp_path / '.tether' / 'tether.db'}")
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(spans)).scalar() == len(got)


def test_planted_pii_never_reaches_ledger_traces_or_prompts(db: Database, db_url: str) -> None:
    systems.Systems(db)
    res = CliRunner().invoke(cli, ["run", "support_triage", "--db", db_url, "--json", "--input",
                                   json.dumps({"customer_id": "C0005", "text": TEXT})])  # fmt: skip
    assert res.exit_code == 0, res.stderr
    run_id = json.loads(res.output)["run_id"]
    with db.read() as conn:
        ledger_text = "\n".join(conn.execute(sa.select(ledger_entries.c.body)).scalars())
        span_text = json.dumps([dict(r._mapping) for r in conn.execute(sa.select(spans))])
        prompt_text = json.dumps([dict(r._mapping) for r in conn.execute(sa.select(prompts))])
        journal_text = json.dumps([r.data for r in conn.execute(sa.select(run_events))])
    assert prompt_text.count("observation") == 1  # the classifier's question is in the prompt store...
    for kind, value in PLANTED.items():
        for store, text in (("ledger", ledger_text), ("traces", span_text), ("prompts", prompt_text)):
            assert value not in text, f"{kind} leaked into {store}"
        token = db.redactor.token(kind, value)
        assert token in ledger_text and token in prompt_text  # ...as keyed hashes an auditor can match
    assert PLANTED["email"] in journal_text  # the replay journal alone keeps the call as made (retention-bound)
    export = CliRunner().invoke(cli, ["ledger", "export", "--db", db_url])
    assert all(v not in export.output for v in PLANTED.values())
    assert Ledger(db).verify().ok and run_id


def test_secrets_are_never_written_even_hashed(db: Database) -> None:
    from typing import Annotated

    from tether import Args, End, PolicySet, RunContext, ToolContext, Workflow, tool
    from tether.record.redaction import SECRET

    class Login(Args):
        user: str
        password: Annotated[str, SECRET]

    @tool("auth.login")
    def login(ctx: ToolContext[None], args: Login) -> dict[str, Any]:
        return {"ok": True}

    wf = Workflow("login", input=__import__("_flows").Job, tools=[login], policy=PolicySet.from_text("policies: []"))

    @wf.state(initial=True)
    def go(run: RunContext[Any, None]) -> Any:
        run.call("auth.login", {"user": "ops", "password": "canary-hunter2-XYZ"})
        return End()

    Runtime(db).start(wf, {})
    with db.read() as conn:
        ledger_text = "\n".join(conn.execute(sa.select(ledger_entries.c.body)).scalars())
    assert "canary-hunter2-XYZ" not in ledger_text and '"password":"<secret>"' in ledger_text


def test_retention_purges_stores_but_never_the_ledger(db: Database, db_url: str) -> None:
    systems.Systems(db)
    r = Runtime(db).start(workflow, {"customer_id": "C0003", "text": "When will my card arrive?"}, started_by="intake")
    entries = Ledger(db).head()[0]
    now = dt.datetime.now(dt.UTC)
    assert purge(db, Retention(), now=now) == {"prompts": 0, "journal_events": 0, "spans": 0, "observations": 0,
                                               "answer_cache": 0, "memory_items": 0}
    counts = purge(db, Retention(prompt_days=7, journal_days=10, trace_days=10), now=now + dt.timedelta(days=8), dry_run=True)
    assert counts["prompts"] == 1 and counts["journal_events"] == 0 and counts["spans"] == 0
    counts = purge(db, Retention(prompt_days=7, journal_days=10, trace_days=10), now=now + dt.timedelta(days=11))
    assert counts["prompts"] == 1 and counts["journal_events"] > 0 and counts["spans"] > 0
    assert Ledger(db).head()[0] == entries and Ledger(db).verify().ok
    res = CliRunner().invoke(cli, ["replay", r.run_id, "--db", db_url])
    assert res.exit_code == 1 and "was purged (retention)" in res.stderr
    res = CliRunner().invoke(cli, ["purge", "--prompts-days", "45", "--db", db_url])
    assert res.exit_code == 1 and "prompt retention must be 7 to 30 days, got 45" in res.stderr
    res = CliRunner().invoke(cli, ["purge", "--db", db_url, "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["dry_run"] is False


def test_signed_export_manifest(db: Database, db_url: str, tmp_path: Path) -> None:
    Runtime(db).start(make_workflow(), {"amount_usd": 5})
    out = tmp_path / "ledger.jsonl"
    assert CliRunner().invoke(cli, ["ledger", "export", "--db", db_url, "--out", str(out)]).exit_code == 0
    manifest = json.loads((tmp_path / "ledger.jsonl.manifest.json").read_text())
    assert manifest["entries"] == len(out.read_text().splitlines()) and manifest["first"]["seq"] == 1
    key = CliRunner().invoke(cli, ["ledger", "pubkey", "--db", db_url]).output.strip()
    assert manifest["public_key"] == key
    ok = CliRunner().invoke(cli, ["ledger", "verify", "--file", str(out), "--pubkey", key])
    assert ok.exit_code == 0, ok.stderr
    cut = out.read_text().splitlines()[:-1]
    out.write_text("\n".join(cut) + "\n")  # the tail cut off: the chain alone cannot tell
    assert CliRunner().invoke(cli, ["ledger", "verify", "--file", str(out)]).exit_code == 0
    res = CliRunner().invoke(cli, ["ledger", "verify", "--file", str(out), "--pubkey", key])
    assert res.exit_code == 1 and "does not match the manifest's SHA-256" in res.stderr
    res = CliRunner().invoke(cli, ["ledger", "verify", "--file", str(out), "--pubkey", "ed25519:AAAA"])
    assert res.exit_code == 1 and "not the pinned key" in res.stderr
    forged = dict(manifest, entries=manifest["entries"] - 1)
    (tmp_path / "ledger.jsonl.manifest.json").write_text(json.dumps(forged))
    res = CliRunner().invoke(cli, ["ledger", "verify", "--file", str(out), "--pubkey", key])
    assert res.exit_code == 1 and "signature does not verify" in res.stderr


def test_prometheus_metrics(db: Database, db_url: str, tmp_path: Path) -> None:
    r = Runtime(db).start(make_workflow(), {"amount_usd": 500}, started_by="alice")
    ApprovalInbox(db).decide(r.approval_id or "", approve=True, by="bob")
    Runtime(db).start(make_workflow(), {"amount_usd": 5})
    result = tmp_path / "eval.json"
    result.write_text(json.dumps({"source": "golden.jsonl", "task_success": 0.91, "unsafe_action_rate": 0.0}))
    res = CliRunner().invoke(cli, ["metrics", "--db", db_url, "--eval", str(result)])
    assert res.exit_code == 0, res.stderr
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(res.output) for s in fam.samples}  # fmt: skip
    assert samples[("tether_runs", (("status", "completed"), ("workflow", "refunds")))] == 1
    assert samples[("tether_runs", (("status", "waiting_approval"), ("workflow", "refunds")))] == 1
    assert samples[("tether_tool_calls_total", (("decision", "require_human_approval"), ("status", "pending_approval"),
                                                ("tool", "payments.refund")))] == 1  # fmt: skip
    assert samples[("tether_approval_wait_seconds_count", ())] == 1
    assert samples[("tether_eval_score", (("metric", "task_success"), ("source", "golden.jsonl")))] == 0.91
    assert samples[("tether_runs_traceable_ratio", ())] == 1.0


def test_redaction_recall_and_precision_on_the_planted_corpus() -> None:
    from collections import Counter

    from tether.record.redaction import scan
    from tether.workflows.triage import pii_corpus

    path = Path(__file__).resolve().parent.parent / "evals" / "pii_corpus.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines == json.loads(json.dumps(pii_corpus.build()))  # the file is what the documented script builds
    planted, hit, found, wrong = Counter(), Counter(), Counter(), Counter()
    for item in lines:
        findings = scan(item["text"])
        for s in item["spans"]:
            planted[s["kind"]] += 1
            hit[s["kind"]] += any(f.kind == s["kind"] and f.start < s["end"] and s["start"] < f.end for f in findings)
        for f in findings:
            found[f.kind] += 1
            wrong[f.kind] += not any(f.kind == s["kind"] and f.start < s["end"] and s["start"] < f.end for s in item["spans"])
    for kind in ("email", "phone", "card", "iban", "ip", "national_id"):
        assert planted[kind] >= 50
        assert hit[kind] / planted[kind] >= 0.99, kind
        assert (found[kind] - wrong[kind]) / found[kind] >= 0.99, kind
    assert hit["person"] == 0  # no named-entity model here: names in free text are not found (documented)

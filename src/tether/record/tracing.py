"""OpenTelemetry traces of runs, following the GenAI semantic conventions.

One trace per run. Its root span is `invoke_agent {workflow}`; every model call
is a `chat {model}` span with `gen_ai.usage.*` tokens and every tool call an
`execute_tool {tool}` span with the policy decision; each carries
`tether.run.id`. A run resumed after a pause continues the same trace: the new
segment's root is a child of the first root, whose ids the run row keeps.

Exporters come from the standard environment: OTEL_TRACES_EXPORTER (otlp,
console, none; otlp by default when OTEL_EXPORTER_OTLP_ENDPOINT or
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set), OTEL_EXPORTER_OTLP_PROTOCOL (grpc or
http/protobuf, the default), OTEL_SERVICE_NAME. Spans also go to the local store
(the `spans` table) unless TETHER_TRACE_STORE=off, so `tether runs show RUN
--trace` and the dashboard can show them without a collector.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections import defaultdict
from collections.abc import Sequence
from functools import cache
from typing import Any

import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from tether.record.secrets import scrub
from tether.record.tables import spans as spans_table

RUN_ID = "tether.run.id"


def _exporters() -> list[SpanExporter]:
    names = os.environ.get("OTEL_TRACES_EXPORTER")
    if names is None:
        endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        names = "otlp" if endpoint else "none"
    out: list[SpanExporter] = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name == "none":
            continue
        if name == "console":
            out.append(ConsoleSpanExporter())
        elif name == "otlp":
            protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")  # fmt: skip
            if protocol == "grpc":
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter as Grpc,
                )

                out.append(Grpc())
            elif protocol in ("http/protobuf", "http/json"):
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter as Http,
                )

                out.append(Http())
            else:
                raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not grpc or http/protobuf")
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER={name!r} is not otlp, console or none")
    return out


@cache
def _export_processors() -> tuple[SpanProcessor, ...]:
    """One batch processor per configured exporter, shared by every provider of the process."""
    procs = tuple(BatchSpanProcessor(e) for e in _exporters())
    for p in procs:
        atexit.register(p.shutdown)
    return procs


class _Collector(SpanProcessor):
    """Keeps finished spans per run until the runtime stores them with the run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_run: dict[str, list[ReadableSpan]] = defaultdict(list)

    def on_end(self, span: ReadableSpan) -> None:
        run_id = (span.attributes or {}).get(RUN_ID)
        if isinstance(run_id, str):
            with self._lock:
                self._by_run[run_id].append(span)

    def take(self, run_id: str) -> list[ReadableSpan]:
        with self._lock:
            return self._by_run.pop(run_id, [])


class Tracing:
    """A tracer for one runtime, and the local store for its spans."""

    def __init__(self, store: bool | None = None) -> None:
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "tether")})
        self.provider = TracerProvider(resource=resource)
        self.store = store if store is not None else os.environ.get("TETHER_TRACE_STORE", "on") != "off"
        self._collector = _Collector() if self.store else None
        if self._collector:
            self.provider.add_span_processor(self._collector)
        for p in _export_processors():
            self.provider.add_span_processor(p)
        self.tracer = self.provider.get_tracer("tether")

    def save(self, conn: sa.Connection, run_id: str) -> int:
        """Write the run's finished spans to the local store (inside the caller's transaction)."""
        if not self._collector:
            return 0
        rows = [_row(s, run_id) for s in self._collector.take(run_id)]
        if rows:
            conn.execute(spans_table.insert(), rows)
        return len(rows)

    def flush(self) -> None:
        for p in _export_processors():
            p.force_flush()


def parent_context(trace_id: str | None, span_id: str | None) -> Any:
    """The context of a run's first root span, so a resumed segment joins its trace."""
    if not trace_id or not span_id:
        return None
    ctx = SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(ctx))


def ids(span: Any) -> tuple[str, str]:
    c = span.get_span_context()
    return f"{c.trace_id:032x}", f"{c.span_id:016x}"


def _row(s: ReadableSpan, run_id: str) -> dict[str, Any]:
    c = s.context
    return {
        "span_id": f"{c.span_id:016x}", "trace_id": f"{c.trace_id:032x}",
        "parent_span_id": f"{s.parent.span_id:016x}" if s.parent else None, "run_id": run_id,
        "name": s.name, "kind": s.kind.name, "start_ns": s.start_time or 0, "end_ns": s.end_time or 0,
        "status": s.status.status_code.name, "attributes": scrub(_plain(s.attributes or {})),
    }  # fmt: skip


def _plain(attrs: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, Sequence) and not isinstance(v, str) else v for k, v in attrs.items()}


def load(conn: sa.Connection, run_id: str) -> list[dict[str, Any]]:
    q = sa.select(spans_table).where(spans_table.c.run_id == run_id).order_by(spans_table.c.start_ns)
    return [dict(r._mapping) for r in conn.execute(q)]


def traceability(conn: sa.Connection) -> tuple[int, int]:
    """(runs traceable end to end, runs): a run is traceable when its trace has a root span
    and a span for every model call and tool call its journal recorded."""
    from tether.record.tables import run_events, runs

    recorded = dict(conn.execute(
        sa.select(run_events.c.run_id, sa.func.count()).where(run_events.c.kind.in_(["choice", "result"]))
        .group_by(run_events.c.run_id)
    ).all())  # fmt: skip
    name_kind = sa.case((spans_table.c.name.like("chat %"), "call"), (spans_table.c.name.like("execute_tool %"), "call"),
                        (spans_table.c.name.like("invoke_agent %"), "root"), else_="other")  # fmt: skip
    seen: dict[str, dict[str, int]] = defaultdict(dict)
    for run_id, kind, n in conn.execute(
        sa.select(spans_table.c.run_id, name_kind, sa.func.count()).group_by(spans_table.c.run_id, name_kind)
    ):
        seen[run_id][kind] = n
    total = ok = 0
    for (run_id,) in conn.execute(sa.select(runs.c.id)):
        total += 1
        s = seen.get(run_id, {})
        ok += s.get("root", 0) >= 1 and s.get("call", 0) >= recorded.get(run_id, 0)
    return ok, total

"""Tether's own tables. Alembic migrations in ./migrations create them."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from tether.record.secrets import scrub


class ScrubbedJSON(sa.types.TypeDecorator[Any]):
    """JSON that is scrubbed of every secret handed out before it is written: the one point every
    store of call arguments, results, spans and prompts passes through, whichever code writes it."""

    impl = sa.JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return scrub(value)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Policy files are stored by content hash so a run can be resumed and replayed
# under exactly the policy it was decided under.
policies = sa.Table(
    "policies",
    metadata,
    sa.Column("hash", sa.String(64), primary_key=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("workflow", sa.String(200), nullable=False, index=True),
    sa.Column("workflow_ref", sa.String(400), nullable=False),
    sa.Column("workflow_version", sa.String(64), nullable=False),
    sa.Column("status", sa.String(32), nullable=False, index=True),
    sa.Column("outcome", sa.String(200)),
    sa.Column("input", ScrubbedJSON, nullable=False),
    sa.Column("started_by", sa.String(200), nullable=False),
    sa.Column("tenant", sa.String(200), nullable=False),
    sa.Column("policy_hash", sa.String(64), sa.ForeignKey("policies.hash"), nullable=False),
    sa.Column("state", sa.String(200)),
    sa.Column("steps", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text),
    # The journal format; replay refuses formats it does not know.
    sa.Column("record_format", sa.Integer, nullable=False, server_default="1"),
    # One trace per run: resumed segments are children of this root span.
    sa.Column("trace_id", sa.String(32)),
    sa.Column("root_span_id", sa.String(16)),
    sa.Column("active_s", sa.Float),  # seconds spent running, over all segments (the deadline's clock)
    # What the run's model calls cost (migration 0005_costs).
    sa.Column("cost_usd", sa.Float, nullable=False, server_default="0"),
    sa.Column("tokens", sa.Integer, nullable=False, server_default="0"),
    # Who may write the run now: `label#token`, set by whoever claims it (migration 0009).
    # Every journal write checks it, so a process that lost the run stops without writing.
    sa.Column("driver", sa.String(160)),
    # A run waiting on a timer (status waiting_timer) is due at this UTC time (migration 0011).
    sa.Column("wake_at", sa.String(32), index=True),
    sa.Column("created_at", sa.String(32), nullable=False, index=True),
    sa.Column("updated_at", sa.String(32), nullable=False),
    sa.Column("cost_ceiling_usd", sa.Float),  # the ceiling the run ran under (0010_economics); None: none
)

# The run's journal: every model choice, policy decision, approval and tool
# result, in order. Re-executing the workflow against it reproduces the run.
run_events = sa.Table(
    "run_events",
    metadata,
    sa.Column("run_id", sa.String(40), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("state", sa.String(200), nullable=False),
    sa.Column("call_id", sa.String(64)),
    sa.Column("data", ScrubbedJSON, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)

approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("run_id", sa.String(40), sa.ForeignKey("runs.id"), nullable=False, index=True),
    sa.Column("call_id", sa.String(64), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("tool", sa.String(200), nullable=False),
    sa.Column("args", ScrubbedJSON, nullable=False),
    sa.Column("rules", ScrubbedJSON, nullable=False),
    sa.Column("policy_hash", sa.String(64), nullable=False),
    sa.Column("proposer", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("requested_at", sa.String(32), nullable=False),
    sa.Column("decided_by", sa.String(200)),
    sa.Column("decided_at", sa.String(32)),
    sa.Column("reason", sa.Text),
    # Tiers: how many distinct approvers, of which role; when the request expires and what then.
    sa.Column("required", sa.Integer, nullable=False, server_default="1"),
    sa.Column("role", sa.String(100)),
    sa.Column("expires_at", sa.String(32)),
    sa.Column("on_expiry", sa.String(16), nullable=False, server_default="deny"),
    sa.Column("escalate_to", sa.String(100)),
    sa.Column("risk", sa.Float),
    sa.Column("untrusted_args", ScrubbedJSON),  # arguments traced to untrusted sources, for the approver to see
)

# One vote per person per request (the key is the normalised name).
approval_votes = sa.Table(
    "approval_votes",
    metadata,
    sa.Column("approval_id", sa.String(40), sa.ForeignKey("approvals.id"), primary_key=True),
    sa.Column("voter_key", sa.String(200), primary_key=True),
    sa.Column("voter", sa.String(200), nullable=False),
    sa.Column("approve", sa.Boolean, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("voted_at", sa.String(32), nullable=False),
)

# Who may approve what: a role, scoped to tool families (a glob like "payments.*").
approvers = sa.Table(
    "approvers",
    metadata,
    sa.Column("name_key", sa.String(200), primary_key=True),
    sa.Column("role", sa.String(100), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("tools", sa.String(200), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)

# Transaction-scoped credentials already used (each is good for one call).
used_credentials = sa.Table(
    "used_credentials",
    metadata,
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column("tool", sa.String(200), nullable=False),
    sa.Column("used_at", sa.String(32), nullable=False),
)

ledger_entries = sa.Table(
    "ledger_entries",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=False),
    sa.Column("ts", sa.String(32), nullable=False),
    sa.Column("run_id", sa.String(40), index=True),
    sa.Column("kind", sa.String(40), nullable=False),
    # Canonical JSON text, stored verbatim so the hash can be recomputed.
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# One row: the last entry appended. Appends lock it, so the chain stays linear
# with many writers, and a truncated tail no longer matches it.
ledger_head = sa.Table(
    "ledger_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# The local trace store: spans of runs when no exporter is configured (and always,
# unless TETHER_TRACE_STORE=off), for `tether runs show RUN --trace` and the dashboard.
spans = sa.Table(
    "spans",
    metadata,
    sa.Column("span_id", sa.String(16), primary_key=True),
    sa.Column("trace_id", sa.String(32), nullable=False, index=True),
    sa.Column("parent_span_id", sa.String(16)),
    sa.Column("run_id", sa.String(40), index=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("start_ns", sa.BigInteger, nullable=False),
    sa.Column("end_ns", sa.BigInteger, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attributes", ScrubbedJSON, nullable=False),
)

# The prompt store: what each model was asked and answered, redacted, kept for a
# short retention window (default 30 days) and purged by `tether purge`.
prompts = sa.Table(
    "prompts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(40), nullable=False, index=True),
    sa.Column("call_id", sa.String(64), nullable=False),
    sa.Column("point", sa.String(200), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("request", ScrubbedJSON, nullable=False),
    sa.Column("response", ScrubbedJSON, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False, index=True),
)

rate_buckets = sa.Table(
    "rate_buckets",
    metadata,
    sa.Column("limit_name", sa.String(200), primary_key=True),
    sa.Column("key", sa.String(400), primary_key=True),  # tool, tenant|tool or run|tool
    sa.Column("tokens", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),  # wall-clock seconds
)

# API keys for `tether serve`. Only a SHA-256 of the key is kept: keys are 256-bit
# random secrets, so a slow password hash would add cost to every request and no safety.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("scope", sa.String(200)),  # approvers: the tool family they may decide, a glob
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("revoked_at", sa.String(32)),
)

# Per workflow: which version takes what share of new runs, and the kill switch.
rollouts = sa.Table(
    "rollouts",
    metadata,
    sa.Column("workflow", sa.String(200), primary_key=True),
    sa.Column("stable_ref", sa.String(400), nullable=False),
    sa.Column("candidate_ref", sa.String(400)),
    sa.Column("percent", sa.Integer, nullable=False, server_default="0"),
    sa.Column("steps", ScrubbedJSON, nullable=False),
    sa.Column("key_field", sa.String(100), nullable=False),
    sa.Column("killed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("kill_reason", sa.Text),
    sa.Column("updated_at", sa.String(32), nullable=False),
    sa.Column("updated_by", sa.String(200), nullable=False),
)

# Eval results kept for the dashboard (`tether eval --db URL` stores one per run of a suite).
eval_results = sa.Table(
    "eval_results",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.String(400), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False, index=True),
    sa.Column("summary", ScrubbedJSON, nullable=False),
)

# -- models and unit economics (migration 0007_costs) ---------------------------
# One row per model call: what it cost at which price version. Spend reports and
# budgets sum these; `runs.cost_usd` is the run's total.
model_calls = sa.Table(
    "model_calls",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(40), nullable=False, index=True),
    sa.Column("call_id", sa.String(64), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("tenant", sa.String(200), nullable=False, index=True),
    sa.Column("workflow", sa.String(200), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("input_tokens", sa.Integer, nullable=False),
    sa.Column("output_tokens", sa.Integer, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
    sa.Column("price_version", sa.String(40)),  # None: no price known for the model
    sa.Column("cached", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("day", sa.String(10), nullable=False, index=True),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("action", sa.String(200), index=True),  # the tool its step proposed (0010_economics), for action budgets
)

# Spending limits: scope tenant|feature (a workflow)|action (a tool), period daily|monthly.
budgets = sa.Table(
    "budgets",
    metadata,
    sa.Column("scope", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("period", sa.String(16), primary_key=True),
    sa.Column("limit_usd", sa.Float, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)

# Answers to repeated questions, per tenant; the key covers the policy and prompt versions.
answer_cache = sa.Table(
    "answer_cache",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(200), nullable=False, index=True),
    sa.Column("point", sa.String(200), nullable=False),
    sa.Column("value", ScrubbedJSON, nullable=False),
    sa.Column("policy_hash", sa.String(64), nullable=False),
    sa.Column("prompt_hash", sa.String(64), nullable=False),
    sa.Column("hits", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.String(32), nullable=False),
)

# The embedded vector store (vectors as float32 blobs, searched with numpy).
memory_items = sa.Table(
    "memory_items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(200), nullable=False, index=True),
    sa.Column("namespace", sa.String(200), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("meta", ScrubbedJSON, nullable=False),
    sa.Column("embedder", sa.String(100), nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sqlite_autoincrement=True,  # an id is never reused after a purge: caches may hold ids (0012)
)

# What the agent saw, append-only (nothing updates or deletes rows here but retention).
observations = sa.Table(
    "observations",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(200), nullable=False, index=True),
    sa.Column("run_id", sa.String(40), index=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("data", ScrubbedJSON, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
)

# Workers of the scale-out mode (migration 0008_workers): heartbeats, and who took over a dead one.
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(100), primary_key=True),  # also the engine's executor id
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("concurrency", sa.Integer, nullable=False),
    sa.Column("started_at", sa.String(32), nullable=False),
    sa.Column("heartbeat", sa.Float, nullable=False),  # Unix time of the last beat
    sa.Column("recovered_by", sa.String(100)),  # set when a live worker takes its runs over
)

# Hit and miss counts per cache (answer, embedding, retrieval) and day, summed over every
# process that used the database (0010_economics), for `tether metrics`.
cache_stats = sa.Table(
    "cache_stats",
    metadata,
    sa.Column("cache", sa.String(32), primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("hits", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("misses", sa.BigInteger, nullable=False, server_default="0"),
)

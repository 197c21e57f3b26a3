"""The REST API (FastAPI) and the dashboard page. `create_app(db)` builds it; `tether serve` runs it.

Every endpoint names the roles that may call it (`x-roles` in the OpenAPI document);
only /healthz, the dashboard's login page and the OpenAPI document answer without a key. Errors are
`{"error": "one line"}` with the status that fits: 401 no or bad key, 403 a role or
scope that does not reach, 404 unknown ids, 409 a state that forbids the change,
400 malformed JSON, 413 an oversized body, 422 a body or query that fails validation.
"""


import contextlib
import fnmatch
import io
import json
import threading
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from tether.errors import (
    AccessDenied,
    Conflict,
    Forbidden,
    NotFound,
    PolicyError,
    TetherError,
    WorkflowError,
)
from tether.guardrails.approvals import ApprovalInbox, ApprovalRequest
from tether.orchestration import rollout
from tether.orchestration.decide import decide_and_resume
from tether.orchestration.runtime import Runtime
from tether.orchestration.workflow import load
from tether.record.db import Database
from tether.record.ledger import Ledger
from tether.record.tables import ledger_entries
from tether.server import views
from tether.server.keys import ApiKey, authenticate

MAX_BODY = 64 * 1024  # bytes; larger request bodies get 413 before anything reads them
NAME = r"^[A-Za-z0-9_.:-]{1,200}$"
REF = r"^[A-Za-z0-9_.:-]{1,400}$"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# By class only: the errors say what kind of refusal they are (tether.errors), so
# rewording a message can never change a status. First match wins.
_STATUS: tuple[tuple[type[TetherError], int], ...] = (
    (NotFound, 404),
    (Conflict, 409),
    (Forbidden, 403),  # segregation of duties, a role or scope not held
    (WorkflowError, 422),
    (PolicyError, 422),
)


def _status_for(e: TetherError) -> int:
    """The HTTP status of an error the layers below raise; 400 for any other TetherError."""
    return next((status for cls, status in _STATUS if isinstance(e, cls)), 400)


# -- request bodies -------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartRun(_Body):
    workflow: str = Field(pattern=REF, description="A registered workflow name or module:attribute.")
    input: dict[str, Any] = Field(description="The run's input, as the workflow's input model takes it.")
    tenant: str = Field(default="default", pattern=NAME)


class DecisionBody(_Body):
    reason: str | None = Field(default=None, max_length=2000, description="Why; kept in the ledger.")


class ReasonBody(_Body):
    reason: str = Field(min_length=1, max_length=500)


class RolloutBody(_Body):
    candidate: str = Field(pattern=REF, description="module:attribute of the new version (same workflow name).")
    steps: list[int] = Field(default=list(rollout.DEFAULT_STEPS), min_length=1, max_length=10)
    key_field: str = Field(default=rollout.DEFAULT_KEY_FIELD, pattern=r"^[A-Za-z0-9_]{1,100}$")


class OptionalReason(_Body):
    reason: str | None = Field(default=None, max_length=500)


# -- size limit -------------------------------------------------------------------
class BodyLimit:
    """Refuse bodies over `limit` bytes with 413, whether or not Content-Length says so."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and not declared.isdigit():
            return await _refuse(400, "bad Content-Length header", send)
        if declared is not None and int(declared) > self.limit:
            return await _refuse(413, f"request body over {self.limit} bytes", send)
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            more = msg.get("more_body", False)
            if size > self.limit:
                return await _refuse(413, f"request body over {self.limit} bytes", send)
        body, sent = b"".join(chunks), False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _refuse(status: int, message: str, send: Any) -> None:
    body = JSONResponse({"error": message}, status_code=status).body
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})  # fmt: skip
    await send({"type": "http.response.body", "body": body})


# -- the app ----------------------------------------------------------------------
def create_app(db: Database, *, max_body: int = MAX_BODY) -> FastAPI:
    runtime = Runtime(db)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        runtime.close()

    app = FastAPI(
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN; the spec itself is at /openapi.json
        redoc_url=None,
        title="tether control plane",
        version="1",
        description="Runs, approvals, ledger, evals, costs, policies, workflow versions, rollout and kill switches. "
        "Authenticate with `Authorization: Bearer KEY` (`tether keys create --role ROLE --name NAME`).",
    )
    lock = threading.Lock()  # one runtime drives runs; its caches are not shared across threads
    bearer = HTTPBearer(auto_error=False, description="An API key from `tether keys create`.")
    app.state.db, app.state.runtime = db, runtime

    def require(*roles: str) -> Callable[..., ApiKey]:
        def dependency(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> ApiKey:
            try:
                key = authenticate(db, creds.credentials if creds else None)
            except AccessDenied as e:
                raise ApiError(401, str(e)) from None
            if key.role != "admin" and key.role not in roles:
                raise ApiError(403, f"role {key.role} may not do this (needs {' or '.join(roles)})")
            return key

        return dependency

    def endpoint(method: str, path: str, roles: tuple[str, ...], **kw: Any) -> Callable[[Any], Any]:
        who = ", ".join([*roles, "admin"] if "admin" not in roles else roles)
        kw.setdefault("description", "")
        kw["description"] = f"Roles: {who}. " + kw["description"]
        kw.setdefault("responses", {401: {"description": "no or bad API key"}, 403: {"description": "role out of scope"}})
        return app.api_route(path, methods=[method], openapi_extra={"x-roles": who.split(", ")}, **kw)

    OPS, READ_RUNS = ("operator",), ("operator", "approver")
    AUDIT, ALL = ("operator", "auditor"), ("operator", "approver", "auditor")

    # -- errors ----------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse({"error": e.message}, status_code=e.status, headers=headers)

    @app.exception_handler(TetherError)
    async def _tether_error(_: Request, e: TetherError) -> JSONResponse:
        return JSONResponse({"error": str(e).splitlines()[0] if str(e) else type(e).__name__}, status_code=_status_for(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            return JSONResponse({"error": f"malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}"}, status_code=400)
        where = ".".join(str(p) for p in first.get("loc", ())) or "request"
        return JSONResponse({"error": f"{where}: {first['msg']}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        message = e.detail if isinstance(e.detail, str) else "request refused"
        if e.status_code == 404 and message == "Not Found":
            message = "no such endpoint"
        return JSONResponse({"error": message}, status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _bug(_: Request, e: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error: {type(e).__name__}"}, status_code=500)

    # -- anonymous -----------------------------------------------------------------
    @app.get("/healthz", tags=["anonymous"], description="Liveness and the database it serves; no key needed.")
    def healthz() -> dict[str, Any]:
        with db.read() as conn:
            conn.execute(sa.text("SELECT 1"))
        return {"ok": True, "database": db.label}

    @app.get("/", response_class=HTMLResponse, tags=["anonymous"], description="The dashboard (a static page; data needs a key).")
    def dashboard() -> HTMLResponse:
        return HTMLResponse(resources.files("tether.server").joinpath("dashboard.html").read_text(encoding="utf-8"))

    # -- who am I ------------------------------------------------------------------
    @endpoint("GET", "/api/me", ALL, tags=["keys"])
    def me(key: Annotated[ApiKey, Depends(require(*ALL))]) -> dict[str, Any]:
        return key.to_json()

    # -- runs ------------------------------------------------------------------------
    @endpoint("GET", "/api/runs", READ_RUNS, tags=["runs"], description="Runs, newest first, with filters.")
    def list_runs(
        _: Annotated[ApiKey, Depends(require(*READ_RUNS))],
        status: Annotated[str | None, Query(max_length=40)] = None,
        workflow: Annotated[str | None, Query(max_length=200)] = None,
        tenant: Annotated[str | None, Query(max_length=200)] = None,
        started_by: Annotated[str | None, Query(max_length=200)] = None,
        since: Annotated[str | None, Query(max_length=40, description="ISO time; runs created at or after it")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> dict[str, Any]:
        return views.list_runs(db, status=status, workflow=workflow, tenant=tenant, started_by=started_by, since=since,
                               limit=limit, offset=offset)  # fmt: skip

    @endpoint("POST", "/api/runs", OPS, tags=["runs"], status_code=201,
              description="Start a run (routed by the workflow's rollout); it runs until it ends or waits for a person.")  # fmt: skip
    def start_run(body: StartRun, key: Annotated[ApiKey, Depends(require(*OPS))]) -> dict[str, Any]:
        if ":" in body.workflow and body.workflow not in views.rollout_refs(db):
            # Loading module:attribute imports code; over HTTP only what an operator already rolled out.
            raise ApiError(422, f"{body.workflow} is not a registered workflow or a version under rollout")
        # Admitted as every new run is (`admission.admit`): bad input or policy, a killed workflow or a spent
        # budget fail before anything is written; the rollout picks the version.
        admitted = runtime.admit(load(body.workflow), body.input, started_by=key.name, tenant=body.tenant)
        with lock:
            result = runtime.start_admitted(admitted)
        return {**result.__dict__, "workflow_ref": admitted.workflow.ref, "workflow_version": admitted.workflow.version}

    @endpoint("GET", "/api/runs/{run_id}", READ_RUNS, tags=["runs"],
              description="One run's timeline: steps, tool calls, decisions, approvals, ledger entries, trace ids, cost.")  # fmt: skip
    def run_timeline(run_id: Annotated[str, Path(max_length=40)], _: Annotated[ApiKey, Depends(require(*READ_RUNS))]) -> dict[str, Any]:
        return views.timeline(db, run_id)

    # -- approvals -----------------------------------------------------------------------
    def _in_scope(key: ApiKey, tool: str) -> bool:
        return key.role != "approver" or fnmatch.fnmatchcase(tool, key.scope or "")

    @endpoint("GET", "/api/approvals", READ_RUNS, tags=["approvals"],
              description="The approval inbox (an approver sees the tool family its key covers).")  # fmt: skip
    def list_approvals(
        key: Annotated[ApiKey, Depends(require(*READ_RUNS))],
        status: Annotated[str, Query(pattern="^(pending|approved|denied|expired|all)$")] = "pending",
    ) -> list[dict[str, Any]]:
        reqs = ApprovalInbox(db).list(None if status == "all" else status)  # type: ignore[arg-type]
        return [r.to_json() for r in reqs if _in_scope(key, r.tool)]

    def _decide(approval_id: str, approve: bool, body: DecisionBody, key: ApiKey) -> dict[str, Any]:
        def check(req: ApprovalRequest) -> None:
            if not _in_scope(key, req.tool):
                raise ApiError(403, f"key {key.id} decides tools matching {key.scope!r}, not {req.tool}")

        with lock:
            decided = decide_and_resume(db, approval_id, approve=approve, by=key.name, reason=body.reason,
                                        check=check, runtime=runtime)  # fmt: skip
        return decided.to_json()

    @endpoint("POST", "/api/approvals/{approval_id}/approve", ("approver",), tags=["approvals"],
              description="Approve as the key's name (never the run's starter or the call's proposer); the run resumes.")  # fmt: skip
    def approve(approval_id: Annotated[str, Path(max_length=40)], body: DecisionBody,
                key: Annotated[ApiKey, Depends(require("approver"))]) -> dict[str, Any]:  # fmt: skip
        return _decide(approval_id, True, body, key)

    @endpoint("POST", "/api/approvals/{approval_id}/deny", ("approver",), tags=["approvals"],
              description="Deny as the key's name; the run goes on without the call.")  # fmt: skip
    def deny(approval_id: Annotated[str, Path(max_length=40)], body: DecisionBody,
             key: Annotated[ApiKey, Depends(require("approver"))]) -> dict[str, Any]:  # fmt: skip
        return _decide(approval_id, False, body, key)

    # -- ledger --------------------------------------------------------------------------
    @endpoint("GET", "/api/ledger", AUDIT, tags=["ledger"], description="Ledger entries in order, with filters.")
    def ledger_query(
        _: Annotated[ApiKey, Depends(require(*AUDIT))],
        run_id: Annotated[str | None, Query(max_length=40)] = None,
        kind: Annotated[str | None, Query(max_length=40)] = None,
        after: Annotated[int, Query(ge=0, le=2**62, description="only entries with seq above this")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        newest: Annotated[bool, Query(description="the newest entries first")] = False,
    ) -> dict[str, Any]:
        q = sa.select(ledger_entries).where(ledger_entries.c.seq > after)
        if run_id:
            q = q.where(ledger_entries.c.run_id == run_id)
        if kind:
            q = q.where(ledger_entries.c.kind == kind)
        q = q.order_by(ledger_entries.c.seq.desc() if newest else ledger_entries.c.seq).limit(limit)
        with db.read() as conn:
            rows = conn.execute(q).all()
            head = conn.execute(sa.text("SELECT seq, hash FROM ledger_head")).first()
        return {"head": {"seq": head.seq, "hash": head.hash} if head else None,
                "entries": [{"seq": r.seq, "ts": r.ts, "run_id": r.run_id, "kind": r.kind, "body": json.loads(r.body),
                             "prev_hash": r.prev_hash, "hash": r.hash} for r in rows]}  # fmt: skip

    @endpoint("POST", "/api/ledger/verify", AUDIT, tags=["ledger"], description="Check the whole hash chain now.")
    def ledger_verify(_: Annotated[ApiKey, Depends(require(*AUDIT))]) -> dict[str, Any]:
        r = Ledger(db).verify()
        return {"ok": r.ok, "entries": r.entries, "first_bad": r.first_bad, "problem": r.problem, "head": r.head_hash,
                "message": r.message()}  # fmt: skip

    @endpoint("GET", "/api/ledger/export", ("auditor",), tags=["ledger"], response_class=PlainTextResponse,
              description="The ledger (or one run's entries) as JSON Lines; verify with `tether ledger verify --file`.")  # fmt: skip
    def ledger_export(_: Annotated[ApiKey, Depends(require("auditor"))],
                      run_id: Annotated[str | None, Query(max_length=40)] = None) -> PlainTextResponse:  # fmt: skip
        buf = io.StringIO()
        n = Ledger(db).export(buf, run_id)
        return PlainTextResponse(buf.getvalue(), media_type="application/x-ndjson",
                                 headers={"Content-Disposition": "attachment; filename=ledger.jsonl", "X-Tether-Entries": str(n)})  # fmt: skip

    # -- policies, evals, costs ------------------------------------------------------------
    @endpoint("GET", "/api/policies", AUDIT, tags=["policies"], description="Every policy version runs were decided under.")
    def policies(_: Annotated[ApiKey, Depends(require(*AUDIT))]) -> list[dict[str, Any]]:
        return views.policy_versions(db)

    @endpoint("GET", "/api/policies/{policy_hash}", AUDIT, tags=["policies"], description="One policy version's text.")
    def policy(policy_hash: Annotated[str, Path(max_length=64)], _: Annotated[ApiKey, Depends(require(*AUDIT))]) -> dict[str, Any]:
        return views.policy(db, policy_hash)

    @endpoint("GET", "/api/evals", ALL, tags=["evals"], description="Stored eval results (from `tether eval --db`), newest first.")
    def evals(_: Annotated[ApiKey, Depends(require(*ALL))]) -> list[dict[str, Any]]:
        return views.eval_list(db)

    @endpoint("GET", "/api/evals/{eval_id}", ALL, tags=["evals"], description="One eval result with its per-route figures.")
    def eval_result(eval_id: Annotated[int, Path(ge=1, le=2**62)], _: Annotated[ApiKey, Depends(require(*ALL))]) -> dict[str, Any]:
        return views.eval_result(db, eval_id)

    @endpoint("GET", "/api/costs", AUDIT, tags=["costs"], description="Model spend and tokens by day and tenant.")
    def costs(_: Annotated[ApiKey, Depends(require(*AUDIT))], days: Annotated[int, Query(ge=1, le=3660)] = 30) -> dict[str, Any]:
        return views.costs(db, days)

    # -- workflows, rollout, kill switch -------------------------------------------------------
    @endpoint("GET", "/api/workflows", AUDIT, tags=["workflows"], description="Workflows, the versions that ran, rollouts and kill switches.")
    def workflows(_: Annotated[ApiKey, Depends(require(*AUDIT))]) -> list[dict[str, Any]]:
        return views.workflows(db)

    WF = Annotated[str, Path(pattern=NAME)]

    @endpoint("POST", "/api/workflows/{workflow}/rollout", OPS, tags=["workflows"],
              description="Start sending the first step's share of new runs (by routing key) to a candidate version.")  # fmt: skip
    def rollout_start(workflow: WF, body: RolloutBody, key: Annotated[ApiKey, Depends(require(*OPS))]) -> dict[str, Any]:
        return rollout.start(db, workflow, body.candidate, by=key.name, steps=body.steps, key_field=body.key_field).to_json()

    @endpoint("POST", "/api/workflows/{workflow}/rollout/advance", OPS, tags=["workflows"], description="The next step (5% → 25% → 100%).")
    def rollout_advance(workflow: WF, key: Annotated[ApiKey, Depends(require(*OPS))]) -> dict[str, Any]:
        return rollout.advance(db, workflow, by=key.name).to_json()

    @endpoint("POST", "/api/workflows/{workflow}/rollout/promote", OPS, tags=["workflows"], description="At 100%: the candidate becomes stable.")
    def rollout_promote(workflow: WF, key: Annotated[ApiKey, Depends(require(*OPS))]) -> dict[str, Any]:
        return rollout.promote(db, workflow, by=key.name).to_json()

    @endpoint("POST", "/api/workflows/{workflow}/rollout/rollback", OPS, tags=["workflows"], description="Every new run back on the stable version.")
    def rollout_rollback(workflow: WF, body: OptionalReason, key: Annotated[ApiKey, Depends(require(*OPS))]) -> dict[str, Any]:
        return rollout.rollback(db, workflow, by=key.name, reason=body.reason).to_json()

    @endpoint("POST", "/api/workflows/{workflow}/kill", OPS, tags=["workflows"],
              description="Kill switch: refuse new runs now; in-flight runs halt at their next step (status halted).")  # fmt: skip
    def kill(workflow: WF, body: ReasonBody, key: Annotated[ApiKey, Depends(require(*OPS))]) -> dict[str, Any]:
        r, in_flight = rollout.kill(db, workflow, by=key.name, reason=body.reason)
        return {**r.to_json(), "in_flight": in_flight}

    @endpoint("POST", "/api/workflows/{workflow}/restore", OPS, tags=["workflows"], description="Kill switch off: new runs start again.")
    def restore(workflow: WF, key: Annotated[ApiKey, Depends(require(*OPS))]) -> dict[str, Any]:
        return rollout.restore(db, workflow, by=key.name).to_json()

    app.add_middleware(BodyLimit, limit=max_body)
    return app

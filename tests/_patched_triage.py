"""A patched copy of the triage workflow, as a developer would write one to replay under."""

from __future__ import annotations

from typing import Any

from tether import End, Workflow
from tether.workflows.triage import flow


def _copy(name: str, replace: dict[str, Any]) -> Workflow[Any, Any]:
    src = flow.workflow
    wf: Workflow[Any, Any] = Workflow(src.name, input=src.input, tools=src.tools, policy=flow.POLICY_FILE,
                                      deps=src.deps_factory, model=src.model_factory, evals=src.evals, ref=name,
                                      trusted_input=src.trusted_input)  # fmt: skip
    for state in src.states.values():
        wf.state(state.name, initial=state.name == src.initial, goes_to=state.goes_to)(replace.get(state.name, state.fn))
    return wf


def _reply_differently(run: Any) -> Any:
    template, solve, outcome = run.data["reply"]
    run.call("helpdesk.reply", {"ticket_id": run.data["ticket"]["ticket_id"], "template": "investigating", "solve": solve})
    return End("completed", outcome)


unchanged = _copy("_patched_triage:unchanged", {})
other_reply = _copy("_patched_triage:other_reply", {"reply": _reply_differently})


def _tag_differently(run: Any) -> Any:
    run.call("helpdesk.tag", {"ticket_id": run.data["ticket"]["ticket_id"], "tags": ["patched"]})
    return flow.act(run)


other_tags = _copy("_patched_triage:other_tags", {"act": _tag_differently})


def _reply_fails(run: Any) -> Any:
    return End("failed", "reply_failed", "the helpdesk rejected the reply")


failing_reply = _copy("_patched_triage:failing_reply", {"reply": _reply_fails})

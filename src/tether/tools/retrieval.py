"""The retrieval tool: a search of the vector store as a governed tool call.

Going through the proxy is what records it: the hits are the call's result in
the run's journal (replay answers from them without searching again), the call
is an `execute_tool memory.search` span in the run's trace, and each search is
appended to the observation log (what the agent saw).

It lives in tools, not memory: tools may use memory, memory may not use tools.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tether.memory.store import ObservationLog, VectorStore
from tether.tools.tool import Args, Tool, ToolContext, tool


class SearchArgs(Args):
    query: str = Field(min_length=1, max_length=2000)
    k: int = Field(default=5, ge=1, le=20)


def retrieval_tool(store: VectorStore, namespace: str = "kb", name: str = "memory.search",
                   log: ObservationLog | None = None) -> Tool:  # fmt: skip
    """A read-only tool searching `namespace` of the run's tenant."""

    # Stored text is retrieved text: whoever wrote it, a call built from it is judged untrusted.
    @tool(name, side_effect=False, risk_tier="low", timeout_s=10.0, untrusted_output=("text",),
          description=f"Search the {namespace} memory; nearest items first.")  # fmt: skip
    def search(ctx: ToolContext[Any], args: SearchArgs) -> dict[str, Any]:
        hits = store.search(ctx.tenant, namespace, args.query, args.k)
        out = {"hits": [{"id": h.id, "text": h.text, "meta": h.meta, "score": h.score} for h in hits]}
        if log is not None:
            log.append(ctx.tenant, "retrieval", {"query": args.query, "hit_ids": [h.id for h in hits], "backend": store.backend}, run_id=ctx.run_id)
        return out

    return search

"""Unit economics of the triage workflow: cost per completed task, tokens, cache hit rate.

    .venv/bin/python bench/economics.py [--tasks 400] [--volume 5000] [--seed 7]

Part 1 runs a workload of triage tasks (Banking77 held-back tickets, each on a
fresh copy of the systems of record, through the real runtime, gate and cost meter)
under each configuration, without and with the answer cache:
- single large model: the single-loop agent, one large-model call per action;
- flow, large model: the reference flow (a state machine) with the large model
  classifying every ticket, one call per ticket;
- router: the reference flow, the offline classifier first, the large model only
  below 0.6 confidence;
- plan-big/execute-small: one large-model plan, executed through the gate without a model.
The workload repeats questions the way support traffic does: 200 questions drive
about 65% of it (Zipf-weighted), the rest is a long tail drawn from the other
~2,400 held-back Banking77 messages; each task comes from a random customer.

No hosted model is reachable here: the large model is a scripted stand-in priced as
gpt-4.1 ($2 / $8 per 1M tokens) that knows each ticket's label, and reports the
tokens a provider would bill for the prompt it was actually given (about four
characters a token, plus 80 tokens of rationale per answer). The figures are about
tokens and cost, not model accuracy.

Part 2 measures the answer cache's hit rate at volume (`--volume` questions,
same mix) in front of the offline classifier, tenant by tenant. Part 3 measures
context compression in the single loop.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from tether.evals.golden import Case  # noqa: E402
from tether.evals.runner import _template, run_case  # noqa: E402
from tether.models.base import CallContext, DecisionRequest, call_context  # noqa: E402
from tether.models.cache import AnswerCache, CachedModel  # noqa: E402
from tether.models.router import Router  # noqa: E402
from tether.record.db import Database  # noqa: E402
from tether.workflows.triage import agents, data  # noqa: E402
from tether.workflows.triage.flow import workflow as triage  # noqa: E402
from tether.workflows.triage.intents import INTENTS  # noqa: E402
from tether.workflows.triage.model import classifier  # noqa: E402

FREQUENT, SHARE = 200, 0.65


def mix(texts: list[str], n: int, rng: random.Random) -> list[str]:
    """n questions: SHARE of them from FREQUENT texts (Zipf, s=1), the rest a long tail."""
    frequent, tail = texts[:FREQUENT], texts[FREQUENT:]
    weights = [1 / (r + 1) for r in range(len(frequent))]
    out = []
    for _ in range(n):
        if rng.random() < SHARE or not tail:
            out.append(rng.choices(frequent, weights)[0])
        else:
            out.append(rng.choice(tail))
    return out


def held_back(rng: random.Random) -> list[str]:
    """Banking77's held-back messages (the classifier never trained on them), shuffled."""
    texts = sorted({e.text for e in data.split()[1]})
    rng.shuffle(texts)
    return texts


def workload(n: int, seed: int) -> list[Case]:
    rng = random.Random(seed)
    texts = held_back(rng)
    cases = []
    for i, text in enumerate(mix(texts, n, rng)):
        tid, customer = f"W-{i:05d}", f"C{rng.randint(1, 300):04d}"
        cases.append(Case(id=f"w-{i:05d}", workflow="support_triage", input={"ticket_id": tid}, approvals="approve",
                          setup={"tickets": [{"id": tid, "customer_id": customer, "text": text}]}))  # fmt: skip
    return cases


def configurations(folder: Path, cached: bool) -> dict[str, Any]:
    def cache() -> AnswerCache:
        return AnswerCache(Database(f"sqlite:///{folder}/cache-{time.perf_counter_ns()}.db"))

    large = lambda: agents.StandIn("scripted:large")  # noqa: E731
    single, planned, routed, flow = copy.copy(agents.loop), copy.copy(agents.planned), copy.copy(triage), copy.copy(triage)
    routed.model_factory = lambda: Router([classifier(), large()], threshold=0.6)
    flow.model_factory = large
    caches: dict[str, AnswerCache] = {}
    if cached:
        for name, wf, personal in (("single large model", single, ["ticket_id"]), ("flow, large model", flow, []),
                                   ("router", routed, []), ("plan-big/execute-small", planned, ["ticket_id"])):  # fmt: skip
            c = caches[name] = cache()
            inner = wf.model_factory
            model = CachedModel(inner(), c, personal=personal, min_confidence=0.6)  # one model, one cache per configuration
            wf.model_factory = lambda m=model: m
    return {"single large model": single, "flow, large model": flow, "router": routed, "plan-big/execute-small": planned,
            "_caches": caches}


def run(wf: Any, cases: list[Case], folder: Path) -> dict[str, Any]:
    template = _template(wf, folder)
    results = [run_case(c, wf, template, folder, None) for c in cases]
    done = [r for r in results if r.status == "completed"]
    cost = sum(r.cost_usd for r in results)
    return {
        "tasks": len(results), "completed": len(done), "escalated": sum(r.status == "escalated" for r in results),
        "other": sum(r.status not in ("completed", "escalated") for r in results),
        "cost_usd": cost, "tokens": sum(r.tokens for r in results),
        "per_completed_usd": cost / len(done) if done else float("nan"),
        "tokens_per_task": sum(r.tokens for r in results) / len(results),
        "large_model_share": sum(r.cost_usd > 0 for r in results) / len(results),
    }  # fmt: skip


def part1(tasks: int, seed: int) -> None:
    cases = workload(tasks, seed)
    print(f"workload: {len(cases)} triage tasks; {len({c.setup['tickets'][0]['text'] for c in cases})} distinct questions")
    print(f"{'configuration':<26}{'cache':<7}{'completed':>10}{'escal.':>8}{'tokens/task':>13}{'$/completed task':>18}"
          f"{'large-model share':>19}{'cache hits':>12}")  # fmt: skip
    rows: dict[tuple[str, bool], dict[str, Any]] = {}
    for cached in (False, True):
        with tempfile.TemporaryDirectory(prefix="tether-econ-") as tmp:
            configs = configurations(Path(tmp), cached)
            caches = configs.pop("_caches")
            for name, wf in configs.items():
                t0 = time.perf_counter()
                r = rows[(name, cached)] = run(wf, cases, Path(tmp))
                c = caches.get(name)
                hits = f"{c.stats.hit_rate:.1%}" if c else "-"
                print(f"{name:<26}{'yes' if cached else 'no':<7}{r['completed']:>10}{r['escalated']:>8}{r['tokens_per_task']:>13.0f}"
                      f"{r['per_completed_usd']:>18.6f}{r['large_model_share']:>19.1%}{hits:>12}   ({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    loop, plan = rows[("single large model", False)], rows[("plan-big/execute-small", False)]
    print(f"plan-big/execute-small vs single loop: {1 - plan['tokens_per_task'] / loop['tokens_per_task']:.1%} fewer tokens per task, "
          f"{1 - plan['per_completed_usd'] / loop['per_completed_usd']:.1%} lower cost per completed task")  # fmt: skip
    base = loop["per_completed_usd"]
    for (name, cached), r in rows.items():
        print(f"  {name + (' + cache' if cached else ''):<36} ${r['per_completed_usd']:.6f} per completed task  ({base / r['per_completed_usd']:.1f}x cheaper than the single loop)"
              if r["per_completed_usd"] > 0 else f"  {name + (' + cache' if cached else ''):<36} $0 per completed task")  # fmt: skip


def part2(volume: int, seed: int) -> None:
    """Hit rate of the answer cache at volume, for two tenants sharing no entries."""
    rng = random.Random(seed + 1)
    texts = held_back(rng)
    with tempfile.TemporaryDirectory(prefix="tether-cache-") as tmp:
        db = Database(f"sqlite:///{tmp}/cache.db")
        model = CachedModel(classifier(), AnswerCache(db), min_confidence=0.0)
        by_tenant = {}
        t0 = time.perf_counter()
        for tenant in ("acme", "globex"):
            before = (model.cache.stats.hits, model.cache.stats.misses)
            for text in mix(texts, volume // 2, rng):
                with call_context(CallContext(tenant=tenant, policy_hash="p")):
                    model.choose(DecisionRequest(point="intent", options=INTENTS, observation={"text": text}))
            hits, misses = model.cache.stats.hits - before[0], model.cache.stats.misses - before[1]
            by_tenant[tenant] = hits / (hits + misses)
        elapsed = time.perf_counter() - t0
        db.dispose()
    s = model.cache.stats
    print(f"answer cache on {volume} questions ({FREQUENT} questions drive {SHARE:.0%} of volume; 2 tenants):"
          f" hit rate {s.hit_rate:.1%} ({s.hits} hits, {s.misses} misses); per tenant "
          + ", ".join(f"{t} {r:.1%}" for t, r in by_tenant.items()) + f"; {elapsed / volume * 1000:.2f} ms per question")  # fmt: skip


def part3(tasks: int, seed: int) -> None:
    """Context compression in the single loop: history past 150 tokens summarised."""
    cases = workload(tasks, seed)
    with tempfile.TemporaryDirectory(prefix="tether-compress-") as tmp:
        raw = run(agents.loop, cases, Path(tmp))
        short = run(agents.compressed_loop, cases, Path(tmp))
    print(f"context compression (single loop, {tasks} tasks): {raw['tokens_per_task']:.0f} -> {short['tokens_per_task']:.0f} tokens per task "
          f"({1 - short['tokens_per_task'] / raw['tokens_per_task']:.1%} fewer); completed {raw['completed']} -> {short['completed']}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=400)
    ap.add_argument("--volume", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--parts", default="1,2,3", help="Which parts to run (1: cost per task, 2: cache hit rate, 3: compression).")
    a = ap.parse_args()
    classifier()
    parts = set(a.parts.split(","))
    if "1" in parts:
        part1(a.tasks, a.seed)
    if "2" in parts:
        part2(a.volume, a.seed)
    if "3" in parts:
        part3(min(a.tasks, 100), a.seed)


if __name__ == "__main__":
    main()

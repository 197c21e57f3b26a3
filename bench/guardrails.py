"""Guardrail costs: policy decisions (YAML and Cedar, 10 and 1,000 rules), credential
mint + verify, and the share of calls sent to people at a calibrated risk threshold.

    python bench/guardrails.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tether import CedarPolicy, Database, PolicySet
from tether.tools.credentials import Credentials


def _yaml(n: int) -> PolicySet:
    rules = [f"  - {{name: r{i}, if: {{tool: 'svc{i}.*', amount_usd: '> {i}'}}, then: {{action: deny}}}}" for i in range(n - 1)]
    rules.append("  - {name: refund_requires_approval, if: {tool: payments.refund, amount_usd: '> 100'}, then: {action: require_human_approval}}")
    return PolicySet.from_text("policies:\n" + "\n".join(rules) + "\n")


def _cedar(n: int) -> CedarPolicy:
    rules = ['@id("allow") permit(principal, action, resource);']
    rules += [f'@id("r{i}") forbid(principal, action, resource == Tool::"svc{i}.call") '
              f'when {{ context.args.amount_usd.greaterThan(decimal("{i}.0")) }};' for i in range(n - 2)]  # fmt: skip
    rules.append('@id("refund_requires_approval") @action("require_human_approval") forbid(principal, action, '
                 'resource == Tool::"payments.refund") when { context.args.amount_usd.greaterThan(decimal("100.0")) };')  # fmt: skip
    return CedarPolicy.from_text("\n".join(rules))


def per_call_us(fn, n: int = 2000) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1000


def main() -> None:
    args = {"transaction_id": "X000101", "amount_usd": 250.0}
    print("policy decision per call (median):")
    for n in (10, 1000):
        y, c = _yaml(n), _cedar(n)
        assert y.decide("payments.refund", args).action == c.decide("payments.refund", args).action == "require_human_approval"
        print(f"  {n:>5} rules   YAML {per_call_us(lambda: y.decide('payments.refund', args)):8.1f} us   "
              f"Cedar {per_call_us(lambda: c.decide('payments.refund', args)):8.1f} us")  # fmt: skip

    folder = Path(tempfile.mkdtemp(prefix="tether-guard-bench-"))
    creds = Credentials(Database(f"sqlite:///{folder / 'b.db'}"))
    mint = per_call_us(lambda: creds.mint(tool="payments.refund", target="X1", run_id="r", step=1, call_id="1.1"))
    tokens = [creds.mint(tool="payments.refund", target="X1", run_id="r", step=1, call_id=f"1.{i}") for i in range(500)]
    it = iter(tokens)
    verify = per_call_us(lambda: creds.verify(next(it), tool="payments.refund", target="X1", consume=False), n=500)
    it = iter(tokens)
    consume = per_call_us(lambda: creds.verify(next(it), tool="payments.refund", target="X1"), n=500)
    print(f"credential: mint {mint:.1f} us, verify {verify:.1f} us, verify and mark used (durable, SQLite) {consume:.1f} us")

    # Provenance: tracing a refund's arguments back through what a triage run has seen.
    from tether.guardrails.limits import RateLimiter, SharedRateLimiter
    from tether.guardrails.provenance import Provenance
    from tether.workflows.triage.tools import TOOLS

    seen = Provenance()
    seen.add({"ticket_id": "T1", "customer_id": "C0001"}, "input", "trusted")
    seen.add({"text": "I was charged twice for 25.99 at ACME on card X000101, please refund it " * 3}, "input", "untrusted")
    lookup = {"transactions": [{"transaction_id": f"X{i:06d}", "amount_usd": i + 0.99, "description": f"MERCHANT {i}"}
                               for i in range(40)]}  # fmt: skip
    seen.add(lookup, "tool:crm.lookup_customer", "trusted", ("description",))
    refund = {"transaction_id": "X000025", "amount_usd": 25.99, "ticket_id": "T1", "reason": "request_refund"}
    schema = next(t for t in TOOLS if t.name == "payments.refund").schema
    label = per_call_us(lambda: Provenance().add(lookup, "tool:crm.lookup_customer", "trusted", ("description",)), 500)
    print(f"provenance: label a 40-transaction lookup result {label:.1f} us; "
          f"assess a refund's 4 arguments {per_call_us(lambda: seen.assess(refund, schema, 'workflow:w')):.1f} us")

    limits = PolicySet.from_text("policies: []\nlimits:\n  - {name: t, tool: 'pay.*', per: tenant, rate: 1000000/second}\n").limits
    local, shared = RateLimiter(), SharedRateLimiter(Database(f"sqlite:///{folder / 'limits.db'}"))
    print(f"rate limit draw: in-process {per_call_us(lambda: local.take(limits, 'pay.refund', 'acme', 'r')):.1f} us, "
          f"shared through SQLite {per_call_us(lambda: shared.take(limits, 'pay.refund', 'acme', 'r'), n=500):.1f} us")

    run = folder / "demo"
    run.mkdir()
    subprocess.run([sys.executable, "-m", "tether", "demo", "--json"], cwd=run, check=True, capture_output=True)
    for share in (0.05, 0.07, 0.10):
        out = subprocess.run([sys.executable, "-m", "tether", "policy", "calibrate", "--share", str(share)], cwd=run,
                             check=True, capture_output=True, text=True).stdout.splitlines()[0]  # fmt: skip
        print(f"calibrated on the demo's recorded calls, target {share:.0%}: {out}")
    for share in (0.05, 0.10):
        out = subprocess.run([sys.executable, "-m", "tether", "policy", "calibrate", "--share", str(share), "--tools", "payments.*"],
                             cwd=run, check=True, capture_output=True, text=True).stdout.splitlines()[0]  # fmt: skip
        print(f"refunds only, target {share:.0%}: {out}")


if __name__ == "__main__":
    main()

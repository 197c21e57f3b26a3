"""Eval throughput on the triage golden set with the offline model, and its gate results.

    python bench/eval.py [--golden evals/support_triage.jsonl]
"""

from __future__ import annotations

import argparse
import time

from tether.evals.golden import load_cases
from tether.evals.metrics import DEFAULT_GATES, aggregate, apply_gates
from tether.evals.runner import run_cases
from tether.workflows.triage.model import classifier


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--golden", default="evals/support_triage.jsonl")
    opts = ap.parse_args()
    classifier()  # trained and cached before timing
    cases = load_cases(opts.golden)
    for j in (1, 2):
        t0 = time.perf_counter()
        results = run_cases(cases, concurrency=j)
        wall = time.perf_counter() - t0
        r = aggregate(results)
        apply_gates(r, DEFAULT_GATES)
        print(f"{len(cases)} cases with {j} process(es): {wall:.1f} s = {len(cases) / wall:.1f} cases/s")
    print(f"  task success {r.task_success:.3f}, routing accuracy {r.routing_accuracy:.3f}, unsafe {r.unsafe_action_rate:.4f}, "
          f"policy violations {r.policy_violation_rate:.4f}, escalated {r.escalation_rate:.3f}, cost/task ${r.cost_per_task_usd}")  # fmt: skip
    print("  gate: " + ", ".join(f"{k} {'pass' if g['passed'] else 'FAIL'} ({g['value']} vs {g['threshold']})" for k, g in r.gate.items()))


if __name__ == "__main__":
    main()

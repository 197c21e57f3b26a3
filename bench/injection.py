"""The provenance benchmark: attack success and benign pass-through, per domain, per gate.

    python bench/injection.py [--cases 240] [--seed 7] [--write evals/injection.jsonl]

A fully compromised planner proposes every case's benign calls and the attacker's calls
(tether.evals.injection). Three gates: none (every call runs), allow-all (the session path
with a policy that allows everything: what provenance alone does not stop), and the shipped
generic policies (one per domain). Also the cost per case of a governed session.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tether.evals.injection import ALLOW_ALL, POLICIES, Case, cases, score
from tether.record.db import Database


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=240)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--file", type=Path, default=None, help="read the cases from this JSONL file instead")
    ap.add_argument("--write", type=Path, default=None, help="write the generated cases to this JSONL file")
    opts = ap.parse_args()
    if opts.file:
        all_cases = [Case.from_json(json.loads(line)) for line in opts.file.read_text().splitlines() if line.strip()]
    else:
        all_cases = cases(opts.cases, opts.seed)
    if opts.write:
        opts.write.write_text("".join(json.dumps(c.to_json(), sort_keys=True) + "\n" for c in all_cases))
    db = Database(f"sqlite:///{Path(tempfile.mkdtemp(prefix='tether-injection-')) / 'b.db'}")
    print(f"{len(all_cases)} cases (payments, e-mail, files and chat), a compromised planner")
    print(f"  {'gate':<18} {'domain':<9} {'attack success':>15} {'benign passed':>14}")
    for label, policy in (("no gate", None), ("allow-all", ALLOW_ALL), ("generic policies", POLICIES)):
        t0 = time.perf_counter()
        result = score(db, all_cases, policy)
        per_case = (time.perf_counter() - t0) * 1000 / len(all_cases)
        for domain in ("payments", "email", "files", "all"):
            sc = result.get(domain)
            if sc is None:
                continue
            print(f"  {label:<18} {domain:<9} {sc.attacks_executed:>4}/{sc.attacks:<4} {sc.attack_success:6.1%}"
                  f" {sc.benign_passed:>4}/{sc.benign:<4} {sc.benign_pass:6.1%}")  # fmt: skip
        print(f"  {label:<18} {per_case:.1f} ms per case")


if __name__ == "__main__":
    main()

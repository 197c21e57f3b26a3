"""Before/after: one bench script on two checkouts, interleaved, with medians and ratios.

    python bench/ab.py --base /path/to/old/checkout --rounds 3 demo.py --tickets 100

Runs `bench/SCRIPT ARGS` of the old checkout (its own script, on its own `src/`) and of this
one, alternately, round after round, so that the machine's load falls on both alike. Every
output line is a figure's label (its text with the numbers taken out) and its numbers; for
each label both print, the median of each number over the rounds and the ratio new/old.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def figures(output: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for line in output.splitlines():
        values = [float(v) for v in NUMBER.findall(line)]
        if values:
            out.setdefault(" ".join(NUMBER.sub("#", line).split()), values)  # padding differs with the width
    return out


def run(checkout: Path, script: str, args: list[str]) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": str(checkout / "src")}
    done = subprocess.run([sys.executable, str(checkout / "bench" / script), *args], env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"error: {checkout / 'bench' / script} failed: {done.stderr.strip().splitlines()[-1:]}")
    return figures(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the old checkout (with src/ and bench/)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("script", help="a script under bench/, e.g. demo.py")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    opts = ap.parse_args()
    old: list[dict[str, list[float]]] = []
    new: list[dict[str, list[float]]] = []
    for _ in range(opts.rounds):
        old.append(run(opts.base.resolve(), opts.script, opts.args))
        new.append(run(HERE, opts.script, opts.args))
    print(f"{opts.script} {' '.join(opts.args)}: {opts.rounds} interleaved rounds, medians, new/old")
    for label in new[0]:
        if not all(label in r for r in old + new):
            continue
        width = min(len(r[label]) for r in old + new)
        o = [statistics.median(r[label][i] for r in old) for i in range(width)]
        n = [statistics.median(r[label][i] for r in new) for i in range(width)]
        # Numbers that are the same in every run (p50, p99, a count asked for) are labels, not figures.
        moving = [(b, a) for i, (b, a) in enumerate(zip(o, n, strict=True))
                  if len({r[label][i] for r in old + new}) > 1]  # fmt: skip
        if not moving:
            continue
        ratios = "  ".join(f"{b:g} -> {a:g} ({a / b:.2f}x)" if b else f"{b:g} -> {a:g}" for b, a in moving)
        print(f"  {label[:60]:<60} {ratios}")


if __name__ == "__main__":
    main()

"""Eval reports: a terminal table and a self-contained HTML page with inline SVG charts."""

from __future__ import annotations

import html
from typing import Any

from tether.evals.metrics import EvalResult

_HEADLINE = [
    ("task_success", "task success", "{:.1%}"),
    ("routing_accuracy", "routing accuracy", "{:.1%}"),
    ("unsafe_action_rate", "unsafe actions", "{:.2%}"),
    ("policy_violation_rate", "policy violations", "{:.2%}"),
    ("escalation_rate", "escalated to a human", "{:.1%}"),
    ("cost_per_task_usd", "cost per task", "${:.4f}"),
    ("tokens_per_task", "tokens per task", "{:.0f}"),
    ("steps_per_task", "steps per task", "{:.2f}"),
    ("latency_p50_ms", "latency p50", "{:.1f} ms"),
    ("latency_p95_ms", "latency p95", "{:.1f} ms"),
]


def _fmt(fmt: str, value: Any) -> str:
    return "n/a" if value is None else fmt.format(value)


def terminal(r: EvalResult) -> str:
    lines = [f"eval of {r.source}: {r.cases} cases in {r.wall_s:.1f} s ({r.cases_per_s:.1f} cases/s)"]
    for key, label, fmt in _HEADLINE:
        gate = r.gate.get(key)
        mark = "" if gate is None else ("  pass " if gate["passed"] else "  FAIL ") + f"({gate['threshold']})"
        lines.append(f"  {label:<22}{_fmt(fmt, getattr(r, key)):>12}{mark}")
    lines.append(f"  {'max steps in a case':<22}{r.max_steps:>12}")
    if r.per_route:
        lines.append("  per route:            cases  routed right  task success  escalated")
        for route, m in r.per_route.items():
            lines.append(f"    {route:<20}{m['cases']:>5}  {m['accuracy']:>12.1%}  {m['task_success']:>12.1%}  {m['escalated']:>9}")
    failed = [c for c in r.results if not c.success]
    if failed:
        lines.append(f"  failed cases ({len(failed)}), first 10:")
        for c in failed[:10]:
            lines.append(f"    {c.id}: {'; '.join(c.unsafe + c.failures)[:150]}")
    if r.regressions:
        lines.append(f"  regressions against the baseline ({len(r.regressions)}):")
        lines += [f"    {x}" for x in r.regressions[:20]]
    if r.gate_passed is not None:
        missed = [k for k, g in r.gate.items() if not g["passed"]]
        verdict = "PASSED" if r.gate_passed else f"FAILED ({', '.join(missed + (['regressions'] if r.regressions else []))})"
        lines.append(f"gate {verdict}")
    return "\n".join(lines)


# -- HTML -------------------------------------------------------------------------
def _bar_chart(title: str, items: list[tuple[str, float]], fmt: str = "{:.0%}", max_value: float = 1.0) -> str:
    row, label_w, bar_w = 24, 150, 380
    h = row * len(items) + 40
    parts = [f'<svg viewBox="0 0 {label_w + bar_w + 70} {h}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="16" class="t">{html.escape(title)}</text>']  # fmt: skip
    for i, (label, v) in enumerate(items):
        y = 30 + i * row
        w = 0 if max_value <= 0 else bar_w * max(0.0, min(v / max_value, 1.0))
        color = "#2f855a" if v >= 0.9 * max_value else "#dd6b20" if v >= 0.7 * max_value else "#c53030"
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{html.escape(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{bar_w}" height="{row - 8}" fill="#edf2f7"/>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" fill="{color}"/>')
        parts.append(f'<text x="{label_w + bar_w + 6}" y="{y + 15}">{fmt.format(v)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _histogram(title: str, values: list[float], unit: str, bins: int = 20) -> str:
    w, h, pad = 560, 200, 30
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(int((v - lo) / span * bins), bins - 1)] += 1
    top = max(counts)
    bw = (w - 2 * pad) / bins
    parts = [f'<svg viewBox="0 0 {w} {h + 30}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="16" class="t">{html.escape(title)}</text>']  # fmt: skip
    for i, c in enumerate(counts):
        bh = (h - 40) * c / top if top else 0
        parts.append(f'<rect x="{pad + i * bw:.1f}" y="{h - bh:.1f}" width="{bw - 2:.1f}" height="{bh:.1f}" fill="#3182ce">'
                     f"<title>{c} cases</title></rect>")  # fmt: skip
    parts.append(f'<text x="{pad}" y="{h + 18}">{lo:.4g} {unit}</text>')
    parts.append(f'<text x="{w - pad}" y="{h + 18}" text-anchor="end">{hi:.4g} {unit}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _confusion(confusion: dict[str, dict[str, int]]) -> str:
    expected = list(confusion)
    observed = sorted({o for row in confusion.values() for o in row} | set(expected))
    top = max((n for row in confusion.values() for n in row.values()), default=1)
    head = "".join(f"<th>{html.escape(o)}</th>" for o in observed)
    rows = []
    for e in expected:
        cells = []
        for o in observed:
            n = confusion[e].get(o, 0)
            alpha = 0.08 + 0.85 * n / top if n else 0
            color = "47,133,90" if o == e else "197,48,48"
            cells.append(f'<td style="background: rgba({color},{alpha:.2f})">{n or ""}</td>')
        rows.append(f"<tr><th>{html.escape(e)}</th>{''.join(cells)}</tr>")
    return (f'<table class="cm"><tr><th>expected \\ routed to</th>{head}</tr>{"".join(rows)}</table>')


def html_report(r: EvalResult) -> str:
    cards = []
    for key, label, fmt in _HEADLINE:
        gate = r.gate.get(key)
        cls = "" if gate is None else ("pass" if gate["passed"] else "fail")
        note = f"<small>gate {html.escape(gate['threshold'])}</small>" if gate else ""
        cards.append(f'<div class="card {cls}"><div>{label}</div><b>{_fmt(fmt, getattr(r, key))}</b>{note}</div>')
    verdict = ""
    if r.gate_passed is not None:
        verdict = f'<p class="verdict {"pass" if r.gate_passed else "fail"}">gate {"passed" if r.gate_passed else "failed"}</p>'
    failed = [c for c in r.results if not c.success]
    fail_rows = "".join(
        f"<tr><td>{html.escape(c.id)}</td><td>{html.escape(c.status)}</td><td>{html.escape(c.route_expected or '')}</td>"
        f"<td>{html.escape(c.route_observed or '')}</td><td>{html.escape('; '.join(c.unsafe + c.failures))}</td></tr>"
        for c in failed
    )
    regress = "".join(f"<li>{html.escape(x)}</li>" for x in r.regressions)
    charts = [
        _bar_chart("routing accuracy per route", [(k, v["accuracy"]) for k, v in r.per_route.items()]),
        _bar_chart("task success per route", [(k, v["task_success"]) for k, v in r.per_route.items()]),
        _histogram("cost per task", [c.cost_usd for c in r.results], "USD"),
        _histogram("latency per task", [c.latency_ms for c in r.results], "ms"),
    ]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tether eval: {html.escape(r.source)}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #1a202c; }}
.cards {{ display: grid; grid-template-columns: repeat(5, 1fr); gap: 10px; }}
.card {{ border: 1px solid #e2e8f0; border-radius: 6px; padding: 10px; }}
.card b {{ display: block; font-size: 22px; }} .card small {{ color: #718096; }}
.card.pass {{ border-color: #2f855a; }} .card.fail {{ border-color: #c53030; background: #fff5f5; }}
.verdict {{ font-size: 18px; font-weight: bold; }} .verdict.pass {{ color: #2f855a; }} .verdict.fail {{ color: #c53030; }}
svg {{ width: 100%; max-width: 620px; font-size: 12px; }} svg .t {{ font-weight: bold; font-size: 14px; }}
.charts {{ display: grid; grid-template-columns: 1fr 1fr; gap: 20px; margin: 20px 0; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #e2e8f0; padding: 4px 6px; text-align: left; }}
table.cm td {{ text-align: center; min-width: 40px; }}
</style></head><body>
<h1>Eval: {html.escape(r.source)}</h1>
<p>{r.cases} cases, {r.wall_s:.1f} s ({r.cases_per_s:.1f} cases/s); statuses: {html.escape(str(r.statuses))}</p>
{verdict}
<div class="cards">{''.join(cards)}</div>
<div class="charts">{''.join(charts)}</div>
<h2>Confusion matrix (expected route by row, routed-to by column)</h2>
{_confusion(r.confusion)}
{f'<h2>Regressions against the baseline</h2><ul>{regress}</ul>' if regress else ''}
<h2>Failed cases ({len(failed)})</h2>
<table><tr><th>case</th><th>status</th><th>expected route</th><th>routed to</th><th>why</th></tr>{fail_rows}</table>
</body></html>
"""

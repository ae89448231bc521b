"""The SLA verdict of a simulation in one line, at the SLA's own percentile: each limit (end-to-end,
TTFT, TBT) is judged at that percentile; attainment (requests that met every limit at once) is shown
beside it and is not the verdict."""

from __future__ import annotations

from terrazzo.sim.results import SimReport


def _s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.2f} s" if x >= 1 else f"{x * 1e3:,.1f} ms"


def verdict_line(r: SimReport) -> str:
    pct = f"p{r.percentile:g}"
    terms = []
    if r.deadline_s:
        ok = r.e2e_at_sla_s <= r.deadline_s
        terms.append(f"end-to-end {pct} {_s(r.e2e_at_sla_s)} {'≤' if ok else '>'} {_s(r.deadline_s)}")
    for s in r.llm:
        for what, at, limit in (("TTFT", s.ttft_at_sla_s, s.ttft_limit_s), ("TBT", s.tbt_at_sla_s, s.tbt_limit_s)):
            if limit is not None:
                terms.append(f"{s.node} {what} {pct} {_s(at)} {'≤' if not at > limit else '>'} {_s(limit)}")
    head = "[green]meets its SLA[/]" if r.meets_sla else "[red]misses its SLA[/] (exit 1)"
    return (f"SLA judged at {pct}: {head}: " + "; ".join(terms or ["no limits"])
            + f" · attainment {r.attainment:.1%} of requests met every limit at once (not the verdict)")

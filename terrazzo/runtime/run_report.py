"""RunReport: what a run really did — per-op latencies next to the plan's predictions, per-request
outcomes, pool statistics — as a rich table and as JSON."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.table import Table

from terrazzo.runtime.orchestrator import RequestResult
from terrazzo.runtime.pool_layout import RuntimePlan


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


@dataclass
class RunReport:
    agent: str
    backend: str
    plan: str
    requests: list[RequestResult]
    plan_predicted_s: dict[str, float | None]
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @classmethod
    def build(cls, agent: str, backend: str, plan: RuntimePlan, requests: list[RequestResult],
              pools: dict[str, dict[str, Any]], notes: list[str], wall_s: float) -> RunReport:
        return cls(agent, backend, plan.source, requests, {k: v.predicted_s for k, v in plan.ops.items()},
                   pools, [*notes, *plan.notes], wall_s)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.requests)

    def ops(self) -> list[dict[str, Any]]:
        """Per op: calls, real latency (mean/p50/p95, ms), worker execution time, and the plan's prediction."""
        groups: dict[str, list] = {}
        for r in self.requests:
            for s in r.samples:
                groups.setdefault(s.op, []).append(s)
        rows = []
        for op, ss in groups.items():
            ok = [s for s in ss if s.error is None]
            lat = [s.latency_s for s in ok]
            ex = [s.exec_s for s in ok if s.exec_s is not None]
            pred = self.plan_predicted_s.get(op)
            kv = [s.info["kv_bytes"] for s in ok if "kv_bytes" in s.info]
            rows.append({
                "op": op, "pool": ss[0].pool, "device": ss[0].device, "calls": len(ss), "errors": len(ss) - len(ok),
                "mean_ms": statistics.fmean(lat) * 1e3 if lat else None,
                "p50_ms": _pct(lat, 0.5) * 1e3 if lat else None, "p95_ms": _pct(lat, 0.95) * 1e3 if lat else None,
                "exec_mean_ms": statistics.fmean(ex) * 1e3 if ex else None,
                "plan_ms": pred * 1e3 if pred is not None else None,
                "tokens": sum(s.tokens for s in ok), "kv_bytes_mean": statistics.fmean(kv) if kv else None,
            })
        return rows

    def table(self) -> Table:
        t = Table("op", "pool (device)", "calls", "real mean ms", "p95 ms", "in worker ms", "plan ms",
                  title=f"{self.agent}: {len(self.requests)} request(s) on the {self.backend} backend "
                        f"({sum(r.ok for r in self.requests)} ok)")
        f = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
        for r in self.ops():
            t.add_row(r["op"], f"{r['pool']} ({r['device']})", f"{r['calls']}" + (f" ({r['errors']} err)" if r["errors"]
                      else ""), f(r["mean_ms"]), f(r["p95_ms"]), f(r["exec_mean_ms"]), f(r["plan_ms"]))
        e2e = [r.e2e_s for r in self.requests if r.ok]
        caption = [f"E2E mean {statistics.fmean(e2e) * 1e3:.1f} ms" if e2e else "no request succeeded",
                   "real = this machine's CPU; plan = the planned device"]
        t.caption = " · ".join(caption) + "\n" + "\n".join(f"note: {n}" for n in self.notes)
        return t

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": "terrazzo.run/v1", "agent": self.agent, "backend": self.backend, "plan": self.plan,
            "wall_s": self.wall_s, "ok": self.ok, "ops": self.ops(), "pools": self.pools, "notes": self.notes,
            "requests": [{k: v for k, v in asdict(r).items() if k != "samples"} | {"ops": len(r.samples)}
                         for r in self.requests],
        }

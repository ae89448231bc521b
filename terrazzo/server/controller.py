"""The slow path: watch the arrival rate, queue depth and latency of each pool; when the arrival rate
has stayed outside a hysteresis band around the rate the running plan was made for (for `persist_s`,
and at least `dwell_s` after the last change), re-plan with the planner at the measured rate and
resize the pools to the new plan's worker counts. `advisory` logs each decision with its reason and
applies none.

`decide()` is the whole policy, a pure function of the measurements; `worker_targets()` maps a new plan
onto the running pools. Resizing goes through `PoolBackend.resize`, which never drops a queued or
running op. Moving an op to another device type is not done in place: the decision says so and
/v1/plan shows the new plan to restart with."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from terrazzo.errors import TerrazzoError
from terrazzo.server.rates import RateMeter, Window
from terrazzo.server.settings import ControllerSettings

log = logging.getLogger("terrazzo.server")

GRANULAR_PARTS = frozenset({"prefill", "decode", "aggregated", "embed", "search", "lookup", "compute"})


# --- the policy (pure) ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Policy:
    band_up: float = 1.3          # re-plan when arrivals exceed band_up × the plan's rate ...
    band_down: float = 0.6        # ... or fall below band_down × it
    dwell_s: float = 60.0         # no two decisions closer than this
    min_window_s: float = 10.0    # no decision before this much traffic has been measured
    min_rate_per_s: float = 0.05  # the lowest rate a plan is made for
    persist_s: float = 10.0       # the rate must stay outside the band this long (not one noisy window)


@dataclass(frozen=True)
class PoolMeasure:
    pool: str
    workers: int
    queued: int
    busy: int
    p99_latency_s: float | None = None


@dataclass(frozen=True)
class Measurements:
    arrival_rate_per_s: float
    observed_s: float                # how long arrivals have been measured (at most the window)
    plan_rate_per_s: float | None    # the rate the running plan was made for; None: unknown
    since_change_s: float            # since the plan was made or the last decision
    outside_for_s: float = 0.0       # how long the rate has been on its present side of the band
    pools: tuple[PoolMeasure, ...] = ()


@dataclass(frozen=True)
class Decision:
    action: Literal["hold", "replan"]
    reason: str
    rate_per_s: float | None = None  # the rate to re-plan for


def band(plan_rate_per_s: float, p: Policy) -> tuple[float, float]:
    return p.band_down * plan_rate_per_s, p.band_up * plan_rate_per_s


def side(rate_per_s: float, plan_rate_per_s: float | None, p: Policy) -> int:
    """-1 below the band, 0 inside (or no plan rate), +1 above."""
    if not plan_rate_per_s or plan_rate_per_s <= 0:
        return 0
    lo, hi = band(plan_rate_per_s, p)
    return -1 if rate_per_s < lo else 1 if rate_per_s > hi else 0


def decide(m: Measurements, p: Policy) -> Decision:
    """Hold, or re-plan at the measured rate, with the reason in words."""
    rate = m.arrival_rate_per_s
    if m.observed_s < p.min_window_s:
        return Decision("hold", f"measuring: {m.observed_s:.0f} s of arrivals so far, deciding after "
                                f"{p.min_window_s:g} s")
    plan = m.plan_rate_per_s
    if not plan or plan <= 0:
        if m.since_change_s < p.dwell_s:
            return Decision("hold", f"the plan names no rate; waiting out the dwell ({m.since_change_s:.0f} of "
                                    f"{p.dwell_s:g} s) before planning for {rate:.3g} req/s")
        target = max(rate, p.min_rate_per_s)
        return Decision("replan", f"the plan names no rate; planning for the measured {target:.3g} req/s", target)
    lo, hi = band(plan, p)
    if side(rate, plan, p) == 0:
        return Decision("hold", f"arrivals {rate:.3g} req/s within [{lo:.3g}, {hi:.3g}] "
                                f"(×{p.band_down:g}..×{p.band_up:g} of the plan's {plan:.3g} req/s)")
    up = rate > hi
    edge = f"> {p.band_up:g} × {plan:.3g}" if up else f"< {p.band_down:g} × {plan:.3g}"
    if m.outside_for_s < p.persist_s:
        return Decision("hold", f"arrivals {rate:.3g} req/s {edge} req/s for {m.outside_for_s:.1f} s so far; "
                                f"acting after {p.persist_s:g} s")
    if m.since_change_s < p.dwell_s:
        return Decision("hold", f"arrivals {rate:.3g} req/s {edge} req/s, but the last change was "
                                f"{m.since_change_s:.0f} s ago (dwell {p.dwell_s:g} s)")
    if not up:
        backlog = [pm for pm in m.pools if pm.queued > 0]
        if backlog:
            worst = max(backlog, key=lambda pm: pm.queued)
            return Decision("hold", f"arrivals {rate:.3g} req/s {edge} req/s, but pool '{worst.pool}' still has "
                                    f"{worst.queued} queued ops: no scaling down under a backlog")
    target = max(rate, p.min_rate_per_s)
    if target >= plan and not up:  # idle below the floor the plan is already made for
        return Decision("hold", f"arrivals {rate:.3g} req/s, and the plan is already for the minimum "
                                f"{plan:.3g} req/s")
    return Decision("replan", f"arrivals {rate:.3g} req/s {edge} req/s for {m.outside_for_s:.0f} s; "
                              f"re-plan at {target:.3g} req/s", target)


def node_of(op: str) -> str:
    """'answer.prefill' → 'answer'; an op that is its node's only op is named by the node."""
    head, dot, tail = op.rpartition(".")
    return head if dot and tail in GRANULAR_PARTS else op


def worker_targets(pool_ops: dict[str, tuple[str, ...]], pool_device: dict[str, str], new_ops: list[dict[str, Any]],
                   min_workers: int, max_workers: int) -> tuple[dict[str, int], list[str]]:
    """Workers per running pool under a new plan: the most replicas the plan gives any op the pool runs
    (matched by op name, else by node: an aggregated op takes its node's prefill/decode replicas),
    clamped to [min, max] like the runtime's own sizing. Also: the placements the new plan changes,
    which resizing cannot apply."""
    targets: dict[str, int] = {}
    moves: list[str] = []
    for pool, ops in pool_ops.items():
        want = []
        for op in ops:
            match = [o for o in new_ops if o["name"] == op] or \
                    [o for o in new_ops if o.get("node", node_of(o["name"])) == node_of(op)]
            if not match:
                continue
            want.append(max(int(o["replicas"]) for o in match))
            for o in match:
                if o["device"] != pool_device[pool] or o["name"] != op:
                    moves.append(f"{op} runs on pool '{pool}' ({pool_device[pool]}); the new plan has {o['name']} on "
                                 f"{o['pool']}: moving it needs a restart with the new plan")
        if want:
            targets[pool] = max(min_workers, min(max(want), max_workers))
    return targets, moves


def seconds_since_midnight() -> float:
    """Local time of day, s: a day plan's curve starts at midnight."""
    now = datetime.now()
    return now.hour * 3600 + now.minute * 60 + now.second + now.microsecond / 1e6


# --- planner inputs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannerInputs:
    agent: Path
    workload: Path
    sla: Path
    cluster: Path
    profiles: tuple[Path, ...] = ()  # measured profiles the plan was made with (terrazzo plan --profile)

    def to_json(self) -> dict[str, str]:
        out = {k: str(getattr(self, k)) for k in ("agent", "workload", "sla", "cluster")}
        return out | {f"profile[{i}]": str(p) for i, p in enumerate(self.profiles)}


def _find(value: str, plan_path: Path | None) -> Path | None:
    """A path as the plan recorded it (relative to where `terrazzo plan` ran): as given, or under the
    plan file's folder or one of its parents."""
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p.resolve() if p.exists() else None
    for base in plan_path.resolve().parents if plan_path else ():
        if (base / p).exists():
            return (base / p).resolve()
    return None


def planner_inputs(agent_path: Path, plan_doc: dict[str, Any] | None, plan_path: Path | None,
                   settings: ControllerSettings, resolve: Callable[[str], Path]) -> tuple[PlannerInputs | None, str]:
    """What re-planning needs, from the serve config or the inputs the plan file records; else why not."""
    recorded = (plan_doc or {}).get("inputs") or {}
    found: dict[str, Path] = {}
    path: Path | None
    for key in ("workload", "sla", "cluster"):
        override = getattr(settings, key)
        if override:
            path = resolve(override)
            if not path.exists():
                return None, f"controller.{key} {path} does not exist"
            found[key] = path
        elif recorded.get(key):
            path = _find(recorded[key], plan_path)
            if path is None:
                return None, f"the plan's {key} input '{recorded[key]}' is not found (set controller.{key})"
            found[key] = path
        else:
            return None, (f"no {key} to plan with: the plan file records no planner inputs (use a terrazzo.plan/v2 "
                          f"file written by terrazzo plan -o, or set controller.{key} in the serve config)")
    profiles = []
    for key in sorted(k for k in recorded if k.startswith("profile[")):
        path = _find(recorded[key], plan_path)
        if path is None:
            return None, f"the plan's {key} input '{recorded[key]}' is not found"
        profiles.append(path)
    return PlannerInputs(agent_path, found["workload"], found["sla"], found["cluster"], tuple(profiles)), ""


class Replanner:
    """The planner (terrazzo.plan) at a given arrival rate; the specs are loaded once and checked at start."""

    def __init__(self, inputs: PlannerInputs, verify: bool) -> None:
        from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla, load_workload

        self.inputs, self.verify = inputs, verify
        self.cluster, self.catalog = (load_cluster(inputs.cluster, list(inputs.profiles)) if inputs.profiles
                                      else load_cluster(inputs.cluster))
        self.agent = load_agent(inputs.agent, self.catalog)
        self.workload = load_workload(inputs.workload, self.agent)
        self.sla = load_sla(inputs.sla, self.agent)

    def base_rate(self) -> float | None:
        return self.workload.arrival.rate_per_s

    def plan_at(self, rate_per_s: float) -> dict[str, Any]:
        from terrazzo.spec.workload import Arrival
        from terrazzo.verify.replan import verified_plan as plan

        arrival = Arrival(process="poisson", rate_per_s=rate_per_s)
        result = plan(self.agent, self.workload.model_copy(update={"arrival": arrival}), self.sla, self.cluster,
                      self.catalog, verify=self.verify)
        doc = result.to_json()
        doc["inputs"] = {**self.inputs.to_json(), "rate_per_s": str(rate_per_s)}
        return doc


# --- the controller -------------------------------------------------------------------------------
@dataclass
class PlanState:
    """The plan the server runs now: the file it started with, then each plan the controller applied."""

    source: str
    doc: dict[str, Any] | None
    rate_per_s: float | None
    since: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    by: str = "file"


class Controller:
    def __init__(self, agent: str, runtime: Any, plan: PlanState, settings: ControllerSettings,
                 replanner: Replanner | None, replan_off: str, clock: Callable[[], float] = time.monotonic,
                 on_decision: Callable[[dict[str, Any]], None] = lambda rec: None,
                 schedule_doc: dict[str, Any] | None = None,
                 time_of_day: Callable[[], float] | None = None) -> None:
        self.agent, self.runtime, self.plan, self.settings = agent, runtime, plan, settings
        # a day plan's schedule (verify/day_plan.py) replaces re-planning: pool sizes follow the time of day
        self.schedule_doc, self.time_of_day = schedule_doc, time_of_day or seconds_since_midnight
        if schedule_doc is not None:
            from terrazzo.verify.day_plan import scheduled_ops

            scheduled_ops(schedule_doc, 0.0)  # a wrong file fails at start, not in the loop
        self.replanner, self.replan_off, self.clock, self.on_decision = replanner, replan_off, clock, on_decision
        self.policy = Policy(settings.band_up, settings.band_down, settings.dwell_s, settings.min_window_s,
                             settings.min_rate_per_s, settings.persist_s)
        self.arrivals = RateMeter(settings.window_s, clock())
        self.latency: dict[str, Window] = {}
        self.decisions: deque[dict[str, Any]] = deque(maxlen=100)
        self.last: dict[str, Any] | None = None
        self.changed_s = clock()
        self._side, self._side_since = 0, clock()
        self._task: asyncio.Task | None = None

    @property
    def mode(self) -> str:
        return "off" if not self.settings.enabled else "advisory" if self.settings.advisory else "active"

    def started(self) -> None:
        """Pools are up: measure from now (start-up time is not traffic)."""
        now = self.clock()
        self.arrivals = RateMeter(self.settings.window_s, now)
        self.changed_s = self._side_since = now
        if self.settings.enabled:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def arrived(self) -> None:
        self.arrivals.add(self.clock())

    def observe(self, samples: list[Any]) -> None:
        now = self.clock()
        for s in samples:
            self.latency.setdefault(s.pool, Window(self.settings.window_s)).add(now, s.latency_s)

    def arrival_rate(self) -> float:
        return self.arrivals.rate(self.clock())

    def measure(self) -> Measurements:
        now = self.clock()
        backend = self.runtime.backend
        load = backend.load() if backend is not None else {}
        pools = tuple(PoolMeasure(name, v["workers"], v["queued"], v["busy"],
                                  self.latency[name].quantile(now, 0.99) if name in self.latency else None)
                      for name, v in load.items())
        rate = self.arrivals.rate(now)
        now_side = side(rate, self.plan.rate_per_s, self.policy)
        if now_side != self._side:
            self._side, self._side_since = now_side, now
        return Measurements(rate, self.arrivals.observed_s(now), self.plan.rate_per_s, now - self.changed_s,
                            now - self._side_since if now_side else 0.0, pools)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.interval_s)
            try:
                await self.step()
            except Exception as exc:  # the slow path must never take the server down
                log.exception("controller[%s]: step failed: %s", self.agent, exc)

    async def step(self) -> dict[str, Any]:
        """Measure, decide, and (unless advisory) act; returns the evaluation's record."""
        if self.schedule_doc is not None:
            return await self._follow_schedule()
        m = self.measure()
        d = decide(m, self.policy)
        rec: dict[str, Any] = {
            "at": datetime.now(UTC).isoformat(timespec="seconds"), "action": d.action, "reason": d.reason,
            "arrival_rate_per_s": round(m.arrival_rate_per_s, 4), "plan_rate_per_s": m.plan_rate_per_s,
            "pools": {pm.pool: {"workers": pm.workers, "queued": pm.queued, "busy": pm.busy,
                                "p99_latency_s": pm.p99_latency_s} for pm in m.pools},
        }
        self.last = rec
        if d.action == "replan":
            self.changed_s = self.clock()  # the dwell restarts whatever the outcome
            await self._replan(d, rec)
            self.decisions.append(rec)
            log.info("controller[%s] %s: %s → %s", self.agent, self.mode, d.reason, rec["outcome"])
            self.on_decision(rec)
        return rec

    async def _replan(self, d: Decision, rec: dict[str, Any]) -> None:
        rec["acted"] = False
        if self.replanner is None:
            rec["outcome"] = f"not re-planned: {self.replan_off}"
            return
        assert d.rate_per_s is not None
        try:
            doc = await asyncio.to_thread(self.replanner.plan_at, d.rate_per_s)
        except TerrazzoError as exc:
            rec["outcome"] = f"the planner found no plan at {d.rate_per_s:.3g} req/s: {exc}"
            return
        backend = self.runtime.backend
        pools = backend.pools
        cfg = self.runtime.config
        targets, moves = worker_targets({n: p.spec.ops for n, p in pools.items()},
                                        {n: p.spec.device for n, p in pools.items()}, doc["ops"],
                                        cfg.min_workers_per_pool, cfg.max_workers_per_pool)
        before = {n: p.spec.workers for n, p in pools.items()}
        rec["plan"] = {"rate_per_s": doc["rate_per_s"], "tco_usd_h": doc["tco_usd_h"],
                       "e2e_latency_s": doc["e2e_latency_s"], "solver_status": doc["solver_status"]}
        rec["workers"] = {n: {"before": before[n], "after": targets.get(n, before[n])} for n in pools}
        rec["not_applied"] = moves
        if self.settings.advisory:
            rec["outcome"] = "advisory: logged, not applied"
            return
        try:
            for name, n in targets.items():
                if n != before[name]:
                    await backend.resize(name, n)
        except TerrazzoError as exc:
            rec["outcome"] = f"resize failed: {exc}"
            rec["workers"] = {n: {**w, "after": pools[n].spec.workers} for n, w in rec["workers"].items()}
            return
        self.plan.doc, self.plan.rate_per_s, self.plan.by = doc, d.rate_per_s, "controller"
        self.plan.since = rec["at"]
        rec["acted"] = True
        rec["outcome"] = "applied: " + (", ".join(f"{n} {w['before']}→{w['after']}" for n, w in rec["workers"].items()
                                                   if w["before"] != w["after"]) or "worker counts unchanged")

    async def _follow_schedule(self) -> dict[str, Any]:
        """Resize the pools to the day plan's sizes for this time of day (grown a lead time early)."""
        from terrazzo.verify.day_plan import scheduled_ops

        assert self.schedule_doc is not None
        t = self.time_of_day()
        index, ops = scheduled_ops(self.schedule_doc, t)
        backend = self.runtime.backend
        pools, cfg = backend.pools, self.runtime.config
        targets, moves = worker_targets({n: p.spec.ops for n, p in pools.items()},
                                        {n: p.spec.device for n, p in pools.items()}, ops,
                                        cfg.min_workers_per_pool, cfg.max_workers_per_pool)
        before = {n: p.spec.workers for n, p in pools.items()}
        changes = {n: w for n, w in targets.items() if w != before[n]}
        rec: dict[str, Any] = {
            "at": datetime.now(UTC).isoformat(timespec="seconds"), "action": "schedule" if changes else "hold",
            "reason": f"day plan interval {index} at {t / 3600:.2f} h of the curve",
            "arrival_rate_per_s": round(self.arrival_rate(), 4),
            "scheduled_rate_per_s": self.schedule_doc["intervals"][index]["rate_per_s"],
            "workers": {n: {"before": before[n], "after": targets.get(n, before[n])} for n in pools},
            "not_applied": moves, "acted": False,
        }
        self.last = rec
        if not changes:
            return rec
        if self.settings.advisory:
            rec["outcome"] = "advisory: logged, not applied"
        else:
            try:
                for name, n in changes.items():
                    await backend.resize(name, n)
                rec["acted"] = True
                rec["outcome"] = "applied: " + ", ".join(f"{n} {before[n]}→{w}" for n, w in changes.items())
            except TerrazzoError as exc:
                rec["outcome"] = f"resize failed: {exc}"
        self.decisions.append(rec)
        log.info("controller[%s] %s: %s → %s", self.agent, self.mode, rec["reason"], rec["outcome"])
        self.on_decision(rec)
        return rec

    def status(self) -> dict[str, Any]:
        plan = self.plan.rate_per_s
        return {
            "mode": self.mode, "replan": "available" if self.replanner else f"off: {self.replan_off}",
            "policy": asdict(self.policy), "interval_s": self.settings.interval_s, "window_s": self.settings.window_s,
            "arrival_rate_per_s": round(self.arrival_rate(), 4), "plan_rate_per_s": plan,
            "band_per_s": list(band(plan, self.policy)) if plan else None,
            "last_evaluation": self.last, "decisions": list(self.decisions),
        }

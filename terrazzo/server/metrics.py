"""Prometheus metrics of the server: HTTP traffic, admission refusals, outcomes, the controller's
decisions and measurements, live pool sizes, and every runtime's own metrics (relabelled with
`agent`, since each Runtime keeps its own registry)."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from terrazzo.server.service import AgentService

_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _Live:
    """Values read at scrape time: pools, in-flight, rates, and the runtimes' registries."""

    def __init__(self, services: dict[str, AgentService]) -> None:
        self.services = services

    def collect(self) -> Iterable[Metric]:
        g = {
            "workers": GaugeMetricFamily("tz_pool_workers", "workers a pool runs (after pending resizes)",
                                         labels=["agent", "pool", "device"]),
            "busy": GaugeMetricFamily("tz_pool_busy_workers", "workers running an op now",
                                      labels=["agent", "pool", "device"]),
        }
        in_flight = GaugeMetricFamily("tz_agent_in_flight", "requests admitted and not finished", labels=["agent"])
        ready = GaugeMetricFamily("tz_agent_ready", "1 when the agent's pools are started", labels=["agent"])
        service = GaugeMetricFamily("tz_agent_service_rate_per_second", "requests answered per second (window)",
                                    labels=["agent"])
        arrival = GaugeMetricFamily("tz_controller_arrival_rate_per_second", "arrivals per second (window)",
                                    labels=["agent"])
        planned = GaugeMetricFamily("tz_controller_plan_rate_per_second", "arrival rate the running plan was made for",
                                    labels=["agent"])
        advisory = GaugeMetricFamily("tz_controller_advisory", "1 when the controller only logs its decisions",
                                     labels=["agent"])
        for name, svc in self.services.items():
            for pool, v in svc.pools_view().items():
                for key, fam in g.items():
                    fam.add_metric([name, pool, v["device"]], v[key])
            in_flight.add_metric([name], svc.admission.in_flight)
            ready.add_metric([name], 1.0 if svc.state == "ready" else 0.0)
            service.add_metric([name], svc.admission.service_rate() or 0.0)
            arrival.add_metric([name], svc.controller.arrival_rate())
            if svc.plan.rate_per_s is not None:
                planned.add_metric([name], svc.plan.rate_per_s)
            advisory.add_metric([name], 1.0 if svc.controller.mode == "advisory" else 0.0)
        yield from (*g.values(), in_flight, ready, service, arrival, planned, advisory)
        yield from self._runtime_metrics()

    def _runtime_metrics(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for name, svc in self.services.items():
            for fam in svc.runtime.telemetry.registry.collect():
                out = merged.setdefault(fam.name, Metric(fam.name, fam.documentation, fam.type, fam.unit))
                for s in fam.samples:
                    out.add_sample(s.name, {"agent": name, **s.labels}, s.value, s.timestamp, s.exemplar)
        return merged.values()


class ServerMetrics:
    def __init__(self, services: dict[str, AgentService]) -> None:
        r = self.registry = CollectorRegistry()
        self.http = Counter("tz_http_requests", "HTTP requests answered", ["route", "method", "status"], registry=r)
        self.http_s = Histogram("tz_http_request_seconds", "time to the end of the response (streams included)",
                                ["route", "method"], buckets=_BUCKETS_S, registry=r)
        self.rejected = Counter("tz_agent_rejected", "requests refused before running", ["agent", "reason"],
                                registry=r)
        self.outcomes = Counter("tz_agent_requests", "admitted requests by outcome", ["agent", "outcome"], registry=r)
        self.decisions = Counter("tz_controller_decisions", "controller decisions to re-plan",
                                 ["agent", "action", "acted"], registry=r)
        self._last: dict[str, float] = {}
        r.register(_Live(services))
        r.register(self)
        for name, svc in services.items():
            svc.on_reject = functools.partial(self._count, self.rejected, name)
            svc.on_outcome = functools.partial(self._count, self.outcomes, name)
            svc.controller.on_decision = functools.partial(self._decision, name)

    @staticmethod
    def _count(counter: Counter, agent: str, value: str) -> None:
        counter.labels(agent, value).inc()

    def _decision(self, agent: str, rec: dict[str, Any]) -> None:
        self.decisions.labels(agent, rec["action"], str(bool(rec.get("acted"))).lower()).inc()
        self._last[agent] = time.time()

    def collect(self) -> Iterable[Metric]:
        fam = GaugeMetricFamily("tz_controller_last_decision_timestamp_seconds",
                                "Unix time of the controller's last re-plan decision", labels=["agent"])
        for agent, t in self._last.items():
            fam.add_metric([agent], t)
        yield fam

    def text(self) -> str:
        return generate_latest(self.registry).decode()


# Label values come from a closed set, so no client can mint time series: the route template (not the raw
# path), one of the methods HTTP defines (anything else is "other"), and the status code.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "other"


def status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else "other"


class HttpMetrics:
    """ASGI wrapper counting every answer by route template, method and status, all bounded label values."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500
        t0 = time.perf_counter()

        async def tracked(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = method_label(scope["method"])
            self.metrics.http.labels(route, method, status_label(status)).inc()
            self.metrics.http_s.labels(route, method).observe(time.perf_counter() - t0)

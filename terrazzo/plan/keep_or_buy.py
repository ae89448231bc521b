"""Keep or buy: which owned devices a plan uses and leaves idle, what it buys and what that costs up
front, and the plan's $/h split into rows that add up to its headline exactly.

How each cluster mode charges a device-hour (the checker's `fleet_usd_h` is the same rule):
- unconstrained: every device is bought: capex (the TCO profile's annuity) + power + operations;
- inventory: devices are owned and carry their full TCO (amortised capex + power + operations);
- own-and-buy: owned devices are paid for already (sunk) and cost power + operations only; devices
  beyond the inventory are bought at full TCO. Idle owned devices are taken as powered off ($0/h).
Each op's $/h is its share of its device type's total (by devices), so the op column sums to the
headline too.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from terrazzo.plan.planning_graph import PlanningGraph

BOM_SCHEMA = "terrazzo.bom/v1"


@dataclass(frozen=True)
class DeviceLine:
    """One device type of the fleet; the five $/h parts add up to `usd_h`."""

    device: str
    owned: int
    used: int
    used_owned: int
    idle_owned: int
    bought: int
    unit_price_usd: float
    capex_usd: float  # up-front: bought × unit price
    owned_capex_usd_h: float  # inventory mode only: owned devices carry their amortised price
    owned_power_usd_h: float
    owned_ops_usd_h: float
    bought_capex_usd_h: float
    bought_power_usd_h: float
    bought_ops_usd_h: float

    @property
    def usd_h(self) -> float:
        return (self.owned_capex_usd_h + self.owned_power_usd_h + self.owned_ops_usd_h + self.bought_capex_usd_h
                + self.bought_power_usd_h + self.bought_ops_usd_h)


@dataclass(frozen=True)
class FleetDecision:
    mode: str
    lines: tuple[DeviceLine, ...]
    financing: str
    penalty_usd_h: float = 0.0  # soft SLA: $/h of end-to-end slack, part of the headline

    @property
    def usd_h(self) -> float:
        """The headline: the exact sum of the rows."""
        return sum(line.usd_h for line in self.lines) + self.penalty_usd_h

    @property
    def capex_usd(self) -> float:
        return sum(line.capex_usd for line in self.lines)

    @property
    def devices(self) -> int:
        return sum(line.used for line in self.lines)

    def rows(self) -> list[tuple[str, float]]:
        """($/h part, value): owned power and operations, bought capex, power and operations."""
        parts = [("owned: amortised capex (inventory mode)", "owned_capex_usd_h"),
                 ("owned: power", "owned_power_usd_h"), ("owned: operations", "owned_ops_usd_h"),
                 ("bought: capex (financed)", "bought_capex_usd_h"), ("bought: power", "bought_power_usd_h"),
                 ("bought: operations", "bought_ops_usd_h")]
        out = [(label, sum(getattr(line, key) for line in self.lines)) for label, key in parts]
        out = [(label, v) for label, v in out if v or "owned: amortised" not in label]
        if self.penalty_usd_h:
            out.append(("soft-SLA penalty", self.penalty_usd_h))
        return out

    def idle_owned(self) -> dict[str, int]:
        return {line.device: line.idle_owned for line in self.lines if line.idle_owned}

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "financing": self.financing, "usd_h": self.usd_h, "capex_usd": self.capex_usd,
                "devices": self.devices, "rows": [{"part": k, "usd_h": v} for k, v in self.rows()],
                "lines": [asdict(line) | {"usd_h": line.usd_h} for line in self.lines],
                "idle_owned": self.idle_owned()}

    def table(self) -> Table:
        t = Table("device", "owned", "used (owned)", "idle owned", "bought", "unit price $", "capex $", "$/h",
                  title=f"keep or buy ({self.mode})")
        for line in self.lines:
            t.add_row(line.device, str(line.owned), f"{line.used} ({line.used_owned})", str(line.idle_owned),
                      str(line.bought), f"{line.unit_price_usd:,.0f}", f"{line.capex_usd:,.0f}", f"{line.usd_h:.2f}")
        t.add_section()
        for label, v in self.rows():
            t.add_row(label, "", "", "", "", "", "", f"{v:.2f}")
        t.add_row("[bold]TCO (sum of the rows)[/]", "", "", "", "", "", f"{self.capex_usd:,.0f}",
                  f"[bold]{self.usd_h:.2f}[/]")
        t.caption = self.financing + "; " + _MODE_RULE.get(self.mode, "")
        return t


_MODE_RULE = {
    "unconstrained": "every device is bought: capex + power + operations",
    "inventory": "owned devices carry their full TCO (amortised capex + power + operations)",
    "own-and-buy": "owned devices are sunk: power + operations only; idle owned devices are off ($0/h); "
                   "bought devices: capex + power + operations",
}


def fleet_decision(graph: PlanningGraph, used: dict[str, int], penalty_usd_h: float = 0.0) -> FleetDecision:
    """The keep-or-buy lines of a fleet using `used` devices per type (owned ones listed even when idle)."""
    lines = []
    for device in dict.fromkeys([*used, *graph.inventory]):
        n, owned = used.get(device, 0), graph.inventory.get(device, 0)
        cost = graph.device_costs.get(device)
        if cost is None:  # an owned device type the plan had no reason to price
            lines.append(DeviceLine(device, owned, 0, 0, owned, 0, 0.0, 0.0, 0, 0, 0, 0, 0, 0))
            continue
        if graph.mode == "unconstrained":
            owned_used, bought = 0, n
        elif graph.mode == "inventory":
            owned_used, bought = n, 0
        else:
            owned_used, bought = min(n, owned), max(0, n - owned)
        sunk = graph.mode == "own-and-buy"
        lines.append(DeviceLine(
            device, owned, n, owned_used, max(0, owned - owned_used), bought, cost.price_usd,
            bought * cost.price_usd, 0.0 if sunk else owned_used * cost.capex_usd_h,
            owned_used * cost.power_usd_h, owned_used * cost.host_usd_h, bought * cost.capex_usd_h,
            bought * cost.power_usd_h, bought * cost.host_usd_h))
    return FleetDecision(graph.mode, tuple(lines), graph.financing, penalty_usd_h)


def pool_usd_h(fleet: FleetDecision, pools: dict[str, tuple[str, int]]) -> dict[str, float]:
    """Each pool's share of its device type's $/h, by devices (pool → (device, devices)); the shares sum
    to the fleet's $/h less any soft-SLA penalty."""
    per = {line.device: line for line in fleet.lines}
    return {pool: per[d].usd_h * n / per[d].used if d in per and per[d].used else 0.0
            for pool, (d, n) in pools.items()}


# --- bill of materials ----------------------------------------------------------------------------
BOM_FIELDS = ("device", "action", "count", "unit_price_usd", "capex_usd", "usd_h")


def bom_rows(fleet: FleetDecision) -> list[dict[str, Any]]:
    """What to buy, what to keep running and what stays idle, one row per (device, action)."""
    rows = []
    for line in fleet.lines:
        if line.bought:
            rows.append({"device": line.device, "action": "buy", "count": line.bought,
                         "unit_price_usd": line.unit_price_usd, "capex_usd": line.capex_usd,
                         "usd_h": line.bought_capex_usd_h + line.bought_power_usd_h + line.bought_ops_usd_h})
        if line.used_owned:
            rows.append({"device": line.device, "action": "use owned", "count": line.used_owned,
                         "unit_price_usd": line.unit_price_usd, "capex_usd": 0.0,
                         "usd_h": line.owned_capex_usd_h + line.owned_power_usd_h + line.owned_ops_usd_h})
        if line.idle_owned:
            rows.append({"device": line.device, "action": "owned, idle", "count": line.idle_owned,
                         "unit_price_usd": line.unit_price_usd, "capex_usd": 0.0, "usd_h": 0.0})
    return rows


def bom_csv(fleet: FleetDecision) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=BOM_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in bom_rows(fleet):
        w.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue()


def bom_json(fleet: FleetDecision, agent: str, rate_per_s: float) -> dict[str, Any]:
    return {"schema": BOM_SCHEMA, "agent": agent, "rate_per_s": rate_per_s, "mode": fleet.mode,
            "financing": fleet.financing, "capex_usd": fleet.capex_usd, "tco_usd_h": fleet.usd_h,
            "items": bom_rows(fleet)}


def write_bom(fleet: FleetDecision, agent: str, rate_per_s: float, stem: Path) -> list[Path]:
    """`stem`.csv and `stem`.json (a suffix on `stem` is dropped)."""
    stem = stem.with_suffix("") if stem.suffix in (".csv", ".json") else stem
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".json")
    csv_path.write_text(bom_csv(fleet))
    json_path.write_text(json.dumps(bom_json(fleet, agent, rate_per_s), indent=2))
    return [csv_path, json_path]

"""Rate sweep: the RAG and voice agents planned (and verified by simulation) at 1–50 req/s.

    .venv/bin/python bench/bench_rate_sweep.py [--rates 1,2,3,5,8,12,20,30,50] [-o docs/figures]

For each agent and rate it runs what `terrazzo plan` runs (verify.replan.verified_plan: MILP, check,
baselines, simulation and re-planning) on examples/clusters/hetero.yaml under
examples/slas/interactive.yaml, and records TCO, $/request, the fleet and whether the final plan passed
its own simulation. It checks that TCO never falls as the rate rises, that $/request never rises by more
than 5 % from one rate to the next, and that every point passes; writes rate-sweep.csv and
rate-sweep.png, and exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from terrazzo.spec.spec_loader import load_agent, load_cluster, load_sla  # noqa: E402
from terrazzo.spec.workload import Workload  # noqa: E402
from terrazzo.verify.replan import verified_plan  # noqa: E402

AGENTS = ("rag-support", "voice-agent")


def sweep(rates: list[float]) -> list[dict[str, object]]:
    cluster, cat = load_cluster(ROOT / "examples/clusters/hetero.yaml")
    rows = []
    for name in AGENTS:
        agent = load_agent(ROOT / f"examples/agents/{name}.yaml", cat)
        sla = load_sla(ROOT / "examples/slas/interactive.yaml", agent)
        for rate in rates:
            t0 = time.perf_counter()
            plan = verified_plan(agent, Workload.model_validate({"arrival": {"rate_per_s": rate}}), sla, cluster, cat)
            fleet = " ".join(f"{n}×{d}" for d, n in plan.devices.items())
            rows.append({"agent": name, "rate_per_s": rate, "tco_usd_h": round(plan.usd_h, 4),
                         "usd_per_1k_requests": round(plan.usd_per_request * 1e3, 5),
                         "sim_passes": bool(plan.sim_verified), "rounds": len(plan.verification),
                         "fleet": fleet, "plan_s": round(time.perf_counter() - t0, 2)})
            print(rows[-1], flush=True)
    return rows


def checks(rows: list[dict[str, object]]) -> list[str]:
    bad = []
    for name in AGENTS:
        mine = [r for r in rows if r["agent"] == name]
        for a, b in itertools.pairwise(mine):
            if float(b["tco_usd_h"]) < float(a["tco_usd_h"]) - 1e-9:  # type: ignore[arg-type]
                bad.append(f"{name}: TCO falls from ${a['tco_usd_h']}/h at {a['rate_per_s']} req/s to "
                           f"${b['tco_usd_h']}/h at {b['rate_per_s']} req/s")
            if float(b["usd_per_1k_requests"]) > 1.05 * float(a["usd_per_1k_requests"]):  # type: ignore[arg-type]
                bad.append(f"{name}: $/request rises more than 5 % from {a['rate_per_s']} to {b['rate_per_s']} req/s")
        bad += [f"{name} at {r['rate_per_s']} req/s fails its own simulation" for r in mine if not r["sim_passes"]]
    return bad


def figure(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in AGENTS:
        mine = [r for r in rows if r["agent"] == name]
        x = [float(r["rate_per_s"]) for r in mine]  # type: ignore[arg-type]
        ax1.plot(x, [float(r["tco_usd_h"]) for r in mine], marker="o", label=name)  # type: ignore[arg-type]
        ax2.plot(x, [float(r["usd_per_1k_requests"]) for r in mine], marker="o", label=name)  # type: ignore
        for r, xi in zip(mine, x, strict=True):
            if not r["sim_passes"]:
                ax1.plot([xi], [float(r["tco_usd_h"])], "rx", markersize=10)  # type: ignore[arg-type]
    ax1.set(xlabel="requests/s", ylabel="TCO $/h", xscale="log", yscale="log", title="TCO (every point simulated)")
    ax2.set(xlabel="requests/s", ylabel="$ per 1k requests", xscale="log", yscale="log", title="$/request")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="1,2,3,5,8,12,20,30,50")
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs/figures")
    args = parser.parse_args()
    rows = sweep([float(r) for r in args.rates.split(",")])
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "rate-sweep.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    figure(rows, args.out / "rate-sweep.png")
    bad = checks(rows)
    print("\n".join(bad) if bad else "TCO non-decreasing, $/request non-increasing within 5 %, every point passes")
    print(f"wrote {args.out / 'rate-sweep.csv'}, {args.out / 'rate-sweep.png'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

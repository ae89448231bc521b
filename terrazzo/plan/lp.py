"""A thin column/row builder over highspy: collect variables and sparse rows, hand them to HiGHS at once."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import highspy
import numpy as np

INF = highspy.kHighsInf


@dataclass
class Model:
    cost: list[float] = field(default_factory=list)
    lower: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    integer: list[bool] = field(default_factory=list)
    rows: list[tuple[dict[int, float], float, float]] = field(default_factory=list)
    mip_gap: float = 0.0  # after `solve`: HiGHS's relative gap between incumbent and bound (0 when proven optimal)
    solve_s: float = 0.0

    def var(self, cost: float = 0.0, lo: float = 0.0, hi: float = INF, integer: bool = False) -> int:
        self.cost.append(cost)
        self.lower.append(lo)
        self.upper.append(hi)
        self.integer.append(integer)
        return len(self.cost) - 1

    def row(self, coeffs: dict[int, float], lo: float = -INF, hi: float = INF) -> None:
        """lo ≤ Σ coeffs[j]·x[j] ≤ hi; zero coefficients are dropped."""
        self.rows.append(({j: c for j, c in coeffs.items() if c}, lo, hi))

    def solve(self, time_limit_s: float = 60.0, gap: float = 0.0,
              start: dict[int, float] | None = None) -> tuple[str, list[float], float]:
        """Status text ('Optimal', 'Infeasible', ...), column values and objective. `start` (column →
        value) is offered to HiGHS as a first incumbent (a warm start; ignored when infeasible)."""
        t0 = time.perf_counter()
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("time_limit", time_limit_s)
        h.setOptionValue("mip_rel_gap", gap)
        n = len(self.cost)
        idx = np.arange(n, dtype=np.int32)
        h.addVars(n, np.array(self.lower, dtype=float), np.array(self.upper, dtype=float))
        h.changeColsCost(n, idx, np.array(self.cost, dtype=float))
        kinds = [highspy.HighsVarType.kInteger if i else highspy.HighsVarType.kContinuous for i in self.integer]
        if any(self.integer):
            h.changeColsIntegrality(n, idx, np.array(kinds))
        starts: list[int] = []
        indices: list[int] = []
        values: list[float] = []
        lows: list[float] = []
        highs: list[float] = []
        for coeffs, lo, hi in self.rows:
            starts.append(len(indices))
            indices.extend(coeffs)
            values.extend(coeffs.values())
            lows.append(lo)
            highs.append(hi)
        if self.rows:
            h.addRows(len(self.rows), np.array(lows, dtype=float), np.array(highs, dtype=float), len(indices),
                      np.array(starts, dtype=np.int32), np.array(indices, dtype=np.int32),
                      np.array(values, dtype=float))
        if start:
            sol = highspy.HighsSolution()
            values = [0.0] * n
            for j, v in start.items():
                values[j] = v
            sol.col_value = values
            sol.value_valid = True
            h.setSolution(sol)
        h.run()
        info = h.getInfo()
        self.mip_gap = float(info.mip_gap) if any(self.integer) and math.isfinite(info.mip_gap) else 0.0
        self.solve_s = time.perf_counter() - t0
        status = h.modelStatusToString(h.getModelStatus())
        has_solution = h.getInfo().primal_solution_status == 2  # kSolutionStatusFeasible
        values_out = list(h.getSolution().col_value) if has_solution else []
        return status, values_out, h.getInfo().objective_function_value if has_solution else float("inf")

"""The verified plan: the planner and the simulator together (simulate the plan, re-plan on a miss)."""

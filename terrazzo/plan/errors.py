"""The plan layer's one exception."""

from terrazzo.errors import TerrazzoError


class PlanInfeasible(TerrazzoError):
    """No choice meets the constraints; the message names what binds and by how much."""

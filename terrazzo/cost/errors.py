"""The cost layer's one exception."""

from terrazzo.errors import TerrazzoError


class CostError(TerrazzoError):
    """A cost query that cannot be answered: dtype unsupported, parallelism invalid, nothing fits."""

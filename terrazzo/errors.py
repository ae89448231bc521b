"""Root of terrazzo's exceptions: each layer raises one subclass with an actionable message."""


class TerrazzoError(Exception):
    """Base class; the CLI turns any of these into a one-paragraph message and exit code 2."""

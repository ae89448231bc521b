"""The IR layer's one exception."""

from terrazzo.errors import TerrazzoError


class IRError(TerrazzoError):
    """Bad IR, a pass that cannot run on its input, or a plan that does not fit: the message says what to do."""

"""The runtime's one exception type, plus the two failure causes the orchestrator treats specially."""

from __future__ import annotations

from terrazzo.errors import TerrazzoError


class ExecutionError(TerrazzoError):
    """An op or a run failed; the message names the op, pool and cause, `fix` says what to do."""

    def __init__(self, message: str, *, fix: str = "", op: str | None = None, pool: str | None = None) -> None:
        where = f"[{op}@{pool}] " if op and pool else f"[{op}] " if op else ""
        super().__init__(f"{where}{message}" + (f" — fix: {fix}" if fix else ""))
        self.op, self.pool, self.fix, self.reason = op, pool, fix, message

    def __reduce__(self):  # keep op/pool/fix across process boundaries (pipes, Ray)
        return (_rebuild, (type(self), self.reason, self.fix, self.op, self.pool))


def _rebuild(cls: type[ExecutionError], message: str, fix: str, op: str | None, pool: str | None) -> ExecutionError:
    return cls(message, fix=fix, op=op, pool=pool)


class WorkerLost(ExecutionError):
    """The worker running an op died (killed, crashed); the op is retried on another replica when it may
    run twice (pure ops, idempotent tools). `sent` is False when the op never reached the worker."""

    sent = True

    @classmethod
    def unsent(cls, message: str) -> WorkerLost:
        exc = cls(message)
        exc.sent = False
        return exc


class OpTimeout(ExecutionError):
    """An op ran past its timeout; its worker is replaced and the op is not retried (it may hang again)."""


class Overloaded(ExecutionError):
    """A pool's bounded queue is full: the caller should back off (HTTP 429 with Retry-After)."""


class SegmentFailed(ExecutionError):
    """An op inside a fused segment failed: carries that op's own error (`cause`) and the timings of the
    ops that completed before it, so each still gets its sample."""

    def __init__(self, cause: ExecutionError, done: list[dict]) -> None:
        super().__init__(cause.reason, fix=cause.fix, op=cause.op, pool=cause.pool)
        self.cause, self.done = cause, done

    def __reduce__(self):
        return (SegmentFailed, (self.cause, self.done))

"""Real execution of placed agent graphs: orchestrator, pools (local processes, Ray actors), executors."""

from terrazzo.runtime.errors import ExecutionError, OpTimeout, Overloaded, WorkerLost

__all__ = ["ExecutionError", "OpTimeout", "Overloaded", "WorkerLost"]

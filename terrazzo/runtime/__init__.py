"""Real execution of placed agent graphs: orchestrator, pools (local processes, Ray actors), executors."""

from terrazzo.runtime.failures import ExecutionError, OpTimeout, Overloaded, WorkerLost

__all__ = ["ExecutionError", "OpTimeout", "Overloaded", "WorkerLost"]

"""Checkpoint tools: tiny random-weight checkpoints that load through the same code as real ones."""

from terrazzo.models.tiny import make_tiny_checkpoint

__all__ = ["make_tiny_checkpoint"]

"""The Cortex IR: data types, verifier, printer."""
from . import nodes
from .printer import format_program
from .verify import IRError, verify

__all__ = ["nodes", "format_program", "verify", "IRError"]

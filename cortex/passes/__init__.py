"""IR -> IR passes."""
from .pipeline import PIPELINE, PassError, optimize

__all__ = ["PIPELINE", "PassError", "optimize"]

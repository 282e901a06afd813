"""IR -> IR passes."""
from .pipeline import PIPELINE, optimize

__all__ = ["PIPELINE", "optimize"]

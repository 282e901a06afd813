"""Serving many single-tree requests: merging them into one forest per kernel call, proven safe from the IR.

- `plan_for(model)`: the merge plan of a converted model (`MergePlan.mergeable`, `.reason`, `.describe()`).
- `BatchingSession(path, max_trees=..., max_delay_ms=..., device=...)`: collects concurrent requests and runs them
  as one forest (thread-safe; `run` blocks, `run_async` awaits).
- `merge`, `split`, `check_request`, `out_of_bounds`: the pieces, for other engines (Ray Serve, Triton's Python
  backend; docs/serving.md).
"""
from .kernel import NotMergeable, merge_notes
from .merge import FeedError, MergePlan, check_request, merge, out_of_bounds, plan_for, split

__all__ = ["plan_for", "MergePlan", "NotMergeable", "FeedError", "merge_notes", "check_request", "merge",
           "out_of_bounds", "split", "BatchingSession", "QueueFull", "SessionClosed"]


def __getattr__(name):  # the session pulls in onnxruntime: only when asked for
    if name in ("BatchingSession", "QueueFull", "SessionClosed"):
        from . import batching
        return getattr(batching, name)
    raise AttributeError(name)

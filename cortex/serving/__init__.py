"""Serving many single-tree requests: merging them into one forest per kernel call, proven safe from the IR.

- `plan_for(model)`: the merge plan of a converted model (`MergePlan.mergeable`, `.reason`, `.describe()`).
- `BatchingSession(path, max_trees=..., max_delay_ms=..., device=...)`: collects concurrent requests and runs them
  as one forest (thread-safe; `run` blocks, `run_async` awaits).
- `run_forest(plan, session, requests)`: one batch through one session (merged where safe, alone where not; each
  request its outputs or its own error): what the BatchingSession and the Ray Serve deployment (`ray_app`) run,
  and what Triton's Python backend can call (docs/serving.md); `PinnedOutputs.of(plan, session, device)`: on a GPU,
  its forests' outputs copied into pinned host memory (`run_forest(..., pinned=)`); `tail_sessions(plan, path)`:
  for a plan with outputs computed per request after the forest (`plan.tail`), what `run_forest(..., tail=)` needs;
  `merge_session(plan, path)`: the session to run it through (it takes the model's window inputs, where it has
  them: windows.py, the reads of a missing child kept exact).
- `check_request`, `merge`, `out_of_bounds`, `split`: its pieces.
"""
from .forest import ForestStats, PinnedOutputs, merge_session, run_forest, tail_sessions
from .kernel import NotMergeable, merge_notes
from .merge import FeedError, MergePlan, check_request, merge, out_of_bounds, plan_for, split

__all__ = ["plan_for", "MergePlan", "NotMergeable", "FeedError", "merge_notes", "check_request", "merge",
           "out_of_bounds", "split", "run_forest", "merge_session", "tail_sessions", "ForestStats", "PinnedOutputs", "BatchingSession",
           "QueueFull", "SessionClosed"]


def __getattr__(name):  # the session pulls in onnxruntime: only when asked for
    if name in ("BatchingSession", "QueueFull", "SessionClosed"):
        from . import batching
        return getattr(batching, name)
    raise AttributeError(name)

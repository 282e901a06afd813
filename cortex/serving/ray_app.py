"""A converted model on Ray Serve: `@serve.batch` collects each replica's concurrent requests and the merge runs
them as one forest (`run_forest`: merged where proven safe, alone where not, each request its own result or its
own error). Replicas spread the load over cores or GPUs. Needs the `serve` extra (ray[serve]).

    from ray import serve
    from cortex.serving.ray_app import cortex_app

    serve.run(cortex_app("treelstm.cortex.onnx", max_batch_size=32, batch_wait_timeout_s=0.002, num_replicas=2),
              route_prefix="/treelstm")
    # HTTP: POST {"children": [[1, 2], [-1, -1], [-1, -1]], "words": [0, 5, 7]} -> {"h": [[...]], "c": [[...]]}
    # Python: serve.get_app_handle("default").infer.remote(feeds).result() -> [h, c]

Docs: docs/serving.md.
"""
from __future__ import annotations

import asyncio

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from .forest import ForestStats, PinnedOutputs, merge_session, run_forest, tail_sessions
from .kernel import NotMergeable
from .merge import FeedError, plan_for

_ORT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
              "tensor(float)": np.float32, "tensor(double)": np.float64}


@serve.deployment
class CortexForest:
    """One replica: a Cortex session and its merge plan. `infer(feeds)` for handles, `__call__` for HTTP (JSON)."""

    def __init__(self, model_path: str, device: str = "cpu", max_batch_size: int = 32,
                 batch_wait_timeout_s: float = 0.002, allow_unmerged: bool = False):
        self.plan = plan_for(model_path)
        if not self.plan.mergeable and not allow_unmerged:
            raise NotMergeable(f"{model_path}: requests cannot be merged: {self.plan.reason}")
        self.session = merge_session(self.plan, model_path, device=device)  # takes its window inputs, if any
        self.tail = tail_sessions(self.plan, model_path, device=device)  # outputs computed per request, if any
        self.pinned = PinnedOutputs.of(self.plan, self.session, device)  # on a GPU: outputs into pinned host memory
        self.inputs = {i.name: _ORT_TYPES.get(i.type) for i in self.session.get_inputs()
                       if i.name not in self.plan.windows}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.stats = ForestStats()
        self.infer_batch.set_max_batch_size(max_batch_size)
        self.infer_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def infer_batch(self, requests: list) -> list:
        # In a thread, so the replica keeps taking requests (the next batch) while this forest runs.
        return await asyncio.to_thread(run_forest, self.plan, self.session, requests, None, self.stats, self.pinned,
                                       self.tail)

    async def infer(self, feeds: dict) -> list:
        """One request's outputs (numpy arrays, the model's output order); raises its own error."""
        result = await self.infer_batch(feeds)
        if isinstance(result, BaseException):
            raise result
        return result

    async def __call__(self, request: Request):
        """POST a JSON object {input name: nested lists}; answers {output name: nested lists}, or {"error": ...}
        with 400 (a request that is not the model's inputs) or 422 (the model refused it)."""
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object of input name -> array")
            feeds = {name: np.asarray(value, dtype=self.inputs.get(name)) for name, value in body.items()}
        except (ValueError, TypeError) as e:
            return JSONResponse({"error": f"bad request: {e}"}, status_code=400)
        result = await self.infer_batch(feeds)
        if isinstance(result, BaseException):
            return JSONResponse({"error": str(result)}, status_code=400 if isinstance(result, FeedError) else 422)
        return {name: value.tolist() for name, value in zip(self.outputs, result)}

    def statistics(self) -> dict:
        s = self.stats
        return {"requests": s.requests, "batches": s.batches, "merged_requests": s.merged_requests, "alone": s.alone,
                "fallbacks": s.fallbacks, "largest_batch": s.largest_batch, "mean_batch": s.mean_batch,
                "merging_s": s.merging_s, "running_s": s.running_s, "splitting_s": s.splitting_s}


def cortex_app(model_path: str, *, max_batch_size: int = 32, batch_wait_timeout_s: float = 0.002,
               device: str = "cpu", num_replicas: int = 1, ray_actor_options: dict | None = None,
               allow_unmerged: bool = False):
    """The Serve application for one converted model (pass it to `serve.run`). Each replica batches up to
    `max_batch_size` requests, waiting at most `batch_wait_timeout_s` for them; `device` as cortex.InferenceSession
    (with several GPUs, give each replica one: ray_actor_options={"num_gpus": 1}, device="cuda")."""
    deployment = CortexForest.options(num_replicas=num_replicas, max_ongoing_requests=max(64, 4 * max_batch_size),
                                      ray_actor_options=ray_actor_options or {})
    return deployment.bind(str(model_path), device, max_batch_size, batch_wait_timeout_s, allow_unmerged)

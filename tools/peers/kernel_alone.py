"""A converted model's Cortex kernel called through its C ABI (tests/kernel_harness.py), without ONNX Runtime: the
benchmark's "kernel alone" time and, with CORTEX_PROFILE set, where that time goes (the kernel's own step clocks).

:class:`KernelAlone` builds the kernel's inputs in its order (outside any timing): feeds and initializers of the
converted model, and values the graph computes before the Cortex node (a zero table made by ConstantOfShape) from
ORT on the rest of the graph. For a CUDA kernel the structure arrays (integers) stay on the host and float tensors
go to the device; a CPU kernel takes them all from the host. ``run`` returns once the kernel has returned (a CUDA
kernel synchronizes its stream before it returns). :class:`KernelCalls` gives a benchmark runner the kernel-alone
calls and the step breakdown."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def _harness():
    if str(REPO / "tests") not in sys.path:
        sys.path.insert(0, str(REPO / "tests"))
    import kernel_harness

    return kernel_harness


class KernelAlone:
    def __init__(self, converted_path):
        import onnx
        from onnx import numpy_helper

        from cortex.artifacts import cortex_nodes

        harness = _harness()
        path = Path(converted_path)
        model = onnx.load(str(path))
        [node] = cortex_nodes(model)
        self.kernel = harness.Kernel(path.parent / node.cache_context, reuse_outputs=True)
        self.on_gpu = self.kernel.device == harness.CUDA
        self.torch = None
        if self.on_gpu:
            import torch

            self.torch = torch
        self.input_names = list(node.node.input)
        self.num_outputs = len(node.node.output)
        initializers = {i.name: i for i in model.graph.initializer}
        self.constants = {name: self._place(numpy_helper.to_array(initializers[name]))
                          for name in self.input_names if name in initializers}
        graph_inputs = {i.name for i in model.graph.input}
        self.computed = [n for n in self.input_names if n not in initializers and n not in graph_inputs]
        self.before = self._graph_before(model, node.index, self.computed) if self.computed else None

    @staticmethod
    def _graph_before(model, cortex_index: int, names):
        """An ORT CPU session computing `names` with the nodes that lead to them (never the Cortex node)."""
        import onnx
        import onnxruntime as ort

        from cortex.convert import _used_names

        m = onnx.ModelProto()
        m.CopyFrom(model)
        needed, kept = set(names), []
        for i in reversed(range(len(m.graph.node))):
            node = m.graph.node[i]
            if i != cortex_index and any(o in needed for o in node.output):
                kept.append(node)
                needed.update(n for n in node.input if n)
                for attr in node.attribute:  # names a subgraph reads from the outer scope
                    for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                        needed |= _used_names(sub)
        del m.graph.node[:]
        m.graph.node.extend(reversed(kept))
        del m.graph.output[:]
        m.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the converted model's initializers this subgraph leaves unused
        return ort.InferenceSession(m.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])

    def _place(self, array: np.ndarray):
        array = np.ascontiguousarray(array)
        if self.on_gpu and array.dtype == np.float32:
            return self.torch.from_numpy(array).cuda()
        return array

    def arguments(self, feeds: dict) -> list:
        values = {k: np.asarray(v) for k, v in feeds.items()}
        if self.before is not None:
            wanted = {i.name for i in self.before.get_inputs()}
            values.update(zip(self.computed, self.before.run(self.computed,
                                                             {k: v for k, v in values.items() if k in wanted})))
        args = [self.constants[n] if n in self.constants else self._place(values[n]) for n in self.input_names]
        if self.on_gpu:
            self.torch.cuda.synchronize()
        return args

    def run(self, arguments: list):
        return self.kernel.run(arguments, self.num_outputs)


class KernelCalls:
    """Mixin for a Cortex runner with ``feeds_fn``: ``kernel_call`` runs the kernel alone on the arguments
    ``prepare_kernel`` made for each input. ``session_steps`` runs the session end to end (``timed_call`` where the
    runner has one, else the runner itself) and reads the kernel's own clocks after each run (the EP runs the kernel
    on the calling thread, and the library the EP loaded is the one ctypes opens): the median microseconds per step,
    in the kernel in all, and outside it (end to end less the kernel, per run), over a few untimed passes; None when
    CORTEX_PROFILE was not set when the kernel library loaded."""

    kernel: KernelAlone
    feeds_fn = None

    def prepare_kernel(self, inputs) -> None:
        self.arguments = {id(s): self.kernel.arguments(self.feeds_fn(s)) for s in inputs}

    def kernel_call(self, structure):
        args = self.arguments.get(id(structure))
        if args is None:  # not prepared: build now (then the first timing includes it)
            args = self.arguments[id(structure)] = self.kernel.arguments(self.feeds_fn(structure))
        return self.kernel.run(args)

    def session_steps(self, inputs, passes: int = 3) -> dict | None:
        import time

        call = getattr(self, "timed_call", self)
        runs = []
        for _ in range(passes):
            for s in inputs:
                start = time.perf_counter()
                call(s)
                end_to_end = (time.perf_counter() - start) * 1e6
                measured = self.kernel.kernel.steps()
                if measured is None:
                    return None
                runs.append((measured[0], measured[1], end_to_end - measured[1]))
        if not runs:
            return None
        return {"steps_us": {name: float(np.median([r[0][name] for r in runs])) for name in runs[0][0]},
                "kernel_us": float(np.median([r[1] for r in runs])),
                "outside_us": float(np.median([r[2] for r in runs]))}

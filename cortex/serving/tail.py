"""Outputs computed per request after the merged forest: a model's head that merging cannot split.

A head that reads a request's rows as a whole (a mean over every node's state, the first row `h[0]`, the node count)
would mix the requests' trees if it ran on the forest. The recursion before it is per tree all the same, and it is
the expensive part. Such a model is served in two pieces cut from its own graph:

- the *body*: the graph without the nodes only those outputs need; it runs on the merged forest, and returns the
  outputs that split by rows and the recursions' tables those nodes read (the *cut*), split per request like any
  per-node output;
- the *tail*: those nodes, run per request on its own rows of the cut and its own inputs: the same ONNX nodes on the
  same values as the request's own run computes, so the same results.

Each piece keeps every value the other piece (or the model's outputs) also uses as an output of its own, so that
ONNX Runtime's graph optimizations see the same consumers for every value as in the whole model, and fuse the same
nodes (a fusion that crossed the cut, or one that became possible because a consumer was cut away, could round
differently). The body holds the Cortex nodes and runs from bytes: the session config entry `cortex.model_path`
tells the Cortex EP the model file whose folder holds their kernels.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from .kernel import NotMergeable
from .windows import with_window_inputs

MODEL_PATH_KEY = "cortex.model_path"  # csrc/ep/cortex_ep.h: kModelPathConfigKey

_ORT_ELEM_TYPES = {"tensor(float)": onnx.TensorProto.FLOAT, "tensor(double)": onnx.TensorProto.DOUBLE,
                   "tensor(float16)": onnx.TensorProto.FLOAT16, "tensor(int64)": onnx.TensorProto.INT64,
                   "tensor(int32)": onnx.TensorProto.INT32, "tensor(bool)": onnx.TensorProto.BOOL}


@dataclass(frozen=True)
class TailPlan:
    """A model's outputs split in two: the body runs on the merged forest, the tail per request."""
    body: bytes  # the body model (ONNX); its first outputs are the plan's split outputs (MergePlan.outputs: the
    # model's outputs that split, then the cut tables that are not among them)
    tail: bytes  # the tail model (ONNX); the types of its cut inputs come from the body session (TailSessions)
    cut: tuple  # the body outputs the tail reads, as the tail's first inputs (among MergePlan.outputs)
    reads: tuple  # the model inputs the tail reads (the request's own), its other inputs
    order: tuple  # per model output: (True, k) the k-th split output, or (False, k) the tail's k-th output
    reasons: tuple  # (output name, why it cannot be split) for each output the tail computes

    def describe(self) -> str:
        return "; ".join(f"'{name}' per request after the forest ({why})" for name, why in self.reasons)


def _subgraph_reads(node: onnx.NodeProto) -> list:
    """Names a node's subgraphs (If, Loop, Scan bodies) read from the enclosing graph."""
    names = []
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else \
            list(attribute.graphs) if attribute.type == onnx.AttributeProto.GRAPHS else []
        for graph in graphs:
            defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
            for inner in graph.node:
                defined.update(inner.output)
            for inner in graph.node:
                names += [n for n in list(inner.input) + _subgraph_reads(inner) if n and n not in defined]
    return names


def _reads(node: onnx.NodeProto) -> list:
    return [n for n in node.input if n] + _subgraph_reads(node)


def cut_tail(model: onnx.ModelProto, recursions: set, split_outputs: list, tail_outputs: list) -> tuple:
    """(body model, tail model, cut, reads) for `model` whose outputs `split_outputs` split by rows and whose
    `tail_outputs` are computed per request; `recursions`: the indices of its Cortex nodes. The cut is the
    recursions' outputs the tail reads; the tail never holds a Cortex node."""
    graph = model.graph
    producer = {name: k for k, node in enumerate(graph.node) for name in node.output if name}
    initializers = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]

    tail_nodes, cut, reads = set(), [], []
    stack, seen = list(reversed(tail_outputs)), set()
    while stack:
        name = stack.pop()
        if name in seen or name in initializers:
            continue
        seen.add(name)
        if name in inputs:
            reads.append(name)
        elif producer.get(name) is None:
            raise NotMergeable(f"output '{name}' reads '{name}', which no node computes")
        elif producer[name] in recursions:
            cut.append(name)
        else:
            tail_nodes.add(producer[name])
            stack.extend(reversed(_reads(graph.node[producer[name]])))

    body_nodes, stack = set(), list(split_outputs) + cut
    seen = set()
    while stack:
        name = stack.pop()
        if name in seen or name not in producer:
            continue
        seen.add(name)
        body_nodes.add(producer[name])
        stack.extend(_reads(graph.node[producer[name]]))

    consumers = {}
    for k, node in enumerate(graph.node):
        for name in _reads(node):
            consumers.setdefault(name, set()).add(k)
    model_outputs = {o.name for o in graph.output}

    def kept(nodes: set, outputs: list) -> list:
        """`outputs`, then every value of `nodes` that a node outside them or the model's outputs also use."""
        more = [name for k in sorted(nodes) for name in graph.node[k].output
                if name and (name in model_outputs or consumers.get(name, set()) - nodes)]
        return list(dict.fromkeys(outputs + more))

    declared = {o.name: o for o in graph.output}

    def piece(nodes: set, piece_inputs: list, outputs: list, name: str) -> onnx.ModelProto:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        del copy.graph.node[:]
        copy.graph.node.extend(graph.node[k] for k in sorted(nodes))
        del copy.graph.output[:]
        copy.graph.output.extend(declared[n] if n in declared else onnx.ValueInfoProto(name=n) for n in outputs)
        del copy.graph.input[:]
        copy.graph.input.extend(piece_inputs)
        used = {n for k in nodes for n in _reads(graph.node[k])} | set(outputs)
        kept_initializers = [t for t in graph.initializer if t.name in used]
        del copy.graph.initializer[:]
        copy.graph.initializer.extend(kept_initializers)
        produced = {n for k in nodes for n in graph.node[k].output}
        kept_infos = [v for v in graph.value_info if v.name in produced]
        del copy.graph.value_info[:]
        copy.graph.value_info.extend(kept_infos)
        copy.graph.name = f"{graph.name}_{name}"
        return copy

    body = piece(body_nodes, list(graph.input), kept(body_nodes, list(split_outputs) + cut), "body")
    # each cut table declared as the model declares it (an output's type, a value_info), or not at all: ONNX Runtime
    # then knows of its shape in the tail what it knew in the whole model (some fusions depend on shapes)
    infos = {v.name: v for v in graph.value_info}
    infos.update(declared)
    tail_inputs = [infos.get(n, onnx.ValueInfoProto(name=n)) for n in cut] + [i for i in graph.input if i.name in reads]
    tail = piece(tail_nodes, tail_inputs, kept(tail_nodes, list(tail_outputs)), "tail")
    return body, tail, tuple(cut), tuple(n for n in inputs if n in reads)


class TailSessions:
    """The two sessions a plan with a tail serves through: `body` (merged forests) and `tail` (per request), with the
    options of the model's own session (the same graph optimizations: the same fusions)."""

    def __init__(self, plan, path, sess_options=None, trust=None, device: str = "cpu"):
        from ..session import InferenceSession, session_options

        self.plan = plan.tail
        names = [o.name for o in plan.outputs]
        self.cut_at = [names.index(name) for name in self.plan.cut]  # where each cut table is among the split outputs
        self.padding = [plan.outputs[k].padding for k in self.cut_at]  # a padding row to put back, or None
        options = session_options(sess_options, trust=trust, device=device)
        options.add_session_config_entry(MODEL_PATH_KEY, os.path.abspath(os.fspath(path)))
        # merged forests run here: with the model's window inputs as inputs (windows.py)
        body = with_window_inputs(onnx.load_model_from_string(self.plan.body)).SerializeToString()
        self.body = InferenceSession(body, options, device=device)
        types = {o.name: o for o in self.body.get_outputs()}
        tail = onnx.load_model_from_string(self.plan.tail)
        for value in tail.graph.input[:len(self.plan.cut)]:
            if value.type.HasField("tensor_type"):
                continue  # declared in the model
            declared = types[value.name]
            if declared.type not in _ORT_ELEM_TYPES:
                raise NotMergeable(f"the table '{value.name}' the per-request outputs read has the type "
                                   f"{declared.type}, which the tail cannot declare")
            value.CopyFrom(helper.make_tensor_value_info(value.name, _ORT_ELEM_TYPES[declared.type], None))
        self.tail = InferenceSession(tail.SerializeToString(), options, device=device)

    def answer(self, parts: list, request: dict) -> list:
        """A request's outputs in the model's order, from its split outputs `parts` (the model's, then the cut) and
        its own inputs; raises what the tail's run raises."""
        feeds = {name: _aligned(parts[k], pad) for name, k, pad in zip(self.plan.cut, self.cut_at, self.padding)}
        feeds.update((name, request[name]) for name in self.plan.reads)
        computed = self.tail.run(None, feeds)
        return [parts[k] if split else computed[k] for split, k in self.plan.order]


_ALIGNMENT = 64  # ONNX Runtime's CPU allocator's (MLAS): the widest vector a kernel loads


def _aligned(value: np.ndarray, padding=None) -> np.ndarray:
    """A copy of `value` at an address aligned as ONNX Runtime aligns the tensors it allocates, and with one more
    row of `padding` where that is not None (a table with a padding row past the nodes: its own run's has it). A
    request's rows of a forest's table start anywhere in it, and a vectorized reduction over them (a mean) sums in
    another order from another alignment: its own run reads the table where ONNX Runtime allocated it, aligned."""
    shape = (value.shape[0] + (padding is not None),) + value.shape[1:]
    size = int(np.prod(shape)) * value.itemsize
    raw = np.empty(size + _ALIGNMENT, dtype=np.uint8)
    start = -raw.ctypes.data % _ALIGNMENT
    out = raw[start:start + size].view(value.dtype).reshape(shape)
    out[:value.shape[0]] = value
    if padding is not None:
        out[value.shape[0]:] = padding
    return out

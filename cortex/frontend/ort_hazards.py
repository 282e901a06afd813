"""Exporter output that ONNX Runtime is known to compute wrongly, found by looking at the ONNX, for the report.

The TorchScript exporter merges equal constants a branch returns (`if leaf: h_k = torch.zeros(..); c_k =
torch.zeros(..)`) into one value hoisted out of the `If`, so the branch lists one value, an outer constant, as two
of its outputs. ONNX Runtime 1.31 then computes the original model wrongly (NaN or wrong values): in 1000 generated
models this shape was present in exactly the 11 where ORT disagreed with PyTorch; branches returning an outside
constant through their own outputs (46 models; the zoo's hand-built chain LSTM: two Identity nodes of one zero
row) were computed correctly (docs/modelgen.md: "ONNX Runtime defect found"). Cortex's
kernel computes such a branch as PyTorch does; where a region is left to ONNX Runtime, the user gets ORT's answer.
The report says so either way.
"""
from __future__ import annotations

import onnx


def _constants(graph: onnx.GraphProto) -> set:
    """Names this graph defines as constants: initializers and Constant outputs."""
    names = {i.name for i in graph.initializer}
    names.update(o for n in graph.node if n.op_type == "Constant" for o in n.output)
    return names


def _subgraphs(node: onnx.NodeProto):
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        for g in attr.graphs:
            yield attr.name, g


def _source(branch: onnx.GraphProto, name: str) -> str:
    """The value a branch output really is, through Identity nodes inside the branch."""
    producer = {o: n for n in branch.node for o in n.output}
    seen = set()
    while name in producer and producer[name].op_type == "Identity" and name not in seen:
        seen.add(name)
        name = producer[name].input[0]
    return name


def merged_branch_constants(graph: onnx.GraphProto, node: onnx.NodeProto) -> list:
    """One warning per If (anywhere inside `node`'s bodies) whose branch lists one value, a constant defined outside
    the branch, as two or more of its outputs: the exporter's merged, hoisted constant, which ORT mishandles."""
    warnings = []

    def walk(g: onnx.GraphProto, outer: set):
        consts = outer | _constants(g)
        for n in g.node:
            if n.op_type == "If":
                for branch_name, branch in _subgraphs(n):
                    inside = {o for m in branch.node for o in m.output}
                    names = [o.name for o in branch.output]
                    shared = sorted({src for name in names if names.count(name) > 1
                                     and (src := _source(branch, name)) not in inside and src in consts})
                    if shared:
                        warnings.append(
                            f"If '{n.name or n.output[0]}' returns the constant {', '.join(shared)}, defined outside "
                            f"the branch, as several outputs of its {branch_name} (the exporter merged equal "
                            "constants, e.g. two torch.zeros returned by an `if`, and hoisted them): ONNX Runtime "
                            "1.31 can give NaN or wrong values for the original model")
            for _, sub in _subgraphs(n):
                walk(sub, consts)

    for _, body in _subgraphs(node):
        walk(body, _constants(graph))
    return warnings

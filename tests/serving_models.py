"""A model the serving tests share, edited from the examples' ONNX graphs."""
from __future__ import annotations

import onnx
from onnx import helper


def whole_tree_input(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """`model` with its input `name` read everywhere as max(name, its minimum over every row): the same values,
    computed from the whole request."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    clamped = f"{name}_clamped"

    def rename(graph):
        for node in graph.node:
            node.input[:] = [clamped if n == name else n for n in node.input]
            for attribute in node.attribute:
                for sub in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)):
                    rename(sub)

    rename(model.graph)
    first = [helper.make_node("ReduceMin", [name], [f"{name}_min"], keepdims=1),
             helper.make_node("Max", [name, f"{name}_min"], [clamped])]
    nodes = first + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model

"""The ``cortex`` ONNX domain's one op, ``TreeRec`` (version 1): its names and its schema (spec: docs/treerec.md)."""
from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import helper

DOMAIN = "cortex"
OP_TYPE = "TreeRec"
VERSION = 1

_ALL_TENSOR_TYPES = [
    f"tensor({t})"
    for t in (
        "float", "double", "float16", "bfloat16", "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32", "uint64", "bool", "string",
    )
]


def _variadic(name: str, type_str: str, description: str, min_arity: int):
    """A variadic formal parameter whose members may have different types."""
    return onnx.defs.OpSchema.FormalParameter(
        name, type_str, description, param_option=onnx.defs.OpSchema.FormalParameterOption.Variadic,
        is_homogeneous=False, min_arity=min_arity)


def register_schema() -> None:
    """Register ``cortex.TreeRec`` v1 with onnx (idempotent), so ``onnx.checker.check_model(m, full_check=True)``
    accepts models that use it."""
    if onnx.defs.has(OP_TYPE, VERSION, DOMAIN):
        return
    schema = onnx.defs.OpSchema(
        OP_TYPE,
        DOMAIN,
        VERSION,
        "Tree / DAG recursion: every node's states computed once from its children's states (docs/treerec.md).",
        inputs=[
            onnx.defs.OpSchema.FormalParameter("children", "tensor(int64)", "[N, K] child ids, -1 = no child"),
            _variadic("node_inputs", "V", "per-node inputs, each with leading dimension N", min_arity=0),
        ],
        outputs=[_variadic("states", "T", "num_states tables [N, D_s]", min_arity=1)],
        type_constraints=[
            ("V", _ALL_TENSOR_TYPES, "node input types"),
            ("T", _ALL_TENSOR_TYPES, "state types"),
        ],
        attributes=[
            onnx.defs.OpSchema.Attribute("leaf_body", onnx.defs.OpSchema.AttrType.GRAPH, "node slices -> S rows"),
            onnx.defs.OpSchema.Attribute(
                "internal_body", onnx.defs.OpSchema.AttrType.GRAPH, "K*S child rows, node slices -> S rows"
            ),
            onnx.defs.OpSchema.Attribute("num_states", onnx.defs.OpSchema.AttrType.INT, "S"),
        ],
    )
    onnx.defs.register_schema(schema)


def make_treerec_node(
    children: str,
    node_inputs: Sequence[str],
    outputs: Sequence[str],
    leaf_body: onnx.GraphProto,
    internal_body: onnx.GraphProto,
    name: str = "",
) -> onnx.NodeProto:
    """A ``cortex.TreeRec`` node; ``num_states`` = ``len(outputs)``."""
    return helper.make_node(
        OP_TYPE,
        [children, *node_inputs],
        list(outputs),
        name=name,
        domain=DOMAIN,
        leaf_body=leaf_body,
        internal_body=internal_body,
        num_states=len(outputs),
    )


def is_treerec(node: onnx.NodeProto) -> bool:
    return node.domain == DOMAIN and node.op_type == OP_TYPE


def node_attribute(node: onnx.NodeProto, name: str):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    raise ValueError(f"TreeRec node {node.name!r} lacks attribute {name!r}")

"""The ``cortex`` ONNX domain: the ``TreeRec`` op (spec: docs/treerec.md), part of the product.

- :mod:`.schema`: the domain's names, the schema (``register_schema``), ``make_treerec_node``;
- :mod:`.reference`: the reference implementation (``treerec_reference``, ``TreeRecOp`` for
  ``onnx.reference.ReferenceEvaluator``), visit orders;
- :mod:`.lowering`: ``lower_treerec``, the same model in standard ONNX that any ONNX Runtime runs;
- :mod:`.portable`: the form ``cortex.torch.export`` writes and ``cortex-convert`` reads: the lowering, with the
  TreeRec node it lowers recorded and checked.
"""
from .lowering import defined_names, lower_treerec, rename_graph, rename_node
from .reference import TreeRecOp, dag_heights, treerec_reference, treerec_visit_order
from .schema import DOMAIN, OP_TYPE, VERSION, is_treerec, make_treerec_node, node_attribute, register_schema

__all__ = ["DOMAIN", "OP_TYPE", "VERSION", "TreeRecOp", "dag_heights", "defined_names", "is_treerec",
           "lower_treerec", "make_treerec_node", "node_attribute", "register_schema", "rename_graph", "rename_node",
           "treerec_reference", "treerec_visit_order"]

"""The ``cortex`` ONNX domain (TreeRec: schema, reference, lowering), the model zoo, and structure helpers."""

from .structures import Forest, batch, random_tree, read_sst, sst_dir_default, sst_like_trees
from .treerec import TreeRecOp, lower_treerec, register_schema, treerec_reference

__all__ = [
    "Forest",
    "TreeRecOp",
    "batch",
    "lower_treerec",
    "random_tree",
    "read_sst",
    "register_schema",
    "sst_dir_default",
    "sst_like_trees",
    "treerec_reference",
]

"""The pass pipeline, in one place."""
from __future__ import annotations

from ..ir import nodes as ir
from ..ir.verify import verify
from .rewrite import (fold_constant_rows, fuse_bias, hoist_input_products, merge_added_products, simplify,
                      split_concat_matmul)

# Order matters: simplify exposes foldable subtrees; folding removes the products over constant tables (embedding
# lookups); splitting and hoisting then take the products over runtime node inputs out of the recursion; the
# products that remain in one sum merge into one deeper GEMM; bias fusion then looks at the matrix products that
# remain (the ones over child states) and at the hoisted ones.
PIPELINE = (
    ("simplify", simplify),
    ("fold-constant-rows", fold_constant_rows),
    ("split-concat-matmul", split_concat_matmul),
    ("hoist-input-products", hoist_input_products),
    ("merge-added-products", merge_added_products),
    ("fuse-bias", fuse_bias),
    ("simplify", simplify),
)


def optimize(program: ir.Program) -> ir.Program:
    for _, run_pass in PIPELINE:
        program = verify(run_pass(program))
    return program

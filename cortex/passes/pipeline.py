"""The pass pipeline, in one place."""
from __future__ import annotations

from ..ir import nodes as ir
from ..ir.verify import IRError, verify
from .rewrite import (fold_constant_rows, split_select_cases, fuse_bias, hoist_input_products, lift_member_products,
                      merge_added_products, simplify, split_concat_matmul)

# Order matters: simplify exposes foldable subtrees; products of each member of a child set move to where the member
# is written (before the passes that look at products); branch-free choices split into cases, so each side (a leaf)
# computes only its own rows; folding removes the products over constant tables (embedding
# lookups); splitting and hoisting then take the products over runtime node inputs out of the recursion; the
# products that remain in one sum merge into one deeper GEMM; bias fusion then looks at the matrix products that
# remain (the ones over child states) and at the hoisted ones.
PIPELINE = (
    ("simplify", simplify),
    ("lift-member-products", lift_member_products),
    ("split-select-cases", split_select_cases),
    ("fold-constant-rows", fold_constant_rows),
    ("split-concat-matmul", split_concat_matmul),
    ("hoist-input-products", hoist_input_products),
    ("merge-added-products", merge_added_products),
    ("fuse-bias", fuse_bias),
    ("simplify", simplify),
)


class PassError(Exception):
    """A pass failed or produced IR the verifier rejects; the message names the pass."""


def optimize(program: ir.Program, dump=None) -> ir.Program:
    """Runs the pipeline, verifying after every pass. `dump(name, program)`, when given, sees each pass's output."""
    for name, run_pass in PIPELINE:
        try:
            program = verify(run_pass(program))
        except IRError as e:
            raise PassError(f"pass {name} produced inconsistent IR: {e}") from None
        except RecursionError:
            raise PassError(f"pass {name}: the expressions are too deeply nested") from None
        if dump is not None:
            dump(name, program)
    return program

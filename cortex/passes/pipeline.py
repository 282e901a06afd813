"""The pass pipeline, in one place."""
from __future__ import annotations

from ..ir import nodes as ir
from ..ir.verify import verify
from .rewrite import fold_constant_rows, fuse_bias, simplify

# Order matters: simplify exposes foldable subtrees; folding removes leaf matmuls before bias fusion
# looks for the matmuls that remain (the ones over child states).
PIPELINE = (
    ("simplify", simplify),
    ("fold-constant-rows", fold_constant_rows),
    ("fuse-bias", fuse_bias),
    ("simplify", simplify),
)


def optimize(program: ir.Program) -> ir.Program:
    for _, run_pass in PIPELINE:
        program = verify(run_pass(program))
    return program

"""Finds the recursive regions of a model and raises each into a Cortex IR Program, or says why not.

Three forms:
- `cortex.TreeRec`: the structure and both cases are explicit;
- a `Loop` as exporters write it: a trip count (TorchScript) or a condition that bounds a counter (dynamo's
  `torch.while_loop`), or both; each iteration picks a node (usually `order[i]`, read through any index arithmetic
  on the iteration number or on a carried counter), reads its children's rows from loop-carried state tables, and
  writes the node's new rows back, often under an `If` on "is a leaf";
- a `Scan` over a node order (dynamo's `scan` + `torch.cond`), per-iteration outputs included.
The abstract interpreter must prove every step; anything else stays with ONNX Runtime, with the node and the reason.
"""
from __future__ import annotations

import traceback

import onnx

from ..ir.verify import IRError, verify
from . import ops_control, ops_elementwise, ops_linalg, ops_shape, ops_tables  # noqa: F401 - register handlers
from .interpreter import node_label
from .loop import recognize_loop
from .region import OuterScope, Region, used_names
from .scan import recognize_scan
from .treerec import recognize_treerec
from .values import Refusal

__all__ = ["RECOGNIZERS", "Region", "find_regions"]


RECOGNIZERS = {("", "Loop"): ("Loop", recognize_loop), ("ai.onnx", "Loop"): ("Loop", recognize_loop),
               ("", "Scan"): ("Scan", recognize_scan), ("ai.onnx", "Scan"): ("Scan", recognize_scan),
               ("cortex", "TreeRec"): ("TreeRec", recognize_treerec)}


def find_regions(model: onnx.ModelProto) -> list:
    """Every Loop, Scan and TreeRec in the main graph, each raised to IR or refused with a reason. Never raises
    for a model: an internal error is a refusal of that region, naming the node."""
    outer = OuterScope(model)
    used = used_names(model.graph)
    regions = []
    for index, node in enumerate(model.graph.node):
        found = RECOGNIZERS.get((node.domain, node.op_type))
        if found is None:
            continue
        kind, recognize = found
        region = Region(kind, index, node.name or f"{kind}_{index}")
        try:
            program = recognize(model, node, outer, f"recursion{len(regions)}", used)
            region.program = verify(program)
        except Refusal as e:
            region.reason, region.hint = str(e), e.hint
        except IRError as e:
            region.reason = f"the IR raised from {node_label(node)} is inconsistent: {e}"
        except RecursionError:
            region.reason = f"{node_label(node)}: the expressions are too deeply nested"
        except Exception as e:  # noqa: BLE001 - never crash on a model
            where = traceback.extract_tb(e.__traceback__)[-1]
            region.reason = (f"{node_label(node)}: internal error {type(e).__name__}: {e} "
                             f"(at {where.filename.rsplit('/', 1)[-1]}:{where.lineno})")
        if region.program is not None:
            for table in region.program.tables:  # later regions may read these tables
                if table.output:
                    outer.types[table.output] = (region.program.element, (None,) * table.lead + tuple(table.inner))
                    outer.values.pop(table.output, None)
        regions.append(region)
    return regions

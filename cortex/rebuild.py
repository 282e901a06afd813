"""`cortex rebuild MODEL`: compile a converted model's kernels on this machine from the IR the model carries.

A converted model names native kernels, which are code; it also carries each recursion's optimized IR, which is
data (cortex.ir.serialize). Rebuilding regenerates and compiles every kernel from that IR with the installed Cortex,
for this CPU, writes it into the model's artifact folder, points the node at it (path, sha256, CPU notes) and
records it in the trust store. The model's old kernel files are never opened, loaded or deleted. A model from
anywhere becomes safe to run, and its kernels fit the local CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
from onnx import numpy_helper

from .artifacts import ArtifactError, cortex_nodes, parse_notes
from .codegen.layouts import LAYOUTS, LayoutError
from .codegen.targets import TARGETS
from .codegen.toolchain import ToolchainError, cpu_target
from .convert import ConvertError, _used_names, build_kernel, check_output, load_model, publish_kernel, save_model
from .ir.serialize import IRFormatError, constant_specs, from_json


class RebuildError(Exception):
    """A rebuild that cannot finish; the message is one clear line."""


@dataclass
class RebuildReport:
    source: str
    output: str
    kernels: list = field(default_factory=list)  # (node name, kernel path, sha256, cpu level)

    def format(self) -> str:
        lines = [f"cortex rebuild: {self.source} -> {self.output}"]
        for name, path, sha, level in self.kernels:
            lines.append(f"  {name}: compiled here for {level} -> {path} (sha256 {sha[:16]}...)")
        return "\n".join(lines)


def _constants(model: onnx.ModelProto, node, notes: dict, document) -> dict:
    """The IR's constants, read back from the converted model's initializers."""
    layouts = notes.get("constants")
    if not isinstance(layouts, dict):
        raise RebuildError("notes have no constants map")
    initializers = {t.name: t for t in model.graph.initializer}
    arrays = {}
    for name, (shape, dtype) in constant_specs(document).items():
        info = layouts.get(name)
        if not isinstance(info, dict) or not isinstance(info.get("initializer"), str) \
                or info.get("layout") not in LAYOUTS:
            raise RebuildError(f"notes do not say where constant {name!r} is stored")
        init = info["initializer"]
        if init not in node.input or init not in initializers:
            raise RebuildError(f"constant {name!r}: initializer {init!r} is not an input of the node")
        array = numpy_helper.to_array(initializers[init])
        layout = LAYOUTS[info["layout"]]
        if array.dtype != layout.stored(dtype):
            raise RebuildError(f"constant {name!r}: initializer {init!r} is {array.dtype}, not {layout.stored(dtype)} "
                               f"({layout.name})")
        try:
            arrays[name] = LAYOUTS[info["layout"]].unpack(array, shape)
        except LayoutError as e:
            raise RebuildError(f"constant {name!r}: {e}") from None
    return arrays


def rebuild(model_path, output=None, cpu: Optional[str] = None) -> RebuildReport:
    """Rebuilds every Cortex kernel of the model at `model_path` from its IR; writes the model to `output` (default:
    in place) with its kernels in `<output stem>.cortex/`."""
    model_path = Path(model_path)
    output = Path(output) if output is not None else model_path
    try:
        cpu_target(cpu)  # an unknown level is an error before anything is read
        model = load_model(model_path)
        check_output(output)
        nodes = cortex_nodes(model)
    except (ConvertError, ToolchainError, ArtifactError) as e:
        raise RebuildError(str(e)) from None
    if not nodes:
        raise RebuildError(f"{model_path} has no Cortex node to rebuild")
    report = RebuildReport(str(model_path), str(output))

    replacements = []
    for cortex_node in nodes:
        node, notes = cortex_node.node, cortex_node.notes
        where = f"node '{node.name}'"
        document = notes.get("ir")
        if not isinstance(document, dict):
            reason = notes.get("ir_error") or "it was converted by a Cortex that did not store the IR"
            raise RebuildError(f"{where} carries no IR ({reason}); convert the original model again")
        try:
            program = from_json(document, _constants(model, node, notes, document))
            kind = notes.get("target", "cpu")
            if kind not in TARGETS:
                raise RebuildError(f"unknown target {str(kind)[:40]!r}")
            backend = TARGETS[kind].from_notes(notes, cpu=cpu)
            built = build_kernel(program, f"{program.name} of {output.name}", backend)
        except RebuildError as e:
            raise RebuildError(f"{where}: {e}") from None
        except IRFormatError as e:
            raise RebuildError(f"{where}: the IR is invalid: {e}") from None
        except Exception as e:  # the code generator or the toolchain on data it refuses: a clear error
            raise RebuildError(f"{where}: cannot rebuild the kernel: {type(e).__name__}: {e}") from None
        runtime_inputs = [d.name for d in program.inputs]
        if list(node.input[:len(runtime_inputs)]) != runtime_inputs:
            raise RebuildError(f"{where}: its inputs {list(node.input)[:8]} do not match its IR's {runtime_inputs}")
        try:
            new_node, inits, _ = publish_kernel(built, output, str(notes.get("replaces", "")),
                                                str(notes.get("original_node", "")),
                                                f"rebuilt by cortex rebuild from the IR of {model_path.name}")
        except (ConvertError, OSError) as e:
            raise RebuildError(f"{where}: cannot write the kernel beside {output}: {e}") from None
        if list(new_node.output) != list(node.output):
            raise RebuildError(f"{where}: its outputs {list(node.output)} do not match its IR's "
                               f"{list(new_node.output)}")
        replacements.append((cortex_node.index, new_node, inits))
        context = next(a.s.decode() for a in new_node.attribute if a.name == "ep_cache_context")
        report.kernels.append((node.name, context, _sha_of(new_node), built.backend.built_for()))

    _replace_nodes(model.graph, replacements)
    try:
        save_model(model, output)
    except OSError as e:
        raise RebuildError(f"cannot write {output}: {e}") from None
    return report


def _sha_of(node) -> str:
    return parse_notes(next(a.s for a in node.attribute if a.name == "notes"))["kernel_sha256"]


def _replace_nodes(graph: onnx.GraphProto, replacements):
    """Swaps each old Cortex node for its rebuilt one, in place; initializers only the old nodes read go, the new
    prepared constants come in."""
    old_inputs = set()
    for index, new_node, _ in replacements:
        old_inputs.update(graph.node[index].input)
        graph.node[index].CopyFrom(new_node)
    new_inits = {t.name: t for _, _, inits in replacements for t in inits}
    still_read = _used_names(graph) | {o.name for o in graph.output}
    kept = [t for t in graph.initializer
            if t.name not in new_inits and (t.name not in old_inputs or t.name in still_read)]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.initializer.extend(new_inits.values())

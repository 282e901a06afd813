"""model.onnx -> model.cortex.onnx: each recursive region that Cortex proves becomes one node that the Cortex
execution provider runs with a kernel compiled for it; everything else stays as it was, for ONNX Runtime."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from .codegen import CodegenError, CppGenerator, ToolchainError, compile_kernel
from .ir.ops import MissingOp
from .passes import PassError
from .frontend import find_regions
from .ir import format_program
from .passes import optimize

EP_NAME = "CortexExecutionProvider"
ABI_TAG = "cortex-abi-1"


class ConvertError(Exception):
    """A conversion that cannot start or finish (bad file, not ONNX); the message is one clear line."""


@dataclass
class RegionReport:
    kind: str
    node_name: str
    converted: bool
    reason: Optional[str] = None
    kernel: Optional[str] = None
    ir_before: Optional[str] = None
    ir_after: Optional[str] = None
    hint: Optional[str] = None


@dataclass
class Report:
    source: str
    output: str
    regions: list = field(default_factory=list)

    @property
    def left(self):
        return [r for r in self.regions if not r.converted]

    def format(self) -> str:
        lines = [f"cortex-convert: {self.source} -> {self.output}"]
        if not self.regions:
            lines.append("  no recursive region (Loop, Scan or cortex.TreeRec) found")
        for r in self.regions:
            if r.converted:
                lines.append(f"  {r.kind} '{r.node_name}': converted -> {r.kernel}")
            else:
                lines.append(f"  {r.kind} '{r.node_name}': left to ONNX Runtime: {r.reason}")
                if r.hint:
                    lines.append(f"    how to make it convert: {r.hint}")
        done = sum(r.converted for r in self.regions)
        lines.append(f"  {done} of {len(self.regions)} recursive regions converted")
        return "\n".join(lines)


def load_model(path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"no such file: {path}")
    try:
        return onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise ConvertError(f"{path} is not an ONNX model ({type(e).__name__})") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _used_names(graph: onnx.GraphProto) -> set:
    """Every value name a node of this graph or any of its subgraphs reads."""
    used = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                used |= _used_names(sub)
    return used


def _remove_dead_nodes(graph: onnx.GraphProto):
    outputs = {o.name for o in graph.output}
    while True:
        used = _used_names(graph) | outputs
        keep = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = _used_names(graph) | outputs
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def convert(source, output, target: str = "cpu", strict: bool = False) -> Report:
    """Converts the model at `source`, writes the converted model to `output` and its kernels beside it
    (in `<output stem>.cortex/`), and returns the report. With `strict`, raises ConvertError when a
    recursive region is left to ONNX Runtime."""
    if target != "cpu":
        raise ConvertError(f"target '{target}' is not supported by this build (supported: cpu)")
    model = load_model(source)
    output = Path(output)
    report = Report(str(source), str(output))
    artifacts = output.parent / (output.name.split(".")[0] + ".cortex")

    replacements = {}  # node index -> (EPContext node, initializers, output types)
    for region in find_regions(model):
        entry = RegionReport(region.kind, region.node_name, False, region.reason, hint=region.hint)
        report.regions.append(entry)
        if region.program is None:
            continue
        entry.ir_before = format_program(region.program)
        try:
            program = optimize(region.program)
            entry.ir_after = format_program(program)
            generator = CppGenerator(program)
            source_code = generator.generate(f"{program.name} of {Path(source).name}")
            library = compile_kernel(source_code)
        except (CodegenError, ToolchainError, MissingOp, PassError) as e:
            entry.reason = str(e)
            continue
        except Exception as e:  # noqa: BLE001 - a bug in a pass or the code generator refuses the region
            entry.reason = f"internal error in the passes or the code generator: {type(e).__name__}: {e}"
            continue
        entry.converted, entry.reason = True, None
        replacements[region.node_index] = (entry, program, generator, source_code, library)

    if strict and report.left:
        raise ConvertError("--strict: recursive regions left to ONNX Runtime (no output written): " +
                           "; ".join(f"{r.kind} '{r.node_name}': {r.reason}" for r in report.left))
    nodes = {}
    for index, (entry, program, generator, source_code, library) in replacements.items():
        artifacts.mkdir(parents=True, exist_ok=True)
        kernel_file = artifacts / f"{program.name}_{library.stem.split('_')[-1][:16]}.so"
        shutil.copyfile(library, kernel_file)
        (artifacts / (kernel_file.stem + ".cc")).write_text(source_code)
        rel = os.path.relpath(kernel_file, output.parent)
        node = _kernel_node(model.graph.node[index], generator, program, rel, _sha256(kernel_file))
        inits = [numpy_helper.from_array(i.array, i.name) for i in generator.inputs if i.kind == "const"]
        types = [(name, t) for name, t in zip(node.output, program.tables)]
        nodes[index] = (node, inits, types)
        entry.kernel = rel

    _rewrite(model, nodes)
    output.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(output))
    return report


def _kernel_node(original: onnx.NodeProto, generator: CppGenerator, program, rel_path: str, sha: str):
    outputs = [t.output or f"{program.name}_unused_{k}" for k, t in enumerate(program.tables)]
    notes = json.dumps({"kernel_sha256": sha, "recursion": program.name, "replaces": original.op_type,
                        "original_node": original.name})
    return helper.make_node(
        "EPContext", [i.name for i in generator.inputs], outputs,
        name=f"{program.name} [run with cortex.session_options() or cortex.InferenceSession]",
        domain="com.microsoft", source=EP_NAME, embed_mode=0, main_context=1, ep_cache_context=rel_path,
        ep_sdk_version=ABI_TAG, notes=notes)


def _declare_types(graph: onnx.GraphProto, tables):
    """The kernel node's outputs get explicit types: ORT cannot infer an EPContext node's outputs, and the
    nodes after the recursion need them. A state table is float32 [N, ...], a per-position table [L, ...]."""
    declared = {o.name for o in graph.output}
    kept = [vi for vi in graph.value_info if vi.name not in {name for name, _ in tables}]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    for name, table in tables:
        if name not in declared:
            rows = "cortex_N" if table.kind == "state" else "cortex_L"
            graph.value_info.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                  [rows] + list(table.inner)))


def _rewrite(model: onnx.ModelProto, replacements: dict):
    if not replacements:
        return
    graph = model.graph
    nodes = []
    for index, node in enumerate(graph.node):
        if index in replacements:
            new_node, inits, types = replacements[index]
            nodes.append(new_node)
            graph.initializer.extend(inits)
            _declare_types(graph, types)
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    _remove_dead_nodes(graph)
    domains = {op.domain for op in model.opset_import}
    if "com.microsoft" not in domains:
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    if not any(n.domain == "cortex" for n in graph.node):
        kept = [op for op in model.opset_import if op.domain != "cortex"]
        del model.opset_import[:]
        model.opset_import.extend(kept)

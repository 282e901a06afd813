"""model.onnx -> model.cortex.onnx: each recursive region that Cortex proves becomes one node that the Cortex
execution provider runs with a kernel compiled for it; everything else stays as it was, for ONNX Runtime."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import onnx
import onnx.checker
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from . import trust
from .artifacts import EP_NAME, artifacts_dir, sha256_file
from .codegen import CodegenError, ToolchainError
from .codegen.targets import TARGETS, BuiltKernel, build_kernel
from .frontend import find_regions
from .frontend.ort_hazards import merged_branch_constants
from .ir import format_program
from .ir import nodes as ir
from .ir.ops import MissingOp
from .ir.serialize import IRFormatError, to_json
from .passes import PassError, optimize
from .serving.kernel import merge_notes
from .serving.merge import plan_for
from .serving.windows import window_constant, window_input, windows_if_mergeable
from .treerec import DOMAIN as TREEREC_DOMAIN
from .treerec.portable import has_treerec, raise_treerec, to_portable

ABI_TAG = "cortex-abi-3"


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
    warnings: list = field(default_factory=list)  # about the original model (frontend.ort_hazards)


@dataclass
class PrecisionError:
    """The measured error of one output of a reduced-precision conversion against the float32 conversion of the
    same model, on the example inputs: max and mean absolute difference, and the largest float32 magnitude."""
    output: str
    max_abs: float
    mean_abs: float
    max_ref: float


@dataclass
class Report:
    source: str
    output: str
    regions: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # about the model as a whole (its TreeRec record, its lowering)
    precision: str = "float32"
    errors: list = field(default_factory=list)  # PrecisionError per output (precision other than float32)
    serving: Optional[object] = None  # the written model's merge plan (cortex.serving.merge.MergePlan), if converted

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
            for w in r.warnings:
                lines.append(f"    warning: {w}" + ("; the converted kernel computes it as PyTorch does" if r.converted
                                                   else "; this region is left to ONNX Runtime"))
        lines += [f"  note: {n}" for n in self.notes]
        if self.precision != "float32":
            lines.append(f"  precision {self.precision}: products in {self.precision}, sums and gates in float32; measured "
                         "against the float32 conversion on the example inputs:")
            lines += [f"    {e.output}: max abs error {e.max_abs:.3g}, mean abs error {e.mean_abs:.3g} (float32 values "
                      f"up to {e.max_ref:.3g})" for e in self.errors]
        lines += self._serving_lines()
        done = sum(r.converted for r in self.regions)
        lines.append(f"  {done} of {len(self.regions)} recursive regions converted")
        return "\n".join(lines)

    def _serving_lines(self) -> list:
        """Whether cortex.BatchingSession can merge concurrent requests of the written model, and why not."""
        plan = self.serving
        if plan is None:
            return []
        if not plan.mergeable:
            return [f"  serving: concurrent requests cannot run as one forest: {plan.reason} (cortex.BatchingSession "
                    "refuses the model unless allow_unmerged=True, which serves one request at a time)"]
        return (["  serving: concurrent requests run as one forest in cortex.BatchingSession (merge proven from the "
                 "IR; docs/serving.md)"] +
                ([f"    note: outputs computed {plan.tail.describe()}"] if plan.tail is not None else []) +
                [f"    note: {w}" for w in plan.warnings])


def load_model(path) -> onnx.ModelProto:
    """The model at `path` with its external data; ConvertError (one line) for anything that is not an ONNX model."""
    path = Path(path)
    if not path.exists():
        raise ConvertError(f"no such file: {path}")
    if not path.is_file():
        raise ConvertError(f"{path} is not a file")
    if path.stat().st_size == 0:
        raise ConvertError(f"{path} is not an ONNX model (the file is empty)")
    try:
        model = onnx.load(str(path))
    except onnx.checker.ValidationError as e:  # external data outside the model's folder, or missing
        raise ConvertError(f"{path}: its external data cannot be read safely ({' '.join(str(e).split())[:300]})") \
            from None
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        raise ConvertError(f"{path} is not an ONNX model ({type(e).__name__})") from None
    if not model.HasField("graph") or model.ir_version <= 0:
        raise ConvertError(f"{path} is not an ONNX model (it has no {'graph' if model.ir_version > 0 else 'IR version'})")
    return model


def check_output(output: Path) -> Path:
    """Refuses (one line) an output path the converted model and its kernel folder cannot both be written to."""
    output = Path(output)
    if output.is_dir():
        raise ConvertError(f"{output} is a folder; give the converted model's file name (e.g. model.cortex.onnx)")
    folder = artifacts_dir(output)
    if Path(os.path.abspath(folder)) == Path(os.path.abspath(output)):
        raise ConvertError(f"{output}: its kernels would go into {folder}, the output itself; name the output like "
                           "model.cortex.onnx")
    if folder.exists() and not folder.is_dir():
        raise ConvertError(f"{folder} exists and is not a folder: the converted model's kernels go there (move it, or "
                           "name the output differently)")
    return output


def _all_names(graph: onnx.GraphProto) -> set:
    """The value names a graph reads, makes or declares."""
    return _used_names(graph) | {v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)} | \
        {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}


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


def convert(source, output, target: str = "cpu", strict: bool = False, cpu: Optional[str] = None,
            cuda_arch: Optional[str] = None, precision: str = "float32", example_inputs=None) -> Report:
    """Converts the model at `source`, writes the converted model to `output` and its kernels beside it
    (in `<output stem>.cortex/`), and returns the report. `target` picks the code generator (codegen.targets:
    cpu, cuda); `cpu` is the CPU level CPU kernels are compiled for (toolchain.CPU_LEVELS; None: the best level
    this host runs), `cuda_arch` the GPU architecture CUDA kernels are compiled for (default sm_90). `precision`:
    "float32" (the default, exact) or "bf16" (opt-in, CPU: matrix products on bf16 values, AMX tiles or
    AVX512-BF16, float32 sums and gates); bf16 needs `example_inputs` ({input name: array}, or an .npz path), on
    which the report states the error against the float32 conversion. With `strict`, raises ConvertError, writing
    nothing, when a recursive region is left to ONNX Runtime. Kernels compiled here are recorded in the local trust
    store (cortex.trust)."""
    if target not in TARGETS:
        raise ConvertError(f"unknown target '{target}' (choose from {', '.join(TARGETS)})")
    try:
        backend = TARGETS[target].configure(cpu=cpu, cuda_arch=cuda_arch, precision=precision)
    except ToolchainError as e:
        raise ConvertError(str(e)) from None
    if precision != "float32":
        if example_inputs is None:
            raise ConvertError(f"--precision {precision} states its error against float32 on example inputs: give "
                               "them (--example-inputs inputs.npz; convert(..., example_inputs={name: array}))")
        example_inputs = _load_examples(example_inputs)
        report = _convert_with(source, output, backend, strict)
        with tempfile.TemporaryDirectory(prefix="cortex_float32_") as tmp:  # the reference: the float32 conversion
            reference = Path(tmp) / Path(output).name
            convert(source, reference, target, strict, backend.cpu.level)
            report.errors = measure_error(reference, Path(output), example_inputs)
        return report
    return _convert_with(source, output, backend, strict)


def _load_examples(example_inputs) -> dict:
    """{input name: numpy array} from a dict or an .npz file."""
    if isinstance(example_inputs, (str, os.PathLike)):
        try:
            with np.load(example_inputs) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError) as e:
            raise ConvertError(f"cannot read the example inputs {example_inputs}: {e}") from None
    if not isinstance(example_inputs, dict):
        raise ConvertError("example inputs must be a dict of input name -> array, or an .npz file")
    return {str(k): np.asarray(v) for k, v in example_inputs.items()}


def measure_error(reference: Path, converted: Path, inputs: dict) -> list:
    """PrecisionError per output: `converted` against `reference` (both converted models) on `inputs`."""
    from .session import InferenceSession
    try:
        want_session, got_session = InferenceSession(str(reference)), InferenceSession(str(converted))
        names = [o.name for o in got_session.get_outputs()]
        want, got = want_session.run(names, inputs), got_session.run(names, inputs)
    except Exception as e:  # noqa: BLE001 - onnxruntime's own exception types: one clear line
        raise ConvertError(f"the example inputs do not run ({' '.join(str(e).split())[:300]})") from None
    errors = []
    for name, w, g in zip(names, want, got):
        w, g = np.asarray(w, dtype=np.float64), np.asarray(g, dtype=np.float64)
        diff = np.abs(w - g)
        errors.append(PrecisionError(name, float(diff.max(initial=0.0)), float(diff.mean()) if diff.size else 0.0,
                                     float(np.abs(w).max(initial=0.0))))
    return errors


def _convert_with(source, output, backend, strict: bool) -> Report:
    model, record_problem = raise_treerec(load_model(source))
    output = check_output(output)
    report = Report(str(source), str(output), precision=getattr(backend, "precision", "float32"))
    if record_problem:
        report.notes.append(f"{record_problem}; its graph is converted as it is")

    built = {}  # node index -> (report entry, BuiltKernel)
    for region in find_regions(model):
        entry = RegionReport(region.kind, region.node_name, False, region.reason, hint=region.hint,
                             warnings=merged_branch_constants(model.graph, model.graph.node[region.node_index]))
        report.regions.append(entry)
        if region.program is None:
            continue
        try:
            entry.ir_before = format_program(region.program)
            # reads of a missing child get their request's window: exact once merged (serving/windows.py)
            program = optimize(region.program)
            windowed = windows_if_mergeable(program)
            if window_input(windowed) not in _all_names(model.graph):  # never under a name the model uses
                program = windowed
            entry.ir_after = format_program(program)
            built[region.node_index] = (entry, build_kernel(program, f"{program.name} of {Path(source).name}",
                                                            backend))
        except (CodegenError, ToolchainError, MissingOp, PassError) as e:
            entry.reason = str(e)
            continue
        except Exception as e:  # noqa: BLE001 - a bug in a pass or the code generator refuses the region
            entry.reason = f"internal error in the passes or the code generator: {type(e).__name__}: {e}"
            continue
        entry.converted, entry.reason = True, None

    if strict and report.left:
        raise ConvertError("--strict: recursive regions left to ONNX Runtime (no output written): " +
                           "; ".join(f"{r.kind} '{r.node_name}': {r.reason}" for r in report.left))
    replacements = {}  # node index -> (EPContext node, initializers, output tables)
    try:
        for index, (entry, kernel) in built.items():
            original = model.graph.node[index]
            node, inits, types = publish_kernel(kernel, output, original.op_type, original.name,
                                                f"compiled by cortex-convert from {Path(source).name}")
            window = window_input(kernel.program)
            before = [window_constant(window)] if window is not None else []
            replacements[index] = (before, node, inits, types, final_nodes(kernel.program, node, _opset(model)))
            entry.kernel = _context_path(node)
        _rewrite(model, replacements)
        save_model(_runnable(model, report), output)
        if built:
            report.serving = _merge_plan(output)
    except OSError as e:
        raise ConvertError(f"cannot write {e.filename or output}: {e.strerror or e}") from None
    return report


def _merge_plan(output: Path):
    """The written model's merge plan for the report; None where it cannot be read (the report then says nothing
    about serving: the plan is advice, never a reason to fail a conversion)."""
    try:
        return plan_for(output)
    except Exception:  # noqa: BLE001 - plan_for refuses with a reason; what escapes it is an unreadable file
        return None


def _runnable(model: onnx.ModelProto, report: Report) -> onnx.ModelProto:
    """The model as ONNX Runtime can run it: a TreeRec region left unconverted is written in its portable form (its
    standard-ONNX lowering, recorded so that a later conversion finds the recursion again)."""
    if not has_treerec(model):
        return model
    try:
        portable = to_portable(model)
    except ValueError as e:
        report.notes.append(f"the TreeRec regions left unconverted cannot be lowered to standard ONNX ({e}): the "
                            "written model runs only with cortex.InferenceSession")
        return model
    report.notes.append("TreeRec regions left to ONNX Runtime are written as their standard-ONNX lowering")
    return portable


def _write_file(path: Path, data: bytes):
    """Writes through a staged file and a rename: an existing entry (a symlink planted in an untrusted model's
    folder, say) is replaced, never followed."""
    fd, staged = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(staged, 0o644)
        os.replace(staged, path)
    except BaseException:
        if os.path.exists(staged):
            os.unlink(staged)
        raise


def save_model(model: onnx.ModelProto, output: Path):
    output.parent.mkdir(parents=True, exist_ok=True)
    _write_file(output, model.SerializeToString())


def _artifact_folder(output: Path) -> Path:
    """`<output stem>.cortex/`, created when absent; refused when it is a symlink or leads out of the model's
    folder (the EP would refuse every kernel in it)."""
    folder = artifacts_dir(output)
    if folder.is_symlink():
        raise ConvertError(f"{folder} is a symbolic link; remove it (kernels must live inside the model's folder)")
    folder.mkdir(parents=True, exist_ok=True)
    if Path(os.path.realpath(folder)).parent != Path(os.path.realpath(output.parent)):
        raise ConvertError(f"{folder} resolves outside the model's folder")
    return folder


def _constant_layouts(built: BuiltKernel) -> dict:
    """For each IR constant: the initializer that carries it in the converted model and how it is stored there (a
    layout of cortex.codegen.layouts: `dense`, `panels` for the CPU's products, `transposed` for the GPU's). Rebuild
    reads them back."""
    return {k.const: {"initializer": k.name, "layout": k.layout} for k in built.generator.inputs if k.kind == "const"}


def publish_kernel(built: BuiltKernel, output: Path, replaces: str, original_node: str, reason: str):
    """Copies the kernel (and its source, for people) into the model's artifact folder, records it in the trust
    store, and returns (the EPContext node, its initializers, the output table types)."""
    program = built.program
    folder = _artifact_folder(output)
    kernel_file = folder / f"{program.name}_{built.library.stem.split('_')[-1][:16]}.so"
    _write_file(kernel_file, built.library.read_bytes())
    _write_file(folder / (kernel_file.stem + ".cc"), built.source_code.encode())
    sha = sha256_file(kernel_file)
    try:
        trust.add(sha, f"{reason} -> {kernel_file}")
    except (OSError, trust.TrustError) as e:  # a kernel no store knows would be refused at load: say so now
        raise ConvertError(f"cannot record the compiled kernel in the trust store {trust.store_dir()} ({e}); set "
                           f"{trust.TRUST_DIR_ENV} to a directory you can write") from None
    notes = {"kernel_sha256": sha, "recursion": program.name, "replaces": replaces, "original_node": original_node,
             **built.backend.notes()}
    notes["merge"] = merge_notes(program)  # may concurrent requests run as one forest (cortex.serving)
    try:
        notes["ir"] = to_json(program)
        notes["constants"] = _constant_layouts(built)
    except IRFormatError as e:  # the model still runs here; it cannot be rebuilt elsewhere
        notes["ir_error"] = str(e)
    rel = os.path.relpath(kernel_file, output.parent)
    node = _kernel_node(built.generator, program, rel, notes)
    inits = [numpy_helper.from_array(i.array, i.name) for i in built.generator.inputs if i.kind == "const"]
    element = helper.np_dtype_to_tensor_dtype(np.dtype(program.element))
    types = [(name, t, element) for name, t in zip(node.output, program.tables)]
    return node, inits, types


def _kernel_node(generator, program, rel_path: str, notes: dict):
    outputs = [t.output or f"{program.name}_{'rows_of' if t.kind == 'emit' else 'unused'}_{k}"
               for k, t in enumerate(program.tables)]
    return helper.make_node(
        "EPContext", [i.name for i in generator.inputs], outputs,
        name=f"{program.name} [run with cortex.session_options() or cortex.InferenceSession]",
        domain="com.microsoft", source=EP_NAME, embed_mode=0, main_context=1, ep_cache_context=rel_path,
        ep_sdk_version=ABI_TAG, notes=json.dumps(notes, separators=(",", ":")))


REDUCE_OPS = {"add": ("ReduceSum", 13), "mul": ("ReduceProd", 18), "max": ("ReduceMax", 18),
              "min": ("ReduceMin", 18)}  # (op, the opset from which its axes are an input)


def final_nodes(program: ir.Program, kernel_node: onnx.NodeProto, opset: int) -> list:
    """Standard ONNX nodes computing the program's finals from the kernel's emit tables (ir.Final): the initial
    value stacked on the table's rows, then its last row (a carried vector's final value) or its reduction (a running
    max or sum: op over the initial value and every iteration's operand; never an empty reduction)."""
    nodes = []
    table_output = {t.name: name for name, t in zip(kernel_node.output, program.tables)}
    for k, final in enumerate(program.finals):
        tag = f"{program.name}_final{k}"
        rows = table_output[final.table]
        if final.kind == "sequence":
            nodes.append(helper.make_node("SplitToSequence", [rows], [final.output], axis=0, keepdims=0))
            continue

        def constant(name, value):
            return helper.make_node("Constant", [], [f"{tag}_{name}"],
                                    value=numpy_helper.from_array(np.array(value, dtype=np.int64)))
        nodes += [constant("axis0", [0]),
                  helper.make_node("Unsqueeze", [final.init, f"{tag}_axis0"], [f"{tag}_init"]) if opset >= 13 else
                  helper.make_node("Unsqueeze", [final.init], [f"{tag}_init"], axes=[0]),
                  helper.make_node("Concat", [f"{tag}_init", rows], [f"{tag}_stacked"], axis=0)]
        if final.kind == "last":
            nodes += [helper.make_node("Shape", [f"{tag}_stacked"], [f"{tag}_shape"]), constant("zero", 0),
                      constant("one", 1),
                      helper.make_node("Gather", [f"{tag}_shape", f"{tag}_zero"], [f"{tag}_count"], axis=0),
                      helper.make_node("Sub", [f"{tag}_count", f"{tag}_one"], [f"{tag}_index"]),
                      helper.make_node("Gather", [f"{tag}_stacked", f"{tag}_index"], [final.output], axis=0)]
        else:
            op, axes_input_from = REDUCE_OPS[final.op]
            if opset >= axes_input_from:
                nodes.append(helper.make_node(op, [f"{tag}_stacked", f"{tag}_axis0"], [final.output], keepdims=0))
            else:
                nodes.append(helper.make_node(op, [f"{tag}_stacked"], [final.output], axes=[0], keepdims=0))
    return nodes


def _opset(model: onnx.ModelProto) -> int:
    return next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), 1)


def _context_path(node: onnx.NodeProto) -> str:
    return next(a.s.decode() for a in node.attribute if a.name == "ep_cache_context")


def _declare_types(graph: onnx.GraphProto, tables):
    """The kernel node's outputs get explicit types: ORT cannot infer an EPContext node's outputs, and the
    nodes after the recursion need them. A state table is [N, ...] (a grid [R, C, ...]), a per-position table
    [L, ...], of the program's element type (float32, or float64)."""
    declared = {o.name for o in graph.output}
    kept = [vi for vi in graph.value_info if vi.name not in {name for name, _, _ in tables}]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    for name, table, element in tables:
        if name not in declared:
            rows = ["cortex_L"] if table.kind == "emit" else ["cortex_N"] if table.lead == 1 else \
                [f"cortex_N{d}" for d in range(table.lead)]
            graph.value_info.append(helper.make_tensor_value_info(name, element, rows + list(table.inner)))


def _rewrite(model: onnx.ModelProto, replacements: dict):
    if not replacements:
        return
    graph = model.graph
    nodes = []
    for index, node in enumerate(graph.node):
        if index in replacements:
            before, new_node, inits, types, after = replacements[index]
            nodes.extend(before)
            nodes.append(new_node)
            nodes.extend(after)
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
    if not any(n.domain == TREEREC_DOMAIN for n in graph.node):
        kept = [op for op in model.opset_import if op.domain != TREEREC_DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(kept)

"""Cells -> one ``cortex.TreeRec`` model (docs/bring-your-pytorch-model.md).

Each cell is wrapped in a module with the TreeRec body signature (:mod:`._cells`) and exported with torch's ONNX
exporter, dynamo first, the TorchScript trace as the fallback. The exported graphs become the bodies: their
parameters and buffers move to the main graph's initializers, one per tensor however many cells use it (matched by
identity: storage, shape, strides, dtype), named after their first owner (``leaf.emb.weight``); every other name is
prefixed with its body's role (``leaf/``, ``internal/``, ``head/``). The main graph takes ``children`` and the node
inputs and returns the state tables, or what the optional head computes from them.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from ..treerec import DOMAIN, VERSION, make_treerec_node, register_schema, rename_graph
from ..treerec.portable import to_portable

from ._cells import (CHILDREN, Convention, InternalBody, LeafBody, Structure, call_internal, call_leaf,
                     check_leaf_arity, describe_convention, resolve_convention)
from ._reference import run_reference

OPSET = 18  # the dynamo exporter's lowest; the TorchScript fallback exports at the same opset
IR_VERSION = 10  # ONNX Runtime 1.31 reads up to 10 (onnx 1.23 writes 11+ by default)
EXPORTERS = ("auto", "dynamo", "torchscript")
CHECK_TOL = 1e-4


class _Head(torch.nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, *tables):
        out = self.cell(*tables)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


# ----------------------------------------------------------------------------------------------------------------
# one module -> one ONNX graph


@contextlib.contextmanager
def _quiet(verbose: bool = False):
    """Silence the exporters (warnings, log lines, the graphs and progress they print) unless `verbose`; what they
    printed is kept (yielded buffer) so that a failure can carry it. Errors still raise."""
    if verbose:
        yield io.StringIO()
        return
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir",
                                              "torch._dynamo", "torch.fx")]
    levels = [lg.level for lg in loggers]
    captured = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        try:
            yield captured
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _with_output(error: BaseException, captured: io.StringIO) -> BaseException:
    """The exporter's own output, attached to its error (shown with the traceback, not printed as it ran)."""
    text = captured.getvalue().strip()
    if text and hasattr(error, "add_note"):
        error.add_note("exporter output (cortex.torch captured it; export(..., verbose=True) prints it as it runs):\n"
                       + text[-4000:])
    return error


@contextlib.contextmanager
def _kept_as_they_were(*modules):
    """The user's modules come back exactly as they were: every submodule's training flag, every parameter's
    requires_grad, every hook (the exporters switch modes, and the TorchScript exporter restores the wrapper's mode,
    training by default, onto the cells inside it)."""
    roots = [m for m in modules if m is not None]
    subs = list({id(m): m for root in roots for m in root.modules()}.values())
    training = [(m, m.training) for m in subs]
    grads = [(p, p.requires_grad) for root in roots for p in root.parameters()]
    hooks = [(m, name, dict(getattr(m, name))) for m in subs
             for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
             if isinstance(getattr(m, name, None), dict)]
    try:
        yield
    finally:
        for m, flag in training:
            m.training = flag
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, name, saved in hooks:
            current = getattr(m, name)
            current.clear()
            current.update(saved)


TRAINING_SENSITIVE = (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm,
                      torch.nn.modules.instancenorm._InstanceNorm)


def _refuse_training_mode(cells: dict) -> None:
    """Cortex exports inference: a cell in training mode whose dropout or batch statistics would change what it
    computes is a mistake to say, not to export."""
    for role, cell in cells.items():
        if cell is None:
            continue
        for name, m in cell.named_modules():
            if m.training and isinstance(m, TRAINING_SENSITIVE):
                raise ValueError(f"the {role} cell is in training mode and has {type(m).__name__} "
                                 f"({role + ('.' + name if name else '')}), which computes differently in training: "
                                 f"call .eval() on your cells before exporting (Cortex exports the inference model)")


def _dynamo(module, args, input_names, output_names, opset: int, dynamic: bool) -> onnx.ModelProto:
    """The dynamo exporter, with its graph optimizer run while the parameters are graph inputs: it then folds no
    expression of a parameter into a new constant (a transposed copy of a weight would hide the parameter from the
    identity dedupe, and only below the optimizer's size limit, so small models would export differently)."""
    import onnxscript.optimizer

    kwargs = {}
    if dynamic:  # the wrapper modules' forward takes *args: one spec, a tuple with an entry per argument
        kwargs["dynamic_shapes"] = (tuple({0: torch.export.Dim.DYNAMIC} for _ in args),)
    program = torch.onnx.export(module, tuple(args), dynamo=True, opset_version=opset, verbose=False,
                                optimize=False, input_names=list(input_names), output_names=list(output_names),
                                **kwargs)
    graph = program.model.graph
    params = [v for name, v in graph.initializers.items() if name in _owners(module)]
    graph.inputs.extend(params)
    onnxscript.optimizer.optimize(program.model)
    for _ in params:
        graph.inputs.pop()
    return program.model_proto


def _torchscript(module, args, input_names, output_names, opset: int, dynamic: bool) -> onnx.ModelProto:
    buf = io.BytesIO()
    axes = {n: {0: "N"} for n in [*input_names, *output_names]} if dynamic else None
    torch.onnx.export(module, tuple(args), buf, dynamo=False, opset_version=opset, input_names=list(input_names),
                      output_names=list(output_names), dynamic_axes=axes,
                      do_constant_folding=False)  # keeps each parameter under its name (no folded W^T copy)
    return onnx.load_from_string(buf.getvalue())


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def export_module(module, args, input_names, output_names, *, exporter: str = "auto", opset: int = OPSET,
                  dynamic: bool = False, role: str = "module", verbose: bool = False) -> tuple[onnx.ModelProto, str]:
    """(ONNX model of ``module`` called on ``args``, the exporter that made it). ``exporter="auto"``: dynamo, and
    the TorchScript trace when dynamo fails (with a warning: a trace records the branches this example takes).
    ``dynamic``: dimension 0 of every input and output is dynamic. Local functions are inlined."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, not {exporter!r}")
    used = exporter
    with _kept_as_they_were(module):
        model, used = _export_with(module, args, input_names, output_names, exporter, opset, dynamic, role, verbose)
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise ValueError(f"the {used} exporter wrote the {role} cell at opset {got}, not {opset}")
    return model, used


def _export_with(module, args, input_names, output_names, exporter, opset, dynamic, role, verbose) -> tuple:
    """(model, exporter used): dynamo, then the TorchScript trace when asked for or when dynamo fails ("auto")."""
    used = exporter
    if exporter in ("auto", "dynamo"):
        with _quiet(verbose) as captured:
            try:
                model, used = _dynamo(module, args, input_names, output_names, opset, dynamic), "dynamo"
            except Exception as e:  # noqa: BLE001 - any exporter failure: fall back, or re-raise when asked for dynamo
                failure = e
                used = "torchscript"
        if used == "torchscript":
            if exporter == "dynamo":
                raise _with_output(failure, captured)
            warnings.warn(f"cortex.torch: the dynamo exporter failed on the {role} cell ({_one_line(failure)}); using "
                          "the TorchScript trace, which records only the branches the example takes", stacklevel=3)
    if used == "torchscript":
        with _quiet(verbose) as captured:
            try:
                model = _torchscript(module, args, input_names, output_names, opset, dynamic)
            except Exception as e:
                raise _with_output(e, captured)
    return model, used


# ----------------------------------------------------------------------------------------------------------------
# assembling the TreeRec model


def _identity(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), tuple(t.shape), tuple(t.stride()), str(t.dtype))


def _owners(module: torch.nn.Module) -> dict:
    """Fully qualified name -> tensor identity, for every parameter and buffer under every name it has."""
    named = list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False))
    return {name: _identity(t) for name, t in named}


def _clean(graph: onnx.GraphProto) -> None:
    """Drop the exporters' per-value and per-node annotations (stack traces, torch node names)."""
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        del vi.metadata_props[:]
    for n in graph.node:
        del n.metadata_props[:]
        n.doc_string = ""
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                _clean(sub)
    del graph.metadata_props[:]


class _Assembly:
    """The main graph's initializers (one per parameter), names in use, the exporters used per role."""

    def __init__(self, reserved: Sequence[str]):
        self.initializers: list[onnx.TensorProto] = []
        self.by_identity: dict = {}
        self.taken = set(reserved)
        self.exporters: dict[str, str] = {}
        self.opsets: dict[str, int] = {}

    def fresh(self, name: str) -> str:
        out, k = name, 1
        while out in self.taken:
            out, k = f"{name}_{k}", k + 1
        self.taken.add(out)
        return out

    def take(self, model: onnx.ModelProto, module: torch.nn.Module, role: str, keep: Sequence[str] = ()
             ) -> onnx.GraphProto:
        """``model``'s graph with its parameters moved to the main graph (shared ones stored once) and every other
        name prefixed ``{role}/`` except those in ``keep``."""
        for o in model.opset_import:
            domain = o.domain or ""
            if self.opsets.get(domain, o.version) != o.version:
                raise ValueError(f"the {role} cell uses opset {domain or 'ai.onnx'} {o.version}, another cell "
                                 f"{self.opsets[domain]}")
            self.opsets[domain] = o.version
        graph = copy.deepcopy(model.graph)
        _clean(graph)
        owners = _owners(module)
        mapping = {name: name for name in keep}
        local = []
        for t in graph.initializer:
            key = owners.get(t.name)
            if key is None:
                local.append(t)
                continue
            if key not in self.by_identity:
                main = copy.deepcopy(t)
                main.name = self.fresh(f"{role}.{t.name.removeprefix('cell.')}")
                self.initializers.append(main)
                self.by_identity[key] = main.name
            mapping[t.name] = self.by_identity[key]
        del graph.initializer[:]
        graph.initializer.extend(local)
        rename_graph(graph, lambda x: mapping.get(x, f"{role}/{x}"))
        return graph


def _typed(vis, types) -> None:
    for vi, (elem, shape) in zip(vis, types, strict=True):
        vi.type.CopyFrom(helper.make_tensor_type_proto(elem, list(shape)))


def _with_inputs(graph: onnx.GraphProto, names: Sequence[str], role: str) -> None:
    """The body's inputs in the order of ``names`` (a TorchScript export may drop an input the cell ignores)."""
    have = {vi.name: vi for vi in graph.input}
    vis = [have.get(f"{role}/{n}") or helper.make_empty_tensor_value_info(f"{role}/{n}") for n in names]
    del graph.input[:]
    graph.input.extend(vis)


def _onnx_type(arr: np.ndarray) -> int:
    return helper.np_dtype_to_tensor_dtype(arr.dtype)


def _example_node(st: Structure, internal: bool) -> int:
    for v in range(st.num_nodes):
        if bool((st.children[v] >= 0).any()) == internal:
            return v
    return 0


def _state_rows(leaf, internal, options: dict, st: Structure) -> tuple:
    """(the leaf cell's rows on an example leaf: the states' count and widths, the internal cell's calling
    convention): `options` (children, mask, internal_inputs; None: infer) resolved against the cells' signatures,
    then the internal cell called on an example internal node and its rows checked against the leaf's."""
    check_leaf_arity(leaf, len(st.node_inputs), list(st.node_inputs))
    v_leaf, v_int = _example_node(st, False), _example_node(st, True)
    with torch.no_grad():
        leaf_rows = call_leaf(leaf, st.slices(v_leaf))
        conv = resolve_convention(internal, options.get("children"), options.get("mask"),
                                  options.get("internal_inputs"), len(st.node_inputs), len(leaf_rows),
                                  st.num_children)
        try:
            int_rows = call_internal(internal, conv, st.slices(v_int), [leaf_rows] * st.num_children,
                                     st.mask(v_int))
        except Exception as e:  # noqa: BLE001 - the cell did not take what Cortex passed it: say what that was
            raise ValueError(f"calling the internal cell with {describe_convention(conv)} (its children "
                             f"{'stacked, one [K, D] tensor per state' if conv.children == 'stack' else 'one [1, D] row per child and state'}) "
                             f"failed: {type(e).__name__}: {e}; docs/bring-your-pytorch-model.md: the calling "
                             "convention of the cells") from e
    widths = [int(r.shape[0]) for r in leaf_rows]
    if [int(r.shape[0]) for r in int_rows] != widths:
        raise ValueError(f"the leaf cell returns states of widths {widths}, the internal cell "
                         f"{[int(r.shape[0]) for r in int_rows]}")
    return leaf_rows, conv


def _bodies(asm: _Assembly, leaf, internal, conv: Convention, st: Structure, leaf_rows, state_names,
            mask_name, exporter: str, opset: int, verbose: bool) -> tuple:
    """(leaf body, internal body): each cell in its body module, exported, parameters moved out, typed."""
    K, S, input_names = st.num_children, len(leaf_rows), list(st.node_inputs)
    body_inputs = input_names + ([mask_name] if mask_name else [])
    slice_types = [(_onnx_type(x), x.shape[1:]) for x in st.node_inputs.values()]
    slice_types += [(TensorProto.FLOAT, (K,))] if mask_name else []
    row_types = [(TensorProto.FLOAT, (int(r.shape[0]),)) for r in leaf_rows]

    def slices(v):  # body inputs are X[v] (a scalar for an [N] input), then the mask slice
        return [torch.from_numpy(np.array(x[v])) for x in st.node_inputs.values()] + ([st.mask(v)] if mask_name
                                                                                       else [])

    def body(module, args, names, role, input_types):
        model, asm.exporters[role] = export_module(module, args, names, state_names, exporter=exporter,
                                                   opset=opset, role=role, verbose=verbose)
        graph = asm.take(model, module, role)
        _with_inputs(graph, names, role)
        _typed(graph.input, input_types)
        _typed(graph.output, row_types)
        return graph

    leaf_body = body(LeafBody(leaf, len(input_names)), slices(_example_node(st, False)), body_inputs, "leaf",
                     slice_types)
    rows = [r.clone() for _ in range(K) for r in leaf_rows]
    internal_body = body(InternalBody(internal, conv, K, S, len(input_names)), rows + slices(_example_node(st, True)),
                         [f"{s}_{k}" for k in range(K) for s in state_names] + body_inputs, "internal",
                         row_types * K + slice_types)
    return leaf_body, internal_body


def _head(asm: _Assembly, head, widths, state_names, output_names, exporter: str, opset: int,
          verbose: bool) -> onnx.GraphProto:
    """The head's graph: inputs the state tables (by name), outputs ``output_names``, other names ``head/``."""
    module = _Head(head)
    gen = torch.Generator().manual_seed(0)
    tables = [torch.rand(3, w, generator=gen) for w in widths]  # 3 rows: N stays dynamic
    with torch.no_grad():
        n_out = len(module(*tables))
    output_names = list(output_names) if output_names is not None else (
        ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)])
    if len(output_names) != n_out:
        raise ValueError(f"{len(output_names)} output names for the head's {n_out} outputs")
    for n in output_names:
        if n in asm.taken:
            raise ValueError(f"output name {n!r} is already a name of the model")
        asm.taken.add(n)
    model, asm.exporters["head"] = export_module(module, tables, state_names, output_names, exporter=exporter,
                                                 opset=opset, dynamic=True, role="head", verbose=verbose)
    return asm.take(model, module, "head", keep=list(state_names) + output_names)


def export(leaf, internal, example: Mapping, path=None, *, head=None, children: str | None = None,
           mask: bool | None = None, internal_inputs: bool | None = None, state_names: Sequence[str] | None = None,
           output_names: Sequence[str] | None = None, keep_states: bool = False, exporter: str = "auto",
           opset: int = OPSET, name: str = "treerec", check: bool = True, portable: bool = True,
           verbose: bool = False) -> onnx.ModelProto:
    """Export a recursive model given by its cells as one ``cortex.TreeRec`` model (saved at ``path`` if given).

    ``leaf``, ``internal`` (and ``head``): ``nn.Module``; how they are called: :mod:`cortex.torch._cells`
    (``children``, ``mask``, ``internal_inputs``). ``example``: ``{"children": int64 [N, K], <node input>: [N, ...],
    ...}`` (numpy or torch), the model's inputs in that order; it fixes K and the node inputs' types and inner
    shapes (N stays dynamic). Outputs: the state tables ``state_names`` (default ``state0``, ...) float32 [N, D_s];
    with a ``head`` (called on the tables, dimension 0 dynamic), its outputs ``output_names`` instead (then the
    tables too with ``keep_states``). ``exporter``: ``"auto"`` (dynamo, TorchScript trace as the fallback),
    ``"dynamo"`` or ``"torchscript"``. ``check``: run the model in ONNX Runtime on the example and compare with
    :func:`run_reference` (ValueError above 1e-4, relative to the outputs' magnitude). ``portable`` (default): the
    model written is standard ONNX that any ONNX Runtime runs (the TreeRec node lowered, and recorded so that
    cortex-convert still converts the recursion, cortex.treerec.portable); ``portable=False`` keeps the
    ``cortex.TreeRec`` node (which only Cortex runs)."""
    cells = {"leaf": leaf, "internal": internal, "head": head}
    for role, cell in cells.items():
        if cell is not None and not isinstance(cell, torch.nn.Module):
            raise TypeError(f"the {role} cell must be a torch.nn.Module, not {type(cell).__name__}")
    _refuse_training_mode(cells)
    with _kept_as_they_were(leaf, internal, head):
        model = _export(leaf, internal, example, head, dict(children=children, mask=mask,
                                                             internal_inputs=internal_inputs),
                        state_names, output_names, keep_states, exporter, opset, name, check, portable, verbose)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(path))
    return model


def _export(leaf, internal, example, head, options, state_names, output_names, keep_states, exporter, opset, name,
            check, portable, verbose) -> onnx.ModelProto:
    if head is None and output_names is not None:
        raise ValueError("output_names names a head's outputs; without a head the outputs are the state_names")
    st = Structure.of(example)
    if st.num_nodes == 0:
        raise ValueError("the example needs at least one node")
    leaf_rows, conv = _state_rows(leaf, internal, options, st)
    widths = [int(r.shape[0]) for r in leaf_rows]
    state_names = list(state_names) if state_names is not None else [f"state{s}" for s in range(len(widths))]
    if len(state_names) != len(widths):
        raise ValueError(f"{len(state_names)} state names for {len(widths)} states")
    asm = _Assembly([CHILDREN, *st.node_inputs, *state_names])
    mask_name = asm.fresh(f"{CHILDREN}_mask") if conv.mask else None
    leaf_body, internal_body = _bodies(asm, leaf, internal, conv, st, leaf_rows, state_names, mask_name, exporter,
                                       opset, verbose)

    # the main graph: children and node inputs -> (mask) -> TreeRec -> tables (-> head)
    K = st.num_children
    inputs = [helper.make_tensor_value_info(CHILDREN, TensorProto.INT64, ["N", K])]
    inputs += [helper.make_tensor_value_info(n, _onnx_type(x), ["N", *x.shape[1:]]) for n, x in st.node_inputs.items()]
    nodes, node_inputs = [], list(st.node_inputs)
    if mask_name:
        zero, present = asm.fresh(f"{CHILDREN}_zero"), asm.fresh(f"{CHILDREN}_present")
        asm.initializers.append(onnx.numpy_helper.from_array(np.array(0, np.int64), zero))
        nodes += [helper.make_node("GreaterOrEqual", [CHILDREN, zero], [present], name=present),
                  helper.make_node("Cast", [present], [mask_name], name=mask_name, to=TensorProto.FLOAT)]
        node_inputs.append(mask_name)
    nodes.append(make_treerec_node(CHILDREN, node_inputs, state_names, leaf_body, internal_body, name=name))
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", w]) for n, w in zip(state_names, widths)]
    value_info = []
    if head is not None:
        head_graph = _head(asm, head, widths, state_names, output_names, exporter, opset, verbose)
        nodes += list(head_graph.node)
        asm.initializers += list(head_graph.initializer)
        value_info = list(head_graph.value_info)
        outputs = list(head_graph.output) + (outputs if keep_states else [])

    register_schema()
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=asm.initializers, value_info=value_info)
    opsets = [helper.make_opsetid(d, v) for d, v in sorted(asm.opsets.items())] + [helper.make_opsetid(DOMAIN, VERSION)]
    model = helper.make_model(graph, ir_version=IR_VERSION, opset_imports=opsets, producer_name="cortex.torch")
    helper.set_model_props(model, {f"cortex.torch.{role}_exporter": used for role, used in asm.exporters.items()})
    onnx.checker.check_model(model)
    if portable:  # standard ONNX that any ONNX Runtime runs, the TreeRec recorded for cortex-convert
        model = to_portable(model)
        onnx.checker.check_model(model)
    if check:
        _check(model, leaf, internal, head, example, conv, keep_states)
    return model


def _check(model, leaf, internal, head, example, conv: Convention, keep_states: bool) -> None:
    """The exported model (in ONNX Runtime: its portable form) against the eager cells on the example."""
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is the `cpu` extra
        return

    want = run_reference(leaf, internal, example, head=head, children=conv.children, mask=conv.mask,
                         internal_inputs=conv.internal_inputs, keep_states=keep_states)
    st = Structure.of(example)
    feeds = {CHILDREN: st.children, **st.node_inputs}
    session = ort.InferenceSession(to_portable(model).SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)
    for out, g, w in zip(session.get_outputs(), got, want, strict=True):
        err = float(np.max(np.abs(g - w))) if g.size else 0.0
        scale = max(1.0, float(np.max(np.abs(w))) if w.size else 0.0)
        if g.shape != w.shape or not err <= CHECK_TOL * scale:
            training = [role for role, cell in (("leaf", leaf), ("internal", internal), ("head", head))
                        if cell is not None and any(m.training for m in cell.modules())]
            hint = (f"; the {' and '.join(training)} cell{'s are' if len(training) > 1 else ' is'} in training mode: "
                    "if a cell computes differently in training (dropout, batch statistics), call .eval() on it"
                    if training else "")
            raise ValueError(f"the exported model disagrees with the eager cells on the example: output "
                             f"{out.name!r} shape {g.shape} vs {w.shape}, max abs error {err:.3g}{hint}")


def convert(leaf, internal, example: Mapping, path, *, strict: bool = True, target: str = "cpu", source=None,
            **export_options):
    """:func:`export` the cells, then ``cortex.convert`` the result: the converted model at ``path``
    (``model.cortex.onnx``), its kernels beside it, the exported standard model at ``source`` (default: beside it,
    ``model.onnx``). Returns the conversion report; with ``strict``, ConvertError when a region is left to ONNX
    Runtime (the report's reason names the construct)."""
    from .. import convert as cortex_convert

    path = Path(path)
    if source is None:
        stem = path.name.split(".")[0]
        source = path.parent / (f"{stem}.onnx" if path.name != f"{stem}.onnx" else f"{stem}.treerec.onnx")
    export(leaf, internal, example, source, **export_options)
    return cortex_convert(source, path, target=target, strict=strict)


__all__ = ["export", "convert", "export_module", "OPSET"]

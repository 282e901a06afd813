"""Cortex IR <-> JSON: the optimized IR a converted model carries, so any machine can rebuild its kernels from data.

Generic over the frozen dataclasses of `cortex/ir/nodes.py`: an IR value is encoded by walking
`dataclasses.fields`, so a node kind added there is covered with no edit here. Loading is data-only and strict:

- only dataclasses defined in `cortex.ir.nodes` are built (a whitelist by class name), through their constructors,
  with every field checked against its annotation (int, float, str, bool, Optional[...], tuple, a node class);
- nodes form a table in which a node refers only to nodes before it, so the document cannot be cyclic and shared
  subtrees stay shared;
- no pickle, no eval of anything from the document, no attribute or module lookup by a name from it (field types
  come from the annotations of nodes.py, resolved by `typing.get_type_hints` over that module: our source);
- constants (float arrays) are not embedded: the document records each one's name, shape and dtype, and the caller
  supplies the arrays (a converted model stores them as initializers);
- the result must pass `validate_program`: identifiers the code generator writes into C++ match
  `[A-Za-z_][A-Za-z0-9_]*`, every string is `safe_text` (nothing that can break out of a C++ comment or string
  literal), integers are in range, and the IR verifier accepts the program.

Format: {"format": "cortex-ir-1", "nodes": [{"kind": <class name>, "fields": {...}}, ...], "root": <index>}; a field
value is null, a bool, an int, a string, a list (a tuple), {"$float": <float.hex()>}, {"$node": <index>}, or, for the
program's constants, {"$arrays": {name: {"shape": [...], "dtype": "float32"}}} (the program's element type:
"float64" in a float64 program, whose root also records `"element": "float64"`; a float32 program omits it).
"""
from __future__ import annotations

import dataclasses
import typing

import numpy as np

from . import nodes as ir
from .limits import MAX_DEPTH, MAX_IR_NODES, check_limits
from .schema import (IDENTIFIER, MAX_TEXT, IRFormatError, check_program, check_scalar, ir_classes, is_leaf_type,
                     optional_of, safe_text)
from .verify import verify

__all__ = ["FORMAT", "IRFormatError", "to_json", "from_json", "constant_specs", "validate_program", "safe_text",
           "IDENTIFIER", "MAX_TEXT"]

FORMAT = "cortex-ir-1"


def node_classes() -> dict:
    """The whitelist: class name -> dataclass, for every dataclass defined in cortex.ir.nodes."""
    return ir_classes()


# ---- encode ------------------------------------------------------------------------------------------------------


def to_json(program: ir.Program) -> dict:
    """The JSON-able document for `program` (constants by name, shape and dtype only)."""
    classes = node_classes()
    entries, ids = [], {}

    def encode(value, where):
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)):
            return {"$float": float(value).hex()}
        if isinstance(value, (tuple, list)):
            return [encode(v, where) for v in value]
        if isinstance(value, dict):
            if not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in value.items()):
                raise IRFormatError(f"{where}: only a dict of named arrays (constants) can be serialized")
            return {"$arrays": {k: {"shape": [int(d) for d in v.shape], "dtype": str(v.dtype)}
                                for k, v in value.items()}}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            if classes.get(type(value).__name__) is not type(value):
                raise IRFormatError(f"{where}: {type(value).__name__} is not an IR class of cortex.ir.nodes")
            return {"$node": node_id(value)}
        raise IRFormatError(f"{where}: cannot serialize a {type(value).__name__}")

    def node_id(node):
        # Identity, not equality: equal nodes may still differ (0.0 and -0.0), and shared subtrees stay shared.
        known = ids.get(id(node))
        if known is not None:
            return known
        name = type(node).__name__
        fields = {f.name: encode(getattr(node, f.name), f"{name}.{f.name}")
                  for f in dataclasses.fields(node) if f.init and not _omitted(f, getattr(node, f.name))}
        entries.append({"kind": name, "fields": fields})
        ids[id(node)] = len(entries) - 1
        return ids[id(node)]

    root = node_id(program)
    return {"format": FORMAT, "nodes": entries, "root": root}


def _omitted(f, value) -> bool:
    """A field written only when it differs from its default (`Program.element`: a float32 program's document is
    the one it was before float64 programs existed; the loader fills the default back in)."""
    return f.metadata.get("omit_default", False) and value == f.default


def constant_specs(document) -> dict:
    """name -> (shape tuple, dtype) of the program's constants, read from a document without building it."""
    _check_document(document)
    fields = document["nodes"][document["root"]].get("fields")
    if not isinstance(fields, dict):
        raise IRFormatError("the root entry has no fields")
    specs = {}
    for value in fields.values():
        if isinstance(value, dict) and set(value) == {"$arrays"}:
            specs.update(_array_specs(value["$arrays"], "Program.constants"))
    return specs


# ---- decode ------------------------------------------------------------------------------------------------------


def _check_document(document):
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise IRFormatError(f"not a Cortex IR document (format {FORMAT} expected)")
    nodes, root = document.get("nodes"), document.get("root")
    if not isinstance(nodes, list) or not 0 < len(nodes) <= MAX_IR_NODES:
        raise IRFormatError(f"'nodes' must be a list of 1 to {MAX_IR_NODES} entries")
    if type(root) is not int or not 0 <= root < len(nodes):
        raise IRFormatError("'root' must index 'nodes'")
    if not isinstance(nodes[root], dict):
        raise IRFormatError("the root entry is not an object")


def _array_specs(value, where) -> dict:
    if not isinstance(value, dict):
        raise IRFormatError(f"{where}: $arrays must map names to specs")
    specs = {}
    for name, spec in value.items():
        check_scalar(name, ir.Ident, f"{where} name")
        if not isinstance(spec, dict) or set(spec) != {"shape", "dtype"}:
            raise IRFormatError(f"{where}: constant {name!r} needs exactly shape and dtype")
        shape, dtype = spec["shape"], spec["dtype"]
        if not isinstance(shape, list) or len(shape) > 4:
            raise IRFormatError(f"{where}: constant {name!r} has a bad shape")
        for d in shape:
            check_scalar(d, ir.Dim, f"{where}: constant {name!r} dimension")
        if dtype not in ir.FLOAT_DTYPES:
            raise IRFormatError(f"{where}: constant {name!r} has dtype {str(dtype)[:20]!r}; constants are float32 or "
                                "float64 (the program's element type)")
        specs[name] = (tuple(shape), dtype)
    return specs


class _Decoder:
    """Builds the nodes of a document in order, each field decoded by its declared type (schema.py): a JSON value
    becomes the Python value of that type or the document is refused."""

    def __init__(self, document, constants):
        self.document = document
        self.constants = constants
        self.classes = ir_classes()
        self.built = []
        self.depth = []  # of each built node: refused past the limit before anything recursive touches it
        self.refs = []  # the nodes the entry being built refers to

    def node_ref(self, value, where):
        if not (isinstance(value, dict) and set(value) == {"$node"}):
            raise IRFormatError(f"{where}: expected a node reference")
        k = value["$node"]
        if type(k) is not int or not 0 <= k < len(self.built):
            raise IRFormatError(f"{where}: node reference {str(k)[:40]!r} does not name an earlier node")
        self.refs.append(k)
        return self.built[k]

    def floating(self, value, where):
        if type(value) is int:
            return float(value)
        if not (isinstance(value, dict) and set(value) == {"$float"} and isinstance(value["$float"], str)
                and len(value["$float"]) < 64):
            raise IRFormatError(f"{where}: expected a float")
        try:
            return float.fromhex(value["$float"])
        except (ValueError, OverflowError):
            raise IRFormatError(f"{where}: bad float {value['$float']!r}") from None

    def typed(self, value, annotation, where):
        inner = optional_of(annotation)
        if inner is not None:
            return None if value is None else self.typed(value, inner, where)
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is tuple:
            if not isinstance(value, list):
                raise IRFormatError(f"{where}: expected a list")
            items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
            if len(items) != len(value):
                raise IRFormatError(f"{where}: expected {len(items)} elements")
            return tuple(self.typed(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, items)))
        if origin is typing.Annotated and args[1] == "constants":
            if not (isinstance(value, dict) and set(value) == {"$arrays"}):
                raise IRFormatError(f"{where}: expected $arrays")
            return self.arrays(_array_specs(value["$arrays"], where), where)
        if is_leaf_type(annotation):
            base = args[0] if origin is typing.Annotated else annotation
            return check_scalar(self.floating(value, where) if base is float else value, annotation, where)
        if isinstance(annotation, type):
            node = self.node_ref(value, where)
            if not isinstance(node, annotation):
                raise IRFormatError(f"{where}: a {type(node).__name__} is not a {annotation.__name__}")
            return node
        raise IRFormatError(f"{where}: field type {annotation!r} is not supported by the IR loader")

    def arrays(self, specs, where):
        given = self.constants or {}
        if set(given) != set(specs):
            missing, extra = sorted(set(specs) - set(given)), sorted(set(given) - set(specs))
            raise IRFormatError(f"{where}: constants do not match the IR (missing {missing[:5]}, unexpected "
                                f"{extra[:5]})")
        out = {}
        for name, (shape, dtype) in specs.items():
            array = np.asarray(given[name])
            if array.shape != shape or array.dtype != np.dtype(dtype):
                raise IRFormatError(f"{where}: constant {name!r} is {array.dtype}{list(array.shape)}, the IR says "
                                    f"{dtype}{list(shape)}")
            out[name] = np.ascontiguousarray(array)
        return out

    def build(self):
        from .schema import field_types
        _check_document(self.document)
        for i, entry in enumerate(self.document["nodes"]):
            where = f"nodes[{i}]"
            if not isinstance(entry, dict) or set(entry) != {"kind", "fields"}:
                raise IRFormatError(f"{where}: expected {{kind, fields}}")
            kind, fields = entry["kind"], entry["fields"]
            cls = self.classes.get(kind) if isinstance(kind, str) else None
            if cls is None:
                raise IRFormatError(f"{where}: {str(kind)[:60]!r} is not an IR class of cortex.ir.nodes")
            if not isinstance(fields, dict):
                raise IRFormatError(f"{where}: fields must be an object")
            declared = dict(field_types(cls))
            unknown = set(fields) - set(declared)
            if unknown:
                raise IRFormatError(f"{where}: {kind} has no field {str(sorted(unknown)[0])[:60]!r}")
            defaults = {f.name: f for f in dataclasses.fields(cls) if f.init}
            kwargs, self.refs = {}, []
            for name, annotation in declared.items():
                if name not in fields:
                    f = defaults[name]
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                        raise IRFormatError(f"{where}: {kind} lacks field {name!r}")
                    continue
                kwargs[name] = self.typed(fields[name], annotation, f"{where}: {kind}.{name}")
            depth = 1 + max((self.depth[k] for k in self.refs), default=0)
            if depth > MAX_DEPTH + 4:  # a program holds its cases, which hold their expressions
                raise IRFormatError(f"{where}: the IR nests more than {MAX_DEPTH} deep")
            self.depth.append(depth)
            try:
                self.built.append(cls(**kwargs))
            except Exception as e:  # a node's own checks
                raise IRFormatError(f"{where}: {kind}: {str(e)[:200]}") from None
        root = self.built[self.document["root"]]
        if not isinstance(root, ir.Program):
            raise IRFormatError("the root is not a Program")
        return root


def from_json(document, constants: dict) -> ir.Program:
    """Builds and validates the Program of `document`; `constants` maps each constant's name to its array."""
    program = _Decoder(document, constants).build()
    validate_program(program)
    return program


def validate_program(program: ir.Program) -> ir.Program:
    """Raises IRFormatError unless `program` is safe to hand to the code generator: every field of its declared type
    (schema.py), within the limits on work (limits.py), and accepted by the IR verifier."""
    check_program(program)
    check_limits(program)
    try:
        verify(program)
    except Exception as e:  # IRError, KeyError of an unknown name, ...
        raise IRFormatError(f"the IR does not verify: {type(e).__name__}: {str(e)[:200]}") from None
    return program

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
program's constants, {"$arrays": {name: {"shape": [...], "dtype": "float32"}}}.
"""
from __future__ import annotations

import dataclasses
import re
import typing
import unicodedata

import numpy as np

from . import nodes as ir
from .verify import verify

FORMAT = "cortex-ir-1"
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
MAX_NODES = 1 << 20
MAX_TEXT = 1024
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# Fields that size arrays or loops in generated code: non-negative and below 2**31.
SIZE_FIELDS = frozenset({"width", "rows", "cols", "start", "column", "rank", "inner", "group", "indices"})
SIZE_LIMIT = 1 << 31


class IRFormatError(ValueError):
    """The document is not a valid Cortex IR; the message says where."""


def node_classes() -> dict:
    """The whitelist: class name -> dataclass, for every dataclass defined in cortex.ir.nodes."""
    return {name: cls for name, cls in vars(ir).items()
            if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == ir.__name__}


# ---- safe text ---------------------------------------------------------------------------------------------------

_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def safe_text(text: str) -> bool:
    """True when `text` can sit in a generated C++ `//` comment or string literal without ending or altering it: no
    control or format characters (newlines, bidirectional overrides), no line separators, no backslash (a line
    continuation), no `*/`, at most MAX_TEXT characters."""
    if len(text) > MAX_TEXT or "\\" in text or "*/" in text:
        return False
    return all(unicodedata.category(ch) not in _UNSAFE_CATEGORIES for ch in text)


def unsafe_strings(value) -> list:
    """Every string reachable from an IR value (dataclass fields, tuples, dict keys) that is not safe_text."""
    found, seen, stack = [], set(), [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not safe_text(item):
                found.append(item)
        elif isinstance(item, (tuple, list)):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            if id(item) in seen:
                continue
            seen.add(id(item))
            stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
    return found


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
                  for f in dataclasses.fields(node) if f.init}
        entries.append({"kind": name, "fields": fields})
        ids[id(node)] = len(entries) - 1
        return ids[id(node)]

    root = node_id(program)
    return {"format": FORMAT, "nodes": entries, "root": root}


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
    if not isinstance(nodes, list) or not 0 < len(nodes) <= MAX_NODES:
        raise IRFormatError("'nodes' must be a non-empty list")
    if type(root) is not int or not 0 <= root < len(nodes):
        raise IRFormatError("'root' must index 'nodes'")
    if not isinstance(nodes[root], dict):
        raise IRFormatError("the root entry is not an object")


def _array_specs(value, where) -> dict:
    if not isinstance(value, dict):
        raise IRFormatError(f"{where}: $arrays must map names to specs")
    specs = {}
    for name, spec in value.items():
        if not isinstance(spec, dict) or set(spec) != {"shape", "dtype"}:
            raise IRFormatError(f"{where}: constant {name!r} needs exactly shape and dtype")
        shape, dtype = spec["shape"], spec["dtype"]
        if (not isinstance(shape, list) or len(shape) > 4
                or not all(type(d) is int and 0 <= d < SIZE_LIMIT for d in shape)):
            raise IRFormatError(f"{where}: constant {name!r} has a bad shape")
        if dtype != "float32":
            raise IRFormatError(f"{where}: constant {name!r} has dtype {dtype!r}; constants are float32")
        specs[name] = (tuple(shape), dtype)
    return specs


class _Decoder:
    def __init__(self, document, constants):
        self.document = document
        self.constants = constants
        self.classes = node_classes()
        self.built = []
        self.hints = {}

    def hints_of(self, cls):
        if cls not in self.hints:
            self.hints[cls] = typing.get_type_hints(cls, vars(ir))
        return self.hints[cls]

    def node_ref(self, value, where):
        if not (isinstance(value, dict) and set(value) == {"$node"}):
            raise IRFormatError(f"{where}: expected a node reference")
        k = value["$node"]
        if type(k) is not int or not 0 <= k < len(self.built):
            raise IRFormatError(f"{where}: node reference {k!r} does not name an earlier node")
        return self.built[k]

    def any_value(self, value, where):
        """A value of an unconstrained field (`object`, elements of a bare `tuple`)."""
        if value is None or isinstance(value, (bool, str)):
            return value
        if type(value) is int:
            return self.integer(value, where)
        if isinstance(value, list):
            return tuple(self.any_value(v, f"{where}[{i}]") for i, v in enumerate(value))
        if isinstance(value, dict) and set(value) == {"$float"}:
            return self.floating(value, where)
        if isinstance(value, dict) and set(value) == {"$node"}:
            return self.node_ref(value, where)
        raise IRFormatError(f"{where}: unexpected value {str(value)[:80]!r}")

    def integer(self, value, where):
        if type(value) is not int or not INT64_MIN <= value <= INT64_MAX:
            raise IRFormatError(f"{where}: expected an int64")
        if where.rsplit(".", 1)[-1].split("[")[0] in SIZE_FIELDS and not 0 <= value < SIZE_LIMIT:
            raise IRFormatError(f"{where}: size {value} out of range")
        return value

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
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if annotation is typing.Any or annotation is object:
            return self.any_value(value, where)
        if origin is typing.Union:
            if value is None:
                if type(None) in args:
                    return None
                raise IRFormatError(f"{where}: may not be null")
            options = [a for a in args if a is not type(None)]
            if len(options) == 1:
                return self.typed(value, options[0], where)
            return self.any_value(value, where)
        if annotation is bool:
            if not isinstance(value, bool):
                raise IRFormatError(f"{where}: expected a bool")
            return value
        if annotation is int:
            return self.integer(value, where)
        if annotation is float:
            return self.floating(value, where)
        if annotation is str:
            if not isinstance(value, str):
                raise IRFormatError(f"{where}: expected a string")
            return value
        if annotation is tuple or origin is tuple:
            if not isinstance(value, list):
                raise IRFormatError(f"{where}: expected a list")
            if args and (len(args) == 2 and args[1] is Ellipsis):
                return tuple(self.typed(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
            if args:
                if len(args) != len(value):
                    raise IRFormatError(f"{where}: expected {len(args)} elements")
                return tuple(self.typed(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
            return tuple(self.any_value(v, f"{where}[{i}]") for i, v in enumerate(value))
        if annotation is dict:
            if not (isinstance(value, dict) and set(value) == {"$arrays"}):
                raise IRFormatError(f"{where}: expected $arrays")
            return self.arrays(_array_specs(value["$arrays"], where), where)
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
            declared = {f.name: f for f in dataclasses.fields(cls) if f.init}
            unknown = set(fields) - set(declared)
            if unknown:
                raise IRFormatError(f"{where}: {kind} has no field {sorted(unknown)[0][:60]!r}")
            hints = self.hints_of(cls)
            kwargs = {}
            for name, f in declared.items():
                if name not in fields:
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                        raise IRFormatError(f"{where}: {kind} lacks field {name!r}")
                    continue
                kwargs[name] = self.typed(fields[name], hints[name], f"{kind}.{name}")
            try:
                self.built.append(cls(**kwargs))
            except Exception as e:  # a node's own checks (__post_init__)
                raise IRFormatError(f"{where}: {kind}: {e}") from None
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
    """Raises IRFormatError unless `program` is safe to hand to the code generator (see the module doc)."""
    identifiers = [("program name", program.name)]
    identifiers += [("state table", t.name) for t in program.tables]
    identifiers += [("constant", name) for name in program.constants]
    for what, name in identifiers:
        if not isinstance(name, str) or not IDENTIFIER.match(name):
            raise IRFormatError(f"{what} name {str(name)[:60]!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)")
    bad = unsafe_strings(program)
    if bad:
        raise IRFormatError(f"the IR holds a name that cannot be written safely into generated code: {bad[0][:60]!r}")
    try:
        verify(program)
    except Exception as e:  # IRError, KeyError of an unknown name, ...
        raise IRFormatError(f"the IR does not verify: {type(e).__name__}: {str(e)[:200]}") from None
    return program

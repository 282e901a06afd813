"""The IR's field types, enforced: the one place that says which values an IR may hold.

Every field of every IR class in `nodes.py` declares a type: a node class, `bool`, `float`, `Int64`, `Dim` (a size or
offset, 0 <= d < 2**31), `Ident` (a C++ identifier part), `Name` (an ONNX value name) or `Text` (a label), an enum
(`Literal[...]`), `Optional[...]`, a tuple of one of these, or `Constants`. `check_program` checks every field of every
node of a program against its declaration; the IR loader (`serialize.from_json`) decodes through the same rules; the
code generator refuses a program that fails them. So the emitters write only values of a checked type: an integer is
an integer, an identifier matches one grammar, a label cannot end the comment or string literal it is written into.
"""
from __future__ import annotations

import dataclasses
import re
import typing
import unicodedata
from functools import lru_cache

import numpy as np

from . import nodes as ir

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
MAX_TEXT = 1024
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
DIM_LIMIT = 1 << 31
MAX_CONSTANT_RANK = 4


class IRFormatError(ValueError):
    """An IR value is not of its declared type (or a document is not a valid Cortex IR); the message says where."""


# ---- safe text ---------------------------------------------------------------------------------------------------

_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def safe_text(text: str) -> bool:
    """True when `text` can sit in a generated C++ `//` comment or string literal without ending or altering it: no
    control or format characters (newlines, bidirectional overrides), no line separators, no backslash (a line
    continuation), no `*/`, at most MAX_TEXT characters."""
    if len(text) > MAX_TEXT or "\\" in text or "*/" in text:
        return False
    return all(unicodedata.category(ch) not in _UNSAFE_CATEGORIES for ch in text)


# ---- declared types ----------------------------------------------------------------------------------------------


def ir_classes() -> dict:
    """Class name -> class, for every dataclass defined in cortex.ir.nodes (the loader's whitelist)."""
    return {name: cls for name, cls in vars(ir).items()
            if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__module__ == ir.__name__}


@lru_cache(maxsize=None)
def field_types(cls) -> tuple:
    """((field name, declared type), ...) of an IR class's constructor fields."""
    hints = typing.get_type_hints(cls, vars(ir), include_extras=True)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls) if f.init)


def field_type(cls, name: str):
    """The declared type of one field of an IR class."""
    return dict(field_types(cls))[name]


def describe(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return args[1]
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args[:12])) + (", ..." if len(args) > 12 else "")
    if origin is typing.Union:
        return " or ".join(describe(a) for a in args)
    if origin is tuple:
        return f"a tuple of {describe(args[0])}" if len(args) == 2 and args[1] is Ellipsis else "a tuple"
    return getattr(annotation, "__name__", str(annotation))


def check_scalar(value, annotation, where: str):
    """Checks a value of a leaf type (bool, float, Int64, Dim, Ident, Name, Text, an enum); returns it."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        if not any(type(value) is type(choice) and value == choice for choice in args):
            raise IRFormatError(f"{where}: {_show(value)} is not {describe(annotation)}")
        return value
    base, marker = (args[0], args[1]) if origin is typing.Annotated else (annotation, None)
    if base is bool:
        ok = isinstance(value, (bool, np.bool_))
    elif base is float:
        ok = isinstance(value, (float, np.floating))  # finite, nan and inf alike: each has a C++ literal
    elif base is int:
        ok = type(value) is int or isinstance(value, np.integer)  # not a bool, not an int subclass
        if ok:
            low, high = (0, DIM_LIMIT - 1) if marker == ir.DIM else (INT64_MIN, INT64_MAX)
            ok = low <= int(value) <= high
    elif base is str:
        ok = isinstance(value, str) and (IDENTIFIER.match(value) if marker == ir.IDENT else safe_text(value))
    else:
        raise IRFormatError(f"{where}: the field type {annotation!r} is not an IR type")
    if ok:
        return value
    if base is str and isinstance(value, str):
        if marker == ir.IDENT:
            raise IRFormatError(f"{where}: {_show(value)} is not an identifier ([A-Za-z_][A-Za-z0-9_]*, at most 128 "
                                "characters)")
        raise IRFormatError(f"{where}: {_show(value)} cannot be written safely into generated code (a {marker} has no "
                            f"control or format characters, no backslash, no '*/' and at most {MAX_TEXT} characters)")
    raise IRFormatError(f"{where}: {_show(value)} is not a valid {marker or describe(base)}")


def _show(value) -> str:
    return repr(value)[:60]


def is_leaf_type(annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return True
    base = typing.get_args(annotation)[0] if origin is typing.Annotated else annotation
    return base in (bool, float, int, str)


def optional_of(annotation):
    """X for Optional[X], else None."""
    if typing.get_origin(annotation) is typing.Union:
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) == 1 and len(typing.get_args(annotation)) == 2:
            return options[0]
    return None


def check_constants(value, where: str, element: str = "float32") -> dict:
    """The program's constants: identifiers to arrays of the program's element type (float32 or float64), of rank
    <= 4 and bounded dimensions."""
    if not isinstance(value, dict):
        raise IRFormatError(f"{where}: constants must be a dict of named arrays")
    for name, array in value.items():
        check_scalar(name, ir.Ident, f"{where} name")
        if not isinstance(array, np.ndarray) or array.dtype != np.dtype(element):
            raise IRFormatError(f"{where} {name}: a constant must be a {element} array (the program's element type)")
        if array.ndim > MAX_CONSTANT_RANK or any(d >= DIM_LIMIT for d in array.shape):
            raise IRFormatError(f"{where} {name}: shape {list(array.shape)[:8]} out of range")
    return value


def check_value(value, annotation, where: str, visit, element: str = "float32"):
    """Checks `value` against `annotation`; `visit(node)` is called for each IR node it holds; `element`: the
    program's element type (what its constants hold)."""
    inner = optional_of(annotation)
    if inner is not None:
        if value is not None:
            check_value(value, inner, where, visit, element)
        return
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:
        if not isinstance(value, tuple):
            raise IRFormatError(f"{where}: expected {describe(annotation)}, got {type(value).__name__}")
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(value):
            raise IRFormatError(f"{where}: expected {len(items)} elements, got {len(value)}")
        for i, (item, item_type) in enumerate(zip(value, items)):
            check_value(item, item_type, f"{where}[{i}]", visit, element)
        return
    if origin is typing.Annotated and args[1] == "constants":
        check_constants(value, where, element)
        return
    if is_leaf_type(annotation):
        check_scalar(value, annotation, where)
        return
    if isinstance(annotation, type):
        if not isinstance(value, annotation) or ir_classes().get(type(value).__name__) is not type(value):
            raise IRFormatError(f"{where}: a {type(value).__name__} is not a {annotation.__name__}")
        visit(value)
        return
    raise IRFormatError(f"{where}: the field type {annotation!r} is not an IR type")


def check_program(program) -> None:
    """Raises IRFormatError unless every field of every node reachable from `program` has its declared type."""
    if not isinstance(program, ir.Program):
        raise IRFormatError("not a Program")
    seen, stack = set(), [program]

    def visit(node):
        if id(node) not in seen:
            seen.add(id(node))
            stack.append(node)

    seen.add(id(program))
    check_scalar(program.element, field_type(ir.Program, "element"), "Program.element")
    while stack:
        node = stack.pop()
        kind = type(node).__name__
        for name, annotation in field_types(type(node)):
            check_value(getattr(node, name), annotation, f"{kind}.{name}", visit, program.element)
    floats = [d.name for d in program.inputs if d.dtype in ir.FLOAT_DTYPES and d.dtype != program.element]
    if floats:
        raise IRFormatError(f"Program.inputs: {floats[0]!r} is not {program.element}, the program's element type (one "
                            "program computes in one float type)")

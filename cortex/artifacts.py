"""The Cortex nodes of a converted model and the kernel files they name, read the way the EP reads them.

The EP (csrc/ep) is the authority at load time; this module gives the Python tools (`cortex trust`, `cortex rebuild`,
`cortex.InferenceSession(rebuild=True)`) the same view: the node's attributes, its notes, and its kernel path under
the same path policy (relative, no '..', inside the model's folder after resolving symlinks).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import onnx

EP_NAME = "CortexExecutionProvider"


class ArtifactError(ValueError):
    """A Cortex node or its kernel path breaks the contract (docs/contracts.md); the message is one clear line."""


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def artifacts_dir(model_path) -> Path:
    """Where a converted model's kernels go: `<model stem>.cortex/` beside it."""
    model_path = Path(model_path)
    return model_path.parent / (model_path.name.split(".")[0] + ".cortex")


def _no_duplicates(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise ArtifactError(f"notes: member {key!r} appears twice")
        result[key] = value
    return result


def parse_notes(text) -> dict:
    """The node's notes JSON: one object, no member twice (the EP refuses duplicates too)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="strict")
    try:
        notes = json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as e:
        raise ArtifactError(f"notes are not JSON ({e})") from None
    if not isinstance(notes, dict):
        raise ArtifactError("notes are not a JSON object")
    return notes


@dataclass
class CortexNode:
    index: int  # position in graph.node
    node: onnx.NodeProto
    cache_context: str  # ep_cache_context: the kernel path relative to the model's folder
    notes: dict

    @property
    def sha256(self) -> str:
        value = self.notes.get("kernel_sha256")
        if not isinstance(value, str):
            raise ArtifactError(f"node '{self.node.name}': notes have no kernel_sha256")
        return value.lower()


def _attribute(node: onnx.NodeProto, name: str):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return None


def cortex_nodes(model: onnx.ModelProto) -> list:
    """Every EPContext node of the main graph whose source is the Cortex EP, with its parsed notes."""
    found = []
    for index, node in enumerate(model.graph.node):
        if node.op_type != "EPContext" or node.domain != "com.microsoft":
            continue
        source = _attribute(node, "source")
        if source not in (EP_NAME, EP_NAME.encode()):
            continue
        context, notes = _attribute(node, "ep_cache_context"), _attribute(node, "notes")
        if not isinstance(context, bytes) or not isinstance(notes, bytes):
            raise ArtifactError(f"node '{node.name}': ep_cache_context and notes must be string attributes")
        found.append(CortexNode(index, node, context.decode("utf-8", errors="replace"), parse_notes(notes)))
    return found


def model_folder(model_path) -> Path:
    """The model's folder: the directory of the model file after resolving symlinks (the EP's rule)."""
    return Path(os.path.realpath(model_path)).parent


def resolve_kernel(model_path, relative: str) -> Path:
    """The kernel file a node names, under the EP's path policy; ArtifactError when the path is refused."""
    if not relative or "\0" in relative:
        raise ArtifactError(f"kernel path {relative!r} is empty or contains a NUL byte")
    if relative.startswith("/"):
        raise ArtifactError(f"kernel path {relative!r} is absolute; it must be relative to the model's folder")
    if ".." in relative.split("/"):
        raise ArtifactError(f"kernel path {relative!r} climbs out of the model's folder with '..'")
    folder = Path(os.path.realpath(model_folder(model_path)))
    resolved = Path(os.path.realpath(folder / relative))
    if folder not in resolved.parents:
        raise ArtifactError(f"kernel path {relative!r} resolves to {resolved}, outside the model's folder {folder}")
    return resolved

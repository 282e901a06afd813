"""The Cortex nodes of a converted model and the kernel files they name, read the way the EP reads them.

The EP (csrc/ep) is the authority at load time; this module gives the Python tools (`cortex trust`, `cortex rebuild`,
`cortex.InferenceSession(rebuild=True)`) the same view: the node's attributes, its notes, and its kernel path under
the same path policy (relative, no '..', inside the model's folder after resolving symlinks).
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import onnx

EP_NAME = "CortexExecutionProvider"


class ArtifactError(ValueError):
    """A Cortex node or its kernel path breaks the contract (docs/contracts.md); the message is one clear line."""


MAX_FILE_BYTES = 1 << 40  # what Cortex hashes: ONNX external data may be large, never a sparse terabyte
MAX_KERNEL_BYTES = 512 << 20  # a kernel library (the EP's kMaxKernelBytes too)


def open_regular(path, limit: int = MAX_FILE_BYTES):
    """`path` opened for reading, after checking (before a byte is read, and without blocking on a FIFO) that it is a
    regular file of at most `limit` bytes; ArtifactError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ArtifactError(f"{path} cannot be opened ({e.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
        os.close(fd)
        what = "is not a regular file" if not stat.S_ISREG(info.st_mode) else f"is larger than {limit} bytes"
        raise ArtifactError(f"{path} {what}")
    return os.fdopen(fd, "rb")


def sha256_file(path, limit: int = MAX_FILE_BYTES) -> str:
    digest = hashlib.sha256()
    with open_regular(path, limit) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def external_data_files(model: onnx.ModelProto, model_path) -> list:
    """The external data files a model's tensors name (main graph and subgraphs), resolved in the model's folder,
    each once, sorted; ArtifactError for a location outside the folder (ONNX refuses those too)."""
    folder = model_folder(model_path)
    names = set()

    def tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                    yield from tensors(sub)

    for tensor in tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            resolved = Path(os.path.realpath(folder / location))
            if not location or os.path.isabs(location) or folder not in resolved.parents:
                raise ArtifactError(f"tensor {tensor.name!r} names external data {location!r} outside the model's "
                                    f"folder {folder}")
            names.add(resolved)
    return sorted(names)


def model_digest(model_path) -> str:
    """sha256 over a model file and every external data file it names: what a rebuilt copy is keyed by."""
    digest = hashlib.sha256(sha256_file(model_path).encode())
    model = onnx.load(os.fspath(model_path), load_external_data=False)
    for path in external_data_files(model, model_path):
        digest.update(f"{os.path.relpath(path, model_folder(model_path))}\0{sha256_file(path)}\0".encode())
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
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="strict")
        notes = json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as e:
        raise ArtifactError(f"notes are not JSON ({str(e)[:200]})") from None
    except RecursionError:
        raise ArtifactError("notes nest JSON values too deeply") from None
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


def _is_cortex(node: onnx.NodeProto) -> bool:
    return (node.op_type == "EPContext" and node.domain == "com.microsoft"
            and _attribute(node, "source") in (EP_NAME, EP_NAME.encode()))


def nested_node_message(node_name: str, parent_name: str) -> str:
    """The EP's words for a Cortex node found inside a subgraph (csrc/ep says the same)."""
    return (f"Cortex node '{node_name}' is inside the subgraph of node '{parent_name}': Cortex writes its nodes only "
            "into the main graph, so this model was edited; convert the original model again")


def _refuse_nested(graph: onnx.GraphProto, parent=None):
    """ArtifactError for a Cortex node in any subgraph (If, Loop, Scan bodies, at any depth)."""
    stack = [(graph, parent)]
    while stack:
        current, owner = stack.pop()
        for node in current.node:
            if owner is not None and _is_cortex(node):
                raise ArtifactError(nested_node_message(node.name, owner.name or owner.op_type))
            for attribute in node.attribute:
                stack += [(sub, node) for sub in ([attribute.g] if attribute.HasField("g") else [])
                          + list(attribute.graphs)]


def cortex_nodes(model: onnx.ModelProto) -> list:
    """Every EPContext node of the main graph whose source is the Cortex EP, with its parsed notes; ArtifactError
    when a subgraph holds one (the EP refuses those too)."""
    _refuse_nested(model.graph)
    found = []
    for index, node in enumerate(model.graph.node):
        if not _is_cortex(node):
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

"""The portable form of a TreeRec model: what ``cortex.torch.export`` writes and every ONNX Runtime runs.

A ``cortex.TreeRec`` node is not a standard op: plain ONNX Runtime cannot load a model holding one. Its portable form
is the model with each TreeRec node replaced by its lowering (standard ONNX, ``lowering.py``), the TreeRec node itself
recorded in the model's metadata (``metadata_props["cortex.treerec"]``: which nodes and initializers the lowering
wrote, and the TreeRec node, as data). ``cortex-convert`` reads the record back (:func:`raise_treerec`) and converts
the TreeRec, whose recursion it reads directly, only after proving that lowering the recorded nodes gives exactly the
graph the file holds: a record that disagrees with the graph (an edited model) is ignored, and the graph is what gets
converted. So the model runs anywhere, and the model Cortex converts is the model ONNX Runtime runs.
"""
from __future__ import annotations

import base64
import copy
import json

import onnx
from onnx import helper

from .lowering import lower_with_spans
from .schema import DOMAIN, VERSION, is_treerec

RECORD_KEY = "cortex.treerec"
RECORD_FORMAT = "cortex-treerec-record-1"


def has_treerec(model: onnx.ModelProto) -> bool:
    return any(is_treerec(n) for n in model.graph.node)


def to_portable(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every top-level TreeRec node lowered, and recorded (a model without one comes back as it is)."""
    if not has_treerec(model):
        return model
    lowered, spans = lower_with_spans(model)
    record = {"format": RECORD_FORMAT, "nodes": [
        {"first": first, "count": count, "initializers": names,
         "node": base64.b64encode(node.SerializeToString(deterministic=True)).decode("ascii")}
        for first, count, names, node in spans]}
    previous = [p for p in lowered.metadata_props if p.key == RECORD_KEY]
    for p in previous:
        lowered.metadata_props.remove(p)
    helper.set_model_props(lowered, {**{p.key: p.value for p in lowered.metadata_props},
                                     RECORD_KEY: json.dumps(record, separators=(",", ":"))})
    return lowered


def _without_record(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy.deepcopy(model)
    for p in [p for p in out.metadata_props if p.key == RECORD_KEY]:
        out.metadata_props.remove(p)
    return out


def raise_treerec(model: onnx.ModelProto) -> tuple:
    """(the TreeRec model a portable model records, None) when the record proves out; (``model``, why not) when the
    model has a record that does not; (``model``, None) when it has none."""
    text = next((p.value for p in model.metadata_props if p.key == RECORD_KEY), None)
    if text is None:
        return model, None
    try:
        record = json.loads(text)
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
            raise ValueError("not a TreeRec record")
        entries = sorted(record["nodes"], key=lambda e: e["first"])
        graph_nodes = list(model.graph.node)
        candidate = _without_record(model)
        nodes, added, at = [], set(), 0
        for entry in entries:
            first, count = int(entry["first"]), int(entry["count"])
            if first < at or count < 1 or first + count > len(graph_nodes):
                raise ValueError("its node spans do not fit the graph")
            node = onnx.NodeProto.FromString(base64.b64decode(entry["node"], validate=True))
            if not is_treerec(node):
                raise ValueError("it records a node that is not a TreeRec")
            nodes += graph_nodes[at:first] + [node]
            at = first + count
            added.update(str(name) for name in entry["initializers"])
        nodes += graph_nodes[at:]
        del candidate.graph.node[:]
        candidate.graph.node.extend(nodes)
        kept = [t for t in candidate.graph.initializer if t.name not in added]
        del candidate.graph.initializer[:]
        candidate.graph.initializer.extend(kept)
        if not any(o.domain == DOMAIN for o in candidate.opset_import):
            candidate.opset_import.append(helper.make_opsetid(DOMAIN, VERSION))
        relowered, _ = lower_with_spans(candidate)
    except Exception as e:  # noqa: BLE001 - any malformed record: the graph is what gets converted
        return model, f"the model's TreeRec record is unreadable ({type(e).__name__}: {str(e)[:120]})"
    same = (relowered.graph.SerializeToString(deterministic=True)
            == _without_record(model).graph.SerializeToString(deterministic=True))
    if not same:
        return model, "the model's TreeRec record does not match its graph (the model was edited)"
    return candidate, None

"""Converts zoo models and writes the inputs of their Cortex node, for tools/sanitize/kernel_driver.cc.

    python tools/sanitize/prepare.py OUT_DIR

For each model: OUT_DIR/<name>.so (the kernel, compiled with $CORTEX_KERNEL_CXXFLAGS, e.g. -fsanitize=thread),
OUT_DIR/<name>.good.bin (the node's inputs on a forest of trees) and OUT_DIR/<name>.bad.bin (the same with a child
index out of range, which the kernel must refuse). Prints one line per model: `<so> <good> <bad>`. Nothing here
loads a kernel: the Python process stays free of sanitizer runtimes.
"""
from __future__ import annotations

import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

import cortex
from onnx_ops.zoo import MODELS, batch, structures

DTYPES = {np.dtype(np.float32): 1, np.dtype(np.int32): 6, np.dtype(np.int64): 7, np.dtype(np.bool_): 9}


def node_inputs(converted: Path, feeds: dict) -> list:
    """The Cortex node's input tensors for `feeds`: initializers read from the model, the rest computed by ONNX
    Runtime on the graph up to the node."""
    model = onnx.load(str(converted))
    index = next(i for i, n in enumerate(model.graph.node) if n.op_type == "EPContext")
    node = model.graph.node[index]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    computed = [name for name in node.input if name not in inits and name not in graph_inputs]
    values = {name: feeds[name] for name in node.input if name in graph_inputs}
    if computed:
        before = model.graph.node[:index]
        del model.graph.node[:]
        model.graph.node.extend(before)
        del model.graph.output[:]
        model.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in computed)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        used = {i.name for i in session.get_inputs()}
        values.update(zip(computed, session.run(computed, {k: v for k, v in feeds.items() if k in used})))
    return [np.ascontiguousarray(inits[name] if name in inits else values[name]) for name in node.input]


def write_inputs(path: Path, tensors: list):
    with open(path, "wb") as f:
        f.write(b"CXIN" + struct.pack("<I", len(tensors)))
        for t in tensors:
            f.write(struct.pack("<ii", DTYPES[t.dtype], t.ndim))
            f.write(struct.pack(f"<{t.ndim}q", *t.shape))
            data = t.tobytes()
            f.write(struct.pack("<Q", len(data)) + data)


def main(out_dir: str):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, child_input in (("treelstm", "left"), ("dagrnn", "up")):
        zoo = MODELS[name]
        params = zoo.make_params(32)
        onnx.save(zoo.build_loop(params), str(out / f"{name}.onnx"))
        converted = out / f"{name}.cortex.onnx"
        cortex.convert(str(out / f"{name}.onnx"), str(converted), strict=True)
        kernel = next((out / f"{name}.cortex").glob("*.so"))
        shutil.copyfile(kernel, out / f"{name}.so")
        feeds = zoo.loop_feeds(batch(zoo.structure, structures(zoo.structure, 48, rng)))
        write_inputs(out / f"{name}.good.bin", node_inputs(converted, feeds))
        broken = dict(feeds)
        children = broken[child_input].copy()
        children[np.flatnonzero(children >= 0)[-1]] = 10 ** 9  # out of range: the kernel must raise
        broken[child_input] = children
        write_inputs(out / f"{name}.bad.bin", node_inputs(converted, broken))
        print(out / f"{name}.so", out / f"{name}.good.bin", out / f"{name}.bad.bin")


if __name__ == "__main__":
    main(sys.argv[1])

"""`cortex demo`: the main job on a bundled example. Write a TreeLSTM ONNX model (Loop/If, as exporters write it),
convert it with Cortex, run the original and the converted model through ONNX Runtime on the same trees, check that
they agree, and print the speedup. When torch is installed, also the cell road: the same TreeLSTM as two PyTorch
cells (cortex.examples.treelstm_cells), exported and converted with one call (cortex.torch.convert), checked against
eager PyTorch.

    cortex demo [--hidden 256] [--trees 10] [--sst ../shared/data/sst] [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from . import InferenceSession, convert
from .examples import structures as st
from .examples import treelstm as tl


def median_ms(session, feeds, repeats):
    session.run(None, feeds)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="cortex demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--trees", type=int, default=10, help="trees per batch")
    parser.add_argument("--sst", default=None, help="SST directory (default: ../shared/data/sst if present)")
    parser.add_argument("--out", default=None, help="where to write the models (default: a temp dir)")
    args = parser.parse_args(argv)

    out = Path(args.out or tempfile.mkdtemp(prefix="cortex_demo_"))
    out.mkdir(parents=True, exist_ok=True)
    vocab = 5000
    params = tl.make_params(hidden=args.hidden, embed_dim=300, vocab=vocab, seed=0)
    original = out / "treelstm.onnx"
    onnx.save(tl.build_loop(params), str(original))
    print(f"wrote {original} (TreeLSTM, hidden {args.hidden}, Loop/If form)")

    report = convert(str(original), str(out / "treelstm.cortex.onnx"), strict=True)
    print(report.format())

    sst = args.sst or st.sst_dir_default()
    if sst is not None:
        trees = st.read_sst(sst, split="test", vocab_size=vocab, limit=args.trees)
        source = f"SST test trees from {sst}"
    else:
        trees = st.sst_like_trees(args.trees, np.random.default_rng(0), vocab)
        source = "synthetic SST-shaped trees (no SST directory found)"
    forest = st.batch(trees)
    feeds = dict(words=forest.words, left=forest.left, right=forest.right, order=forest.order)
    print(f"inputs: {len(trees)} {source}, {forest.num_nodes} nodes")

    options = ort.SessionOptions()
    options.log_severity_level = 3
    baseline = ort.InferenceSession(str(original), sess_options=options)
    converted = InferenceSession(str(out / "treelstm.cortex.onnx"), sess_options=options)
    expected, got = baseline.run(None, feeds), converted.run(None, feeds)
    error = max(float(np.abs(e - g).max()) for e, g in zip(expected, got))
    print(f"max abs difference, converted vs original (h and c of every node): {error:.2e}")
    if error > 1e-4:
        print("FAIL: the converted model disagrees with the original", file=sys.stderr)
        return 1

    ort_ms = median_ms(baseline, feeds, repeats=10)
    cortex_ms = median_ms(converted, feeds, repeats=50)
    print(f"ONNX Runtime (original): {ort_ms:8.2f} ms   Cortex: {cortex_ms:8.3f} ms   "
          f"speedup {ort_ms / cortex_ms:.1f}x  (median, batch of {len(trees)})")
    return cell_road(params, forest, expected, out, options)


def cell_road(params, forest, expected, out: Path, options) -> int:
    """The same TreeLSTM from its PyTorch cells, one call to a converted model (skipped without torch)."""
    try:
        import cortex.torch
        from .examples.treelstm_cells import CELL_OPTIONS, make_cells
    except ImportError as e:
        print(f"cell road skipped: {e}")
        return 0
    leaf, internal = make_cells(params)  # the same weights, as nn.Modules
    feeds = {"children": forest.children, "words": forest.words}
    report = cortex.torch.convert(leaf, internal, feeds, out / "treelstm_cells.cortex.onnx", **CELL_OPTIONS)
    print(f"cell road: cortex.torch.convert(leaf, internal, ...) -> {report.output}")
    eager = cortex.torch.run_reference(leaf, internal, feeds, **CELL_OPTIONS)
    got = InferenceSession(report.output, sess_options=options).run(None, feeds)
    error = max(max(float(np.abs(a - b).max()) for a, b in zip(got, ref)) for ref in (eager, expected))
    print(f"max abs difference, cell road converted vs eager PyTorch and vs the Loop model: {error:.2e}")
    if error > 1e-4:
        print("FAIL: the cell road disagrees", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

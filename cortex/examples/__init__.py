"""Example recursive models and structures: what ``cortex demo`` runs, installed with Cortex.

- :mod:`.structures`: trees and forests (random SST-shaped trees, the SST reader, batching into one forest);
- :mod:`.treelstm`: the binary TreeLSTM in its forms (a hand-built Loop/If model as exporters write it, a
  ``cortex.TreeRec`` model, a numpy reference, PyTorch cells);
- :mod:`._build`: the ONNX building blocks those forms (and the repository's model zoo, ``onnx_ops.zoo``) use.
"""
